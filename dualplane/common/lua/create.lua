-- Create a job and hand its graph to the first plane, or return the existing job.
-- KEYS[1] job hash  KEYS[2] job events stream  KEYS[3] first plane's stream
-- KEYS[4] index of all jobs  KEYS[5] index of the user's jobs (= KEYS[4] when there is no user)
-- KEYS[6] index of unfinished jobs (the reconciler's work list)
-- ARGV[1] key prefix  ARGV[2] job id  ARGV[3] now (unix s)  ARGV[4] handoff message JSON
-- ARGV[5] n, then n (field, value) pairs for the job hash, then (kind, body) event pairs.
-- Returns {1, seq} when created, {0, status} when the id already existed (idempotent submit).
-- 'lane' and 'msg' name the stream entry that carries the job now: a job whose entry is gone
-- (trimmed, evicted, a failover) is found and handed on again by the reconciler.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'status')}
end
local next_arg = set_fields(KEYS[1], ARGV, 5)
redis.call('HSET', KEYS[1], 'handoff_seq', 1, 'fence', 0, 'seq', 0, 'created_at', ARGV[3])
local seq = append_events(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[3])
local id = redis.call('XADD', KEYS[3], '*', 'm', ARGV[4])
redis.call('HSET', KEYS[1], 'lane', KEYS[3], 'msg', id)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
if KEYS[5] ~= KEYS[4] then redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2]) end
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[2])
return {1, seq}
