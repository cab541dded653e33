-- prepare: register a writer on the key and make it pending. A new episode
-- lives the pending TTL; writers that join it do not extend it.
-- With ARGV[7] = '1' (keep previous) the committed row the key holds, if
-- it is of the writer's model, stays in the entry for readers to serve
-- (F_PREVIOUS) until the writer seals the key before it commits.
local tok, fp, intent, row, pttl, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
local keep = ARGV[7] == '1'
local v = redis.call('GET', KEYS[1])
local flags, n, toks = intent, 1, tok
if pending(v) then
  local of, on = string.byte(v, FLAGS_AT), string.byte(v, COUNT_AT)
  local ot = tokens(v, on)
  local overlap = 0
  if bit(of, F_OVERLAP) then overlap = F_OVERLAP end
  if writer(ot, on, tok) >= 0 then
    n, toks = on, ot
    if keep and bit(of, F_PREVIOUS) and string.sub(v, FP_AT, HEADER_LEN) == fp then
      -- The same writer again (another statement of its transaction): the
      -- previous row stays what it was.
      flags, row = flags + F_PREVIOUS, string.sub(v, TOKENS_AT + TOKEN_LEN * on)
    end
  else
    if on >= max then return PREPARE_REFUSED end
    n, toks, overlap = on + 1, ot .. tok, F_OVERLAP
  end
  flags = flags + overlap
  -- Joining an episode keeps its deadline: a writer that crashed cannot be
  -- kept registered forever by the writers that follow it.
  redis.call('SET', KEYS[1], HP .. tok .. fp .. string.char(flags, n) .. toks .. row, 'KEEPTTL')
else
  -- Kept only when the row would have lived longer than the episode: the
  -- pending entry must not serve it past its own deadline.
  if keep and v and string.len(v) >= HEADER_LEN and string.sub(v, 1, STATE_AT) == HC
    and string.sub(v, FP_AT, HEADER_LEN) == fp and redis.call('PTTL', KEYS[1]) >= tonumber(pttl) then
    flags, row = flags + F_PREVIOUS, string.sub(v, HEADER_LEN + 1)
  end
  redis.call('SET', KEYS[1], HP .. tok .. fp .. string.char(flags, n) .. toks .. row, 'PX', pttl)
end
if bit(flags, F_OVERLAP) then return PREPARE_OVERLAP end
return PREPARE_SOLE
