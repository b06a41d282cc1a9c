-- Send frames that are not stored (presence, generation deltas) to the other live nodes that
-- follow their rooms: publishes "<room> <after id> <frame>" on each node's channel
-- chat:node:<node>. A node delivers such a frame once it has delivered the room's entries up to
-- <after id>.
--
-- KEYS: each room's node set (chat:room-nodes:<room>), one per room of the batch.
-- ARGV: the sending node's id ("" for a process that follows no room), then for each room, in the
--       order of KEYS: the room, the number of its messages, and its messages "<after id> <frame>".
-- Returns the number of (room, node) pairs reached.
local self, reached, j, alive = ARGV[1], 0, 2, {}
for _, nodes_key in ipairs(KEYS) do
  local room, count = ARGV[j], tonumber(ARGV[j + 1])
  local first = j + 2
  j = first + count
  for _, node in ipairs(redis.call('SMEMBERS', nodes_key)) do
    if node ~= self then
      if alive[node] == nil then
        alive[node] = redis.call('EXISTS', 'chat:node:' .. node .. ':alive') == 1
      end
      if alive[node] then
        for m = first, j - 1 do
          redis.call('PUBLISH', 'chat:node:' .. node, room .. ' ' .. ARGV[m])
        end
        reached = reached + 1
      end
    end
  end
end
return reached
