-- Move a message that cannot be processed to the dead-letter stream, with the reason,
-- acknowledge it, and fail its job (when the job is known) so no client waits forever.
-- KEYS[1] dead-letter stream  KEYS[2] source stream  KEYS[3] job hash  KEYS[4] job events
-- KEYS[5] index of unfinished jobs
-- ARGV[1] key prefix  ARGV[2] job id ('' = unknown)  ARGV[3] now  ARGV[4] source group
-- ARGV[5] source message id  ARGV[6] reason  ARGV[7] original fields as JSON
-- ARGV[8] retention seconds
-- ARGV[9] n, then n (field, value) pairs for a job that has not finished (job_state.dead_lettered: the
--         job failed), then (kind, body) event pairs.
-- Returns the dead-letter entry id.
-- FINISHED (the finished job statuses) is written at the head of every script from
-- dualplane.common.statuses.FINISHED (bridge/batching.py finished_table).
local id = redis.call('XADD', KEYS[1], '*', 'stream', KEYS[2], 'id', ARGV[5], 'group', ARGV[4],
  'reason', ARGV[6], 'job', ARGV[2], 'fields', ARGV[7], 'ts', ARGV[3])
redis.call('XACK', KEYS[2], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[2], ARGV[5])  -- its copy is in the dead-letter entry
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  local status = redis.call('HGET', KEYS[3], 'status')
  if not FINISHED[status] then
    local next_arg = set_fields(KEYS[3], ARGV, 9)
    -- 'dead_letter' names the entry that failed the job: only that entry's replay revives it
    redis.call('HSET', KEYS[3], 'dead_letter', id)
    redis.call('HDEL', KEYS[3], 'lane', 'msg')
    redis.call('HINCRBY', KEYS[3], 'handoff_seq', 1)
    redis.call('HINCRBY', KEYS[3], 'fence', 1)
    append_events(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[3])
    redis.call('ZREM', KEYS[5], ARGV[2])
    redis.call('EXPIRE', KEYS[3], ARGV[8])
    redis.call('EXPIRE', KEYS[4], ARGV[8])
  end
end
return id
