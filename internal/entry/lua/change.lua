-- change: a change that a committed transaction made to the key's row
-- arrived on the database's change stream (package cdc). ARGV: the token of
-- the plugin's writer that made the transaction, or '' when the plugin did
-- not. Like invalidate, except that the key is left alone when that writer
-- already handled it: its committed entry or tombstone is there, or it is a
-- writer of the pending episode (its finalize installs, or the episode
-- never does). Returns CHANGE_DELETED, CHANGE_MARKED or CHANGE_SKIPPED.
local v = redis.call('GET', KEYS[1])
local tok = ARGV[1]
if pending(v) then
  local n = string.byte(v, COUNT_AT)
  if tok ~= '' and writer(tokens(v, n), n, tok) >= 0 then return CHANGE_SKIPPED end
  spoil(KEYS[1], string.byte(v, FLAGS_AT))
  return CHANGE_MARKED
end
if tok ~= '' and v and string.len(v) >= HEADER_LEN
  and (string.sub(v, 1, STATE_AT) == HC or string.sub(v, 1, STATE_AT) == HT)
  and string.sub(v, TOKEN_AT, TOKEN_AT + TOKEN_LEN - 1) == tok then
  return CHANGE_SKIPPED
end
redis.call('DEL', KEYS[1])
return CHANGE_DELETED
