-- Shared tail of every mirroring script (prepended by bridge/batching.py, not a script on its own).
-- The event byte layout written here is the other half of dualplane/common/wire.py (with_seq,
-- seq_of, stream_id): change both together; tests/test_wire.py checks that they agree.
-- append_events(hash, events_key, prefix, job_id, argv, start, now):
--   ARGV[start..] holds (kind, body) pairs; body is an event JSON object without "seq".
--   Each event gets the next per-job seq, is appended to the events stream under the
--   stream id "<seq>-0" (so XRANGE by seq needs no index) and published: on a single Redis
--   PUBLISHed on <prefix><kind>:<job_id> (the hub's one pattern subscription), on a cluster
--   (SHARDED, set by bridge/batching.py) SPUBLISHed on the job's sharded channel
--   <prefix>live:{tag}:<job_id> (Keys.live_channel), whose tag is the events key's, so it hashes
--   to this script's slot and reaches only the nodes of that shard. Returns the last seq.
local function append_events(hash, events_key, prefix, job_id, argv, start, now)
  local seq = tonumber(redis.call('HGET', hash, 'seq') or '0')
  local live = SHARDED and (prefix .. 'live:' .. string.match(events_key, '%b{}') .. ':' .. job_id)
  for i = start, #argv, 2 do
    seq = seq + 1
    local event = '{"seq":' .. seq .. ',' .. string.sub(argv[i + 1], 2)
    redis.call('XADD', events_key, seq .. '-0', 'e', event)
    if live then
      redis.call('SPUBLISH', live, event)
    else
      redis.call('PUBLISH', prefix .. argv[i] .. ':' .. job_id, event)
    end
  end
  redis.call('HSET', hash, 'seq', seq, 'updated_at', now)
  return seq
end

-- set_fields(hash, argv, start): ARGV[start] = n, then n (field, value) pairs. Returns the next index.
local function set_fields(hash, argv, start)
  local n = tonumber(argv[start])
  if n > 0 then
    redis.call('HSET', hash, unpack(argv, start + 1, start + 2 * n))
  end
  return start + 1 + 2 * n
end
