-- lock_release: release a held lock; owner and token checked, so a stale owner cannot free a
-- lock someone else took after it lapsed.
-- KEYS: [1] the lock key
-- ARGV: [1] owner, [2] token, [3] now_ms
-- Returns: {'ok'}, or {'lost', reason, token held} / {'corrupt'}.
local lost = lost_reason(decode(redis.call('GET', KEYS[1])), ARGV[1], tonumber(ARGV[2]),
  tonumber(ARGV[3]))
if lost then return lost end
redis.call('DEL', KEYS[1])
return {'ok'}
