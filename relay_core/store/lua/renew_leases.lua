-- Push the expiry of live leases forward; needs now_ms in front.
-- KEYS: lease sets...  ARGV: ttl ms, then one token per key
for i, leases in ipairs(KEYS) do
  if redis.call('ZADD', leases, 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i + 1]) then
    redis.call('PEXPIRE', leases, ARGV[1])
  end
end
return 1
