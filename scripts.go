package writethrough

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// The one-key state machine, as Lua scripts. Each script touches one key, so
// each transition is atomic and valid on Redis Cluster. Header offsets are
// those of codec.go (Lua strings are 1-based): state at 3, token 4..19,
// fingerprint 20..27; a pending entry's flags at 28, writer count n at 29,
// tokens from 30, then the row.
//
// Scripts that only delete, mark or shrink carry the allow-oom flag, so that
// invalidation and finalize keep working when Redis is out of memory; the
// scripts that add data (prepare, fill, finalize with a new row) do not.

const luaPrelude = `
local HP = 'w\001P'
local HC = 'w\001C'
local HT = 'w\001T'
local HL = 'w\001L'
local function bit(f, b) return math.floor(f / b) % 2 == 1 end
-- pending: a well-formed pending entry (header, flags, count, its tokens).
local function pending(v)
  return v and string.len(v) >= 29 and string.sub(v, 1, 3) == HP
    and string.len(v) >= 29 + 16 * string.byte(v, 29)
end
`

// prepare: register a writer (token) on the key and make it pending. A new
// episode lives PendingTTL; writers that join it do not extend it.
// ARGV: token, fingerprint, intent flags (pendHasRow|pendDelete), row,
// pending TTL ms, max writers. Returns 1 (sole writer), 2 (overlap), 0
// (too many writers in flight: refused).
const luaPrepare = luaPrelude + `
local v = redis.call('GET', KEYS[1])
local tok = ARGV[1]
local flags = tonumber(ARGV[3])
local n, toks = 1, tok
if pending(v) then
  local of, on = string.byte(v, 28), string.byte(v, 29)
  local ot = string.sub(v, 30, 29 + 16 * on)
  local overlap = of % 2
  local found = false
  for i = 0, on - 1 do
    if string.sub(ot, 16 * i + 1, 16 * i + 16) == tok then found = true; break end
  end
  if found then
    n, toks = on, ot
  else
    if on >= tonumber(ARGV[6]) then return 0 end
    n, toks, overlap = on + 1, ot .. tok, 1
  end
  flags = flags + overlap
  -- Joining an episode keeps its deadline: a writer that crashed cannot be
  -- kept registered forever by the writers that follow it.
  redis.call('SET', KEYS[1], HP .. tok .. ARGV[2] .. string.char(flags, n) .. toks .. ARGV[4], 'KEEPTTL')
  return 1 + flags % 2
end
redis.call('SET', KEYS[1], HP .. tok .. ARGV[2] .. string.char(flags, n) .. toks .. ARGV[4], 'PX', ARGV[5])
return 1 + flags % 2
`

// finalize: a writer leaves the key after its transaction ended.
// ARGV: token, mode ('i' install the staged row, 'r' install the row given
// here, 'd' never install), committed TTL ms, negative TTL ms, and for mode
// 'r': intent flags, fingerprint, row.
// The last writer out installs only when it was the only writer of the
// episode; otherwise the key is deleted. Returns 1 installed, 0 left pending
// for the writers still in flight, 2 deleted, 3 not registered here (left
// alone, marked so that it never installs), 4 absent.
const luaFinalize = luaPrelude + `
local v = redis.call('GET', KEYS[1])
if not v then return 4 end
if not pending(v) then
  redis.call('DEL', KEYS[1]); return 2
end
local tok = ARGV[1]
local f, n = string.byte(v, 28), string.byte(v, 29)
local ot = string.sub(v, 30, 29 + 16 * n)
local idx = -1
for i = 0, n - 1 do
  if string.sub(ot, 16 * i + 1, 16 * i + 16) == tok then idx = i; break end
end
if idx < 0 then
  if f % 2 == 0 then redis.call('SETRANGE', KEYS[1], 27, string.char(f + 1)) end
  return 3
end
if n > 1 then
  local rest = string.sub(ot, 1, 16 * idx) .. string.sub(ot, 16 * idx + 17)
  redis.call('SET', KEYS[1], string.sub(v, 1, 27) .. string.char(f, n - 1) .. rest .. string.sub(v, 30 + 16 * n), 'KEEPTTL')
  return 0
end
if ARGV[2] ~= 'd' and f % 2 == 0 and string.sub(v, 4, 19) == tok then
  local intent, fp, row = f, string.sub(v, 20, 27), string.sub(v, 46)
  if ARGV[2] == 'r' then intent, fp, row = tonumber(ARGV[5]), ARGV[6], ARGV[7] end
  if bit(intent, 4) then
    redis.call('SET', KEYS[1], HT .. tok .. fp, 'PX', ARGV[4]); return 1
  elseif bit(intent, 2) then
    redis.call('SET', KEYS[1], HC .. tok .. fp .. row, 'PX', ARGV[3]); return 1
  end
end
redis.call('DEL', KEYS[1]); return 2
`

