-- Append one batch of entries to the rooms' streams, atomically, in order.
--
-- KEYS: the distinct stream keys of the batch (chat:session:<room>).
-- ARGV: maxlen (0 = no trimming), ttl_s (0 = no expiry), this node's id, a fresh random epoch (for
--       streams this batch creates), then for each entry five values: the index of its key in
--       KEYS, its participant, its body, its dedupe key (chat:cid:<room>:<participant>:<cid>, or ""
--       when the entry has no cid) and how long the dedupe key is kept, in seconds.
-- Returns an array: for each key, the id of the newest entry it held before this batch ("0-0" when it
-- held none); then, for each entry, its new id, or {original id, original body} when its dedupe key
-- names an entry stored within the window (nothing is appended), or an error reply when it failed.
-- A stream that held nothing before this batch gets a new epoch (chat:epoch:<room>), which expires with it.
-- Tells every other live node that follows a room (chat:room-nodes:<room>) what was appended, by
-- publishing "<room> <newest id>" on its channel chat:node:<node>; forgets nodes that are not alive.
local maxlen, ttl, self, epoch = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local out, newest, n = {}, {}, #KEYS
for i, key in ipairs(KEYS) do
  local last = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  out[i] = (type(last) == 'table' and last[1] and last[1][1]) or '0-0'
end
for j = 5, #ARGV, 5 do
  local k, dedupe, window = tonumber(ARGV[j]), ARGV[j + 3], ARGV[j + 4]
  local prior = dedupe ~= '' and redis.call('GET', dedupe)
  local id
  if prior then
    local original = redis.call('XRANGE', KEYS[k], prior, prior)
    local body = ARGV[j + 2]
    if original[1] then
      for f = 1, #original[1][2], 2 do
        if original[1][2][f] == 'body' then body = original[1][2][f + 1] end
      end
    end
    id = {prior, body}
  else
    if maxlen > 0 then
      id = redis.pcall('XADD', KEYS[k], 'MAXLEN', '~', maxlen, '*', 'participant', ARGV[j + 1], 'body', ARGV[j + 2])
    else
      id = redis.pcall('XADD', KEYS[k], '*', 'participant', ARGV[j + 1], 'body', ARGV[j + 2])
    end
    if type(id) == 'string' then
      newest[k] = id
      if dedupe ~= '' then redis.call('SET', dedupe, id, 'EX', window) end
    end
  end
  n = n + 1
  out[n] = id
end
for i, key in ipairs(KEYS) do
  if newest[i] then
    local room = string.sub(key, 14)
    local epoch_key = 'chat:epoch:' .. room
    if out[i] == '0-0' then
      redis.call('SET', epoch_key, epoch)
    else
      redis.call('SET', epoch_key, epoch, 'NX')
    end
    if ttl > 0 then
      redis.call('EXPIRE', key, ttl)
      redis.call('EXPIRE', epoch_key, ttl)
    end
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
