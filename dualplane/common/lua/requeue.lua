-- Hand a job on again whose stream entry was lost (trimmed, evicted, a failover to a replica
-- that never had it): the reconciler's repair, checked and done in one atomic step.
-- KEYS[1] job hash  KEYS[2] job events stream  KEYS[3] the job's lane stream
-- KEYS[4] index of unfinished jobs
-- ARGV[1] key prefix  ARGV[2] job id  ARGV[3] now  ARGV[4] handoff_seq seen by the reconciler
-- ARGV[5] entry id seen by the reconciler  ARGV[6] new handoff message JSON (handoff_seq + 1)
-- ARGV[7] n, then n (field, value) pairs, then (kind, body) event pairs: the mutation
-- (job_state.requeued: a data event saying why)
-- Returns the last seq when requeued, 0 when nothing had to be done (the job moved on, or its
-- entry is there), -2 when the job is gone (it is dropped from the index).
-- FINISHED (the finished job statuses) is written at the head of every script from
-- dualplane.common.statuses.FINISHED (bridge/batching.py finished_table).
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[4], ARGV[2])
  return -2
end
local status = redis.call('HGET', KEYS[1], 'status')
if FINISHED[status] then
  redis.call('ZREM', KEYS[4], ARGV[2])
  return 0
end
if redis.call('HGET', KEYS[1], 'handoff_seq') ~= ARGV[4] or redis.call('HGET', KEYS[1], 'msg') ~= ARGV[5] then
  return 0
end
if #redis.call('XRANGE', KEYS[3], ARGV[5], ARGV[5], 'COUNT', 1) > 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'handoff_seq', 1)
redis.call('HINCRBY', KEYS[1], 'fence', 1)
local id = redis.call('XADD', KEYS[3], '*', 'm', ARGV[6])
redis.call('HSET', KEYS[1], 'msg', id)
local next_arg = set_fields(KEYS[1], ARGV, 7)
return append_events(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[3])
