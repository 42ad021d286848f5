-- Release an account's rate lock. Only the owner releases; the lock becomes a gap marker that expires
-- after the minimum gap, and waiters in every relay process are told.
-- KEYS: lock  ARGV: token, gap ms, channel, account id
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], 'gap', 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
