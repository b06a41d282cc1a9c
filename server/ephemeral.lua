-- Send frames that are not stored (presence, generation deltas) to the other live nodes that
-- follow a room: publishes "<room> <after id> <frame>" on each node's channel chat:node:<node>.
-- A node delivers such a frame once it has delivered the room's entries up to <after id>.
--
-- KEYS: the room's node set (chat:room-nodes:<room>).
-- ARGV: the room, the sending node's id ("" for a process that follows no room), then one or more
--       messages "<after id> <frame>".
-- Returns the number of nodes reached.
local room, self, reached = ARGV[1], ARGV[2], 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= self and redis.call('EXISTS', 'chat:node:' .. node .. ':alive') == 1 then
    for j = 3, #ARGV do
      redis.call('PUBLISH', 'chat:node:' .. node, room .. ' ' .. ARGV[j])
    end
    reached = reached + 1
  end
end
return reached
