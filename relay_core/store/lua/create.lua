-- Create a record unless its name is taken.
-- KEYS: names (HASH name -> id), records (HASH id -> json)[, hashes (HASH secret hash -> id)]
-- ARGV: name, id, json[, hash]
-- Returns 1 when created, 0 when the name was taken (nothing written).
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if KEYS[3] then redis.call('HSET', KEYS[3], ARGV[4], ARGV[2]) end
return 1
