package entry_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

const (
	tokD       = "DDDDDDDDDDDDDDDD"
	fp2        = "FP2FP2FP"
	row2       = "\x92\x02\xa1y"
	pendingTTL = time.Minute
	ttl        = time.Hour
	negTTL     = 2 * time.Minute
	maxWriters = 3
	// kept is the lifetime an entry is given before a transition that must
	// keep it (KEEPTTL): longer than any TTL a script sets here.
	kept = 5 * time.Hour
)

// rig runs script calls on the shared Redis, in keys of its own.
type rig struct {
	t      testing.TB
	rdb    redis.UniversalClient
	prefix string
	s      *entry.Scripts
}

func newRig(t testing.TB) *rig {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	return &rig{t: t, rdb: rdb, prefix: prefix, s: &entry.Scripts{}}
}

// put sets key to raw ("" leaves it absent) with lifetime life.
func (r *rig) put(key, raw string, life time.Duration) {
	r.t.Helper()
	if raw == "" {
		return
	}
	if err := r.rdb.Set(context.Background(), key, raw, life).Err(); err != nil {
		r.t.Fatalf("SET %s: %v", key, err)
	}
}

// get returns what key holds ("" when absent) and its PTTL.
func (r *rig) get(key string) (string, time.Duration) {
	r.t.Helper()
	ctx := context.Background()
	v, err := r.rdb.Get(ctx, key).Result()
	if err == redis.Nil {
		return "", 0
	}
	if err != nil {
		r.t.Fatalf("GET %s: %v", key, err)
	}
	life, err := r.rdb.PTTL(ctx, key).Result()
	if err != nil {
		r.t.Fatalf("PTTL %s: %v", key, err)
	}
	return v, life
}

// run runs calls in one batch and fails the test on any call's error.
func (r *rig) run(calls ...*entry.Call) {
	r.t.Helper()
	r.s.Run(context.Background(), r.rdb, calls)
	for _, c := range calls {
		if c.Err != nil {
			r.t.Fatalf("%s: %v", c.Key, c.Err)
		}
	}
}

// lifetime is what a key's PTTL must be after a transition.
type lifetime struct{ lo, hi time.Duration }

var (
	none      = lifetime{}                       // absent
	keptLife  = lifetime{kept - time.Hour, kept} // KEEPTTL: the lifetime it had
	newSet    = lifetime{1, pendingTTL}          // a new episode
	rowLife   = lifetime{negTTL + 1, ttl}        // a committed row
	tombLife  = lifetime{1, negTTL}              // a tombstone
	fillLife  = lifetime{negTTL + 1, ttl}        // a fill with ttl
	untouched = keptLife
)

func (r *rig) check(key, want string, life lifetime) {
	r.t.Helper()
	got, pttl := r.get(key)
	if got != want {
		r.t.Fatalf("%s holds\n%q\nwant\n%q", key, got, want)
	}
	if want != "" && (pttl < life.lo || pttl > life.hi) {
		r.t.Fatalf("%s lives %v, want within [%v, %v]", key, pttl, life.lo, life.hi)
	}
}

func prepare(key, tok string, intent entry.Flags, row string) *entry.Call {
	return entry.Prepare(key, entry.PrepareArgs{
		Token: tok, Fingerprint: fp, Intent: intent, Row: []byte(row),
		PendingTTL: pendingTTL, MaxWriters: maxWriters,
	})
}

// pending spells a pending entry: header token tok, flags, writer tokens, row.
func pending(tok string, flags byte, row string, writers ...string) string {
	s := "w\x01P" + tok + fp + string([]byte{flags, byte(len(writers))})
	for _, w := range writers {
		s += w
	}
	return s + row
}

var (
	committedA = "w\x01C" + tokA + fp + row
	leaseA     = "w\x01L" + tokA + fp
	tombA      = "w\x01T" + tokA + fp
	corrupt    = "w\x01P" + tokA + fp + "\x00\x05" // five writers, no tokens
)

