-- The job's side of dead-lettering a message, once its dead-letter entry is written (the first
-- step, an XADD on the dead-letter stream: one key of its own, so not in this script's slot):
-- acknowledge and delete the message, and fail its job (when the job is known and not finished)
-- so no client waits forever.
-- A crash between the two steps leaves the message pending: it is reclaimed after its lease and
-- dead-lettered again, so the job still fails, once (a second time finds it finished); the first
-- entry stays as a record, and replaying it does nothing ('not-failed-by-it').
-- KEYS[1] source stream  KEYS[2] job hash  KEYS[3] job events  KEYS[4] index of unfinished jobs
-- ARGV[1] key prefix  ARGV[2] job id ('' = unknown)  ARGV[3] now  ARGV[4] source group
-- ARGV[5] source message id  ARGV[6] the dead-letter entry id  ARGV[7] retention seconds
-- ARGV[8] n, then n (field, value) pairs for a job that has not finished (job_state.dead_lettered: the
--         job failed), then (kind, body) event pairs.
-- Returns 1 when it failed the job, 0 otherwise.
-- FINISHED (the finished job statuses) is written at the head of every script from
-- dualplane.common.statuses.FINISHED (bridge/batching.py finished_table).
redis.call('XACK', KEYS[1], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[1], ARGV[5])  -- its copy is in the dead-letter entry
if ARGV[2] == '' or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if FINISHED[redis.call('HGET', KEYS[2], 'status')] then return 0 end
local next_arg = set_fields(KEYS[2], ARGV, 8)
-- 'dead_letter' names the entry that failed the job: only that entry's replay revives it
redis.call('HSET', KEYS[2], 'dead_letter', ARGV[6])
redis.call('HDEL', KEYS[2], 'lane', 'msg')
redis.call('HINCRBY', KEYS[2], 'handoff_seq', 1)
redis.call('HINCRBY', KEYS[2], 'fence', 1)
append_events(KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return 1
