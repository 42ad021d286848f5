-- Write a snapshot's keys under the prefix in one atomic step.
-- KEYS: the keys to write  ARGV: the prefix's MATCH pattern, mode, then PTTL (-1: none) and DUMP per key.
-- mode 'empty': write nothing unless the prefix holds no key; 'replace': delete every key of the prefix first.
-- Returns how many keys the prefix held before.
local held, cursor = {}, '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do held[key] = true end
until cursor == '0'
local count = 0
for _ in pairs(held) do count = count + 1 end
if count > 0 then
  if ARGV[2] ~= 'replace' then return count end
  for key in pairs(held) do redis.call('DEL', key) end
end
for i, key in ipairs(KEYS) do
  local pttl = tonumber(ARGV[1 + 2 * i])
  redis.call('RESTORE', key, pttl > 0 and pttl or 0, ARGV[2 + 2 * i])
end
return count
