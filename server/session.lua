-- A connection enters a room: record it in the room's presence roster and read what its
-- session.ready needs, atomically.
--
-- KEYS: the room's stream (chat:session:<room>), epoch (chat:epoch:<room>) and roster
--       (chat:presence:<room>, a hash "<node>/<connection>" -> role).
-- ARGV: the connection's roster field ("" to only read), its role, the roster's ttl_s (0 = none), and
--       the most connections the room may hold (0 = no limit).
-- Returns {epoch or nil, first retained id or nil, entries removed (trimmed or deleted) or nil, roster,
-- full} (full = 1 when the room already held the most connections: the connection was not added),
-- the removed count being what XINFO reports as entries-added minus length, and roster being a
-- flat array field, role, ... of the connections on live nodes; entries of nodes that are no longer
-- alive (chat:node:<node>:alive expired: the process died) are removed on the way.
local field, role, ttl, most = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local epoch = redis.call('GET', KEYS[2])
local first, removed = false, false
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info, added, length = redis.call('XINFO', 'STREAM', KEYS[1]), false, false
  for i = 1, #info, 2 do
    if info[i] == 'first-entry' and type(info[i + 1]) == 'table' then first = info[i + 1][1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
  if added and length then removed = added - length end
end
local roster, alive = {}, {}
local fields = redis.call('HGETALL', KEYS[3])
for i = 1, #fields, 2 do
  local node = string.match(fields[i], '^([^/]+)/') or ''
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', 'chat:node:' .. node .. ':alive') == 1
  end
  if alive[node] then
    roster[#roster + 1] = fields[i]
    roster[#roster + 1] = fields[i + 1]
  else
    redis.call('HDEL', KEYS[3], fields[i])
  end
end
local full = 0
if field ~= '' then
  if most > 0 and #roster / 2 >= most then
    full = 1
  else
    redis.call('HSET', KEYS[3], field, role)
    if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
    roster[#roster + 1] = field
    roster[#roster + 1] = role
  end
end
return {epoch, first, removed, roster, full}
