-- Send frames that are not stored (presence, generation deltas) to the other followers of one room
-- (as append.lua does): publishes "<room> <after id> <frame>" on each one's channel. A node delivers such a frame
-- once it has delivered the room's entries up to <after id>.
--
-- KEYS: the room's followers (a sorted set node -> alive-until, in ms).
-- ARGV: the sending node's id ("" for a process that follows no room), the prefix of the nodes'
--       channels, the room, then its messages "<after id> <frame>", in order.
-- Returns the number of nodes reached.
local self, prefix, room = ARGV[1], ARGV[2], ARGV[3]
local reached = 0
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if node ~= self then
    for m = 4, #ARGV do
      redis.call('PUBLISH', prefix .. node, room .. ' ' .. ARGV[m])
    end
    reached = reached + 1
  end
end
return reached
