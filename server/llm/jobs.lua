-- The LLM bot's Redis steps that must be atomic. ARGV[1] names the step.
--
-- request KEYS: lock (chat:llm:lock:<room>), requests stream. ARGV: 'request', rid, lock ttl_ms,
--         then the request's field/value pairs. Takes the room's lock for rid and queues the
--         request; returns 1, or 0 when another generation holds the lock (nothing is queued).
-- lock    KEYS: lock. ARGV: 'lock', rid, ttl_ms. Takes the lock (or keeps it, when rid holds it):
--         1, else 0.
-- renew   KEYS: lock. ARGV: 'renew', rid, ttl_ms. Renews the lock if rid holds it: 1, else 0.
-- release KEYS: lock. ARGV: 'release', rid. Deletes the lock if rid holds it (compare-and-delete).
-- start   KEYS: lock, cancelled marker (chat:llm:cancelled:<rid>), answer marker (the llm.response's
--         dedupe key). ARGV: 'start', rid, ttl_ms. A worker starting generation rid: returns
--         {answered, cancelled}; unless answered, takes (or keeps) the lock for rid when it is free.
-- cancel  KEYS: lock, cancelled marker (chat:llm:cancelled:<rid>). ARGV: 'cancel', rid, channel,
--         marker ttl_s. When rid holds the lock: marks it cancelled, tells the workers, returns 1;
--         else 0 (no such generation is running).
local step, rid = ARGV[1], ARGV[2]
if step == 'request' then
  if not redis.call('SET', KEYS[1], rid, 'NX', 'PX', ARGV[3]) then return 0 end
  local fields = {}
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', unpack(fields))
  return 1
elseif step == 'lock' then
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= rid then return 0 end
  redis.call('SET', KEYS[1], rid, 'PX', ARGV[3])
  return 1
elseif step == 'renew' then
  if redis.call('GET', KEYS[1]) ~= rid then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
elseif step == 'release' then
  if redis.call('GET', KEYS[1]) ~= rid then return 0 end
  redis.call('DEL', KEYS[1])
  return 1
elseif step == 'start' then
  local answered = redis.call('EXISTS', KEYS[3])
  if answered == 0 then
    local holder = redis.call('GET', KEYS[1])
    if not holder or holder == rid then redis.call('SET', KEYS[1], rid, 'PX', ARGV[3]) end
  end
  return {answered, redis.call('EXISTS', KEYS[2])}
elseif step == 'cancel' then
  if redis.call('GET', KEYS[1]) ~= rid then return 0 end
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
  redis.call('PUBLISH', ARGV[3], rid)
  return 1
end
return redis.error_reply('unknown step ' .. tostring(step))
