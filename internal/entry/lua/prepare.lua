-- prepare: register a writer on the key and make it pending. A new episode
-- lives the pending TTL; writers that join it do not extend it.
local tok, fp, intent, row, pttl, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local v = redis.call('GET', KEYS[1])
local flags, n, toks = intent, 1, tok
if pending(v) then
  local of, on = string.byte(v, FLAGS_AT), string.byte(v, COUNT_AT)
  local ot = tokens(v, on)
  local overlap = 0
  if bit(of, F_OVERLAP) then overlap = F_OVERLAP end
  if writer(ot, on, tok) >= 0 then
    n, toks = on, ot
  else
    if on >= max then return PREPARE_REFUSED end
    n, toks, overlap = on + 1, ot .. tok, F_OVERLAP
  end
  flags = flags + overlap
  -- Joining an episode keeps its deadline: a writer that crashed cannot be
  -- kept registered forever by the writers that follow it.
  redis.call('SET', KEYS[1], HP .. tok .. fp .. string.char(flags, n) .. toks .. row, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], HP .. tok .. fp .. string.char(flags, n) .. toks .. row, 'PX', pttl)
end
if bit(flags, F_OVERLAP) then return PREPARE_OVERLAP end
return PREPARE_SOLE
