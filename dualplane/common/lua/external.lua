-- Claim, or report on, an external node of a job that waits on external workers (owner 'external'):
-- the fenced write of a worker outside dualplane that speaks HTTP (control_plane/external.py).
-- Each claim moves the job's fence on and keeps the new value as this node's claim token, with the
-- claim's lease, in 'x:<node>' ("<token> <lease deadline> <lease s>"); a report must carry that token, so a
-- claimant whose lease ran out and whose node another claimant took holds a stale token and every
-- report it sends is rejected. The node's new state was computed by the caller from the state it
-- read, which must still be there (compare-and-set): two writers never overwrite each other.
-- KEYS[1] job hash  KEYS[2] job events stream
-- ARGV[1] key prefix  ARGV[2] job id  ARGV[3] node id  ARGV[4] 'claim' or 'report'
-- ARGV[5] the claimant's token (report; '' for a claim)  ARGV[6] now (unix s)
-- ARGV[7] claim: the lease in seconds; report: '1' renews the lease, '' ends the claim (the node ended)
-- ARGV[8] the node's state as the caller read it (raw 'n:<node>' value)
-- ARGV[9] n, then n (field, value) pairs, then (kind, body) event pairs.
-- Returns {token, last seq, lease deadline ('' once ended)}; {-1} when a live claim holds the node (claim) or the token is stale
-- (report); {-2} when the job is gone; {-3} when the job does not wait on external workers;
-- {-4} when the node's state changed since it was read (read again and retry).
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
if redis.call('HGET', KEYS[1], 'owner') ~= 'external' then return {-3} end
local held_field = 'x:' .. ARGV[3]
if redis.call('HGET', KEYS[1], 'n:' .. ARGV[3]) ~= ARGV[8] then return {-4} end
local held = redis.call('HGET', KEYS[1], held_field)
local token, lease
if ARGV[4] == 'claim' then
  if held then
    local _, deadline = string.match(held, '^(%d+) (%S+)')
    if tonumber(deadline) > tonumber(ARGV[6]) then return {-1} end
  end
  token, lease = redis.call('HINCRBY', KEYS[1], 'fence', 1), ARGV[7]
else
  if not held then return {-1} end
  local current, _, held_lease = string.match(held, '^(%d+) (%S+) (%S+)$')
  if current ~= ARGV[5] then return {-1} end
  token, lease = tonumber(current), ARGV[7] ~= '' and held_lease or nil
end
local deadline = ''
if lease then
  deadline = tostring(tonumber(ARGV[6]) + tonumber(lease))
  redis.call('HSET', KEYS[1], held_field, token .. ' ' .. deadline .. ' ' .. lease)
else
  redis.call('HDEL', KEYS[1], held_field)
end
local next_arg = set_fields(KEYS[1], ARGV, 9)
return {token, append_events(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV, next_arg, ARGV[6]), deadline}
