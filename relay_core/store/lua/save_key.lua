-- Write a team key record; move its lookup to a new secret hash in the same step.
-- KEYS: key records, key hashes  ARGV: id, json, old hash ('' to keep), new hash
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[4] then
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
end
return 1
