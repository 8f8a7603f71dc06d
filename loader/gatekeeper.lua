#!lua name=gatekeeper
--[[
Redis Functions of the eligibility cache. The loader is their only caller.

A record is MessagePack {prac_psn_type, {period, ...}}; a period is
{status, begntime, chg_id, seq[, endtime, ban_endtime, chg_rea]} (gatekeeper/records.py).
Merging follows REGISTRY_FORMAT.md: a chg_id is the identity of a period, whatever code
it names; a version replaces the period only when its seq is higher than the one held,
so duplicates and reordered deliveries are harmless.
]]

local STATUS_REGISTERED, STATUS_TERMINATED = 1, 3
-- No call may block Redis for long, whatever the data (README, "Limits"). A merge decodes
-- and re-encodes the practitioner's whole record, so its work grows with the record: a
-- record holds at most MAX_PERIODS periods, and one call merges rows until it has handled
-- CALL_BUDGET_BYTES of records, then returns how many rows it handled; the loader sends
-- the rest again. Both mirror loader/cache.py.
local MAX_PERIODS = 100
local CALL_BUDGET_BYTES = 262144
-- {gk}:meta chg_index of a generation written by these functions (keys.CHG_INDEX_LAYOUT).
local CHG_INDEX_LAYOUT = '2'

