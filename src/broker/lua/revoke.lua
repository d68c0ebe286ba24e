-- revoke: drop a task's lease (lapsed or live) without queuing the task.
-- KEYS: [1] lock:task:{id}, [2] tasks:running, [3] leases:expiry
-- ARGV: [1] key prefix, [2] task_id, [3] lease token, [4] lease agent_id
-- Returns: {'dropped', 1} when the given or an older lease was dropped, {'dropped', 0} when
--   there was none (memberships of the given agent are still cleared), or {'newer', token held}
--   when a newer lease exists (it is kept).
local prefix, task_id, token = ARGV[1], ARGV[2], tonumber(ARGV[3])
local current = decode(redis.call('GET', KEYS[1]))
if current and token_of(current) > token then
  if ARGV[4] ~= holder(current) then
    redis.call('SREM', prefix .. 'tasks:assigned:' .. ARGV[4], task_id)
  end
  return {'newer', token_of(current)}
end
local dropped = 0
if current ~= nil then
  if current then
    redis.call('SREM', prefix .. 'tasks:assigned:' .. holder(current), task_id)
  end
  redis.call('DEL', KEYS[1])
  dropped = 1
end
redis.call('SREM', prefix .. 'tasks:assigned:' .. ARGV[4], task_id)
redis.call('SREM', KEYS[2], task_id)
redis.call('ZREM', KEYS[3], task_id)
return {'dropped', dropped}
