-- Replay a dead letter: put its message back on its source stream, drop the dead letter, and
-- make its job runnable again by undoing exactly what dead_letter.lua did to it, in one step.
-- KEYS[1] dead-letter stream  KEYS[2] source stream  KEYS[3] job hash  KEYS[4] job events
-- KEYS[5] index of unfinished jobs
-- ARGV[1] key prefix  ARGV[2] job id ('' = unknown: the fields go back as they were)
-- ARGV[3] now  ARGV[4] dead-letter entry id  ARGV[5] the job's handoff_seq the caller read (the
-- message's handoff_seq is that + 1)  ARGV[6] n, then n (field, value) pairs: the message
-- then the mutation (job_state.replayed: status queued, the lane's owner, the queued event):
-- m, then m (field, value) pairs, then (kind, body) event pairs
-- Returns {1, new entry id}, or {0, why}: 'gone' (no such dead letter: replayed or discarded
-- already, so a second replay runs nothing), 'job-gone', 'not-failed-by-it' (the job ended some
-- other way, or another dead letter of it was replayed), 'moved' (the job changed meanwhile).
-- Dead-lettering moved handoff_seq and the fence on; they move on again here rather than back,
-- so no older copy of the message can become current.
if #redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4], 'COUNT', 1) == 0 then return {0, 'gone'} end
if ARGV[2] ~= '' then
  if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 'job-gone'} end
  if redis.call('HGET', KEYS[3], 'dead_letter') ~= ARGV[4] then return {0, 'not-failed-by-it'} end
  if redis.call('HGET', KEYS[3], 'handoff_seq') ~= ARGV[5] then return {0, 'moved'} end
end
local n = tonumber(ARGV[6])
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 7, 6 + 2 * n))
redis.call('XDEL', KEYS[1], ARGV[4])
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[3], 'handoff_seq', 1)
  redis.call('HINCRBY', KEYS[3], 'fence', 1)
  redis.call('HSET', KEYS[3], 'lane', KEYS[2], 'msg', id)
  redis.call('HDEL', KEYS[3], 'error', 'finished_at', 'dead_letter')
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
  redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[3], 'created_at'), ARGV[2])
  local next_arg = set_fields(KEYS[3], ARGV, 7 + 2 * n)
  append_events(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[3])
end
return {1, id}