-- A status-1 period starting before a termination's ban ends (REGISTRY_FORMAT.md).
-- Registration starts sorted once, then a binary search per ban: O(n log n) in the periods,
-- where comparing every pair made one merge quadratic.
local function reregistered_during_ban(periods)
  local starts = {}
  for _, period in ipairs(periods) do
    if period[1] == STATUS_REGISTERED then
      starts[#starts + 1] = period[2]
    end
  end
  table.sort(starts)
  for _, ban in ipairs(periods) do
    local ban_end = ban[6] or 0
    if ban[1] == STATUS_TERMINATED and ban_end > 0 then
      -- the first registration starting at or after the termination's start
      local low, high = 1, #starts + 1
      while low < high do
        local middle = math.floor((low + high) / 2)
        if starts[middle] < ban[2] then
          low = middle + 1
        else
          high = middle
        end
      end
      if starts[low] and starts[low] < ban_end then
        return 1
      end
    end
  end
  return 0
end

-- The chg_id index of a generation (docs/cache-layout.md): strings {gk}:g<generation>:c<n>,
-- each a run of 5-byte entries, a chg_id's 2-byte tag (the loader computes it) and the
-- bucket number of the code whose record holds its period (3 bytes, big-endian). Records
-- hold their chg_ids whole, so an entry only says where to look: the record there says
-- whose period it is. Several chg_ids of a piece may share a tag.
local ENTRY_BYTES = 5

local function bucket_number(bucket)
  return tonumber(string.match(bucket, ':b(%d+)$'))
end

local function bucket_bytes(number)
  return string.char(math.floor(number / 65536) % 256, math.floor(number / 256) % 256, number % 256)
end

-- The key of bucket `number` of the generation of bucket key `bucket`.
local function sibling(bucket, number)
  return string.match(bucket, '^(.*:b)%d+$') .. number
end

local function find_period(periods, chg_id)
  for i, period in ipairs(periods) do
    if period[3] == chg_id then
      return i
    end
  end
  return nil
end

-- Where the first entry at or after `from` of the index piece `value` starts with `bytes`
-- (1-based), or nil: a match that straddles two entries' fields is not one.
local function find_entry(value, bytes, from)
  while true do
    local at = string.find(value, bytes, from, true)
    if not at or (at - 1) % ENTRY_BYTES == 0 then
      return at
    end
    from = at + 1
  end
end

-- The record holding `chg_id`'s period, by the index piece `value`: each entry with `tag`
-- names a bucket, whose records are searched for the chg_id (`skip`, the code the caller
-- already looked in, aside). Returns the code, its decoded record, the bucket's key, where
-- the entry starts in `value` (1-based) and the bytes of records read; nil if none holds it.
local function locate(value, tag, chg_id, bucket, skip)
  local spent, at = 0, find_entry(value, tag, 1)
  while at do
    local high, middle, low = string.byte(value, at + 2, at + 4)
    local key = sibling(bucket, high * 65536 + middle * 256 + low)
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      local held = fields[i + 1]
      spent = spent + #held
      if fields[i] ~= skip and string.find(held, chg_id, 1, true) then
        local record = cmsgpack.unpack(held)
        if find_period(record[2], chg_id) then
          return fields[i], record, key, at, spent
        end
      end
    end
    at = find_entry(value, tag, at + ENTRY_BYTES)
  end
  return nil, nil, nil, nil, spent
end

-- Remove one entry equal to `entry` from the index piece `index`: the loader wrote it for a
-- row that was then refused.
local function drop_entry(index, entry)
  local value = redis.call('GET', index) or ''
  local at = find_entry(value, entry, 1)
  if at then
    redis.call('SET', index, string.sub(value, 1, at - 1) .. string.sub(value, at + ENTRY_BYTES))
  end
end

-- Remove the period of `chg_id` from `record` (decoded) of `code` in `bucket`: the chg_id
-- moved to another code. A code left with no period is removed.
local function take_period(bucket, code, record, chg_id)
  local kept = {}
  for _, existing in ipairs(record[2]) do
    if existing[3] ~= chg_id then
      kept[#kept + 1] = existing
    end
  end
  if #kept == 0 then
    redis.call('HDEL', bucket, code)
  else
    record[2] = kept
    redis.call('HSET', bucket, code, cmsgpack.pack(record))
  end
end

-- Merge the single period of `incoming` (an encoded one-period record of `chg_id`, with
-- sequence number `seq`) into the record of `code` in hash `bucket`, with `index` the
-- generation's chg_id index piece of `chg_id` and `tag` its tag there. `indexed`: the chg_id
-- is new to the generation and the loader wrote its entry already (a snapshot row first of
-- its chg_id, docs/cache-layout.md "Snapshot load"), so the index is not searched. Periods with
-- seq <= watermark are already in the snapshot the bucket belongs to. A chg_id's period
-- is found in the code's own record, else where the index says: one there with a seq at
-- least as high is stale, whatever code it names; a newer version replaces it, and takes
-- it from the code that had it if the code differs.
-- Returns changed (0 stale, 1 new code, 2 merged, 3 refused: a new period for a code that
-- already has MAX_PERIODS), the integrity flag, the code the period was taken from (false
-- if none), and the bytes of records it read or wrote (the caller's budget). A refused
-- version changes nothing: the cap is checked before the period is taken from its old
-- code or the index is updated. Only a chg_id the code's record does not hold reads the
-- index piece: one string, copied and searched, not decoded (a sixteenth of its bytes
-- counts).
local function merge(bucket, index, tag, code, chg_id, incoming, seq, watermark, indexed)
  if seq <= watermark then
    return 0, 0, false, 0
  end
  local spent = #incoming
  local current = redis.call('HGET', bucket, code)
  local record, position = nil, nil
  if current then
    spent = spent + #current
    record = cmsgpack.unpack(current)
    position = find_period(record[2], chg_id)
    if position and record[2][position][4] >= seq then
      return 0, 0, false, spent
    end
  end
  local moved = nil
  if not position then
    local value, held_code, held_record, held_bucket, entry_at = '', nil, nil, nil, nil
    if not indexed then
      local cost
      value = redis.call('GET', index) or ''
      held_code, held_record, held_bucket, entry_at, cost = locate(value, tag, chg_id, bucket, code)
      spent = spent + cost + math.floor(#value / 16)
      if held_code then
        if held_record[2][find_period(held_record[2], chg_id)][4] >= seq then
          return 0, 0, false, spent
        end
        moved = held_code
      end
    end
    if record and #record[2] >= MAX_PERIODS then
      if indexed then
        drop_entry(index, tag .. bucket_bytes(bucket_number(bucket)))
      end
      return 3, 0, false, spent
    end
    if not indexed then
      local here = bucket_bytes(bucket_number(bucket))  -- this code's bucket, as an entry holds it
      if moved then
        take_period(held_bucket, held_code, held_record, chg_id)
        redis.call('SETRANGE', index, entry_at + 1, here)  -- in place
      else
        -- SET of the whole piece, not APPEND: Redis would keep room for as much again.
        redis.call('SET', index, value .. tag .. here)
      end
    end
  end
  if not record then
    redis.call('HSET', bucket, code, incoming)
    return 1, 0, moved or false, spent
  end
  local update = cmsgpack.unpack(incoming)
  local period, periods, newest = update[2][1], record[2], 0
  for i, existing in ipairs(periods) do
    if i ~= position and existing[4] > newest then
      newest = existing[4]
    end
  end
  periods[position or #periods + 1] = period
  if period[4] > newest then
    record[1] = update[1]  -- the practitioner type of the newest period, whatever the delivery order
  end
  redis.call('HSET', bucket, code, cmsgpack.pack(record))
  return 2, reregistered_during_ban(periods), moved or false, spent
end

-- KEYS: the bucket and the chg_id index piece of each row. ARGV: code, chg_id, encoded
-- one-period record, seq, chg_id tag and whether its index entry is written ('1', merge's
-- `indexed`, or '0') of each row. The snapshot loader's merge of the rows it did not
-- bulk-write into a generation being loaded, before any change is written there. Returns {new codes,
-- merged, stale, codes with integrity findings, rows handled (the first ones; the caller
-- sends the rest again), indexes of rows refused}.
local function gk_insert(keys, args)
  local inserted, merged, stale, findings, refused, spent = 0, 0, 0, {}, {}, 0
  local rows = #keys / 2
  for i = 1, rows do
    if spent >= CALL_BUDGET_BYTES then
      return {inserted, merged, stale, findings, i - 1, refused}
    end
    local j = 6 * i - 5
    local changed, finding, _, cost = merge(keys[2 * i - 1], keys[2 * i], args[j + 4], args[j], args[j + 1],
      args[j + 2], tonumber(args[j + 3]), -1, args[j + 5] == '1')
    spent = spent + cost
    if changed == 0 then
      stale = stale + 1
    elseif changed == 1 then
      inserted = inserted + 1
    elseif changed == 3 then
      refused[#refused + 1] = i
    else
      merged = merged + 1
    end
    if finding == 1 then
      findings[#findings + 1] = args[j]
    end
  end
  return {inserted, merged, stale, findings, rows, refused}
end

-- KEYS: the bucket and the chg_id index piece of each change. ARGV: watermark, then code,
-- chg_id, encoded one-period record, seq and chg_id tag of each change. The snapshot loader replays
-- logged changes into the new generation with it. Returns {how many changed something,
-- changes handled (the first ones; the caller sends the rest again)}.
local function gk_merge(keys, args)
  local watermark, changed, spent = tonumber(args[1]), 0, 0
  local count = #keys / 2
  for i = 1, count do
    if spent >= CALL_BUDGET_BYTES then
      return {changed, i - 1}
    end
    local j = 5 * i - 3
    local result, _, _, cost =
      merge(keys[2 * i - 1], keys[2 * i], args[j + 4], args[j], args[j + 1], args[j + 2], tonumber(args[j + 3]), watermark)
    spent = spent + cost
    if result == 1 or result == 2 then
      changed = changed + 1
    end
  end
  return {changed, count}
end

-- The lease of {gk}:loading: "<generation> <buckets> <watermark> <token>[ bulk]". In the bulk
-- phase the loader writes the snapshot's first rows with plain HSETs, which a change
-- written into the generation meanwhile could lose: changes are only logged then, and the
-- loader replays the log into the generation after the phase (docs/cache-layout.md).
local function loading_generation(value)
  if not value then
    return nil
  end
  local generation, buckets, watermark, token, phase = string.match(value, '^(%d+) (%d+) (%d+) (%S+) ?(%l*)$')
  return {generation = generation, buckets = buckets, watermark = tonumber(watermark), token = token,
    bulk = phase == 'bulk'}
end

-- KEYS: {gk}:meta, {gk}:loading, {gk}:changes, then the current generation's bucket and chg_id
-- index piece of each change, then (when a snapshot is loading) the loading generation's.
-- ARGV: layout ("<current>/<loading or 0>" the caller computed keys for), the stream's
-- maximum length, then code, chg_id, encoded one-period record, seq and chg_id tag of each
-- change.
-- Applies the changes to every live generation atomically, logs them to {gk}:changes (the
-- change notification, and what a snapshot load replays) and advances applied_seq.
-- Returns {changed, stale, codes with integrity findings, changes handled (the first ones;
-- the caller sends the rest again), indexes of changes refused}.
local function gk_apply(keys, args)
  local meta, loading_key, log = keys[1], keys[2], keys[3]
  local current = redis.call('HMGET', meta, 'generation', 'watermark_seq', 'applied_seq', 'change_seq', 'chg_index')
  if not current[1] then
    return redis.error_reply('NOSNAPSHOT no registry snapshot is loaded')
  end
  if current[5] ~= CHG_INDEX_LAYOUT then
    return redis.error_reply('NOSNAPSHOT the loaded snapshot predates this chg_id index: load a snapshot again')
  end
  local loading = loading_generation(redis.call('GET', loading_key))
  local bulk = loading and loading.bulk
  if bulk then
    loading = nil  -- logged below, and replayed into the loading generation after its bulk phase
  end
  local layout = current[1] .. '/' .. (loading and loading.generation or '0')
  if layout ~= args[1] then
    return {-1, layout}
  end
  local max_length = args[2]
  local count = (#args - 2) / 5
  local watermark = tonumber(current[2]) or 0
  local applied_seq = tonumber(current[3]) or 0
  local change_seq = tonumber(current[4]) or 0
  local changed, stale, findings, logged = 0, 0, {}, {}
  local handled, refused, spent = 0, {}, 0
  for i = 1, count do
    if spent >= CALL_BUDGET_BYTES then
      break
    end
    handled = i
    local j = 5 * i - 2
    local code, chg_id, incoming, seq_text, tag = args[j], args[j + 1], args[j + 2], args[j + 3], args[j + 4]
    local seq = tonumber(seq_text)
    local result, finding, moved_from, cost =
      merge(keys[2 + 2 * i], keys[3 + 2 * i], tag, code, chg_id, incoming, seq, watermark)
    spent = spent + cost
    if loading then
      local base = 3 + 2 * count
      local loading_result, loading_finding, loading_moved_from, loading_cost =
        merge(keys[base + 2 * i - 1], keys[base + 2 * i], tag, code, chg_id, incoming, seq, loading.watermark)
      spent = spent + loading_cost
      -- Changed in either generation counts as applied; refused only if neither took it.
      if result == 0 or (result == 3 and loading_result ~= 0) then
        result, finding = loading_result, loading_finding
      end
      moved_from = moved_from or loading_moved_from
    end
    if result == 0 then
      stale = stale + 1
    elseif result == 3 then
      refused[#refused + 1] = i
      if bulk then
        -- Full in the current generation, perhaps not in the loading one: the replay decides.
        for _, value in ipairs({'seq', seq_text, 'code', code, 'chg_id', chg_id, 'record', incoming}) do
          logged[#logged + 1] = value
        end
      end
    else
      changed = changed + 1
      if seq > applied_seq then
        applied_seq = seq
      end
      if seq > change_seq then
        change_seq = seq
      end
      for _, value in ipairs({'seq', seq_text, 'code', code, 'chg_id', chg_id, 'record', incoming}) do
        logged[#logged + 1] = value
      end
      if moved_from then
        -- The code that lost the period changed too: readers must drop it as well.
        logged[#logged + 1] = 'moved_from'
        logged[#logged + 1] = moved_from
      end
      if finding == 1 then
        findings[#findings + 1] = code
      end
    end
  end
  if #logged > 0 then
    -- One entry per call: fields seq, code, chg_id, record (and moved_from) repeated for
    -- each change applied (unpack is bounded by Lua's C stack: the loader sends at most
    -- 200 changes a call).
    redis.call('XADD', log, 'MAXLEN', '~', max_length, '*', unpack(logged))
  end
  redis.call('HSET', meta, 'applied_seq', string.format('%d', applied_seq),
    'change_seq', string.format('%d', change_seq))
  return {changed, stale, findings, handled, refused}
end

-- KEYS: {gk}:meta, {gk}:loading, {gk}:changes. ARGV: token, generation, buckets, snapshot_id,
-- watermark_seq, record_count, switched_at, stream maximum length.
-- Points readers at the loaded generation if the caller still holds the loading lease.
-- Its applied_seq is its watermark, or the highest change applied if later: every change
-- newer than the watermark was replayed into it or written to it while it loaded. A
-- snapshot older than the one it replaces (a forced load) holds its watermark only: the
-- changes between its watermark and the replaced snapshot's reached the cache through
-- that snapshot, not the change log, so nothing vouches for them; change_seq restarts there.
local function gk_switch(keys, args)
  local meta, loading_key, log = keys[1], keys[2], keys[3]
  local loading = loading_generation(redis.call('GET', loading_key))
  if not loading or loading.token ~= args[1] or loading.generation ~= args[2] then
    return redis.error_reply('LEASE the loading lease was lost')
  end
  local previous = redis.call('HMGET', meta, 'generation', 'change_seq', 'watermark_seq')
  local watermark = tonumber(args[5])
  local applied_seq, change_seq = watermark, watermark
  if watermark >= (tonumber(previous[3]) or 0) then
    change_seq = tonumber(previous[2]) or 0
    applied_seq = math.max(watermark, change_seq)
  end
  redis.call('HSET', meta,
    'generation', args[2], 'buckets', args[3], 'snapshot_id', args[4],
    'watermark_seq', args[5], 'applied_seq', string.format('%d', applied_seq),
    'change_seq', string.format('%d', change_seq),
    'record_count', args[6], 'switched_at', args[7], 'chg_index', CHG_INDEX_LAYOUT)
  redis.call('DEL', loading_key)
  redis.call('XADD', log, 'MAXLEN', '~', args[8], '*', 'switch', args[2])
  return previous[1] or false
end

-- KEYS: {gk}:loading. ARGV: the lease value, lease milliseconds. Extends our own lease only.
local function gk_renew(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('PEXPIRE', keys[1], args[2])
  end
  return 0
end

-- KEYS: {gk}:loading. ARGV: the lease value, the new value, lease milliseconds. Replaces our
-- own lease (ending its bulk phase) and extends it.
local function gk_relabel(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('SET', keys[1], args[2], 'PX', args[3])
  end
  return redis.error_reply('LEASE the loading lease was lost')
end

redis.register_function('gk_insert', gk_insert)
redis.register_function('gk_relabel', gk_relabel)
redis.register_function('gk_merge', gk_merge)
redis.register_function('gk_renew', gk_renew)
redis.register_function('gk_apply', gk_apply)
redis.register_function('gk_switch', gk_switch)
