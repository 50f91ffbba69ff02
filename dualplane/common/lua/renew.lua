-- Renew the leases of the entries this consumer still owns (XCLAIM JUSTID resets their idle
-- time without counting a delivery), and only those: a plain XCLAIM would also take back an
-- entry another consumer reclaimed while this one was paused, and both would run it.
-- KEYS[1] stream  ARGV[1] group  ARGV[2] this consumer  ARGV[3..] entry ids
-- Returns the ids that are no longer this consumer's (reclaimed by another, or acknowledged).
local lost = {}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row ~= nil and row[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
