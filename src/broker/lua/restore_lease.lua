-- restore_lease: re-install a lease recorded in the store (recovery after data loss).
-- KEYS: [1] lock:task:{id}, [2] leases:expiry, [3] tasks:assigned:{agent_id},
--       [4] tasks:running, [5] fence:counter
-- ARGV: [1] key prefix, [2] task_id, [3] agent_id, [4] token, [5] locked_at_ms,
--       [6] expires_at_ms, [7] now_ms, [8] grace_ms (unused: lease keys have no TTL), [9] running (1/0)
-- Returns: {'restored'}, or {'kept', token held} when a lease with the same or a newer token
--   exists (nothing changes).
local prefix, task_id, agent = ARGV[1], ARGV[2], ARGV[3]
local token, locked_at, expires = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = tonumber(ARGV[7])
local current = decode(redis.call('GET', KEYS[1]))
if current and token_of(current) >= token then
  return {'kept', token_of(current)}
end
if current then
  redis.call('SREM', prefix .. 'tasks:assigned:' .. holder(current), task_id)
end
-- A lapsed lease is restored too, for the reaper. No TTL on lease keys (see claim.lua).
redis.call('SET', KEYS[1], encode_lease(task_id, agent, token, locked_at, expires))
redis.call('ZADD', KEYS[2], expires, task_id)
redis.call('SADD', KEYS[3], task_id)
if ARGV[9] == '1' then
  redis.call('SADD', KEYS[4], task_id)
else
  redis.call('SREM', KEYS[4], task_id)
end
-- Tokens only grow: the counter never stands below a token that is in use.
if (tonumber(redis.call('GET', KEYS[5])) or 0) < token then
  redis.call('SET', KEYS[5], int(token))
end
return {'restored'}
