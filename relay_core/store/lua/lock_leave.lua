-- A waiter gives up (timed out, cancelled); needs lock_queue in front.
-- KEYS: lock, waiters, turns, members, seen  ARGV: token
forget(ARGV[1])
return 1
