#!lua name=gatekeeper
--[[
Redis Functions of the eligibility cache. The loader is their only caller.

A record is MessagePack {prac_psn_type, {period, ...}}; a period is
{status, begntime, chg_key, seq[, endtime, ban_endtime, chg_rea]} (gatekeeper/records.py).
Merging follows REGISTRY_FORMAT.md: a period replaces the one with the same chg_key only
when its seq is higher, so duplicates and reordered deliveries are harmless.
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

-- Merge the single period of `incoming` (an encoded one-period record whose period has
-- sequence number `seq`) into the record of `code` in hash `bucket`. Periods with
-- seq <= watermark are already in the snapshot the bucket belongs to. Returns changed
-- (0 stale, 1 inserted, 2 merged, 3 refused: a new period beyond MAX_PERIODS) and the
-- integrity flag. Records are decoded only when
-- there is something to merge with: most writes are a code's first period.
local function merge(bucket, code, incoming, seq, watermark)
  if seq <= watermark then
    return 0, 0
  end
  local current = redis.call('HGET', bucket, code)
  if not current then
    redis.call('HSET', bucket, code, incoming)
    return 1, 0
  end
  local update = cmsgpack.unpack(incoming)
  local period = update[2][1]
  local record = cmsgpack.unpack(current)
  local periods = record[2]
  local replaced, newest = false, 0
  for i, existing in ipairs(periods) do
    if existing[3] == period[3] then
      if existing[4] >= period[4] then
        return 0, 0
      end
      periods[i] = period
      replaced = true
    elseif existing[4] > newest then
      newest = existing[4]
    end
  end
  if not replaced then
    if #periods >= MAX_PERIODS then
      return 3, 0
    end
    periods[#periods + 1] = period
  end
  if period[4] > newest then
    record[1] = update[1]  -- the practitioner type of the newest period, whatever the delivery order
  end
  redis.call('HSET', bucket, code, cmsgpack.pack(record))
  return 2, reregistered_during_ban(periods)
end

-- KEYS: one bucket per row. ARGV: code, encoded one-period record and seq of each row.
-- The snapshot loader's bulk write into a generation being loaded (standalone Redis:
-- the keys span slots). Returns {new codes, merged, stale, codes with integrity findings,
-- rows handled (the first ones; the caller sends the rest again), indexes of rows refused}.
local function gk_insert(keys, args)
  local inserted, merged, stale, findings, refused, spent = 0, 0, 0, {}, {}, 0
  for i = 1, #keys do
    if spent >= CALL_BUDGET_BYTES then
      return {inserted, merged, stale, findings, i - 1, refused}
    end
    local code, incoming, seq = args[3 * i - 2], args[3 * i - 1], tonumber(args[3 * i])
    spent = spent + #incoming
    if redis.call('HSETNX', keys[i], code, incoming) == 1 then
      inserted = inserted + 1
    else
      spent = spent + redis.call('HSTRLEN', keys[i], code)
      local changed, finding = merge(keys[i], code, incoming, seq, -1)
      if changed == 0 then
        stale = stale + 1
      elseif changed == 3 then
        refused[#refused + 1] = i
      else
        merged = merged + 1
      end
      if finding == 1 then
        findings[#findings + 1] = code
      end
    end
  end
  return {inserted, merged, stale, findings, #keys, refused}
end

-- KEYS: one bucket per change. ARGV: watermark, then code, encoded one-period record and
-- seq of each change. The snapshot loader replays logged changes into the new generation
-- with it. Returns {how many changed something, changes handled (the first ones)}.
local function gk_merge(keys, args)
  local watermark, changed, spent = tonumber(args[1]), 0, 0
  for i = 1, #keys do
    if spent >= CALL_BUDGET_BYTES then
      return {changed, i - 1}
    end
    spent = spent + #args[3 * i] + redis.call('HSTRLEN', keys[i], args[3 * i - 1])
    local result = merge(keys[i], args[3 * i - 1], args[3 * i], tonumber(args[3 * i + 1]), watermark)
    if result == 1 or result == 2 then
      changed = changed + 1
    end
  end
  return {changed, #keys}
end

local function loading_generation(value)
  if not value then
    return nil
  end
  local generation, buckets, watermark, token = string.match(value, '^(%d+) (%d+) (%d+) (%S+)$')
  return {generation = generation, buckets = buckets, watermark = tonumber(watermark), token = token}
end

-- KEYS: gk:meta, gk:loading, gk:changes, then the current generation's bucket of each
-- change, then (when a snapshot is loading) the loading generation's bucket of each.
-- ARGV: layout ("<current>/<loading or 0>" the caller computed keys for), the stream's
-- maximum length, then code, encoded one-period record and seq of each change.
-- Applies the changes to every live generation atomically, logs them to gk:changes (the
-- change notification, and what a snapshot load replays) and advances applied_seq.
-- Returns {changed, stale, codes with integrity findings, changes handled (the first ones;
-- the caller sends the rest again), indexes of changes refused}.
local function gk_apply(keys, args)
  local meta, loading_key, log = keys[1], keys[2], keys[3]
  local current = redis.call('HMGET', meta, 'generation', 'watermark_seq', 'applied_seq', 'change_seq')
  if not current[1] then
    return redis.error_reply('NOSNAPSHOT no registry snapshot is loaded')
  end
  local loading = loading_generation(redis.call('GET', loading_key))
  local layout = current[1] .. '/' .. (loading and loading.generation or '0')
  if layout ~= args[1] then
    return {-1, layout}
  end
  local max_length = args[2]
  local count = (#args - 2) / 3
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
    local code, incoming, seq_text = args[3 * i], args[3 * i + 1], args[3 * i + 2]
    local seq = tonumber(seq_text)
    spent = spent + #incoming + redis.call('HSTRLEN', keys[3 + i], code)
    local result, finding = merge(keys[3 + i], code, incoming, seq, watermark)
    if loading then
      spent = spent + redis.call('HSTRLEN', keys[3 + count + i], code)
      local loading_result, loading_finding = merge(keys[3 + count + i], code, incoming, seq, loading.watermark)
      -- Changed in either generation counts as applied; refused only if neither took it.
      if result == 0 or (result == 3 and loading_result ~= 0) then
        result, finding = loading_result, loading_finding
      end
    end
    if result == 0 then
      stale = stale + 1
    elseif result == 3 then
      refused[#refused + 1] = i
    else
      changed = changed + 1
      if seq > applied_seq then
        applied_seq = seq
      end
      if seq > change_seq then
        change_seq = seq
      end
      for _, value in ipairs({'seq', seq_text, 'code', code, 'record', incoming}) do
        logged[#logged + 1] = value
      end
      if finding == 1 then
        findings[#findings + 1] = code
      end
    end
  end
  if #logged > 0 then
    -- One entry per call: fields seq, code, record repeated for each change applied
    -- (unpack is bounded by Lua's C stack: the loader sends at most 200 changes a call).
    redis.call('XADD', log, 'MAXLEN', '~', max_length, '*', unpack(logged))
  end
  redis.call('HSET', meta, 'applied_seq', string.format('%d', applied_seq),
    'change_seq', string.format('%d', change_seq))
  return {changed, stale, findings, handled, refused}
end

-- KEYS: gk:meta, gk:loading, gk:changes. ARGV: token, generation, buckets, snapshot_id,
-- watermark_seq, record_count, switched_at, stream maximum length.
-- Points readers at the loaded generation if the caller still holds the loading lease.
-- Its applied_seq is its watermark, or the highest change applied if later: every change
-- newer than the watermark was replayed into it or written to it while it loaded.
local function gk_switch(keys, args)
  local meta, loading_key, log = keys[1], keys[2], keys[3]
  local loading = loading_generation(redis.call('GET', loading_key))
  if not loading or loading.token ~= args[1] or loading.generation ~= args[2] then
    return redis.error_reply('LEASE the loading lease was lost')
  end
  local previous = redis.call('HMGET', meta, 'generation', 'change_seq')
  local applied_seq = math.max(tonumber(args[5]), tonumber(previous[2]) or 0)
  redis.call('HSET', meta,
    'generation', args[2], 'buckets', args[3], 'snapshot_id', args[4],
    'watermark_seq', args[5], 'applied_seq', string.format('%d', applied_seq),
    'record_count', args[6], 'switched_at', args[7])
  redis.call('DEL', loading_key)
  redis.call('XADD', log, 'MAXLEN', '~', args[8], '*', 'switch', args[2])
  return previous[1] or false
end

-- KEYS: gk:loading. ARGV: the lease value, lease milliseconds. Extends our own lease only.
local function gk_renew(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('PEXPIRE', keys[1], args[2])
  end
  return 0
end

redis.register_function('gk_insert', gk_insert)
redis.register_function('gk_merge', gk_merge)
redis.register_function('gk_renew', gk_renew)
redis.register_function('gk_apply', gk_apply)
redis.register_function('gk_switch', gk_switch)
