-- A node follows one room, alive in it for ttl_ms more milliseconds (of Redis's clock): a heartbeat
-- calls this again for every room the node follows. Followers whose time is up (their process died)
-- are removed on the way, and the set expires when nobody has renewed it for ttl_ms.
--
-- KEYS: the room's followers (a sorted set node -> alive-until, in ms).
-- ARGV: the node's id, ttl_ms.
-- Returns 1 when the node was not following the room (new, expired after a stall, or forgotten).
local followers, node, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ms = redis.call('ZSCORE', followers, node)
redis.call('ZREMRANGEBYSCORE', followers, '-inf', '(' .. now_ms)
redis.call('ZADD', followers, now_ms + ttl, node)
if redis.call('PTTL', followers) < ttl then redis.call('PEXPIRE', followers, ttl) end
if until_ms and tonumber(until_ms) >= now_ms then return 0 end
return 1
