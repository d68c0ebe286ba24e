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
  if current and token_of(current) > token then
    -- The given lease is stale; its agent lost the task unless it also holds the newer one.
    if ARGV[4] ~= '' and ARGV[4] ~= holder(current) then
      redis.call('SREM', prefix .. 'tasks:assigned:' .. ARGV[4], task_id)
    end
    return {'newer', token_of(current)}
  end
  if current ~= nil then
    if current then
      redis.call('SREM', prefix .. 'tasks:assigned:' .. holder(current), task_id)
    end
    redis.call('DEL', KEYS[1])
    dropped = 1
  end
  if ARGV[4] ~= '' then
    redis.call('SREM', prefix .. 'tasks:assigned:' .. ARGV[4], task_id)
  end
  redis.call('SREM', KEYS[2], task_id)
  redis.call('ZREM', KEYS[3], task_id)
end
redis.call('ZADD', KEYS[4], 'NX', ARGV[5], ARGV[6])
return {'queued', dropped}
