-- fence_floor: raise the fencing counter to at least a floor.
-- KEYS: [1] fence:counter
-- ARGV: [1] floor
-- Returns: the counter's value afterwards (integer).
local floor = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if current < floor then
  redis.call('SET', KEYS[1], int(floor))
  return floor
end
return current
