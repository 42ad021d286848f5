-- Everything one finished response changes, in one call.
-- KEYS, each part present only when its count says so: the usage journal, the usage buckets (the team's,
-- the key's own), the key's counters (spend per period, tokens per window), the sticky binding, the key's
-- budget reservations, the account's health.
-- ARGV: the journal entry to remove ('': none), whether to write nothing unless it was there (1/0);
-- bucket count B, then per bucket its field count U, ttl s and U field/value pairs; counter count C,
-- C amount/ttl s (0: none) pairs; sticky ttl s (0: none), sticky account; the reservation to settle
-- ('': none); then, when a health key is given: status, cool family, cool until, state, reason, count
-- failure (0/1), failure streak, failure cooldown s, and the rate-limit snapshot as field/value pairs.
-- Returns {0} when `only once` found the journal entry gone (nothing written), else {1, then each counter's
-- new value in order} (the key's spend per budget period: what budget alerts compare with the budget).
local k, a = 1, 3
local counted = {1}
if ARGV[1] ~= '' then
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 and ARGV[2] == '1' then return {0} end
  k = 2
end
local buckets = tonumber(ARGV[a])
a = a + 1
for _ = 1, buckets do
  local fields = tonumber(ARGV[a])
  for i = a + 2, a + 2 * fields, 2 do redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[k], ARGV[a + 1])
  k = k + 1
  a = a + 2 + 2 * fields
end
local counters = tonumber(ARGV[a])
for i = 1, counters do
  local at = a + 2 * i - 1
  counted[i + 1] = redis.call('INCRBY', KEYS[k], ARGV[at])
  if tonumber(ARGV[at + 1]) > 0 then redis.call('EXPIRE', KEYS[k], ARGV[at + 1]) end
  k = k + 1
end
a = a + 1 + 2 * counters
if tonumber(ARGV[a]) > 0 then
  redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', ARGV[a])
  k = k + 1
end
a = a + 2
if ARGV[a] ~= '' then
  redis.call('ZREM', KEYS[k], ARGV[a])
  k = k + 1
end
a = a + 1
if k > #KEYS then return counted end
local h = KEYS[k]
local status, family, cool_until, state, reason = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
redis.call('HSET', h, 'last_status', status)
if reason ~= '' then redis.call('HSET', h, 'reason', reason) end
if family ~= '' then
  local field = 'cool:' .. family
  if tonumber(cool_until) > tonumber(redis.call('HGET', h, field) or '0') then
    redis.call('HSET', h, field, cool_until)
  end
end
if state ~= '' then redis.call('HSET', h, 'state', state) end
if ARGV[a + 5] == '1' then
  if redis.call('HINCRBY', h, 'fail_streak', 1) >= tonumber(ARGV[a + 6]) then
    local t = redis.call('TIME')
    redis.call('HSET', h, 'cool:all', tonumber(t[1]) + tonumber(ARGV[a + 7]), 'fail_streak', 0)
  end
elseif tonumber(status) < 400 then
  redis.call('HSET', h, 'fail_streak', 0)
end
for i = a + 8, #ARGV, 2 do redis.call('HSET', h, ARGV[i], ARGV[i + 1]) end
return counted
