-- Append a batch of entries to one room's stream, atomically and in order.
--
-- KEYS: the room's stream, its epoch, its followers (a sorted set node -> alive-until, in ms), then
--       the dedupe keys of the entries that have a cid.
-- ARGV: maxlen (0 = no trimming), ttl_s (0 = no expiry), this node's id, a fresh random epoch (for a
--       stream this batch creates), the prefix of the nodes' channels, their suffix ("" on a single
--       Redis; on a Redis Cluster the room's hash tag: shard channels, in the room's slot, reached
--       with SPUBLISH), the room, "1" when the caller waits for replicas (WAIT) before announcing the
--       batch itself (announce.lua) or "0", then for each entry
--       six values: its participant, its body, the index in KEYS of its dedupe key (0: no cid), how
--       long the dedupe key is kept, in seconds, the index in KEYS of its fence (a generation's lock,
--       0: none; the room's partial text of the generation, its hash and its text, follow it in KEYS)
--       and the value the lock
--       must hold ("<token> <rid>").
-- Returns an array: the id of the newest entry the stream held before this batch ("0-0" when none),
-- then, for each entry, its new id, or {original id, original body} when its dedupe key names an
-- entry stored within the window in this epoch of the stream (nothing is appended), or an error reply
-- when it failed: "FENCED ..." for a fenced entry whose lock does not hold its value (nothing is
-- appended). A fenced entry that is appended deletes its lock in the same step (a generation's answer
-- is its last write).
-- A stream that held nothing before this batch gets the new epoch, which expires with it; the batch
-- appends in that epoch. A dedupe key holds "<epoch> <id>": a cid remembered from another epoch (the
-- stream was deleted, expired or lost since) is forgotten, and the entry is appended anew. A value
-- without an epoch (written before epochs were kept there) counts while the stream still holds its id.
-- Tells every other follower what was appended, by publishing "<room> <newest id>" on its channel
-- (a follower whose time is up, a process that died, hears nothing: its followers' heartbeats
-- remove it, see follow.lua); unless the caller waits for replicas: then it announces the batch once
-- replicated, and a resend (a duplicate) rewrites its dedupe key as it is, so that the caller's WAIT,
-- which counts the writes of its own connection, covers the original as well.
local stream, epoch_key, followers = KEYS[1], KEYS[2], KEYS[3]
local maxlen, ttl, self, fresh = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local prefix, suffix, room, waits = ARGV[5], ARGV[6], ARGV[7], ARGV[8] == '1'
local last = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local before = (type(last) == 'table' and last[1] and last[1][1]) or '0-0'
local epoch = before ~= '0-0' and redis.call('GET', epoch_key)
local created = not epoch
if created then epoch = fresh end
local out, newest = {before}, false
for j = 9, #ARGV, 6 do
  local d, f = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 4])
  local dedupe = d > 0 and KEYS[d]
  local fence = f > 0 and KEYS[f]
  local prior = dedupe and redis.call('GET', dedupe)
  local id
  if prior then
    local prior_epoch, prior_id = string.match(prior, '^(%S+) (%S+)$')
    if not prior_epoch then prior_id = prior end
    if not prior_epoch or prior_epoch == epoch then
      local original = redis.call('XRANGE', stream, prior_id, prior_id)
      if prior_epoch or original[1] then
        local body = ARGV[j + 1]  -- the original's, unless it was trimmed away
        if original[1] then
          for f = 1, #original[1][2], 2 do
            if original[1][2][f] == 'body' then body = original[1][2][f + 1] end
          end
        end
        id = {prior_id, body}
        if waits then redis.call('SET', dedupe, prior, 'KEEPTTL') end
      end
    end
  end
  if not id and fence and redis.call('GET', fence) ~= ARGV[j + 5] then
    id = redis.error_reply('FENCED the generation no longer holds its room')
  end
  if not id then
    if maxlen > 0 then
      id = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'participant', ARGV[j], 'body', ARGV[j + 1])
    else
      id = redis.pcall('XADD', stream, '*', 'participant', ARGV[j], 'body', ARGV[j + 1])
    end
    if type(id) == 'string' then
      newest = id
      if dedupe then redis.call('SET', dedupe, epoch .. ' ' .. id, 'EX', ARGV[j + 3]) end
      if fence then
        redis.call('DEL', fence)
        if redis.call('HGET', KEYS[f + 1], 'value') == ARGV[j + 5] then redis.call('DEL', KEYS[f + 1], KEYS[f + 2]) end
      end
    end
  end
  out[#out + 1] = id
end
if newest then
  if created then redis.call('SET', epoch_key, epoch) end
  if ttl > 0 then
    redis.call('EXPIRE', stream, ttl)
    redis.call('EXPIRE', epoch_key, ttl)
  end
end
if newest and not waits then
  for _, node in ipairs(redis.call('ZRANGE', followers, 0, -1)) do
    if node == self then
    elseif suffix == '' then redis.call('PUBLISH', prefix .. node, room .. ' ' .. newest)
    else redis.call('SPUBLISH', prefix .. node .. suffix, room .. ' ' .. newest) end
  end
end
return out
