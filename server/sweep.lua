-- Remove from the rooms' presence rosters the connections of nodes that are no longer alive
-- (chat:node:<node>:alive expired: the process died without saying goodbye).
--
-- KEYS: the rosters (chat:presence:<room>). ARGV: the rooms, in the order of KEYS.
-- Returns a flat array room, field, role, ... of the entries removed: each is removed by one
-- caller only, so the caller that gets it back announces its presence.leave.
local out, alive = {}, {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  for f = 1, #fields, 2 do
    local node = string.match(fields[f], '^([^/]+)/') or ''
    if alive[node] == nil then
      alive[node] = redis.call('EXISTS', 'chat:node:' .. node .. ':alive') == 1
    end
    if not alive[node] then
      redis.call('HDEL', key, fields[f])
      out[#out + 1] = ARGV[i]
      out[#out + 1] = fields[f]
      out[#out + 1] = fields[f + 1]
    end
  end
end
return out
