-- One relay process's journal beat (relay_core/journal.py says why), which also keeps its record fresh
-- (relay_core/presence.py).
-- KEYS: live instances (ZSET instance -> last beat ms), journal (HASH "instance|request id" -> entry json),
--       relay records (HASH instance -> record json)
-- ARGV: this instance, dead after ms, this instance's record ('' to leave it), then field/value pairs to journal
-- Returns the field/value pairs of entries whose instance has not beaten within `dead after`.
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[3]) end
for _, instance in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not redis.call('ZSCORE', KEYS[1], instance) then redis.call('HDEL', KEYS[3], instance) end
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local orphans = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  local instance = string.match(field, '^([^|]*)|')
  if not instance or not redis.call('ZSCORE', KEYS[1], instance) then
    orphans[#orphans + 1] = field
    orphans[#orphans + 1] = redis.call('HGET', KEYS[2], field)
  end
end
return orphans
