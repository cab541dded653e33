-- fill: a reader that holds the lease installs what it read.
local lease, value, ttl = ARGV[1], ARGV[2], ARGV[3]
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, FP_AT - 1) == HL .. lease then
  redis.call('SET', KEYS[1], value, 'PX', ttl); return FILL_FILLED
end
return FILL_LOST
