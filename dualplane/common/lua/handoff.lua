-- Pass the ownership token: hand the full graph to another plane's stream, or finish the
-- job, and acknowledge the message that brought it here, all in one atomic step.
-- KEYS[1] job hash  KEYS[2] job events stream  KEYS[3] source stream  KEYS[4] target stream
-- KEYS[5] index of unfinished jobs
-- ARGV[1] key prefix  ARGV[2] job id  ARGV[3] expected handoff_seq  ARGV[4] now
-- ARGV[5] source group  ARGV[6] source message id ('' = none)
-- ARGV[7] handoff message JSON ('' = the job is finished: no XADD, apply retention; 'external' = the
--         job now waits on external workers' claims: no stream carries it, it stays unfinished)
-- ARGV[8] retention seconds for a finished job  ARGV[9] the owner's fence ('' = none)
-- ARGV[10] n, then n (field, value) pairs, then (kind, body) event pairs.
-- Returns the last seq; -1 when stale, -2 when the job is gone.
-- Stale comes in two kinds. The handoff_seq moved on: the message is an old handoff, a newer
-- owner exists, and the message is acknowledged. Only the fence moved on: another consumer
-- reclaimed this very message and owns it now, so it is left alone (acknowledging it would
-- lose the job if that consumer died before its own handoff).
-- The source entry is deleted once acknowledged: one group reads each stream, so an acked
-- entry is read by no one again, and keeping it would grow the stream by a full graph per hop.
local function ack()
  if ARGV[6] ~= '' then
    redis.call('XACK', KEYS[3], ARGV[5], ARGV[6])
    redis.call('XDEL', KEYS[3], ARGV[6])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then ack() return -2 end
if redis.call('HGET', KEYS[1], 'handoff_seq') ~= ARGV[3] then ack() return -1 end
if ARGV[9] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[9] then return -1 end
local next_arg = set_fields(KEYS[1], ARGV, 10)
local seq = append_events(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[4])
redis.call('HINCRBY', KEYS[1], 'handoff_seq', 1)
redis.call('HINCRBY', KEYS[1], 'fence', 1)
if ARGV[7] == 'external' then
  redis.call('HDEL', KEYS[1], 'lane', 'msg')  -- no entry to lose: the reconciler leaves it alone
elseif ARGV[7] ~= '' then
  local id = redis.call('XADD', KEYS[4], '*', 'm', ARGV[7])
  redis.call('HSET', KEYS[1], 'lane', KEYS[4], 'msg', id)
else
  redis.call('HDEL', KEYS[1], 'lane', 'msg')
  redis.call('ZREM', KEYS[5], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
ack()
return seq
