-- Count a login attempt as a failure unless a limit is reached (control_plane/login_limit.py).
-- KEYS: the failure sets (sorted sets: member -> time) to count in
-- ARGV[1] now  ARGV[2] window (s)  ARGV[2 + i] the limit of KEYS[i]  ARGV[#ARGV] the attempt's member
-- Returns '0' when the attempt is counted, else the seconds until it would be.
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local member = ARGV[#ARGV]
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now)
  end
end
if wait > 0 then
  return tostring(wait)
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
end
return '0'
