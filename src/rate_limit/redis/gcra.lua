-- GCRA as redis-cell's CL.THROTTLE computes it, atomically, in microseconds.
-- KEYS[1]  the limit's key (it holds the theoretical arrival time, TAT).
-- ARGV[1]  emission interval T = period / rate, in microseconds (may be fractional).
-- ARGV[2]  delay variation tolerance = T * limit, in microseconds (redis-cell's
--          T * (max_burst + 1)).
-- ARGV[3]  quantity (0 = peek: nothing is written).
-- ARGV[4]  optional, for deterministic tests only: "now" in microseconds. Without it the
--          server's clock (TIME) is used, so replicas with skewed clocks agree.
-- Returns {limited (0/1), remaining, retry_after_us (-1: none, or never possible),
--          reset_after_us}.

-- Before Redis 5, a script that reads TIME and then writes must replicate its effects.
if redis.replicate_commands then
  redis.replicate_commands()
end

local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local quantity = tonumber(ARGV[3])
local now
if ARGV[4] then
  now = tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

-- A missing key is a fresh limit (TAT = now); a TAT in the past counts as now.
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end

local increment = interval * quantity
local new_tat = tat + increment
local allow_at = new_tat - tolerance
local limited = 0
local retry_after = -1
local ttl
if now < allow_at then
  limited = 1
  -- A quantity larger than the whole burst can never pass: no retry time.
  if increment <= tolerance then
    retry_after = math.ceil(allow_at - now)
  end
  ttl = tat - now
else
  ttl = new_tat - now
  if quantity > 0 then
    -- %.17g round-trips the double exactly; the key expires when the limit is full again.
    redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil(ttl / 1000))
  end
end

-- Informational only (the decision above is exact): a tiny epsilon keeps float noise from
-- reporting one unit less than redis-cell would.
local remaining = math.floor((tolerance - ttl) / interval + 1e-9)
if remaining < 0 then
  remaining = 0
end
return {limited, remaining, retry_after, math.ceil(ttl)}
