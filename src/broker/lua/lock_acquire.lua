-- lock_acquire: take a coordination lock if it is free or lapsed.
-- KEYS: [1] the lock key, [2] fence:counter
-- ARGV: [1] owner, [2] now_ms, [3] ttl_ms, [4] grace_ms
-- Returns: {'ok', token, locked_at_ms, expires_at_ms}, or {'held', token held} when a live lock
--   exists (whoever holds it).
local owner, now = ARGV[1], tonumber(ARGV[2])
local ttl, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
local current = decode(redis.call('GET', KEYS[1]))
if current and expiry_of(current) > now then
  return {'held', token_of(current)}
end
local token = redis.call('INCR', KEYS[2])
local expires = now + ttl
redis.call('SET', KEYS[1], encode_fence(owner, token, now, expires), 'PX', ttl + grace)
return {'ok', token, now, expires}