func TestPrepare(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	tests := []struct {
		name   string
		before string
		call   func(key string) *entry.Call
		want   entry.PrepareResult
		after  string
		life   lifetime
	}{
		{"sole writer on an absent key", "",
			func(k string) *entry.Call { return prepare(k, tokA, entry.FlagHasRow, row) },
			entry.PrepareSole, pending(tokA, 2, row, tokA), newSet},
		{"sole writer, invalidate only", "",
			func(k string) *entry.Call { return prepare(k, tokA, 0, "") },
			entry.PrepareSole, pending(tokA, 0, "", tokA), newSet},
		{"a committed entry starts a new episode", committedA,
			func(k string) *entry.Call { return prepare(k, tokB, entry.FlagDelete, "") },
			entry.PrepareSole, pending(tokB, 4, "", tokB), newSet},
		{"a lease starts a new episode", leaseA,
			func(k string) *entry.Call { return prepare(k, tokB, 0, "") },
			entry.PrepareSole, pending(tokB, 0, "", tokB), newSet},
		{"a tombstone starts a new episode", tombA,
			func(k string) *entry.Call { return prepare(k, tokB, entry.FlagHasRow, row2) },
			entry.PrepareSole, pending(tokB, 2, row2, tokB), newSet},
		{"a corrupt pending entry starts a new episode", corrupt,
			func(k string) *entry.Call { return prepare(k, tokB, 0, "") },
			entry.PrepareSole, pending(tokB, 0, "", tokB), newSet},
		{"a second writer overlaps and keeps the deadline", pending(tokA, 2, row, tokA),
			func(k string) *entry.Call { return prepare(k, tokB, entry.FlagDelete, "") },
			entry.PrepareOverlap, pending(tokB, 5, "", tokA, tokB), keptLife},
		{"a registered writer prepares again alone", pending(tokA, 0, "", tokA),
			func(k string) *entry.Call { return prepare(k, tokA, entry.FlagHasRow, row) },
			entry.PrepareSole, pending(tokA, 2, row, tokA), keptLife},
		{"a registered writer prepares again beside others", pending(tokB, 1, "", tokA, tokB),
			func(k string) *entry.Call { return prepare(k, tokA, 0, "") },
			entry.PrepareOverlap, pending(tokA, 1, "", tokA, tokB), keptLife},
		{"a marked episode stays marked", pending(tokA, 3, row, tokA),
			func(k string) *entry.Call { return prepare(k, tokA, entry.FlagHasRow, row2) },
			entry.PrepareOverlap, pending(tokA, 3, row2, tokA), keptLife},
		{"refused at max writers", pending(tokC, 1, "", tokA, tokB, tokC),
			func(k string) *entry.Call { return prepare(k, tokD, 0, "") },
			entry.PrepareRefused, pending(tokC, 1, "", tokA, tokB, tokC), untouched},
		{"a registered writer is not refused at max writers", pending(tokC, 1, "", tokA, tokB, tokC),
			func(k string) *entry.Call { return prepare(k, tokB, 0, "") },
			entry.PrepareOverlap, pending(tokB, 1, "", tokA, tokB, tokC), keptLife},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := r.prefix + ":prepare:" + strconv.Itoa(i)
			r.put(key, tc.before, kept)
			c := tc.call(key)
			r.run(c)
			if got := c.Prepared(); got != tc.want {
				t.Fatalf("Prepared = %d, want %d", got, tc.want)
			}
			r.check(key, tc.after, tc.life)
		})
	}
}

