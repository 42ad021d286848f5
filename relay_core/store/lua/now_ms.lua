-- The server's clock in milliseconds, as `now`: one clock for every relay process.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
