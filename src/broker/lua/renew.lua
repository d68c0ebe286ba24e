-- renew: extend a live lease by ttl from now.
-- KEYS: [1] lock:task:{id}, [2] leases:expiry
-- ARGV: [1] agent_id, [2] token, [3] now_ms, [4] ttl_ms, [5] grace_ms (unused: lease keys have no TTL), [6] task_id
-- Returns: {'ok', locked_at_ms, expires_at_ms}, or {'lost', reason, token held} / {'corrupt'}.
local now, token = tonumber(ARGV[3]), tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
local current = decode(redis.call('GET', KEYS[1]))
local lost = lost_reason(current, ARGV[1], token, now)
if lost then return lost end
local locked_at = tonumber(current.locked_at_ms) or now
local expires = now + ttl
-- No TTL on lease keys (see claim.lua).
redis.call('SET', KEYS[1], encode_lease(ARGV[6], ARGV[1], token, locked_at, expires))
redis.call('ZADD', KEYS[2], expires, ARGV[6])
return {'ok', locked_at, expires}
