-- A connection enters a room: record it in the room's presence roster and read what its
-- session.ready needs, atomically.
--
-- KEYS: the room's stream, epoch ("<epoch> <newest id>", or a bare "<epoch>"), roster (a hash
--       "<node>/<connection>" -> role) and followers (a sorted set node -> alive-until, in ms), the
--       bot's lock and partial text (hash, text: see jobs.lua) and its waiting questions (see jobs.lua).
-- ARGV: the connection's roster field ("" to only read), its role, the roster's ttl_s (0 = none),
--       the most connections the room may hold (0 = no limit), and a resume cursor ("<ms>-<seq>", or ""
--       for none).
-- Returns {epoch or nil, first retained id or nil, entries removed (trimmed or deleted) or nil, roster,
-- full, newest retained id or nil, cursor kept or nil} (cursor kept = 1 when the stream still holds the
-- cursor's own entry, 0 when not: lost with Redis, or trimmed; nil without a cursor or a stream; full = 1
-- when the room already held the most connections: the connection was not added), the removed count
-- being what XINFO reports as entries-added minus length, the newest id being XINFO's last-entry (not
-- last-generated-id: a resume cursor newer than the newest entry names entries the stream no longer
-- holds), and roster being a flat array field, role, ... of the connections on live nodes; entries of
-- nodes that are no longer alive (their time in the followers set is up: the process died) are removed
-- on the way. Then the running generation, when the lock holds the value the partial text was written
-- under: {rid, reply_to, attempt, seq, text or false (past its cap)}, else false. Then the waiting
-- questions, oldest first, whose deadline has not passed: a flat array rid, reply_to, ...
local stream, epoch_key, presence, followers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local field, role, ttl, most, cursor = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] or ''
local epoch = redis.call('GET', epoch_key)
if epoch then epoch = string.match(epoch, '^%S+') end  -- (it holds "<epoch> <newest id>": append.lua)
local first, removed, newest, kept = false, false, false, false
if redis.call('EXISTS', stream) == 1 then
  local info, added, length = redis.call('XINFO', 'STREAM', stream), false, false
  for i = 1, #info, 2 do
    if info[i] == 'first-entry' and type(info[i + 1]) == 'table' then first = info[i + 1][1] end
    if info[i] == 'last-entry' and type(info[i + 1]) == 'table' then newest = info[i + 1][1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
  if added and length then removed = added - length end
  if cursor ~= '' then
    kept = #redis.call('XRANGE', stream, cursor, cursor, 'COUNT', 1) == 1 and 1 or 0
  end
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local roster, alive = {}, {}
local fields = redis.call('HGETALL', presence)
for i = 1, #fields, 2 do
  local node = string.match(fields[i], '^([^/]+)/') or ''
  if alive[node] == nil then
    local until_ms = redis.call('ZSCORE', followers, node)
    alive[node] = until_ms ~= false and tonumber(until_ms) >= now_ms
  end
  if alive[node] then
    roster[#roster + 1] = fields[i]
    roster[#roster + 1] = fields[i + 1]
  else
    redis.call('HDEL', presence, fields[i])
  end
end
local full = 0
if field ~= '' then
  if most > 0 and #roster / 2 >= most then
    full = 1
  else
    redis.call('HSET', presence, field, role)
    if ttl > 0 then redis.call('EXPIRE', presence, ttl) end
    roster[#roster + 1] = field
    roster[#roster + 1] = role
  end
end
local running = false
local lock = redis.call('GET', KEYS[5])
if lock then
  local partial = redis.call('HMGET', KEYS[6], 'value', 'reply_to', 'attempt', 'seq', 'over')
  if partial[1] == lock then
    local text = false
    if not partial[5] then text = redis.call('GET', KEYS[7]) or '' end
    running = {string.match(lock, '^%d+ (.*)$'), partial[2], partial[3], partial[4], text}
  end
end
local waiting = {}
for _, entry in ipairs(redis.call('LRANGE', KEYS[8], 0, -1)) do
  local rid, reply_to, deadline = string.match(entry, '^(%S+) (%S+) .* (%d+)$')
  if rid and tonumber(deadline) >= now_ms then
    waiting[#waiting + 1] = rid
    waiting[#waiting + 1] = reply_to
  end
end
return {epoch, first, removed, roster, full, newest, kept, running, waiting}
