-- The cost guard's counters (see server/store/ports.py, UsageCounters). ARGV[1] names the step.
--
-- admit  KEYS: the room's generations (a sorted set rid -> when it was accepted, ms of Redis's clock),
--        the room's tokens of the day. ARGV: 'admit', rid, window_ms, the most generations in a window
--        (0: no limit), the most tokens in a day (0: no limit). Forgets the generations older than the
--        window; returns {2, 0} when the day's tokens reached their limit, {1, ms until the oldest
--        generation leaves the window} when the window is full, else counts rid (once: a rid counted
--        already is not counted again) and returns {0, 0}.
-- add    KEYS: a tokens counter. ARGV: 'add', tokens, ttl_s. Adds them, renews the expiry: the new total.
-- usage  KEYS: the room's generations, the room's tokens of the day. ARGV: 'usage', window_ms.
--        Returns {generations within the window, tokens of the day}.
-- tokens KEYS: a tokens counter. ARGV: 'tokens'. Its value (0 when absent).
local step = ARGV[1]

local function now_ms()
  local now = redis.call('TIME')
  return now[1] * 1000 + math.floor(now[2] / 1000)
end

if step == 'admit' then
  local rid, window, most_generations, most_tokens = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if most_tokens > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= most_tokens then return {2, 0} end
  if redis.call('ZSCORE', KEYS[1], rid) then return {0, 0} end
  if most_generations > 0 and redis.call('ZCARD', KEYS[1]) >= most_generations then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, math.max(1, tonumber(oldest[2]) + window - now)}
  end
  redis.call('ZADD', KEYS[1], now, rid)
  redis.call('PEXPIRE', KEYS[1], window)
  return {0, 0}
elseif step == 'add' then
  local total = redis.call('INCRBY', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return total
elseif step == 'usage' then
  local window = tonumber(ARGV[2])
  local generations = redis.call('ZCOUNT', KEYS[1], '(' .. (now_ms() - window), '+inf')
  return {generations, tonumber(redis.call('GET', KEYS[2]) or '0')}
elseif step == 'tokens' then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
return redis.error_reply('unknown step ' .. tostring(step))
