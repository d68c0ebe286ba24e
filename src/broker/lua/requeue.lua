-- requeue: put a task back in its queue, first dropping the given lease or any older one.
-- KEYS: [1] lock:task:{id}, [2] tasks:running, [3] leases:expiry,
--       [4] tasks:pending:{priority}:{task_type}
-- ARGV: [1] key prefix, [2] task_id, [3] lease token (-1: no lease given),
--       [4] lease agent_id ('' when none), [5] queue score, [6] queue member
-- Returns: {'queued', dropped} where dropped is 1 when a lease was dropped; or
--   {'newer', token held} when a newer lease exists (it is kept and the task is not queued).
local prefix, task_id, token = ARGV[1], ARGV[2], tonumber(ARGV[3])
local dropped = 0
if token >= 0 then
  local current = decode(redis.call('GET', KEYS[1]))
  local newer = newer_lease(prefix, task_id, current, token, ARGV[4])
  if newer then
    return {'newer', newer}
  end
  dropped = drop_lease(prefix, task_id, current, KEYS[1], KEYS[2], KEYS[3], ARGV[4])
end
redis.call('ZADD', KEYS[4], 'NX', ARGV[5], ARGV[6])
return {'queued', dropped}
