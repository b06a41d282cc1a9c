-- Tell every other follower of one room that it was appended to, once the appends are replicated
-- (REDIS_MIN_REPLICAS: append.lua then announces nothing itself).
--
-- KEYS: the room's followers (a sorted set node -> alive-until, in ms).
-- ARGV: this node's id, the prefix of the nodes' channels, their suffix ("" on a single Redis; on a Redis
--       Cluster the room's hash tag: shard channels, reached with SPUBLISH), the room, the newest id.
local self, prefix, suffix, room, newest = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if node == self then
  elseif suffix == '' then redis.call('PUBLISH', prefix .. node, room .. ' ' .. newest)
  else redis.call('SPUBLISH', prefix .. node .. suffix, room .. ' ' .. newest) end
end
return 0
