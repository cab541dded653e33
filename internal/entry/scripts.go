package entry

import (
	"context"
	_ "embed" // the Lua scripts
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// The one-key state machine, as Lua scripts. Each script touches one key, so
// each transition is atomic and valid on Redis Cluster.
//
// Scripts that only delete, mark or shrink carry the allow-oom flag, so that
// invalidation and finalize keep working when Redis is out of memory; the
// scripts that add data (prepare, fill, finalize with a new row) do not.

var (
	//go:embed lua/prelude.lua
	preludeLua string
	//go:embed lua/prepare.lua
	prepareLua string
	//go:embed lua/finalize.lua
	finalizeLua string
	//go:embed lua/invalidate.lua
	invalidateLua string
	//go:embed lua/fill.lua
	fillLua string
	//go:embed lua/change.lua
	changeLua string
)

// luaNames binds the names the scripts use to the constants of format.go and
// calls.go. Positions are 1-based, as Lua's string functions count.
func luaNames() string {
	var b strings.Builder
	header := func(name string, s State) {
		fmt.Fprintf(&b, "local %s = string.char(%d, %d, %d)\n", name, Magic, FormatVersion, s)
	}
	header("HP", Pending)
	header("HC", Committed)
	header("HT", Tombstone)
	header("HL", Lease)
	for _, c := range []struct {
		name string
		v    int64
	}{
		{"STATE_AT", stateAt + 1},
		{"TOKEN_LEN", TokenLen},
		{"TOKEN_AT", tokenAt + 1},
		{"FP_AT", fpAt + 1},
		{"HEADER_LEN", HeaderLen},
		{"FLAGS_AT", flagsAt + 1},
		{"COUNT_AT", countAt + 1},
		{"TOKENS_AT", tokensAt + 1},
		{"F_OVERLAP", int64(FlagOverlap)},
		{"F_HAS_ROW", int64(FlagHasRow)},
		{"F_DELETE", int64(FlagDelete)},
		{"PREPARE_REFUSED", int64(PrepareRefused)},
		{"PREPARE_SOLE", int64(PrepareSole)},
		{"PREPARE_OVERLAP", int64(PrepareOverlap)},
		{"FINALIZE_LEFT_PENDING", int64(FinalizeLeftPending)},
		{"FINALIZE_INSTALLED", int64(FinalizeInstalled)},
		{"FINALIZE_DELETED", int64(FinalizeDeleted)},
		{"FINALIZE_NOT_REGISTERED", int64(FinalizeNotRegistered)},
		{"FINALIZE_ABSENT", int64(FinalizeAbsent)},
		{"INVALIDATE_DELETED", int64(InvalidateDeleted)},
		{"INVALIDATE_MARKED", int64(InvalidateMarked)},
		{"CHANGE_DELETED", int64(ChangeDeleted)},
		{"CHANGE_MARKED", int64(ChangeMarked)},
		{"CHANGE_SKIPPED", int64(ChangeSkipped)},
		{"FILL_LOST", int64(FillLost)},
		{"FILL_FILLED", int64(FillFilled)},
	} {
		fmt.Fprintf(&b, "local %s = %d\n", c.name, c.v)
	}
	for _, m := range []struct {
		name string
		v    FinalizeMode
	}{
		{"MODE_INSTALL_STAGED", InstallStaged},
		{"MODE_INSTALL_GIVEN", InstallGiven},
		{"MODE_NEVER_INSTALL", NeverInstall},
	} {
		fmt.Fprintf(&b, "local %s = %q\n", m.name, string(m.v))
	}
	return b.String()
}

// script holds a script with its Redis 7 flags line and without it, for
// servers that cannot compile the flags line (Redis 6, emulators).
type script struct {
	name    string
	flagged *redis.Script
	plain   *redis.Script
}

func newScript(name, flags, body string) *script {
	src := luaNames() + preludeLua + body
	s := &script{name: name, plain: redis.NewScript(src)}
	s.flagged = s.plain
	if flags != "" {
		s.flagged = redis.NewScript("#!lua flags=" + flags + "\n" + src)
	}
	return s
}

var (
	prepareScript     = newScript("prepare", "", prepareLua)
	finalizeScript    = newScript("finalize", "allow-oom", finalizeLua)
	finalizeRowScript = newScript("finalize", "", finalizeLua)
	invalidateScript  = newScript("invalidate", "allow-oom", invalidateLua)
	changeScript      = newScript("change", "allow-oom", changeLua)
	fillScript        = newScript("fill", "", fillLua)
)

// Scripts runs script calls on one server (or cluster). It remembers whether
// the server refused the scripts' flags line. The zero value is ready to use;
// a Scripts is safe for concurrent use.
type Scripts struct {
	noFlags atomic.Bool // the server rejected a flags line once: use plain scripts
}

func (s *Scripts) pick(sc *script) *redis.Script {
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

// Run runs calls in one pipelined round trip (EVALSHA), re-running any that
// the server did not know (NOSCRIPT) with EVAL, and sets each call's Err
// and result. A call built wrong is not sent: it fails with the builder's
// error.
func (s *Scripts) Run(ctx context.Context, rdb redis.UniversalClient, calls []*Call) {
	todo := make([]*Call, 0, len(calls))
	for _, c := range calls {
		c.res, c.Err = 0, c.invalid
		if c.invalid == nil {
			todo = append(todo, c)
		}
	}
	switch len(todo) {
	case 0:
		return
	case 1:
		c := todo[0]
		c.res, c.Err = s.runOne(ctx, rdb, c)
		return
	}
	cmds := make([]*redis.Cmd, len(todo))
	_, perr := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range todo {
			cmds[i] = s.pick(c.sc).EvalSha(ctx, pipe, []string{c.Key}, c.args...)
		}
		return nil
	})
	for i, c := range todo {
		c.res, c.Err = intResult(cmds[i], perr)
		if noScript(c.Err) || compileError(c.Err) {
			c.res, c.Err = s.runOne(ctx, rdb, c)
		}
	}
}

// errNoReply is the error of a pipelined command that got neither a reply
// nor an error of its own: go-redis gave up on the pipeline first (a
// cluster pipeline whose context ended between redirections).
var errNoReply = errors.New("no reply")

// intResult is cmd's integer reply, or an error; a command left without a
// reply carries the pipeline's error.
func intResult(cmd *redis.Cmd, pipeErr error) (int64, error) {
	if cmd.Err() == nil && cmd.Val() == nil {
		if pipeErr == nil {
			pipeErr = errNoReply
		}
		return 0, fmt.Errorf("%w: %w", errNoReply, pipeErr)
	}
	return cmd.Int64()
}

func (s *Scripts) runOne(ctx context.Context, rdb redis.UniversalClient, c *Call) (int64, error) {
	sc := s.pick(c.sc)
	res, err := sc.EvalSha(ctx, rdb, []string{c.Key}, c.args...).Int64()
	if noScript(err) {
		res, err = sc.Eval(ctx, rdb, []string{c.Key}, c.args...).Int64()
	}
	if compileError(err) && !s.noFlags.Load() {
		s.noFlags.Store(true)
		return s.runOne(ctx, rdb, c)
	}
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", c.sc.name, c.Key, err)
	}
	return res, nil
}
