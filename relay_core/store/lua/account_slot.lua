-- Take a slot on a capped account, or nothing; needs now_ms in front.
-- KEYS: the account's leases (token -> expiry ms), its requests of the last 60 s (token -> sent at ms)
-- ARGV: token, lease ttl ms, max concurrency (0: none), rpm (0: none)
-- The RPM window slides: a request counts for exactly 60 s after it was sent, so no window edge lets
-- twice the cap through. It holds at most `rpm` members, since a request over the cap adds none.
-- Returns {1} when taken (a lease when capped for concurrency, a request counted when capped per
-- minute), else {0, cap, retry ms}: cap is 'concurrency' or 'rpm'; a refusal changes nothing.
local token, ttl = ARGV[1], tonumber(ARGV[2])
local concurrency, rpm = tonumber(ARGV[3]), tonumber(ARGV[4])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= concurrency then
    return {0, 'concurrency', 1000}
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, 'rpm', math.max(1, tonumber(oldest[2]) + 60000 - now)}
  end
  redis.call('ZADD', KEYS[2], now, token)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, token)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {1}
