-- Send frames that are not stored (presence, generation deltas) to the other followers of one room
-- (as append.lua does): publishes "<room> <after id> <frame>" on each one's channel. A node delivers such a frame
-- once it has delivered the room's entries up to <after id>.
--
-- KEYS: the room's followers (a sorted set node -> alive-until, in ms).
-- ARGV: the sending node's id ("" for a process that follows no room), the prefix of the nodes'
--       channels, their suffix ("" on a single Redis, else the room's hash tag: shard channels, see
--       append.lua), the room, then its messages "<after id> <frame>", in order.
-- Returns the number of nodes reached.
local self, prefix, suffix, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local reached = 0
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if node ~= self then
    for m = 5, #ARGV do
      if suffix == '' then redis.call('PUBLISH', prefix .. node, room .. ' ' .. ARGV[m])
      else redis.call('SPUBLISH', prefix .. node .. suffix, room .. ' ' .. ARGV[m]) end
    end
    reached = reached + 1
  end
end
return reached