func TestFinalize(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	staged := func(tok string, mode entry.FinalizeMode) func(string) *entry.Call {
		return func(k string) *entry.Call { return entry.Finalize(k, tok, mode, ttl, negTTL) }
	}
	given := func(tok string, intent entry.Flags, row string) func(string) *entry.Call {
		return func(k string) *entry.Call {
			return entry.FinalizeRow(k, entry.FinalizeRowArgs{
				Token: tok, Intent: intent, Fingerprint: fp2, Row: []byte(row), TTL: ttl, NegativeTTL: negTTL,
			})
		}
	}
	tests := []struct {
		name   string
		before string
		call   func(key string) *entry.Call
		want   entry.FinalizeResult
		after  string
		life   lifetime
	}{
		{"the sole writer installs its staged row", pending(tokA, 2, row, tokA),
			staged(tokA, entry.InstallStaged), entry.FinalizeInstalled, committedA, rowLife},
		{"the sole writer installs its staged tombstone", pending(tokA, 4, "", tokA),
			staged(tokA, entry.InstallStaged), entry.FinalizeInstalled, tombA, tombLife},
		{"the sole writer with nothing staged deletes", pending(tokA, 0, "", tokA),
			staged(tokA, entry.InstallStaged), entry.FinalizeDeleted, "", none},
		{"never install deletes", pending(tokA, 2, row, tokA),
			staged(tokA, entry.NeverInstall), entry.FinalizeDeleted, "", none},
		{"a writer leaves the others in flight", pending(tokB, 3, row, tokA, tokB, tokC),
			staged(tokB, entry.InstallStaged), entry.FinalizeLeftPending, pending(tokB, 3, row, tokA, tokC), keptLife},
		{"the first writer leaves the others in flight", pending(tokB, 1, "", tokA, tokB),
			staged(tokA, entry.NeverInstall), entry.FinalizeLeftPending, pending(tokB, 1, "", tokB), keptLife},
		{"the last writer of an overlapped episode deletes", pending(tokA, 3, row, tokA),
			staged(tokA, entry.InstallStaged), entry.FinalizeDeleted, "", none},
		{"an unregistered writer marks the entry", pending(tokA, 2, row, tokA),
			staged(tokB, entry.InstallStaged), entry.FinalizeNotRegistered, pending(tokA, 3, row, tokA), keptLife},
		{"an unregistered writer leaves a marked entry as it is", pending(tokA, 3, row, tokA),
			staged(tokB, entry.NeverInstall), entry.FinalizeNotRegistered, pending(tokA, 3, row, tokA), keptLife},
		{"an absent key", "",
			staged(tokA, entry.InstallStaged), entry.FinalizeAbsent, "", none},
		{"a committed entry is deleted", committedA,
			staged(tokA, entry.InstallStaged), entry.FinalizeDeleted, "", none},
		{"a lease is deleted", leaseA,
			staged(tokA, entry.InstallStaged), entry.FinalizeDeleted, "", none},
		{"a corrupt entry is deleted", corrupt,
			staged(tokA, entry.InstallStaged), entry.FinalizeDeleted, "", none},
		{"the given row is installed", pending(tokA, 0, "", tokA),
			given(tokA, entry.FlagHasRow, row2), entry.FinalizeInstalled, "w\x01C" + tokA + fp2 + row2, rowLife},
		{"the given row replaces the staged one", pending(tokA, 2, row, tokA),
			given(tokA, entry.FlagHasRow, row2), entry.FinalizeInstalled, "w\x01C" + tokA + fp2 + row2, rowLife},
		{"the given tombstone is installed", pending(tokA, 2, row, tokA),
			given(tokA, entry.FlagDelete, ""), entry.FinalizeInstalled, "w\x01T" + tokA + fp2, tombLife},
		{"given nothing, the key is deleted", pending(tokA, 2, row, tokA),
			given(tokA, 0, ""), entry.FinalizeDeleted, "", none},
		{"a given row is not installed after an overlap", pending(tokA, 1, "", tokA),
			given(tokA, entry.FlagHasRow, row2), entry.FinalizeDeleted, "", none},
		{"a given row waits for the other writers", pending(tokA, 1, "", tokA, tokB),
			given(tokA, entry.FlagHasRow, row2), entry.FinalizeLeftPending, pending(tokA, 1, "", tokB), keptLife},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := r.prefix + ":finalize:" + strconv.Itoa(i)
			r.put(key, tc.before, kept)
			c := tc.call(key)
			r.run(c)
			if got := c.Finalized(); got != tc.want {
				t.Fatalf("Finalized = %d, want %d", got, tc.want)
			}
			r.check(key, tc.after, tc.life)
		})
	}
}

