#!lua name=gatekeeper
--[[
Redis Functions of the eligibility cache. The loader is their only caller.

A record is MessagePack {prac_psn_type, {period, ...}}; a period is
{status, begntime, chg_key, seq[, endtime, ban_endtime, chg_rea]} (gatekeeper/records.py).
Merging follows REGISTRY_FORMAT.md: a chg_id is the identity of a period, whatever code
it names; a version replaces the period only when its seq is higher than the one the
generation's chg_id index holds, so duplicates and reordered deliveries are harmless.
]]

local STATUS_REGISTERED, STATUS_TERMINATED = 1, 3
-- No call may block Redis for long, whatever the data (README, "Limits"). A merge decodes
-- and re-encodes the practitioner's whole record, so its work grows with the record: a
-- record holds at most MAX_PERIODS periods, and one call merges rows until it has handled
-- CALL_BUDGET_BYTES of records, then returns how many rows it handled; the loader sends
-- the rest again. Both mirror loader/cache.py.
local MAX_PERIODS = 100
local CALL_BUDGET_BYTES = 262144

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

local KEY_SPACE = 4294967296  -- chg_key is 32 bits

-- The chg_id index of a generation: hashes chg_id -> MessagePack {code, bucket number of
-- the code, seq[, chg_key]} (docs/cache-layout.md), the chg_key only when it is not the
-- chg_id's CRC (5 bytes saved a row). It makes a chg_id the identity of a period whatever
-- code names it, and lets a chg_id whose CRC collides with another of the same
-- practitioner take the next free key instead of replacing that period.
local function index_entry(code, bucket, seq, chg_key, crc_key)
  local number = tonumber(string.match(bucket, ':b(%d+)$'))
  if chg_key == crc_key then
    return cmsgpack.pack({code, number, seq})
  end
  return cmsgpack.pack({code, number, seq, chg_key})
end

