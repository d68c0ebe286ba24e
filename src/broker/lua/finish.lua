-- finish: end a live lease because its task finished.
-- KEYS: [1] lock:task:{id}, [2] tasks:running, [3] tasks:assigned:{agent_id}, [4] leases:expiry
-- ARGV: [1] agent_id, [2] token, [3] now_ms, [4] task_id
-- Returns: {'ok'}, or {'lost', reason, token held} / {'corrupt'}.
local now, token = tonumber(ARGV[3]), tonumber(ARGV[2])
local lost = lost_reason(decode(redis.call('GET', KEYS[1])), ARGV[1], token, now)
if lost then return lost end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[4])
return {'ok'}