func TestFinalizeRefusesTheGivenRowMode(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	key := r.prefix + ":k"
	r.put(key, pending(tokA, 2, row, tokA), kept)
	c := entry.Finalize(key, tokA, entry.InstallGiven, ttl, negTTL)
	r.s.Run(context.Background(), r.rdb, []*entry.Call{c})
	if c.Err == nil {
		t.Fatalf("Finalize in mode InstallGiven ran; want an error")
	}
	r.check(key, pending(tokA, 2, row, tokA), untouched)
}

func TestInvalidate(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	tests := []struct {
		name   string
		before string
		want   entry.InvalidateResult
		after  string
	}{
		{"a pending entry is marked", pending(tokA, 2, row, tokA), entry.InvalidateMarked, pending(tokA, 3, row, tokA)},
		{"a pending entry with writers is marked", pending(tokB, 0, "", tokA, tokB), entry.InvalidateMarked, pending(tokB, 1, "", tokA, tokB)},
		{"a marked entry stays as it is", pending(tokA, 5, "", tokA, tokB), entry.InvalidateMarked, pending(tokA, 5, "", tokA, tokB)},
		{"a committed entry is deleted", committedA, entry.InvalidateDeleted, ""},
		{"a lease is deleted", leaseA, entry.InvalidateDeleted, ""},
		{"a tombstone is deleted", tombA, entry.InvalidateDeleted, ""},
		{"a corrupt entry is deleted", corrupt, entry.InvalidateDeleted, ""},
		{"a value of another format is deleted", "w\x02C" + tokA + fp, entry.InvalidateDeleted, ""},
		{"an absent key stays absent", "", entry.InvalidateDeleted, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := r.prefix + ":invalidate:" + strconv.Itoa(i)
			r.put(key, tc.before, kept)
			c := entry.Invalidate(key)
			r.run(c)
			if got := c.Invalidated(); got != tc.want {
				t.Fatalf("Invalidated = %d, want %d", got, tc.want)
			}
			r.check(key, tc.after, keptLife)
		})
	}
}

func TestChange(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	committedB := "w\x01C" + tokB + fp + row
	tests := []struct {
		name   string
		tok    string // the transaction's writer; "" for one the plugin did not make
		before string
		want   entry.ChangeResult
		after  string
	}{
		{"its writer's committed entry is left", tokA, committedA, entry.ChangeSkipped, committedA},
		{"its writer's tombstone is left", tokA, tombA, entry.ChangeSkipped, tombA},
		{"a pending episode it writes in is left", tokA, pending(tokB, 2, row, tokB, tokA), entry.ChangeSkipped, pending(tokB, 2, row, tokB, tokA)},
		{"another writer's committed entry is deleted", tokA, committedB, entry.ChangeDeleted, ""},
		{"a lease is deleted", tokA, leaseA, entry.ChangeDeleted, ""},
		{"a pending episode without it is marked", tokA, pending(tokB, 2, row, tokB), entry.ChangeMarked, pending(tokB, 3, row, tokB)},
		{"no writer: a committed entry is deleted", "", committedA, entry.ChangeDeleted, ""},
		{"no writer: a tombstone is deleted", "", tombA, entry.ChangeDeleted, ""},
		{"no writer: a pending entry is marked", "", pending(tokA, 2, row, tokA), entry.ChangeMarked, pending(tokA, 3, row, tokA)},
		{"a corrupt entry is deleted", tokA, corrupt, entry.ChangeDeleted, ""},
		{"a value of another format is deleted", tokA, "w\x02C" + tokA + fp, entry.ChangeDeleted, ""},
		{"an absent key stays absent", tokA, "", entry.ChangeDeleted, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := r.prefix + ":change:" + strconv.Itoa(i)
			r.put(key, tc.before, kept)
			c := entry.Change(key, tc.tok)
			r.run(c)
			if got := c.Changed(); got != tc.want {
				t.Fatalf("Changed = %d, want %d", got, tc.want)
			}
			r.check(key, tc.after, keptLife)
		})
	}
}

