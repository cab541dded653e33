-- finalize: a writer leaves the key after its transaction ended. The last
-- writer out installs only when it was the only writer of the episode;
-- otherwise the key is deleted.
local tok, mode, ttl, negttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local v = redis.call('GET', KEYS[1])
if not v then return FINALIZE_ABSENT end
if not pending(v) then
  redis.call('DEL', KEYS[1]); return FINALIZE_DELETED
end
local f, n = string.byte(v, FLAGS_AT), string.byte(v, COUNT_AT)
local ot = tokens(v, n)
local idx = writer(ot, n, tok)
if idx < 0 then
  spoil(KEYS[1], f)
  return FINALIZE_NOT_REGISTERED
end
if n > 1 then
  local rest = string.sub(ot, 1, TOKEN_LEN * idx) .. string.sub(ot, TOKEN_LEN * (idx + 1) + 1)
  redis.call('SET', KEYS[1], string.sub(v, 1, HEADER_LEN) .. string.char(f, n - 1) .. rest .. string.sub(v, TOKENS_AT + TOKEN_LEN * n), 'KEEPTTL')
  return FINALIZE_LEFT_PENDING
end
if mode ~= MODE_NEVER_INSTALL and not bit(f, F_OVERLAP) and string.sub(v, TOKEN_AT, FP_AT - 1) == tok then
  -- The sole writer of the episode: n is 1, the staged row follows its token.
  local intent, fp, row = f, string.sub(v, FP_AT, HEADER_LEN), string.sub(v, TOKENS_AT + TOKEN_LEN)
  if mode == MODE_INSTALL_GIVEN then intent, fp, row = tonumber(ARGV[5]), ARGV[6], ARGV[7] end
  if bit(intent, F_DELETE) then
    redis.call('SET', KEYS[1], HT .. tok .. fp, 'PX', negttl); return FINALIZE_INSTALLED
  elseif bit(intent, F_HAS_ROW) then
    redis.call('SET', KEYS[1], HC .. tok .. fp .. row, 'PX', ttl); return FINALIZE_INSTALLED
  end
end
redis.call('DEL', KEYS[1]); return FINALIZE_DELETED
