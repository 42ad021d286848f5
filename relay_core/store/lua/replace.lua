-- Compare-and-set of one record.
-- KEYS: hash  ARGV: field, the value it was read with, new value
-- Returns 1 when written, 0 when the record changed since it was read.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