-- Remove the period with `chg_key` from the record of `code` in `bucket` (the chg_id moved
-- to another code); a code left with no period is removed. Returns the bytes of the record
-- it read, for the caller's budget.
local function take_period(bucket, code, chg_key)
  local current = redis.call('HGET', bucket, code)
  if not current then
    return 0
  end
  local record = cmsgpack.unpack(current)
  local kept = {}
  for _, existing in ipairs(record[2]) do
    if existing[3] ~= chg_key then
      kept[#kept + 1] = existing
    end
  end
  if #kept == 0 then
    redis.call('HDEL', bucket, code)
  else
    record[2] = kept
    redis.call('HSET', bucket, code, cmsgpack.pack(record))
  end
  return #current
end

-- Merge the single period of `incoming` (an encoded one-period record of `chg_id`, with
-- sequence number `seq`) into the record of `code` in hash `bucket`, with `index` the
-- generation's chg_id index hash for `chg_id`. Periods with seq <= watermark are already
-- in the snapshot the bucket belongs to. The index decides: a chg_id already there with a
-- seq at least as high is stale, whatever code it names; a newer version replaces its
-- period, and takes it from the code that had it if the code differs.
-- Returns changed (0 stale, 1 new code, 2 merged, 3 refused: a new period for a code that
-- already has MAX_PERIODS), the integrity flag, the code the period was taken from (false
-- if none), and the bytes of records and index entries it read or wrote (the caller's
-- budget). A refused version changes nothing: the cap is checked before the period is
-- taken from its old code or the index is updated. The common snapshot row (a chg_id and
-- a code both new) costs two HSETNX and no decoding or encoding at all when the caller
-- passes `entry`, the index entry {code, bucket number, seq} it would get.
local function merge(bucket, index, code, chg_id, incoming, seq, watermark, entry)
  if seq <= watermark then
    return 0, 0, false, 0
  end
  local spent = #incoming
  local new_chg_id = redis.call('HSETNX', index, chg_id, entry or index_entry(code, bucket, seq, 0, 0)) == 1
  if new_chg_id and redis.call('HSETNX', bucket, code, incoming) == 1 then
    return 1, 0, false, spent
  end
  local update = cmsgpack.unpack(incoming)
  local period = update[2][1]
  local crc_key = period[3]
  local known_key, moved = nil, nil
  if not new_chg_id then
    local entry = redis.call('HGET', index, chg_id)
    spent = spent + #entry
    local known = cmsgpack.unpack(entry)
    if known[3] >= seq then
      return 0, 0, false, spent
    end
    if known[1] == code then
      known_key = known[4] or crc_key
    else
      moved = {bucket = string.match(bucket, '^(.*:b)%d+$') .. known[2], code = known[1], key = known[4] or crc_key}
    end
  end
  -- (A new chg_id's HSETNX of the code above already failed: the code has a record.)
  if known_key == nil and not new_chg_id and redis.call('HSETNX', bucket, code, incoming) == 1 then
    -- The code's first period: nothing to cap.
    if moved then
      spent = spent + take_period(moved.bucket, moved.code, moved.key)
      redis.call('HSET', index, chg_id, index_entry(code, bucket, seq, crc_key, crc_key))
    end
    return 1, 0, moved and moved.code or false, spent
  end
  local current = redis.call('HGET', bucket, code)
  local record = current and cmsgpack.unpack(current) or {update[1], {}}
  spent = spent + (current and #current or 0)
  local periods = record[2]
  local newest, chg_key = 0, known_key
  if chg_key == nil then
    -- A chg_id new to this code: its CRC, or the next key no other period of the code has.
    local taken = {}
    for _, existing in ipairs(periods) do
      taken[existing[3]] = true
    end
    chg_key = crc_key
    while taken[chg_key] do
      chg_key = (chg_key + 1) % KEY_SPACE
    end
  end
  period[3] = chg_key
  local replaced = false
  for i, existing in ipairs(periods) do
    if existing[3] == chg_key then
      periods[i] = period
      replaced = true
    elseif existing[4] > newest then
      newest = existing[4]
    end
  end
  if not replaced then
    if #periods >= MAX_PERIODS then
      if new_chg_id then
        redis.call('HDEL', index, chg_id)  -- undo: the chg_id stays unknown to this generation
      end
      return 3, 0, false, spent
    end
    periods[#periods + 1] = period
  end
  if period[4] > newest then
    record[1] = update[1]  -- the practitioner type of the newest period, whatever the delivery order
  end
  if moved then
    spent = spent + take_period(moved.bucket, moved.code, moved.key)
  end
  redis.call('HSET', bucket, code, cmsgpack.pack(record))
  if not (new_chg_id and chg_key == crc_key) then
    -- (A new chg_id with its CRC as key has the entry its HSETNX above wrote.)
    redis.call('HSET', index, chg_id, index_entry(code, bucket, seq, chg_key, crc_key))
  end
  return current and 2 or 1, reregistered_during_ban(periods), moved and moved.code or false, spent
end

-- KEYS: the bucket and the chg_id index hash of each row. ARGV: code, chg_id, encoded
-- one-period record, seq and index entry {code, bucket number, seq} of each row. The snapshot loader's bulk write into a
-- generation being loaded (standalone Redis: the keys span slots). Returns {new codes,
-- merged, stale, codes with integrity findings, rows handled (the first ones; the caller
-- sends the rest again), indexes of rows refused}.
local function gk_insert(keys, args)
  local inserted, merged, stale, findings, refused, spent = 0, 0, 0, {}, {}, 0
  local rows = #keys / 2
  for i = 1, rows do
    if spent >= CALL_BUDGET_BYTES then
      return {inserted, merged, stale, findings, i - 1, refused}
    end
    local j = 5 * i - 4
    local changed, finding, _, cost =
      merge(keys[2 * i - 1], keys[2 * i], args[j], args[j + 1], args[j + 2], tonumber(args[j + 3]), -1, args[j + 4])
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

-- KEYS: the bucket and the chg_id index hash of each change. ARGV: watermark, then code,
-- chg_id, encoded one-period record and seq of each change. The snapshot loader replays
-- logged changes into the new generation with it. Returns {how many changed something,
-- changes handled (the first ones; the caller sends the rest again)}.
local function gk_merge(keys, args)
  local watermark, changed, spent = tonumber(args[1]), 0, 0
  local count = #keys / 2
  for i = 1, count do
    if spent >= CALL_BUDGET_BYTES then
      return {changed, i - 1}
    end
    local j = 4 * i - 2
    local result, _, _, cost =
      merge(keys[2 * i - 1], keys[2 * i], args[j], args[j + 1], args[j + 2], tonumber(args[j + 3]), watermark)
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
-- index hash of each change, then (when a snapshot is loading) the loading generation's.
-- ARGV: layout ("<current>/<loading or 0>" the caller computed keys for), the stream's
-- maximum length, then code, chg_id, encoded one-period record and seq of each change.
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
  if not current[5] then
    return redis.error_reply('NOSNAPSHOT the loaded snapshot predates the chg_id index: load a snapshot again')
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
  local count = (#args - 2) / 4
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
    local code, chg_id, incoming, seq_text = args[4 * i - 1], args[4 * i], args[4 * i + 1], args[4 * i + 2]
    local seq = tonumber(seq_text)
    local result, finding, moved_from, cost =
      merge(keys[2 + 2 * i], keys[3 + 2 * i], code, chg_id, incoming, seq, watermark)
    spent = spent + cost
    if loading then
      local base = 3 + 2 * count
      local loading_result, loading_finding, loading_moved_from, loading_cost =
        merge(keys[base + 2 * i - 1], keys[base + 2 * i], code, chg_id, incoming, seq, loading.watermark)
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
    'record_count', args[6], 'switched_at', args[7], 'chg_index', '1')
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
