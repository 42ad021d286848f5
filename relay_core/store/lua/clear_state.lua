-- Set an account's health state back to ok, but only from one of the given states.
-- KEYS: account health  ARGV: states that may be cleared
local state = redis.call('HGET', KEYS[1], 'state')
for _, clearable in ipairs(ARGV) do
  if state == clearable then redis.call('HSET', KEYS[1], 'state', 'ok', 'reason', '') return 1 end
end
return 0
