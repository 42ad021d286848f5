-- Admit one request: the key and its limits, every account with its health, the key's lease and the
-- session's account, in one round trip; needs now_ms in front.
-- KEYS: key hashes, key records, account records
-- ARGV: key hash, lease token, lease ttl ms, session, day id, week id, month id, from Claude Code (1/0),
-- then the name prefixes of first use, window buckets, spend counters, key leases, account health, sticky
-- bindings, and the suffixes of a window bucket's request and token counters.
-- The key id is only known here (read from the key hashes), so the names derived from it cannot come in
-- KEYS without a second round trip per request: they come as prefixes from the store's one builder of
-- names (relay_core/store/names.py), and this script appends the parts, joined with ':'.
-- Returns false for an unknown key, else {key json, account jsons, lease, account healths, sticky account,
-- refusal} where lease is 0 (no concurrency limit), 1 (lease taken) or -1 (limit reached, nothing taken),
-- and refusal is false or the limit that refused the request: {'expired'}, {'client'}, {'window', seconds,
-- what, retry s} or {'budget', period, spent}. A refused request changes nothing.
local first_use_prefix, window_prefix, spend_prefix = ARGV[9], ARGV[10], ARGV[11]
local leases_prefix, health_prefix, sticky_prefix = ARGV[12], ARGV[13], ARGV[14]
local requests_suffix, tokens_suffix = ARGV[15], ARGV[16]
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local key = redis.call('HGET', KEYS[2], id)
if not key then return false end
local record = cjson.decode(key)
local limits = record['limits']
local now_s = math.floor(now / 1000)
local refusal = false
local counted = {}
if record['enabled'] and type(limits) == 'table' then
  if type(limits['expires_at']) == 'number' and now_s >= limits['expires_at'] then refusal = {'expired'} end
  if not refusal and limits['claude_code_only'] == true and ARGV[8] ~= '1' then refusal = {'client'} end
  if not refusal and type(limits['expires_after_days']) == 'number' then
    local first_use = first_use_prefix .. id
    redis.call('SET', first_use, now_s, 'NX')
    if now_s >= tonumber(redis.call('GET', first_use)) + limits['expires_after_days'] * 86400 then
      refusal = {'expired'}
    end
  end
  if not refusal and type(limits['windows']) == 'table' then
    for _, w in ipairs(limits['windows']) do
      local seconds = w['seconds']
      local bucket = window_prefix .. id .. ':' .. seconds .. ':' .. math.floor(now_s / seconds)
      local retry = seconds - (now_s % seconds)
      if type(w['requests']) == 'number' then
        if tonumber(redis.call('GET', bucket .. requests_suffix) or '0') >= w['requests'] then
          refusal = {'window', seconds, 'requests', retry}
          break
        end
        counted[#counted + 1] = {bucket .. requests_suffix, seconds}
      end
      if type(w['tokens']) == 'number' and tonumber(redis.call('GET', bucket .. tokens_suffix) or '0') >= w['tokens'] then
        refusal = {'window', seconds, 'tokens', retry}
        break
      end
    end
  end
  if not refusal and type(limits['budgets_nanousd']) == 'table' then
    local period_ids = {day = ARGV[5], week = ARGV[6], month = ARGV[7], total = 'all'}
    for period, budget in pairs(limits['budgets_nanousd']) do
      if period_ids[period] then
        local counter = spend_prefix .. id .. ':' .. period .. ':' .. period_ids[period]
        local spent = tonumber(redis.call('GET', counter) or '0')
        if spent >= budget then
          refusal = {'budget', period, tostring(spent)}
          break
        end
      end
    end
  end
end
if refusal then return {key, {}, 0, {}, false, refusal} end
for _, counter in ipairs(counted) do
  redis.call('INCR', counter[1])
  redis.call('EXPIRE', counter[1], counter[2] + 1)
end
local lease = 0
local limit = record['concurrency']
if record['enabled'] and type(limit) == 'number' then
  local leases = leases_prefix .. id
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if redis.call('ZCARD', leases) >= limit then
    lease = -1
  else
    redis.call('ZADD', leases, now + tonumber(ARGV[3]), ARGV[2])
    redis.call('PEXPIRE', leases, ARGV[3])
    lease = 1
  end
end
local accounts = redis.call('HVALS', KEYS[3])
local health = {}
for i, account in ipairs(accounts) do
  health[i] = redis.call('HGETALL', health_prefix .. cjson.decode(account)['id'])
end
local sticky = false
if ARGV[4] ~= '' then sticky = redis.call('GET', sticky_prefix .. id .. ':' .. ARGV[4]) end
return {key, accounts, lease, health, sticky, false}
