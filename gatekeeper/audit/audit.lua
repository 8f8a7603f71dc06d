#!lua name=gatekeeper_audit
-- gk_audit_append(KEYS: stream, batches; ARGV: batch_id, dedup_ms, then for each record
-- decision_id, claim_id, fixmedins_code, record). Appends the batch unless its id was
-- appended within dedup_ms; returns the number of entries appended (0: a duplicate).
local function append(keys, args)
  local stream, batches = keys[1], keys[2]
  local batch_id, dedup_ms = args[1], tonumber(args[2])
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', batches, '-inf', '(' .. string.format('%d', now_ms - dedup_ms))
  if redis.call('ZSCORE', batches, batch_id) then
    return 0
  end
  for i = 3, #args, 4 do
    redis.call('XADD', stream, '*', 'decision_id', args[i], 'claim_id', args[i + 1],
      'fixmedins_code', args[i + 2], 'record', args[i + 3])
  end
  redis.call('ZADD', batches, now_ms, batch_id)
  return (#args - 2) / 4
end
redis.register_function('gk_audit_append', append)