// TestInvalidatedEpisodeNeverInstalls: a writer that prepared before an
// invalidation does not install when it leaves.
func TestInvalidatedEpisodeNeverInstalls(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	key := r.prefix + ":k"
	r.run(prepare(key, tokA, entry.FlagHasRow, row))
	r.run(entry.Invalidate(key))
	c := entry.Finalize(key, tokA, entry.InstallStaged, ttl, negTTL)
	r.run(c)
	if c.Finalized() != entry.FinalizeDeleted {
		t.Fatalf("Finalized = %d, want deleted", c.Finalized())
	}
	r.check(key, "", none)
}

func TestFill(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	value := entry.CommittedValue(tokA, fp, []byte(row))
	tests := []struct {
		name   string
		before string
		want   entry.FillResult
		after  string
		life   lifetime
	}{
		{"under its lease", leaseA, entry.FillFilled, committedA, fillLife},
		{"under another reader's lease", "w\x01L" + tokB + fp, entry.FillLost, "w\x01L" + tokB + fp, untouched},
		{"a writer replaced the lease", pending(tokA, 0, "", tokA), entry.FillLost, pending(tokA, 0, "", tokA), untouched},
		{"a committed entry of the same token", committedA, entry.FillLost, committedA, untouched},
		{"the lease expired", "", entry.FillLost, "", none},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := r.prefix + ":fill:" + strconv.Itoa(i)
			r.put(key, tc.before, kept)
			c := entry.Fill(key, tokA, value, ttl)
			r.run(c)
			if got := c.Filled(); got != tc.want {
				t.Fatalf("Filled = %d, want %d", got, tc.want)
			}
			r.check(key, tc.after, tc.life)
		})
	}
}

// TestOneEpisode walks a key through a read and two overlapping writers.
func TestOneEpisode(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	key := r.prefix + ":k"
	lease := entry.NewToken()
	if ok, err := r.rdb.SetNX(ctx, key, entry.LeaseValue(lease, fp), time.Minute).Result(); err != nil || !ok {
		t.Fatalf("SETNX lease: %v %v", ok, err)
	}
	a, b := entry.NewToken(), entry.NewToken()
	pa, pb := prepare(key, a, entry.FlagHasRow, row), prepare(key, b, entry.FlagHasRow, row2)
	r.run(pa)
	fill := entry.Fill(key, lease, entry.CommittedValue(lease, fp, []byte(row)), ttl)
	r.run(fill, pb)
	if pa.Prepared() != entry.PrepareSole || pb.Prepared() != entry.PrepareOverlap || fill.Filled() != entry.FillLost {
		t.Fatalf("prepare a %d, prepare b %d, fill %d", pa.Prepared(), pb.Prepared(), fill.Filled())
	}
	fa := entry.Finalize(key, a, entry.InstallStaged, ttl, negTTL)
	r.run(fa)
	fb := entry.Finalize(key, b, entry.InstallStaged, ttl, negTTL)
	r.run(fb)
	if fa.Finalized() != entry.FinalizeLeftPending || fb.Finalized() != entry.FinalizeDeleted {
		t.Fatalf("finalize a %d, finalize b %d", fa.Finalized(), fb.Finalized())
	}
	r.check(key, "", none)
}

