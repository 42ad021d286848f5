-- Live leases (expired ones are dropped first); needs now_ms in front.
-- KEYS: lease set
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
