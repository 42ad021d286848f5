-- Compare-and-delete, so a late owner never frees a successor's lock.
-- KEYS: lock  ARGV: owner token
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
