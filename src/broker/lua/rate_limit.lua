-- rate_limit: count one request in a fixed window.
-- KEYS: [1] rate_limit:{endpoint}:{actor}
-- ARGV: [1] now_ms, [2] limit, [3] window_ms
-- Returns: {allowed (1/0), count, window_end_ms}. Refused requests count too, so a client
--   hammering the limit stays refused until the window ends.
local now, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local current = decode(redis.call('GET', KEYS[1]))
local count, start, stop = 1, now, now + window
if current and (tonumber(current.window_end_ms) or 0) > now then
  count = (tonumber(current.count) or 0) + 1
  start = tonumber(current.window_start_ms) or now
  stop = tonumber(current.window_end_ms)
end
local value = '{"count":' .. int(count) .. ',"window_start":"' .. iso(start)
  .. '","window_end":"' .. iso(stop) .. '","window_start_ms":' .. int(start)
  .. ',"window_end_ms":' .. int(stop) .. '}'
redis.call('SET', KEYS[1], value, 'PX', math.max(stop - now, 1))
local allowed = 0
if count <= limit then allowed = 1 end
return {allowed, count, stop}
