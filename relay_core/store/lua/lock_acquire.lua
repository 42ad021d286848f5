-- Try to take the rate lock of one account; needs now_ms and lock_queue in front.
-- KEYS: lock, waiters, turns, members, seen  ARGV: token, lock ttl ms, forget waiters unseen for ms, team key id
-- The lock goes to the oldest waiter of the key at the head of `turns`; that key then moves to the back
-- (if it has more waiters), and a key that had none joins at the back: round-robin between keys.
-- Returns {1, 0} when the lock was taken, else {0, ms until the holder's (or the gap's) TTL ends, -1 without one}.
local token, forget_ms = ARGV[1], tonumber(ARGV[3])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - forget_ms, 'LIMIT', 0, 100)) do
  forget(gone)
end
if not redis.call('HGET', KEYS[4], token) then
  local key_id = ARGV[4]
  if not first_of(key_id) then redis.call('RPUSH', KEYS[3], key_id) end
  local member = key_id .. '\0' .. string.format('%015d', now) .. '\0' .. token
  redis.call('ZADD', KEYS[2], 0, member)
  redis.call('HSET', KEYS[4], token, member)
end
redis.call('ZADD', KEYS[5], now, token)
for i = 2, 5 do redis.call('PEXPIRE', KEYS[i], forget_ms) end
local head_key = redis.call('LINDEX', KEYS[3], 0)
while head_key and not first_of(head_key) do  -- never happens; a stray key must not block the rest
  redis.call('LPOP', KEYS[3])
  head_key = redis.call('LINDEX', KEYS[3], 0)
end
local mine = redis.call('HGET', KEYS[4], token)
if head_key and first_of(head_key) == mine and redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[2]) then
  forget(token)  -- the key leaves the rotation if this was its last waiter; else it goes to the back
  if first_of(head_key) then redis.call('RPUSH', KEYS[3], redis.call('LPOP', KEYS[3])) end
  return {1, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
