-- revoke: drop a task's lease (lapsed or live) without queuing the task.
-- KEYS: [1] lock:task:{id}, [2] tasks:running, [3] leases:expiry
-- ARGV: [1] key prefix, [2] task_id, [3] lease token, [4] lease agent_id
-- Returns: {'dropped', 1} when the given or an older lease was dropped, {'dropped', 0} when
--   there was none (memberships of the given agent are still cleared), or {'newer', token held}
--   when a newer lease exists (it is kept).
local prefix, task_id, token = ARGV[1], ARGV[2], tonumber(ARGV[3])
local current = decode(redis.call('GET', KEYS[1]))
local newer = newer_lease(prefix, task_id, current, token, ARGV[4])
if newer then
  return {'newer', newer}
end
return {'dropped', drop_lease(prefix, task_id, current, KEYS[1], KEYS[2], KEYS[3], ARGV[4])}
