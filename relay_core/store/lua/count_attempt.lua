-- Count one attempt in a fixed window.
-- KEYS: counter
-- ARGV: window seconds (the counter's TTL, set by its first attempt)
-- Returns the attempts counted in the window, this one included.
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return count
