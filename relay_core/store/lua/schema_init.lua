-- The store's schema version; a fresh store (none of KEYS exists) is stamped with the current one.
-- A store with records but no version predates versions: it is schema 0, for the migrations to bring up.
-- KEYS: meta, then the records that make a store not fresh  ARGV: field, current version
local found = redis.call('HGET', KEYS[1], ARGV[1])
if found then return found end
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return '0' end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
