-- claim: take the best queued task a claimant may run and lease it, in one round trip.
-- KEYS: [1] fence:counter, [2] leases:expiry, [3] tasks:assigned:{agent_id}, [4] tasks:running
-- ARGV: [1] key prefix, [2] agent_id, [3] now_ms, [4] ttl_ms, [5] grace_ms (unused: lease keys have no TTL), [6..] capabilities
-- Returns: {'ok', task_id, token, locked_at_ms, expires_at_ms}, {'none'} when nothing matches,
--   or {'retry'} after dropping MAX_SKIPS stale heads (the caller calls again).
--
-- Queue keys are built here from the prefix because the set of capabilities is the claimant's;
-- with a hash-tagged prefix (`{mcpd}:`) every key still lands in one cluster slot.
-- Per priority (10 first) the head of each capability's sorted set is read with ZRANGE 0 0:
-- O(log n) each, never a scan. The best head (score = deadline, then member = created_at:id)
-- wins. A head whose task still has a live lease is stale (the task was queued twice): it is
-- dropped and the search goes on, at most MAX_SKIPS times per call. Lease keys carry no TTL:
-- a lapsed lease stays until the reaper (or a later claim) deals with it, whenever that is.
local prefix, agent = ARGV[1], ARGV[2]
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local MAX_SKIPS = 32
local skips = 0

for p = 10, 1, -1 do
  while true do
    local best_key, best_member, best_score
    for i = 6, #ARGV do
      local key = prefix .. 'tasks:pending:' .. p .. ':' .. ARGV[i]
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if head[1] then
        local score = tonumber(head[2])
        if best_key == nil or score < best_score
            or (score == best_score and bytes_before(head[1], best_member)) then
          best_key, best_member, best_score = key, head[1], score
        end
      end
    end
    if best_key == nil then break end

    redis.call('ZREM', best_key, best_member)
    local task_id = string.match(best_member, '^[^:]*:(.*)$') or best_member
    local lock_key = prefix .. 'lock:task:' .. task_id
    local current = decode(redis.call('GET', lock_key))
    if current and expiry_of(current) > now then
      skips = skips + 1
      if skips >= MAX_SKIPS then return {'retry'} end
    else
      if current then
        -- A lapsed lease nobody reaped yet: its holder loses the task to this claim.
        redis.call('SREM', prefix .. 'tasks:assigned:' .. holder(current), task_id)
      end
      redis.call('SREM', KEYS[4], task_id)
      local token = redis.call('INCR', KEYS[1])
      local expires = now + ttl
      redis.call('SET', lock_key, encode_lease(task_id, agent, token, now, expires))
      redis.call('ZADD', KEYS[2], expires, task_id)
      redis.call('SADD', KEYS[3], task_id)
      return {'ok', task_id, token, now, expires}
    end
  end
end
return {'none'}