// TestRunBatchesCalls: one Run carries calls of every script, each with its
// own result, and a call built wrong fails alone.
func TestRunBatchesCalls(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	k := func(i int) string { return r.prefix + ":batch:" + strconv.Itoa(i) }
	r.put(k(1), pending(tokA, 2, row, tokA), kept)
	r.put(k(2), leaseA, kept)
	r.put(k(3), committedA, kept)
	calls := []*entry.Call{
		prepare(k(0), tokA, 0, ""),
		entry.Finalize(k(1), tokA, entry.InstallStaged, ttl, negTTL),
		entry.Fill(k(2), tokA, []byte(committedA), ttl),
		entry.Invalidate(k(3)),
		entry.Finalize(k(4), tokA, entry.InstallGiven, ttl, negTTL),
	}
	r.s.Run(context.Background(), r.rdb, calls)
	for _, c := range calls[:4] {
		if c.Err != nil {
			t.Fatalf("%s: %v", c.Key, c.Err)
		}
	}
	if calls[4].Err == nil {
		t.Fatalf("a call built wrong ran")
	}
	if calls[0].Prepared() != entry.PrepareSole || calls[1].Finalized() != entry.FinalizeInstalled ||
		calls[2].Filled() != entry.FillFilled || calls[3].Invalidated() != entry.InvalidateDeleted {
		t.Fatalf("results %d %d %d %d", calls[0].Prepared(), calls[1].Finalized(), calls[2].Filled(), calls[3].Invalidated())
	}
	r.check(k(0), pending(tokA, 0, "", tokA), newSet)
	r.check(k(1), committedA, rowLife)
	r.check(k(2), committedA, fillLife)
	r.check(k(3), "", none)
}

// TestRunLoadsUnknownScripts: a server that lost its script cache (a restart,
// SCRIPT FLUSH) is sent the scripts again, alone or in a batch.
func TestRunLoadsUnknownScripts(t *testing.T) {
	t.Parallel()
	srv := redisproc.Start(t)
	rdb := srv.Client(t)
	r := &rig{t: t, rdb: rdb, prefix: "x", s: &entry.Scripts{}}
	ctx := context.Background()
	for _, n := range []int{1, 3} {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
		calls := make([]*entry.Call, n)
		for i := range calls {
			calls[i] = entry.Invalidate("x:" + strconv.Itoa(i))
		}
		r.run(calls...)
	}
}

// TestOutOfMemory: the scripts that only delete, mark or shrink run when
// Redis refuses writes (allow-oom); those that add data are refused.
func TestOutOfMemory(t *testing.T) {
	t.Parallel()
	srv := redisproc.Start(t, "--maxmemory-policy", "noeviction")
	rdb := srv.Client(t)
	ctx := context.Background()
	r := &rig{t: t, rdb: rdb, prefix: "x", s: &entry.Scripts{}}
	r.put("staged", pending(tokA, 2, row, tokA), kept)
	r.put("given", pending(tokA, 0, "", tokA), kept)
	r.put("pending", pending(tokA, 2, row, tokA), kept)
	r.put("committed", committedA, kept)
	r.put("lease", leaseA, kept)
	r.put("released", pending(tokA, 2, row, tokA), kept)
	testrig.FillRedis(t, rdb)

	allowed := []*entry.Call{
		entry.Finalize("staged", tokA, entry.InstallStaged, ttl, negTTL),
		entry.Finalize("released", tokA, entry.NeverInstall, 0, 0),
		entry.Invalidate("pending"),
		entry.Invalidate("committed"),
	}
	r.run(allowed...)
	r.check("staged", committedA, rowLife)
	r.check("released", "", none)
	r.check("pending", pending(tokA, 3, row, tokA), keptLife)
	r.check("committed", "", none)

	refused := []*entry.Call{
		prepare("new", tokA, entry.FlagHasRow, row),
		entry.Fill("lease", tokA, []byte(committedA), ttl),
		entry.FinalizeRow("given", entry.FinalizeRowArgs{Token: tokA, Intent: entry.FlagHasRow, Fingerprint: fp, Row: []byte(row), TTL: ttl, NegativeTTL: negTTL}),
	}
	r.s.Run(ctx, rdb, refused)
	for _, c := range refused {
		if !redis.IsOOMError(c.Err) {
			t.Errorf("%s: want an OOM error, got %v", c.Key, c.Err)
		}
	}
	r.check("lease", leaseA, untouched)
	r.check("given", pending(tokA, 0, "", tokA), keptLife)
}
