-- Append one batch of entries to the rooms' streams, atomically, in order.
--
-- KEYS: the distinct stream keys of the batch (chat:session:<room>).
-- ARGV: maxlen (0 = no trimming), ttl_s (0 = no expiry), this node's id, then for each entry three
--       values: the index of its key in KEYS, its participant, its body.
-- Returns an array: for each key, the id of the newest entry it held before this batch ("0-0" when it
-- held none); then, for each entry, its new id (or an error reply when that append failed).
-- Tells every other live node that follows a room (chat:room-nodes:<room>) what was appended, by
-- publishing "<room> <newest id>" on its channel chat:node:<node>; forgets nodes that are not alive.
local maxlen, ttl, self = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out, newest, n = {}, {}, #KEYS
for i, key in ipairs(KEYS) do
  local last = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  out[i] = (type(last) == 'table' and last[1] and last[1][1]) or '0-0'
end
for j = 4, #ARGV, 3 do
  local k = tonumber(ARGV[j])
  local id
  if maxlen > 0 then
    id = redis.pcall('XADD', KEYS[k], 'MAXLEN', '~', maxlen, '*', 'participant', ARGV[j + 1], 'body', ARGV[j + 2])
  else
    id = redis.pcall('XADD', KEYS[k], '*', 'participant', ARGV[j + 1], 'body', ARGV[j + 2])
  end
  n = n + 1
  out[n] = id
  if type(id) == 'string' then newest[k] = id end
end
for i, key in ipairs(KEYS) do
  if newest[i] then
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    local room = string.sub(key, 14)
    local nodes_key = 'chat:room-nodes:' .. room
    for _, node in ipairs(redis.call('SMEMBERS', nodes_key)) do
      if node ~= self then
        if redis.call('EXISTS', 'chat:node:' .. node .. ':alive') == 1 then
          redis.call('PUBLISH', 'chat:node:' .. node, room .. ' ' .. newest[i])
        else
          redis.call('SREM', nodes_key, node)
        end
      end
    end
  end
end
return out
