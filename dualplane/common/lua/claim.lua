-- Take ownership of a received handoff: check it against the job's handoff_seq, move the
-- fence on and read what the job hash knows.
-- Every claim is a new owner, so the fence moves on every claim: a consumer that was paused
-- past its lease (SIGSTOP, a GC pause, a frozen VM) and comes back after another consumer
-- reclaimed its message still holds the old fence, and every write it tries is rejected.
-- KEYS[1] job hash  ARGV[1] the message's handoff_seq
-- Returns {1, status, cancel, created_at, user, fence, n1, state1, n2, state2, ...} (node
-- states from 'n:<id>' fields), {-1, current handoff_seq} when the message is stale,
-- {-2} when the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local current = redis.call('HGET', KEYS[1], 'handoff_seq')
if current ~= ARGV[1] then return {-1, current} end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local all = redis.call('HGETALL', KEYS[1])
local head = {status = '', cancel = '', created_at = '', user = ''}
local out = {1, '', '', '', '', fence}
for i = 1, #all, 2 do
  local name = all[i]
  if string.sub(name, 1, 2) == 'n:' then
    out[#out + 1] = string.sub(name, 3)
    out[#out + 1] = all[i + 1]
  elseif head[name] ~= nil then
    head[name] = all[i + 1]
  end
end
out[2], out[3], out[4], out[5] = head.status, head.cancel, head.created_at, head.user
return out
