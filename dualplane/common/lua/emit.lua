-- Mirror state changes of a job the caller owns: update fields, append and publish events.
-- KEYS[1] job hash  KEYS[2] job events stream
-- ARGV[1] key prefix  ARGV[2] job id  ARGV[3] the owner's fence ('' = no fence)  ARGV[4] now
-- ARGV[5] n, then n (field, value) pairs, then (kind, body) event pairs.
-- Returns the last seq, -1 if the fence rejected a stale owner, -2 if the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[3] then return -1 end
local next_arg = set_fields(KEYS[1], ARGV, 5)
return append_events(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[4])
