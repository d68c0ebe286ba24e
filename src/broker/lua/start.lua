-- start: mark a leased task as running.
-- KEYS: [1] lock:task:{id}, [2] tasks:running
-- ARGV: [1] agent_id, [2] token, [3] now_ms, [4] task_id
-- Returns: {'ok'}, or {'lost', reason, token held} / {'corrupt'} when the caller holds no live
--   lease (reason: none, owner, superseded, expired).
local now, token = tonumber(ARGV[3]), tonumber(ARGV[2])
local lost = lost_reason(decode(redis.call('GET', KEYS[1])), ARGV[1], token, now)
if lost then return lost end
redis.call('SADD', KEYS[2], ARGV[4])
return {'ok'}
