-- Every key of the prefix, read in one atomic step: key, PTTL (-1: none), DUMP for each.
-- KEYS: the meta key, declared so a cluster runs this on the node of the prefix's slot, where every
-- key of the prefix lives (one hash tag). ARGV: the MATCH pattern of the prefix's keys.
-- SCAN may repeat a key; the seen-set keeps each once. A key expiring meanwhile has no DUMP: skipped.
local out, seen, cursor = {}, {}, '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if not seen[key] then
      seen[key] = true
      local dump = redis.call('DUMP', key)
      if dump then
        out[#out + 1] = key
        out[#out + 1] = redis.call('PTTL', key)
        out[#out + 1] = dump
      end
    end
  end
until cursor == '0'
return out
