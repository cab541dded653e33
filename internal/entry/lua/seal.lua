-- seal: the writer of ARGV[1] is about to commit. A pending entry stops
-- serving its previous row (FlagPrevious), whoever's episode it is: once
-- the COMMIT may be visible, that row may be stale. An episode the writer
-- is not registered in (its own expired) is also marked never to install.
-- A key that is not pending at all (the writer's episode expired and a
-- reader refilled it) becomes pending again, marked never to install, for
-- ARGV[3] ms: otherwise readers would be served the refilled row from the
-- COMMIT until the writer's finalize.
local v = redis.call('GET', KEYS[1])
if not pending(v) then
  redis.call('SET', KEYS[1], HP .. ARGV[1] .. ARGV[2] .. string.char(F_OVERLAP, 1) .. ARGV[1], 'PX', ARGV[3])
  return SEAL_NONE
end
local f, n = string.byte(v, FLAGS_AT), string.byte(v, COUNT_AT)
local registered = writer(tokens(v, n), n, ARGV[1]) >= 0
local nf = f
if bit(f, F_PREVIOUS) then nf = nf - F_PREVIOUS end
if not registered and not bit(nf, F_OVERLAP) then nf = nf + F_OVERLAP end
if nf == f then return SEAL_NONE end
if bit(f, F_PREVIOUS) then
  -- The previous row goes with the flag.
  redis.call('SET', KEYS[1], string.sub(v, 1, FLAGS_AT - 1) .. string.char(nf, n) .. tokens(v, n), 'KEEPTTL')
  return SEAL_SEALED
end
redis.call('SETRANGE', KEYS[1], FLAGS_AT - 1, string.char(nf))
return SEAL_NONE
