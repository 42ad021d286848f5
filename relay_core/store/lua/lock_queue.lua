-- The waiters of one account's rate lock, taking turns between team keys (relay_core/user_queue.py says why).
-- KEYS: lock, waiters, turns, members, seen
--   waiters: ZSET, every score 0, members "key id \0 arrival ms \0 token": lexical order is per key, then arrival
--   turns:   LIST of the key ids that have waiters, in the order they take their next turn
--   members: HASH token -> its waiters member
--   seen:    ZSET token -> when it last asked (server ms)
local function first_of(key_id)
  return redis.call('ZRANGEBYLEX', KEYS[2], '[' .. key_id .. '\0', '(' .. key_id .. '\1', 'LIMIT', 0, 1)[1]
end

-- Drop a waiter; its key leaves the rotation when this was its last waiter.
local function forget(token)
  local member = redis.call('HGET', KEYS[4], token)
  redis.call('ZREM', KEYS[5], token)
  if not member then return end
  redis.call('HDEL', KEYS[4], token)
  redis.call('ZREM', KEYS[2], member)
  local key_id = string.sub(member, 1, string.find(member, '\0', 1, true) - 1)
  if not first_of(key_id) then redis.call('LREM', KEYS[3], 0, key_id) end
end
