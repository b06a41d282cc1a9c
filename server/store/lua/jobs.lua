-- The LLM bot's Redis steps that must be atomic, on the keys of one room. ARGV[1] names the step.
--
-- lock    KEYS: the room's lock. ARGV: 'lock', rid, ttl_ms. Takes the lock (or keeps it, when rid
--         holds it): 1, else 0.
-- renew   KEYS: lock. ARGV: 'renew', rid, ttl_ms. Renews the lock if rid holds it: 1, else 0.
-- release KEYS: lock. ARGV: 'release', rid. Deletes the lock if rid holds it (compare-and-delete).
-- start   KEYS: lock, rid's cancelled marker, rid's answer marker (the llm.response's dedupe key).
--         ARGV: 'start', rid, ttl_ms. A worker starting generation rid: returns {answered, cancelled};
--         unless answered, takes (or keeps) the lock for rid when it is free.
-- cancel  KEYS: lock, rid's cancelled marker. ARGV: 'cancel', rid, the workers' cancel channel, the
--         marker's ttl_s. When rid holds the lock: marks it cancelled, tells the workers, returns 1;
--         else 0 (no such generation is running).
local step, rid = ARGV[1], ARGV[2]
if step == 'lock' then
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
