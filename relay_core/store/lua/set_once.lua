-- Set a field once; return the value it holds.
-- KEYS: hash  ARGV: field, value
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
