-- Move the schema version from ARGV[2] to ARGV[3] unless another process moved it first; return the version.
-- KEYS: meta  ARGV: field, expected version ('0': none yet), new version
local found = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if found ~= ARGV[2] then return found end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return ARGV[3]
