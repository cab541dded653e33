-- Shared by every script. The names it uses (HP, HC, HT, HL, TOKEN_AT, ...)
-- are generated from the Go constants of format.go and prepended to this
-- file (scripts.go): the layout is written down in one place only. Lua
-- strings are 1-based: the *_AT names are 1-based positions.

-- bit reports whether flags f has bit b set.
local function bit(f, b) return math.floor(f / b) % 2 == 1 end

-- pending: a well-formed pending entry (header, flags, count, its tokens).
local function pending(v)
  return v and string.len(v) >= COUNT_AT and string.sub(v, 1, STATE_AT) == HP
    and string.len(v) >= COUNT_AT + TOKEN_LEN * string.byte(v, COUNT_AT)
end

-- writer: the index (0-based) of token tok among the n tokens ts, or -1.
local function writer(ts, n, tok)
  for i = 0, n - 1 do
    if string.sub(ts, TOKEN_LEN * i + 1, TOKEN_LEN * i + TOKEN_LEN) == tok then return i end
  end
  return -1
end

-- tokens: the n writer tokens of pending entry v.
local function tokens(v, n)
  return string.sub(v, TOKENS_AT, TOKENS_AT - 1 + TOKEN_LEN * n)
end

-- spoil sets the overlap flag of pending entry v (flags f) of key k: the
-- episode then never installs, the last writer out deletes.
local function spoil(k, f)
  if not bit(f, F_OVERLAP) then
    redis.call('SETRANGE', k, FLAGS_AT - 1, string.char(f + F_OVERLAP))
  end
end
