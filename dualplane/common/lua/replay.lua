-- The job's side of replaying a dead letter: put its message back on its source stream and make
-- its job runnable again by undoing exactly what dead_letter.lua did to it, in one step. The
-- dead-letter entry is deleted after it (a key of its own slot: a second step), so a crash in
-- between leaves an entry whose replay finds the job revived already ('not-failed-by-it') and
-- runs nothing.
-- KEYS[1] source stream  KEYS[2] job hash  KEYS[3] job events  KEYS[4] index of unfinished jobs
-- ARGV[1] key prefix  ARGV[2] job id  ARGV[3] now  ARGV[4] dead-letter entry id
-- ARGV[5] the job's handoff_seq the caller read (the message's handoff_seq is that + 1)
-- ARGV[6] n, then n (field, value) pairs: the message
-- then the mutation (job_state.replayed: status queued, the lane's owner, the queued event):
-- m, then m (field, value) pairs, then (kind, body) event pairs
-- Returns {1, new entry id}, or {0, why}: 'job-gone', 'not-failed-by-it' (the job ended some
-- other way, another dead letter of it was replayed, or this one already), 'moved' (the job
-- changed meanwhile).
-- Dead-lettering moved handoff_seq and the fence on; they move on again here rather than back,
-- so no older copy of the message can become current.
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, 'job-gone'} end
if redis.call('HGET', KEYS[2], 'dead_letter') ~= ARGV[4] then return {0, 'not-failed-by-it'} end
if redis.call('HGET', KEYS[2], 'handoff_seq') ~= ARGV[5] then return {0, 'moved'} end
local n = tonumber(ARGV[6])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 7, 6 + 2 * n))
redis.call('HINCRBY', KEYS[2], 'handoff_seq', 1)
redis.call('HINCRBY', KEYS[2], 'fence', 1)
redis.call('HSET', KEYS[2], 'lane', KEYS[1], 'msg', id)
redis.call('HDEL', KEYS[2], 'error', 'finished_at', 'dead_letter')
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[2], 'created_at'), ARGV[2])
local next_arg = set_fields(KEYS[2], ARGV, 7 + 2 * n)
append_events(KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[3])
return {1, id}
