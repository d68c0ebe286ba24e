-- lock_renew: extend a held lock by ttl from now; owner and token checked.
-- KEYS: [1] the lock key
-- ARGV: [1] owner, [2] token, [3] now_ms, [4] ttl_ms, [5] grace_ms
-- Returns: {'ok', locked_at_ms, expires_at_ms}, or {'lost', reason, token held} / {'corrupt'}.
local owner, token, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local current = decode(redis.call('GET', KEYS[1]))
local lost = lost_reason(current, owner, token, now)
if lost then return lost end
local locked_at = tonumber(current.locked_at_ms) or now
local expires = now + ttl
redis.call('SET', KEYS[1], encode_fence(owner, token, locked_at, expires), 'PX', ttl + grace)
return {'ok', locked_at, expires}
