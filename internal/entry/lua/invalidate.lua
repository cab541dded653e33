-- invalidate: delete the key, unless writers are in flight on it; then mark
-- it so that it is deleted, never installed, when the last one leaves.
local v = redis.call('GET', KEYS[1])
if pending(v) then
  spoil(KEYS[1], string.byte(v, FLAGS_AT))
  return INVALIDATE_MARKED
end
redis.call('DEL', KEYS[1])
return INVALIDATE_DELETED
