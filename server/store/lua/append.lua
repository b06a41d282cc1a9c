-- Append a batch of entries to one or more rooms' streams: each room's atomically and in order.
-- On a Redis Cluster a call carries one room (its keys share one slot); on a single Redis, a call
-- may carry every room of a flush (one call instead of one per room: its fixed cost, paid once).
--
-- KEYS: for each room: its stream, its epoch, its followers (a sorted set node -> alive-until, in ms),
--       then the dedupe keys and fences of its entries.
-- ARGV: maxlen (0 = no trimming), ttl_s (0 = no expiry), this node's id, a fresh random epoch (for a
--       stream this batch creates), the prefix of the nodes' channels, "1" when the caller waits for
--       replicas (WAIT) before announcing the batch itself (announce.lua) or "0", then for each room:
--       the room, its channels' suffix ("" on a single Redis; on a Redis Cluster the room's hash tag:
--       shard channels, in the room's slot, reached with SPUBLISH), "1" to renew its expiry (else only
--       a stream this batch creates gets one: the caller renews each room at most once in a while,
--       with a little more than ttl_s, see redis_store.Renewals), the index in KEYS of its stream,
--       its number of entries, then for each entry
--       six values: its participant, its body, the index in KEYS of its dedupe key (0: no cid), how
--       long the dedupe key is kept, in seconds, the index in KEYS of its fence (a generation's lock,
--       0: none; the room's partial text of the generation, its hash and its text, follow it in KEYS)
--       and the value the lock
--       must hold ("<token> <rid>").
-- Returns one reply per room, in order: an array: the id of the newest entry the stream held before
-- this batch ("0-0" when none), then, for each entry, its new id, or {original id, original body}
-- when its dedupe key names an entry stored within the window in this epoch of the stream (nothing is
-- appended), or an error reply when it failed: "FENCED ..." for a fenced entry whose lock does not
-- hold its value (nothing is appended); or an error reply in place of the room's array when the
-- room's step failed (the other rooms' steps are not undone, nor is what the failed one wrote).
-- A fenced entry that is appended deletes its lock in the same step (a generation's answer is its
-- last write).
-- The epoch key holds "<epoch> <newest id>": the stream's epoch and the newest id appended, so that
-- the newest id before the batch costs the GET of the epoch, which was read anyway, instead of an
-- XREVRANGE, which read and copied the newest entry (measured: 3-5 us of Redis CPU per call at L20,
-- the costliest command of the step). A stream lost or deleted on its own (its epoch key left behind:
-- evicted, deleted by hand) starts anew: the room's first XADD is NOMKSTREAM, and finds it gone (an
-- EXISTS per call instead cost 7,400 instructions per message; a resend checks with EXISTS first).
-- A bare "<epoch>" (written before the id was kept there) falls back to XREVRANGE.
-- A stream that held nothing before this batch gets the new epoch, which expires with it; the batch
-- appends in that epoch. A dedupe key holds "<epoch> <id>": a cid remembered from another epoch (the
-- stream was deleted, expired or lost since) is forgotten, and the entry is appended anew. A value
-- without an epoch (written before epochs were kept there) counts while the stream still holds its id.
-- Tells every other follower what was appended, by publishing "<room> <newest id>" on its channel
-- (a follower whose time is up, a process that died, hears nothing: its followers' heartbeats
-- remove it, see follow.lua); unless the caller waits for replicas: then it announces the batch once
-- replicated, and a resend (a duplicate) rewrites its dedupe key as it is, so that the caller's WAIT,
-- which counts the writes of its own connection, covers the original as well.
local maxlen, ttl, self, fresh = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local prefix, waits = ARGV[5], ARGV[6] == '1'

local function step(a)
  local room, suffix, renew, k, count = ARGV[a], ARGV[a + 1], ARGV[a + 2] == '1', tonumber(ARGV[a + 3]),
                                        tonumber(ARGV[a + 4])
  local stream, epoch_key, followers = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local kept = redis.call('GET', epoch_key)
  local epoch, before = false, false
  -- held: nil while the stream is only believed to exist (its epoch key holds its newest id, and a
  -- stream and its epoch key expire together: the first XADD, NOMKSTREAM, finds out for sure)
  local held = true
  if kept then
    epoch, before = string.match(kept, '^(%S+) (%S+)$')
    if before then held = nil end
  end
  if not before then
    local last = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', '1')
    before = (type(last) == 'table' and last[1] and last[1][1]) or '0-0'
    epoch = before ~= '0-0' and kept and string.match(kept, '^%S+')
  end
  local created = not epoch
  if created then epoch = fresh end
  local function lost()  -- the stream is gone (its epoch key left behind): a new epoch, as for a new stream
    held, before, epoch, created = true, '0-0', fresh, true
  end
  local out, newest = {false}, false
  for j = a + 5, a + 4 + 6 * count, 6 do
    local d, f = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 4])
    local dedupe = d > 0 and KEYS[d]
    local fence = f > 0 and KEYS[f]
    local prior = dedupe and redis.call('GET', dedupe)
    local id
    if prior then
      local prior_epoch, prior_id = string.match(prior, '^(%S+) (%S+)$')
      if not prior_epoch then prior_id = prior end
      if prior_epoch == epoch and not held then
        held = redis.call('EXISTS', stream) == 1
        if not held then lost() end
      end
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
      if not held then
        if maxlen > 0 then
          id = redis.pcall('XADD', stream, 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], '*', 'participant', ARGV[j],
                           'body', ARGV[j + 1])
        else
          id = redis.pcall('XADD', stream, 'NOMKSTREAM', '*', 'participant', ARGV[j], 'body', ARGV[j + 1])
        end
        if id then held = true else lost() end
      end
      if not id then
        if maxlen > 0 then
          id = redis.pcall('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', 'participant', ARGV[j], 'body', ARGV[j + 1])
        else
          id = redis.pcall('XADD', stream, '*', 'participant', ARGV[j], 'body', ARGV[j + 1])
        end
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
    -- (renewed at most once in a while by the caller: two EXPIREs per call were 1-3 us of Redis CPU)
    if ttl > 0 and (created or renew) then
      redis.call('EXPIRE', stream, ARGV[2])
      redis.call('SET', epoch_key, epoch .. ' ' .. newest, 'EX', ARGV[2])
    elseif ttl > 0 then
      redis.call('SET', epoch_key, epoch .. ' ' .. newest, 'KEEPTTL')
    else
      redis.call('SET', epoch_key, epoch .. ' ' .. newest)
    end
    if not waits then
      for _, node in ipairs(redis.call('ZRANGE', followers, '0', '-1')) do
        if node == self then
        elseif suffix == '' then redis.call('PUBLISH', prefix .. node, room .. ' ' .. newest)
        else redis.call('SPUBLISH', prefix .. node .. suffix, room .. ' ' .. newest) end
      end
    end
  end
  out[1] = before
  return out
end

local replies, a = {}, 7
while a <= #ARGV do
  local ok, reply = pcall(step, a)
  if ok then replies[#replies + 1] = reply
  elseif type(reply) == 'table' and reply.err then replies[#replies + 1] = reply
  else replies[#replies + 1] = redis.error_reply(tostring(reply)) end
  a = a + 5 + 6 * tonumber(ARGV[a + 4])
end
return replies
