-- The LLM bot's Redis steps that must be atomic, on the keys of one room. ARGV[1] names the step.
--
-- The room's lock holds "<token> <rid>": the generation rid, fenced by token, a number drawn from the
-- room's counter (INCR) each time the lock is taken or taken over. Every write of a generation
-- passes the whole value ("<token> <rid>") and is refused when the lock holds anything else.
--
-- lock    KEYS: lock, the room's fencing counter, rid's asker. ARGV: 'lock', rid, lease_ms, the
--         counter's ttl_s, the role that asked ('' : not recorded), the asker's ttl_s. Takes the free
--         lock (or rid's own) for rid with a new token, recording who asked: the token, else 0.
-- start   KEYS: lock, rid's cancelled marker, rid's answer marker (the llm.response's dedupe key),
--         rid's ended marker (written by versions that did not store llm.error), the fencing counter.
--         ARGV: 'start', rid, lease_ms, the counter's ttl_s.
--         A worker starting (or taking over) rid: returns {answered, cancelled, token, cancelled by}.
--         Unless rid is answered or ended, takes the lock with a new token when it is free or rid's
--         (token 0: another generation holds the room).
-- renew   KEYS: lock, the room's partial text (hash, text). ARGV: 'renew', value, lease_ms. Renews the lock
--         (and the partial text written under it) if it holds value: 1, else 0.
-- release KEYS: lock. ARGV: 'release', value. Deletes the lock if it holds value: 1, else 0.
-- frames  KEYS: lock, the room's partial text (its hash, its text), the room's followers. ARGV: 'frames', value, this node's id,
--         the prefix and suffix of the nodes' channels (see append.lua), the room, the generation's
--         reply_to and attempt, the seq of the last delta of this batch (-1: no partial text kept), the
--         batch's deltas joined, the partial text's cap in bytes, then messages "<after id> <frame>". If
--         the lock holds value, appends the batch to the partial text (started afresh when written under
--         another value, expiring with the lock; past the cap, marked over and deleted), and
--         publishes "<room> <message>" to every other follower: 1; else 0, nothing written or sent.
-- cancel  KEYS: lock, rid's cancelled marker, rid's asker. ARGV: 'cancel', rid, the workers' cancel
--         channel, the marker's ttl_s, the role cancelling, '1' when only the asker may cancel. When rid
--         holds the lock: 2 (nothing done) if only the asker may and another role asked it; else marks
--         it cancelled by that role, tells the workers ("<rid> <role>"), returns 1. Else 0 (no such
--         generation is running).
local step = ARGV[1]
local followers = KEYS[#KEYS] -- (frames: the room's followers come last)

local function holder_rid(value)
  if not value then return false end
  return string.match(value, '^%d+ (.*)$')
end

local function publish(self, prefix, suffix, room, first)
  for _, node in ipairs(redis.call('ZRANGE', followers, 0, -1)) do
    if node ~= self then
      for m = first, #ARGV do
        if suffix == '' then redis.call('PUBLISH', prefix .. node, room .. ' ' .. ARGV[m])
        else redis.call('SPUBLISH', prefix .. node .. suffix, room .. ' ' .. ARGV[m]) end
      end
    end
  end
end

if step == 'lock' then
  local rid = ARGV[2]
  local holder = holder_rid(redis.call('GET', KEYS[1]))
  if holder and holder ~= rid then return 0 end
  local token = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('SET', KEYS[1], token .. ' ' .. rid, 'PX', ARGV[3])
  if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
  return token
elseif step == 'start' then
  local rid = ARGV[2]
  local answered = redis.call('EXISTS', KEYS[3]) + redis.call('EXISTS', KEYS[4])
  local by = redis.call('GET', KEYS[2])
  local cancelled = by and 1 or 0
  by = by or ''
  if answered > 0 then return {1, cancelled, 0, by} end
  local holder = holder_rid(redis.call('GET', KEYS[1]))
  if holder and holder ~= rid then return {0, cancelled, 0, by} end
  local token = redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[4])
  redis.call('SET', KEYS[1], token .. ' ' .. rid, 'PX', ARGV[3])
  return {0, cancelled, token, by}
elseif step == 'renew' then
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  if redis.call('HGET', KEYS[2], 'value') == ARGV[2] then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
  end
  return 1
elseif step == 'release' then
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
  redis.call('DEL', KEYS[1])
  return 1
elseif step == 'frames' then
  local value = ARGV[2]
  if redis.call('GET', KEYS[1]) ~= value then return 0 end
  local partial, text, seq = KEYS[2], KEYS[3], tonumber(ARGV[9])
  if seq >= 0 then
    local kept = redis.call('HMGET', partial, 'value', 'over')
    local fresh = kept[1] ~= value
    if fresh then
      redis.call('DEL', partial, text)
      redis.call('HSET', partial, 'value', value, 'reply_to', ARGV[7], 'attempt', ARGV[8])
      kept[2] = false
    end
    redis.call('HSET', partial, 'seq', seq)
    if not kept[2] then
      if redis.call('STRLEN', text) + #ARGV[10] > tonumber(ARGV[11]) then
        redis.call('HSET', partial, 'over', 1)
        redis.call('DEL', text)
      else
        redis.call('APPEND', text, ARGV[10])
      end
    end
    if fresh then -- the lock's lease, renewed with it (renew)
      local lease = math.max(redis.call('PTTL', KEYS[1]), 1)
      redis.call('PEXPIRE', partial, lease)
      redis.call('PEXPIRE', text, lease)
    end
  end
  publish(ARGV[3], ARGV[4], ARGV[5], ARGV[6], 12)
  return 1
elseif step == 'cancel' then
  local rid = ARGV[2]
  if holder_rid(redis.call('GET', KEYS[1])) ~= rid then return 0 end
  local asker = redis.call('GET', KEYS[3])
  if ARGV[6] == '1' and asker and asker ~= ARGV[5] then return 2 end
  redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4])
  redis.call('PUBLISH', ARGV[3], rid .. ' ' .. ARGV[5])
  return 1
end
return redis.error_reply('unknown step ' .. tostring(step))
