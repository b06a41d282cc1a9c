-- A node follows one room, alive in it for ttl_ms more milliseconds (of Redis's clock): a heartbeat
-- calls this again for every room the node follows.
--
-- KEYS: the room's followers (a sorted set node -> alive-until, in ms).
-- ARGV: the node's id, ttl_ms.
-- Returns 1 when the node was not following the room (new, expired after a stall, or forgotten).
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
if until_ms and tonumber(until_ms) >= now_ms then return 0 end
return 1
