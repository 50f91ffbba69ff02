-- Check a received handoff against the fence and read what the job hash knows.
-- KEYS[1] job hash  ARGV[1] the message's handoff_seq
-- Returns {1, status, cancel, created_at, n1, state1, n2, state2, ...} (node states from 'n:<id>' fields),
-- {-1, current handoff_seq} when the message is stale, {-2} when the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local current = redis.call('HGET', KEYS[1], 'handoff_seq')
if current ~= ARGV[1] then return {-1, current} end
local out = {1, redis.call('HGET', KEYS[1], 'status') or '', redis.call('HGET', KEYS[1], 'cancel') or '',
             redis.call('HGET', KEYS[1], 'created_at') or ''}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'n:' then
    out[#out + 1] = string.sub(all[i], 3)
    out[#out + 1] = all[i + 1]
  end
end
return out
