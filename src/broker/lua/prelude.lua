-- Shared helpers, prepended to every script by scripts.rs (Redis Lua has no `require`).
-- KEYS: none / ARGV: none / Returns: nothing; defines local functions only.
--
-- Lock values carry their dates twice: RFC 3339 strings in the seed's fields (`locked_at`,
-- `expires_at`, what operators and the Rust side read) and integer milliseconds (`*_ms`, what
-- scripts compare). Integers are formatted by hand: cjson prints only 14 significant digits.

local function int(n)
  return string.format('%d', n)
end

-- Epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (days-to-civil, H. Hinnant).
local function iso(ms)
  local secs = math.floor(ms / 1000)
  local milli = ms - secs * 1000
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60, milli)
end

-- The value of `lock:task:{id}` (a lease).
local function encode_lease(task_id, agent_id, token, locked_at, expires_at)
  return '{"task_id":' .. cjson.encode(task_id) .. ',"agent_id":' .. cjson.encode(agent_id)
    .. ',"token":' .. int(token)
    .. ',"locked_at":"' .. iso(locked_at) .. '","expires_at":"' .. iso(expires_at) .. '"'
    .. ',"locked_at_ms":' .. int(locked_at) .. ',"expires_at_ms":' .. int(expires_at) .. '}'
end

-- The value of a coordination lock (`lock:pipeline:…`, `lock:task:…` taken as a lock).
local function encode_fence(owner, token, locked_at, expires_at)
  return '{"owner":' .. cjson.encode(owner) .. ',"token":' .. int(token)
    .. ',"locked_at":"' .. iso(locked_at) .. '","expires_at":"' .. iso(expires_at) .. '"'
    .. ',"locked_at_ms":' .. int(locked_at) .. ',"expires_at_ms":' .. int(expires_at) .. '}'
end

-- A lock value: nil when absent, false when it is not a JSON object.
local function decode(raw)
  if not raw then return nil end
  local ok, v = pcall(cjson.decode, raw)
  if not ok or type(v) ~= 'table' then return false end
  return v
end

-- Leases name an agent_id, coordination locks an owner.
local function holder(v)
  return v.agent_id or v.owner or ''
end

local function token_of(v)
  return tonumber(v.token) or 0
end

local function expiry_of(v)
  return tonumber(v.expires_at_ms) or 0
end

-- nil when `v` is the live lock of (`owner`, `token`) at `now`, else the reply saying why not:
-- {'lost', reason, token held}. A newer token wins over every other reason.
local function lost_reason(v, owner, token, now)
  if v == nil then return {'lost', 'none', 0} end
  if v == false then return {'corrupt'} end
  local held = token_of(v)
  if held > token then return {'lost', 'superseded', held} end
  if holder(v) ~= owner then return {'lost', 'owner', held} end
  if held ~= token then return {'lost', 'none', held} end
  if expiry_of(v) <= now then return {'lost', 'expired', held} end
  return nil
end

-- Drops a task's lease: its lock (`lock_key`), its running and expiry entries, and the
-- assigned-set entries of its holder and of `agent` (may be ''). Returns 1 when a lease value
-- existed. Callers have checked that no newer lease would be dropped.
local function drop_lease(prefix, task_id, current, lock_key, running_key, expiry_key, agent)
  local dropped = 0
  if current ~= nil then
    if current then
      redis.call('SREM', prefix .. 'tasks:assigned:' .. holder(current), task_id)
    end
    redis.call('DEL', lock_key)
    dropped = 1
  end
  if agent ~= '' then
    redis.call('SREM', prefix .. 'tasks:assigned:' .. agent, task_id)
  end
  redis.call('SREM', running_key, task_id)
  redis.call('ZREM', expiry_key, task_id)
  return dropped
end

-- When a newer lease than `token` exists: keeps it, and takes the task out of the assigned
-- set of `agent` (a stale holder) unless that agent holds the newer lease too. Returns the
-- newer token, or nil when there is none.
local function newer_lease(prefix, task_id, current, token, agent)
  if current and token_of(current) > token then
    if agent ~= '' and agent ~= holder(current) then
      redis.call('SREM', prefix .. 'tasks:assigned:' .. agent, task_id)
    end
    return token_of(current)
  end
  return nil
end

-- Whether string `a` sorts before `b` byte by byte, as sorted-set members do (Lua's `<` follows
-- the server's collation locale).
local function bytes_before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
