-- Reserve a request's estimated cost against a key's budgets (relay_core/budget.py says why).
-- KEYS: the key's reservations (ZSET of "token|nanousd" scored by expiry ms), then one spend counter per budget
-- ARGV: member "token|nanousd", ttl ms, then the budget (nanousd) of each spend counter, in KEYS order
-- Returns {0} when reserved, else {i, spent, reserved}: the i-th budget is used up by spend and reservations.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local reserved = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  reserved = reserved + tonumber(string.match(member, '|(%d+)$'))
end
for i = 2, #KEYS do
  local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
  if spent + reserved >= tonumber(ARGV[i + 1]) then return {i - 1, tostring(spent), tostring(reserved)} end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {0}
