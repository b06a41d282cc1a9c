-- The LLM bot's Redis steps that must be atomic, on the keys of one room. ARGV[1] names the step.
--
-- The room's lock holds "<token> <rid>": the generation rid, fenced by token, a number drawn from the
-- room's counter (INCR) each time the lock is taken or taken over. Every write of a generation
-- passes the whole value ("<token> <rid>") and is refused when the lock holds anything else.
--
-- The room's waiting questions (LLM_TURNS=queue or interrupt) are a list, oldest first, of
-- "<rid> <reply_to> <asker> <regenerates or -> <deadline ms>"; a question past its deadline (Redis's
-- clock: it waited LLM_JOIN_LEASE_S before its request was queued, or LLM_QUEUE_LEASE_S since, see
-- confirm) is dropped when it reaches the head. A question removed from it
-- unanswered (cancelled while it waited, dropped by an interrupt, withdrawn) is added to the room's
-- dropped set: a worker that starts it only acknowledges it.
--
-- lock    KEYS: lock, the room's fencing counter, rid's asker. ARGV: 'lock', rid, lease_ms, the
--         counter's ttl_s, the role that asked ('' : not recorded), the asker's ttl_s. Takes the free
--         lock (or rid's own) for rid with a new token, recording who asked: the token, else 0.
-- turn    KEYS: lock, the fencing counter, rid's asker, the waiting list, the dropped set. ARGV: 'turn',
--         rid, lease_ms, the counter's ttl_s, the asker, the asker's ttl_s, the policy ('queue' or
--         'interrupt'), the most questions that may wait, reply_to, regenerates ('-': none), how long
--         it may wait (ms), the dropped set's ttl_s, '1' to ask once. A question asks for its turn:
--         returns {token, position, interrupted, dropped, asked}; asked = 1 (nothing done) when asked
--         once and rid took its turn before (its asker is recorded). token > 0: the lock is taken for it (the room was free and
--         nobody waited, or it held the lock already). position > 0: it waits, that many questions
--         ahead of it counting the running one (queue: at the end of the list, when fewer than the most
--         wait; interrupt: it replaces every waiting question, which are dropped and returned as
--         {rid, reply_to, ...}, and interrupted names the rid holding the lock, '' when none). Both 0:
--         busy (the list is full). A rid already waiting gets its position again.
-- rename  KEYS: lock, the new rid's asker. ARGV: 'rename', the lock's value, the new rid, the asker, the
--         asker's ttl_s, '1' to ask once. The lock, taken for a question before it had an id
--         (LLM_TURNS=refuse: an llm.invoke takes the room before it is stored), is its stored question's
--         now, under the same token: 1, recording who asked; 2 (nothing done) when asked once and the new
--         rid took its turn before (its asker is recorded: a resend whose first sending was asked); 0
--         when the lock no longer holds the value.
-- confirm KEYS: lock, the waiting list. ARGV: 'confirm', rid, the lock's value ('': rid waits), lease_ms.
--         rid's request is queued: the turn it took (lock or turn) with the short joining lease, so that
--         a relay dying before it queued the request holds the room that long at most, is kept for the
--         queued lease now. The lock's lease becomes lease_ms if it holds value; else rid's place in the
--         waiting list gets the deadline now + lease_ms. Returns 1, or 0 when neither (a worker
--         started it already, or its turn lapsed).
-- start   KEYS: lock, rid's cancelled marker, rid's answer marker (the llm.response's dedupe key),
--         rid's ended marker (written by versions that did not store llm.error), the fencing counter,
--         the waiting list, the dropped set. ARGV: 'start', rid, lease_ms, the counter's ttl_s.
--         A worker starting (or taking over) rid: returns {answered, cancelled, token, cancelled by,
--         waits}. Unless rid is answered, ended or dropped, takes the lock with a new token when it is
--         rid's, or free and rid is at the head of the waiting list (taken off it) or not in it;
--         waits = 1 (token 0) when rid is in the list behind another question or another holds the
--         lock; token 0 and waits 0: another generation holds the room and rid is not waiting.
-- renew   KEYS: lock, the room's partial text (hash, text). ARGV: 'renew', value, lease_ms. Renews the lock
--         (and the partial text written under it) if it holds value: 1, else 0.
-- release KEYS: lock, the waiting list. ARGV: 'release', value, the turns channel, the room. Deletes
--         the lock if it holds value: 1, else 0; then tells the workers when the room is free and a
--         question waits (PUBLISH the room on the turns channel).
-- pass    KEYS: lock, the waiting list. ARGV: 'pass', the turns channel, the room. After a generation's
--         last write released the lock: tells the workers when the room is free and a question waits.
--         Returns how many wait.
-- withdraw KEYS: lock, the waiting list, the dropped set. ARGV: 'withdraw', rid, the dropped set's ttl_s,
--         the turns channel, the room. A question that will not be answered (refused by the cost guard,
--         or its store failed): deletes the lock if rid holds it, and takes rid off the waiting list
--         (into the dropped set); then as release. Returns 1 when it held or waited, else 0.
-- frames  KEYS: lock, the room's partial text (its hash, its text), the room's followers. ARGV: 'frames', value, this node's id,
--         the prefix and suffix of the nodes' channels (see append.lua), the room, the generation's
--         reply_to and attempt, the seq of the last delta of this batch (-1: no partial text kept), the
--         batch's deltas joined, the partial text's cap in bytes, then messages "<after id> <frame>". If
--         the lock holds value, appends the batch to the partial text (started afresh when written under
--         another value, expiring with the lock; past the cap, marked over and deleted), and
--         publishes "<room> <message>" to every other follower: 1; else 0, nothing written or sent.
-- cancel  KEYS: lock, rid's cancelled marker, rid's asker, the waiting list, the dropped set. ARGV:
--         'cancel', rid, the workers' cancel channel, the marker's ttl_s, the role cancelling, '1' when
--         only the asker may cancel, the dropped set's ttl_s. Returns {done, reply_to}. When rid holds
--         the lock: 2 (nothing done) if only the asker may and another role asked it; else marks it
--         cancelled by that role, tells the workers ("<rid> <role>"), 1. When rid waits: 2 likewise,
--         else it is taken off the list (into the dropped set): 3, with its reply_to. Else 0 (no such
--         generation is running or waiting).
local step = ARGV[1]
local followers = KEYS[#KEYS] -- (frames: the room's followers come last)

local function holder_rid(value)
  if not value then return false end
  return string.match(value, '^%d+ (.*)$')
end

local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The waiting list's heads past their deadline are dropped.
local function purge(waiting)
  local now = now_ms()
  while true do
    local head = redis.call('LINDEX', waiting, 0)
    if not head or tonumber(string.match(head, '(%d+)$')) >= now then return end
    redis.call('LPOP', waiting)
  end
end

-- rid's place in the waiting list (1 = its head) and its entry, or 0.
local function find(waiting, rid)
  local entries = redis.call('LRANGE', waiting, 0, -1)
  local prefix = rid .. ' '
  for i, entry in ipairs(entries) do
    if string.sub(entry, 1, #prefix) == prefix then return i, entry end
  end
  return 0, false
end

local function drop(dropped, rid, ttl)
  redis.call('SADD', dropped, rid)
  redis.call('EXPIRE', dropped, ttl)
end

local function tell_if_turn(lock, waiting, channel, room)
  local waits = redis.call('LLEN', waiting)
  if waits > 0 and redis.call('EXISTS', lock) == 0 then redis.call('PUBLISH', channel, room) end
  return waits
end

local function take(lock, counter, rid, lease_ms, counter_ttl)
  local token = redis.call('INCR', counter)
  redis.call('EXPIRE', counter, counter_ttl)
  redis.call('SET', lock, token .. ' ' .. rid, 'PX', lease_ms)
  return token
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
elseif step == 'turn' then
  local lock, waiting, rid = KEYS[1], KEYS[4], ARGV[2]
  if ARGV[13] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {0, 0, '', {}, 1} end
  purge(waiting)
  local position = find(waiting, rid)
  if position > 0 then return {0, position, '', {}, 0} end
  local holder = holder_rid(redis.call('GET', lock))
  if holder == rid or (not holder and redis.call('LLEN', waiting) == 0) then
    if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
    return {take(lock, KEYS[2], rid, ARGV[3], ARGV[4]), 0, '', {}, 0}
  end
  local entry = table.concat({rid, ARGV[9], ARGV[5], ARGV[10], now_ms() + tonumber(ARGV[11])}, ' ')
  local dropped = {}
  if ARGV[7] == 'interrupt' then
    for _, old in ipairs(redis.call('LRANGE', waiting, 0, -1)) do
      local old_rid, old_reply_to = string.match(old, '^(%S+) (%S+)')
      drop(KEYS[5], old_rid, ARGV[12])
      dropped[#dropped + 1] = old_rid
      dropped[#dropped + 1] = old_reply_to
    end
    redis.call('DEL', waiting)
  elseif ARGV[7] ~= 'queue' or redis.call('LLEN', waiting) >= tonumber(ARGV[8]) then
    return {0, 0, '', {}, 0}
  end
  if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
  position = redis.call('RPUSH', waiting, entry)
  return {0, position, ARGV[7] == 'interrupt' and holder or '', dropped, 0}
elseif step == 'rename' then
  local token = string.match(ARGV[2], '^(%d+) ')
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
  if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
  redis.call('SET', KEYS[1], token .. ' ' .. ARGV[3], 'KEEPTTL')
  if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5]) end
  return 1
elseif step == 'confirm' then
  if ARGV[3] ~= '' then
    if redis.call('GET', KEYS[1]) ~= ARGV[3] then return 0 end
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return 1
  end
  local position, entry = find(KEYS[2], ARGV[2])
  if position == 0 then return 0 end
  redis.call('LSET', KEYS[2], position - 1, string.match(entry, '^(.*) %d+$') .. ' ' .. (now_ms() + tonumber(ARGV[4])))
  return 1
elseif step == 'start' then
  local rid, waiting = ARGV[2], KEYS[6]
  local answered = redis.call('EXISTS', KEYS[3]) + redis.call('EXISTS', KEYS[4]) + redis.call('SISMEMBER', KEYS[7], rid)
  local by = redis.call('GET', KEYS[2])
  local cancelled = by and 1 or 0
  by = by or ''
  if answered > 0 then return {1, cancelled, 0, by, 0} end
  purge(waiting)
  local holder = holder_rid(redis.call('GET', KEYS[1]))
  local position = find(waiting, rid)
  if holder and holder ~= rid then return {0, cancelled, 0, by, position > 0 and 1 or 0} end
  if position > 1 then return {0, cancelled, 0, by, 1} end
  if position == 1 then redis.call('LPOP', waiting) end
  return {0, cancelled, take(KEYS[1], KEYS[5], rid, ARGV[3], ARGV[4]), by, 0}
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
  tell_if_turn(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
  return 1
elseif step == 'pass' then
  purge(KEYS[2])
  return tell_if_turn(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
elseif step == 'withdraw' then
  local rid, done = ARGV[2], 0
  if holder_rid(redis.call('GET', KEYS[1])) == rid then
    redis.call('DEL', KEYS[1])
    done = 1
  end
  local position, entry = find(KEYS[2], rid)
  if position > 0 then
    redis.call('LREM', KEYS[2], 1, entry)
    drop(KEYS[3], rid, ARGV[3])
    done = 1
  end
  purge(KEYS[2])
  tell_if_turn(KEYS[1], KEYS[2], ARGV[4], ARGV[5])
  return done
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
  if holder_rid(redis.call('GET', KEYS[1])) ~= rid then
    local position, entry = find(KEYS[4], rid)
    if position == 0 then return {0, ''} end
    local reply_to, asker = string.match(entry, '^%S+ (%S+) (%S+)')
    if ARGV[6] == '1' and asker ~= ARGV[5] then return {2, ''} end
    redis.call('LREM', KEYS[4], 1, entry)
    drop(KEYS[5], rid, ARGV[7])
    return {3, reply_to}
  end
  local asker = redis.call('GET', KEYS[3])
  if ARGV[6] == '1' and asker and asker ~= ARGV[5] then return {2, ''} end
  redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4])
  redis.call('PUBLISH', ARGV[3], rid .. ' ' .. ARGV[5])
  return {1, ''}
end
return redis.error_reply('unknown step ' .. tostring(step))
