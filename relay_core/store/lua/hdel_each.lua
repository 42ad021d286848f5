-- Delete one field per hash: a record and its lookups go together.
-- KEYS: hashes  ARGV: one field per hash
for i, h in ipairs(KEYS) do redis.call('HDEL', h, ARGV[i]) end
return 1