// invalidate: delete the key, unless writers are in flight on it; then mark
// it so that it is deleted, never installed, when the last one leaves.
// Returns 1 marked, 0 deleted or absent.
const luaInvalidate = luaPrelude + `
local v = redis.call('GET', KEYS[1])
if pending(v) then
  local f = string.byte(v, 28)
  if f % 2 == 0 then redis.call('SETRANGE', KEYS[1], 27, string.char(f + 1)) end
  return 1
end
redis.call('DEL', KEYS[1])
return 0
`

// fill: a reader that holds the lease installs what it read.
// ARGV: lease token, value, TTL ms. Returns 1 filled, 0 lease lost.
const luaFill = luaPrelude + `
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 19) == HL .. ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]); return 1
end
return 0
`

// script holds a script with its Redis 7 flags line and without it, for
// servers that cannot compile the flags line (Redis 6, emulators).
type script struct {
	name    string
	flagged *redis.Script
	plain   *redis.Script
}

func newScript(name, flags, body string) *script {
	s := &script{name: name, plain: redis.NewScript(body)}
	s.flagged = s.plain
	if flags != "" {
		s.flagged = redis.NewScript("#!lua flags=" + flags + "\n" + body)
	}
	return s
}

type scriptSet struct {
	noFlags atomic.Bool // the server rejected a flags line once: use plain scripts

	prepare, finalize, finalizeRow, invalidate, fill *script
}

func newScriptSet() *scriptSet {
	return &scriptSet{
		prepare:     newScript("prepare", "", luaPrepare),
		finalize:    newScript("finalize", "allow-oom", luaFinalize),
		finalizeRow: newScript("finalize", "", luaFinalize),
		invalidate:  newScript("invalidate", "allow-oom", luaInvalidate),
		fill:        newScript("fill", "", luaFill),
	}
}

func (s *scriptSet) pick(sc *script) *redis.Script {
	if s.noFlags.Load() {
		return sc.plain
	}
	return sc.flagged
}

// compileError reports a server that cannot compile a "#!lua" first line.
func compileError(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Error compiling script")
}

func noScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// call is one script invocation on one key.
type call struct {
	sc   *script
	key  string
	args []any
	res  int64
	err  error
}

// run runs calls in one pipelined round trip (EVALSHA), re-running any that
// the server did not know (NOSCRIPT) with EVAL.
func (s *scriptSet) run(ctx context.Context, rdb redis.UniversalClient, calls []*call) {
	if len(calls) == 1 {
		c := calls[0]
		c.res, c.err = s.runOne(ctx, rdb, c)
		return
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, _ = rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = s.pick(c.sc).EvalSha(ctx, pipe, []string{c.key}, c.args...)
		}
		return nil
	})
	for i, c := range calls {
		c.res, c.err = cmds[i].Int64()
		if noScript(c.err) || compileError(c.err) {
			c.res, c.err = s.runOne(ctx, rdb, c)
		}
	}
}

func (s *scriptSet) runOne(ctx context.Context, rdb redis.UniversalClient, c *call) (int64, error) {
	sc := s.pick(c.sc)
	res, err := sc.EvalSha(ctx, rdb, []string{c.key}, c.args...).Int64()
	if noScript(err) {
		res, err = sc.Eval(ctx, rdb, []string{c.key}, c.args...).Int64()
	}
	if compileError(err) && !s.noFlags.Load() {
		s.noFlags.Store(true)
		return s.runOne(ctx, rdb, c)
	}
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", c.sc.name, c.key, err)
	}
	return res, nil
}
