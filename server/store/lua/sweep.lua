-- Remove from one room's presence roster the connections of nodes that are no longer alive (their
-- time in the room's followers set is up: the process died without saying goodbye).
--
-- KEYS: the room's roster (a hash "<node>/<connection>" -> role) and followers (a sorted set
--       node -> alive-until, in ms).
-- Returns a flat array field, role, ... of the entries removed: each is removed by one caller only,
-- so the caller that gets it back announces its presence.leave.
local presence, followers = KEYS[1], KEYS[2]
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local out, alive = {}, {}
local fields = redis.call('HGETALL', presence)
for f = 1, #fields, 2 do
  local node = string.match(fields[f], '^([^/]+)/') or ''
  if alive[node] == nil then
    local until_ms = redis.call('ZSCORE', followers, node)
    alive[node] = until_ms ~= false and tonumber(until_ms) >= now_ms
  end
  if not alive[node] then
    redis.call('HDEL', presence, fields[f])
    out[#out + 1] = fields[f]
    out[#out + 1] = fields[f + 1]
  end
end
return out
