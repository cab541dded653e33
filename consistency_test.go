package writethrough_test

// Randomized histories checked for linearizability (P2) and convergence
// (P3). Clients run a random mix of GORM writes and cached or direct reads
// over a few hot rows; every operation is recorded with its call and return
// time on one monotonic clock, and every committed write with the row it
// left, read back inside its transaction. The run is cut into windows: at
// the end of each, every client stops, the harness compares every key with
// its row (P3), and internal/checker checks the window's history with
// porcupine, per row, starting from the rows as the database then has them.
//
// The same harness runs two deliberately broken strategies (test code, not
// the plugin) and must catch them every time: if it could not, its silence
// about the plugin would mean nothing.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/checker"
	"github.com/gorm-writethrough/writethrough/internal/faultproxy"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// Item is the row of the histories. Every update increments Version under
// the row lock; every insert starts a new epoch (a sequence value shifted
// past any version one lifetime reaches), so versions follow the row's
// commit order across deletes and re-inserts. Tag names the operation that
// wrote the row last, so that no two writes leave the same value.
type Item struct {
	ID      int64 `gorm:"primaryKey;autoIncrement:false" cache:"ttl:10m"`
	Version int64 `gorm:"default:(nextval('item_epochs') << 32)"`
	A       int64
	B       int64
	Tag     int64
}

// itemsDDL creates the table. An INSERT computes its defaults before it
// waits on a conflicting transaction's delete or insert of the same key, so
// a default epoch could be older than the lifetime it follows. The triggers
// make inserts and deletes of one id take a lock on it first, and take the
// epoch only once the insert holds it.
const itemsDDL = `
CREATE SEQUENCE item_epochs;
CREATE TABLE items (
	id      bigint PRIMARY KEY,
	version bigint NOT NULL DEFAULT (nextval('item_epochs') << 32),
	a       bigint NOT NULL DEFAULT 0,
	b       bigint NOT NULL DEFAULT 0,
	tag     bigint NOT NULL DEFAULT 0
);
CREATE FUNCTION item_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_advisory_xact_lock(7411, NEW.id::int);
	NEW.version := nextval('item_epochs') << 32;
	RETURN NEW;
END $$;
CREATE FUNCTION item_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_advisory_xact_lock(7411, OLD.id::int);
	RETURN OLD;
END $$;
CREATE TRIGGER item_insert BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION item_insert();
CREATE TRIGGER item_delete BEFORE DELETE ON items FOR EACH ROW EXECUTE FUNCTION item_delete()`

func (it Item) value() checker.Value {
	return checker.Value{Present: true, Version: it.Version, Row: fmt.Sprintf("a=%d b=%d tag=%d", it.A, it.B, it.Tag)}
}

// readHow is how a strategy serves a read.
type readHow int

const (
	readFirst   readHow = iota // db.Scopes(Cached).First
	readGet                    // writethrough.Get
	readFind                   // db.Scopes(Cached).Find with several keys
	readGetMany                // writethrough.GetMany
)

var readSources = [...]string{"cached-first", "get", "cached-find", "get-many"}

// cacheState is what a strategy's cache holds for a row.
type cacheState int

const (
	cacheAbsent    cacheState = iota
	cacheRow                  // a row, to be served
	cacheNotFound             // a negative entry, served as not found
	cacheBusy                 // an entry not served (pending, lease)
	cachePending              // a write's pending entry
	cacheUndecoded            // bytes the test could not decode
)

// strategy is a way of caching Items that the harness drives.
type strategy interface {
	name() string
	// db is the handle every write goes through.
	db() *gorm.DB
	// read returns the rows of ids that exist, as a reader of the strategy
	// gets them.
	read(ctx context.Context, how readHow, ids []int64) (map[int64]Item, error)
	// committed is told the rows of every write that returned success.
	committed(ids []int64)
	// settle waits for work the strategy does after writes return.
	settle()
	// cached reports what the cache holds for id.
	cached(ctx context.Context, id int64) (cacheState, Item, error)
}

// runConfig shapes one randomized run.
type runConfig struct {
	clients  int
	rows     int           // hot rows, ids 1..rows
	duration time.Duration // the whole run
	window   time.Duration // between quiescent points
	seed     uint64
	// killCommits, when positive, is the chance in a thousand that a write
	// transaction has its backend terminated at tx:before-commit (plugin
	// only): an unknown-outcome commit.
	killCommits int
	// rollbacks weights the transactions that roll back.
	rollbacks int
	// plugin configures the plugin (Prefix is filled in).
	plugin writethrough.Config
	// extraReads is the chance in a hundred that a step is a read through
	// the cache instead of the usual mix (which is about 40% reads).
	extraReads int
	// faults, when set, runs during every window (not at quiescent points)
	// until stop is closed.
	faults func(stop <-chan struct{})
	// bypass is the chance in a hundred that a step writes around the
	// plugin (bypass_test.go): raw SQL on a connection of its own, a
	// psql-style script, or db.Exec. The checker measures the reads those
	// writes leave stale instead of counting them as violations.
	bypass int
	// consumer runs a cdc.Consumer on the items table during the run, and
	// at every quiescent point waits until it applied every change.
	consumer bool
	// log receives progress lines; nil is silent.
	log func(format string, args ...any)
	// onError, when set, is told every error the application saw: reads
	// through the cache that failed, and writes that failed other than by
	// deliberate rollback.
	onError func(write bool, err error)
}

// runReport is what a run found.
type runReport struct {
	strategy string
	checker.Totals
	violations  []checker.Violation
	stale       []checker.StaleRead
	phantomOps  []checker.Op
	bypassStale []checker.StaleRead // the stalest reads behind writes around the plugin
	// P3, counted over every quiescent point.
	scans           int      // keys compared
	diverged        int      // keys that held another row, or a row for an absent one
	leftPending     int      // keys still pending with no write in flight
	leftBusy        int      // keys holding a lease with no read in flight
	examplesP3      []string // keys that diverged
	examplesPending []string
	writeFails      int // writes that failed and were rolled back
	stats           string
	elapsed         time.Duration
	opsPerSec       float64
}

func (r runReport) String() string {
	return fmt.Sprintf("%s: %s; P3: %d keys scanned, %d diverged, %d left pending, %d left leased; %d failed writes; %.0f ops/s over %s%s",
		r.strategy, r.Totals, r.scans, r.diverged, r.leftPending, r.leftBusy, r.writeFails, r.opsPerSec, r.elapsed.Round(time.Millisecond), r.stats)
}

// details lists examples of what went wrong.
func (r runReport) details() string {
	var b strings.Builder
	for _, v := range r.violations {
		n, around := v.Culprit(50 * time.Millisecond)
		fmt.Fprintf(&b, "linearizability violation: window %d, key %d, initial %s: the first %d of %d ops are already not linearizable; the last of them and what overlaps it:\n",
			v.Window, v.Key, v.Init, n, len(v.Ops))
		for _, o := range around {
			fmt.Fprintf(&b, "  %s\n", o)
		}
	}
	for _, s := range r.stale {
		fmt.Fprintf(&b, "stale read by %s: %s\n", s.Staleness, s.Op)
		if s.History != nil && len(r.violations) == 0 {
			fmt.Fprintf(&b, "  in %s\n", s.History.Format(-1))
		}
	}
	for _, p := range r.phantomOps {
		fmt.Fprintf(&b, "phantom read: %s\n", p)
	}
	for _, p := range r.examplesP3 {
		fmt.Fprintf(&b, "P3: %s\n", p)
	}
	for _, p := range r.examplesPending {
		fmt.Fprintf(&b, "P3 (not served, expires with PendingTTL): %s\n", p)
	}
	return b.String()
}

// harness runs clients against a strategy and checks what they saw.
type harness struct {
	cfg   runConfig
	s     strategy
	start time.Time
	kills *sync.Map     // Redis key -> backend pid to terminate at its commit
	raw   *pgxpool.Pool // connections that bypass GORM (cfg.bypass)

	tags atomic.Int64
}

func (h *harness) now() int64 { return int64(time.Since(h.start)) }

var errRollback = errors.New("deliberate rollback")

// run runs the workload window by window and returns the report. Each
// window is checked on a goroutine of its own while the next one runs.
func (h *harness) run(ctx context.Context) (runReport, error) {
	h.start = time.Now()
	chk := &checker.Checker{Timeout: 20 * time.Second}
	rep := runReport{strategy: h.s.name()}
	init, err := h.snapshot(ctx)
	if err != nil {
		return rep, err
	}
	type window struct {
		n     int
		init  map[int64]checker.Value
		start int64
		ops   []checker.Op
	}
	windows := make(chan window, 2)
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		for w := range windows {
			res := chk.CheckWindow(w.init, w.start, w.ops)
			if h.cfg.log != nil && (res.Violations > 0 || res.Phantoms > 0 || w.n%30 == 29) {
				h.cfg.log("%s window %d: %d ops, %d violations, %d stale, %d phantoms; totals %s",
					h.s.name(), w.n, res.Ops, res.Violations, res.StaleReads, res.Phantoms, chk.Totals)
			}
		}
	}()
	defer func() {
		if windows != nil {
			close(windows)
			<-checked
		}
	}()
	end := h.start.Add(h.cfg.duration)
	rng := rand.New(rand.NewPCG(h.cfg.seed, 0x5eed))
	for n := 0; time.Now().Before(end); n++ {
		windowStart := h.now()
		until := time.Now().Add(h.cfg.window)
		if until.After(end) {
			until = end
		}
		stopFaults, faultsDone := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(faultsDone)
			if h.cfg.faults != nil {
				h.cfg.faults(stopFaults)
			}
		}()
		ops, fails := h.window(ctx, until, rng.Uint64())
		close(stopFaults)
		<-faultsDone
		rep.writeFails += fails
		h.s.settle()
		next, err := h.snapshot(ctx)
		if err != nil {
			return rep, err
		}
		h.converged(ctx, next, &rep)
		windows <- window{n: n, init: init, start: windowStart, ops: ops}
		init = next
	}
	close(windows)
	<-checked
	windows = nil
	rep.elapsed = time.Since(h.start)
	rep.Totals = chk.Totals
	rep.opsPerSec = float64(rep.Ops) / rep.elapsed.Seconds()
	rep.violations, rep.stale, rep.phantomOps = chk.Violations, chk.Stale, chk.PhantomOps
	rep.bypassStale = chk.BypassStale
	if ps, ok := h.s.(*pluginStrategy); ok {
		rep.stats = "; " + ps.statsLine()
	}
	return rep, nil
}

// snapshot reads every hot row from the database, with no client running.
func (h *harness) snapshot(ctx context.Context) (map[int64]checker.Value, error) {
	var rows []Item
	if err := h.s.db().WithContext(ctx).Where("id BETWEEN 1 AND ?", h.cfg.rows).Find(&rows).Error; err != nil {
		return nil, err
	}
	out := make(map[int64]checker.Value, h.cfg.rows)
	for id := int64(1); id <= int64(h.cfg.rows); id++ {
		out[id] = checker.Absent
	}
	for _, r := range rows {
		out[r.ID] = r.value()
	}
	return out, nil
}

// converged checks P3 at a quiescent point: every key is absent or holds
// exactly its row (a negative entry for an absent row).
func (h *harness) converged(ctx context.Context, rows map[int64]checker.Value, rep *runReport) {
	for id := int64(1); id <= int64(h.cfg.rows); id++ {
		rep.scans++
		st, it, err := h.s.cached(ctx, id)
		want := rows[id]
		bad := ""
		switch {
		case err != nil:
			bad = err.Error()
		case st == cacheRow && it.value() != want:
			bad = fmt.Sprintf("cache holds %s, database %s", it.value(), want)
		case st == cacheNotFound && want.Present:
			bad = fmt.Sprintf("cache says not found, database %s", want)
		case st == cacheUndecoded:
			bad = "undecodable entry"
		case st == cachePending:
			rep.leftPending++
			bad = "pending with no write in flight"
		case st == cacheBusy:
			rep.leftBusy++
		}
		if bad == "" {
			continue
		}
		bad = fmt.Sprintf("row %d: %s", id, bad)
		if st == cachePending {
			if len(rep.examplesPending) < 3 {
				rep.examplesPending = append(rep.examplesPending, bad)
			}
			continue
		}
		rep.diverged++
		if len(rep.examplesP3) < 5 {
			rep.examplesP3 = append(rep.examplesP3, bad)
		}
	}
}

// window runs every client until the deadline and returns what they did.
func (h *harness) window(ctx context.Context, until time.Time, seed uint64) ([]checker.Op, int) {
	var wg sync.WaitGroup
	logs := make([][]checker.Op, h.cfg.clients)
	fails := make([]int, h.cfg.clients)
	for c := 0; c < h.cfg.clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{h: h, id: c, rng: rand.New(rand.NewPCG(seed, uint64(c)))}
			for time.Now().Before(until) {
				w.step(ctx)
			}
			logs[c], fails[c] = w.ops, w.fails
		}()
	}
	wg.Wait()
	var all []checker.Op
	n := 0
	for c := range logs {
		all = append(all, logs[c]...)
		n += fails[c]
	}
	return all, n
}

// worker is one client.
type worker struct {
	h     *harness
	id    int
	rng   *rand.Rand
	ops   []checker.Op
	fails int
}

func (w *worker) key() int64 {
	if w.rng.IntN(4) == 0 {
		return 1 + w.rng.Int64N(min(4, int64(w.h.cfg.rows)))
	}
	return 1 + w.rng.Int64N(int64(w.h.cfg.rows))
}

// keys returns n distinct row ids, in ascending order: transactions that
// write several rows lock them in id order and do not deadlock each other.
func (w *worker) keys(n int) []int64 {
	n = min(n, w.h.cfg.rows)
	out := make([]int64, 0, n)
	for len(out) < n {
		k := w.key()
		dup := false
		for _, o := range out {
			dup = dup || o == k
		}
		if !dup {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func (w *worker) tag() int64 { return w.h.tags.Add(1) }

// record adds the reads of a call that returned rows (absent ones too).
func (w *worker) recordReads(call, ret int64, source string, ids []int64, got map[int64]Item) {
	for _, id := range ids {
		v := checker.Absent
		if it, ok := got[id]; ok {
			v = it.value()
		}
		w.ops = append(w.ops, checker.Op{Key: id, Kind: checker.Read, Value: v, Call: call, Return: ret, Client: w.id, Source: source})
	}
}

// readDone records a read through the cache that returned, or reports its
// error.
func (w *worker) readDone(call int64, source string, ids []int64, got map[int64]Item, err error) {
	if err != nil {
		if w.h.cfg.onError != nil {
			w.h.cfg.onError(false, err)
		}
		return
	}
	w.recordReads(call, w.h.now(), source, ids, got)
}

// recordWrites adds the rows a write left, as it read them back. err is the
// write's outcome: nil committed; a failure the database reported before
// anything could commit is dropped (nothing happened); anything else is an
// unknown outcome, recorded as maybe.
func (w *worker) recordWrites(call, ret int64, source string, err error, vals map[int64]checker.Value) {
	if w.record(call, ret, source, err, vals, false) {
		w.h.s.committed(slices.Collect(maps.Keys(vals)))
	}
}

// record adds the writes and reports whether they committed for sure.
// bypass marks writes made around the plugin.
func (w *worker) record(call, ret int64, source string, err error, vals map[int64]checker.Value, bypass bool) bool {
	kind := checker.Write
	if err != nil && !errors.Is(err, errRollback) && w.h.cfg.onError != nil {
		w.h.cfg.onError(true, err)
	}
	if err != nil {
		if failedForSure(err) || len(vals) == 0 {
			w.fails++
			return false
		}
		kind = checker.MaybeWrite
	}
	for id, v := range vals {
		w.ops = append(w.ops, checker.Op{Key: id, Kind: kind, Value: v, Call: call, Return: ret, Client: w.id, Source: source, Bypass: bypass})
	}
	return kind == checker.Write
}

// failedForSure tells errors after which the transaction certainly did not
// commit: its own rollback, or an error PostgreSQL reported for a statement
// (constraint, serialization, syntax). A lost connection or a server
// shutting the session down leaves the outcome unknown.
func failedForSure(err error) bool {
	if errors.Is(err, errRollback) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "57", "58", "08", "XX", "53":
			return false
		}
		return true
	}
	return false
}

var updateForms = [...]string{"update", "partial", "expr"}

// assignments is a write of one of the update forms, tagged.
func (w *worker) assignments(form string, tag int64) map[string]any {
	m := map[string]any{"version": gorm.Expr("version + 1"), "tag": tag}
	switch form {
	case "update":
		m["a"], m["b"] = w.rng.Int64N(1000), w.rng.Int64N(1000)
	case "partial":
		m["b"] = w.rng.Int64N(1000)
	default:
		m["a"] = gorm.Expr("a + ?", 1+w.rng.Int64N(9))
	}
	return m
}

// readBack reads ids inside tx and keeps the rows that tags wrote.
func readBack(tx *gorm.DB, ids []int64, tags ...int64) (map[int64]checker.Value, error) {
	var rows []Item
	if err := tx.Where("id IN ?", ids).Find(&rows).Error; err != nil {
		return nil, err
	}
	out := make(map[int64]checker.Value)
	for _, r := range rows {
		for _, t := range tags {
			if r.Tag == t {
				out[r.ID] = r.value()
			}
		}
	}
	return out, nil
}

// step runs one random operation.
func (w *worker) step(ctx context.Context) {
	db := w.h.s.db().WithContext(ctx)
	call := w.h.now()
	if w.rng.IntN(100) < w.h.cfg.bypass {
		w.bypass(ctx, call)
		return
	}
	if w.rng.IntN(100) < w.h.cfg.extraReads {
		how := readHow(w.rng.IntN(4))
		ids := []int64{w.key()}
		if how >= readFind {
			ids = w.keys(2 + w.rng.IntN(3))
		}
		got, err := w.h.s.read(ctx, how, ids)
		w.readDone(call, readSources[how], ids, got, err)
		return
	}
	switch n := w.rng.IntN(100); {
	case n < 22: // one row through the cache
		how := readHow(w.rng.IntN(2))
		id := w.key()
		got, err := w.h.s.read(ctx, how, []int64{id})
		w.readDone(call, readSources[how], []int64{id}, got, err)
	case n < 30: // several rows through the cache
		how := readHow(2 + w.rng.IntN(2))
		ids := w.keys(2 + w.rng.IntN(3))
		got, err := w.h.s.read(ctx, how, ids)
		w.readDone(call, readSources[how], ids, got, err)
	case n < 38: // straight from the database
		id := w.key()
		var it Item
		err := db.Take(&it, id).Error
		switch {
		case err == nil:
			w.recordReads(call, w.h.now(), "db", []int64{id}, map[int64]Item{id: it})
		case errors.Is(err, gorm.ErrRecordNotFound):
			w.recordReads(call, w.h.now(), "db", []int64{id}, nil)
		}
	case n < 40: // through the cache, inside a read-only transaction
		ids := w.keys(2)
		got := map[int64]Item{}
		err := db.Transaction(func(tx *gorm.DB) error {
			for _, id := range ids {
				var it Item
				err := tx.Scopes(writethrough.Cached).Take(&it, id).Error
				if err == nil {
					got[id] = it
				} else if !errors.Is(err, gorm.ErrRecordNotFound) {
					return err
				}
			}
			return nil
		})
		if err == nil {
			w.recordReads(call, w.h.now(), "cached-in-tx", ids, got)
		}
	case n < 55: // one row by key, in GORM's implicit transaction
		id := w.key()
		form := updateForms[w.rng.IntN(len(updateForms))]
		it := Item{ID: id}
		res := db.Model(&it).Clauses(clause.Returning{}).Updates(w.assignments(form, w.tag()))
		vals := map[int64]checker.Value{}
		if it.Version != 0 {
			vals[id] = it.value()
		}
		if res.Error == nil && res.RowsAffected == 0 {
			return // absent: nothing written
		}
		w.recordWrites(call, w.h.now(), form, res.Error, vals)
	case n < 59: // bulk Where(...).Updates in a transaction, read back
		ids := w.keys(2 + w.rng.IntN(3))
		tag := w.tag()
		var vals map[int64]checker.Value
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Model(&Item{}).Where("id IN ?", ids).Updates(w.assignments("partial", tag)).Error; err != nil {
				return err
			}
			var err error
			vals, err = readBack(tx, ids, tag)
			return err
		})
		w.recordWrites(call, w.h.now(), "bulk", err, vals)
	case n < 63: // bulk update RETURNING the rows, implicit transaction
		ids := w.keys(2 + w.rng.IntN(3))
		var rows []Item
		err := db.Model(&rows).Clauses(clause.Returning{}).Where("id IN ?", ids).
			Updates(w.assignments(updateForms[w.rng.IntN(len(updateForms))], w.tag())).Error
		vals := map[int64]checker.Value{}
		for _, r := range rows {
			vals[r.ID] = r.value()
		}
		if err == nil && len(rows) == 0 {
			return
		}
		w.recordWrites(call, w.h.now(), "bulk-returning", err, vals)
	case n < 68: // delete
		id := w.key()
		it := Item{ID: id}
		res := db.Clauses(clause.Returning{}).Delete(&it)
		if res.Error == nil && res.RowsAffected == 0 {
			return
		}
		vals := map[int64]checker.Value{}
		if it.Version != 0 {
			vals[id] = checker.Value{Version: it.Version}
		}
		w.recordWrites(call, w.h.now(), "delete", res.Error, vals)
	case n < 74: // insert (fails when the row exists)
		id := w.key()
		it := Item{ID: id, A: w.rng.Int64N(1000), B: w.rng.Int64N(1000), Tag: w.tag()}
		err := db.Create(&it).Error
		vals := map[int64]checker.Value{}
		if it.Version != 0 {
			vals[id] = it.value()
		}
		w.recordWrites(call, w.h.now(), "insert", err, vals)
	case n < 76: // delete and re-insert in one transaction
		id := w.key()
		tag := w.tag()
		var vals map[int64]checker.Value
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Delete(&Item{ID: id}).Error; err != nil {
				return err
			}
			if err := tx.Create(&Item{ID: id, A: w.rng.Int64N(1000), Tag: tag}).Error; err != nil {
				return err
			}
			var err error
			vals, err = readBack(tx, []int64{id}, tag)
			return err
		})
		w.recordWrites(call, w.h.now(), "replace", err, vals)
	case n < 82: // a transaction over several rows that commits
		w.multi(ctx, call, false)
	case n < 82+w.h.cfg.rollbacks: // one that rolls back
		w.multi(ctx, call, true)
	case n < 88+w.h.cfg.rollbacks: // nested transactions (savepoints)
		w.nested(ctx, call)
	case n < 90+w.h.cfg.rollbacks: // read-modify-write under SERIALIZABLE
		ids := w.keys(2)
		tag := w.tag()
		var vals map[int64]checker.Value
		err := db.Transaction(func(tx *gorm.DB) error {
			var src Item
			if err := tx.Take(&src, ids[0]).Error; err != nil {
				return err
			}
			if err := tx.Model(&Item{ID: ids[1]}).Updates(map[string]any{
				"b": src.A, "version": gorm.Expr("version + 1"), "tag": tag,
			}).Error; err != nil {
				return err
			}
			var err error
			vals, err = readBack(tx, ids[1:], tag)
			return err
		}, &sql.TxOptions{Isolation: sql.LevelSerializable})
		if errors.Is(err, gorm.ErrRecordNotFound) {
			err = errRollback // nothing written
		}
		w.recordWrites(call, w.h.now(), "serializable", err, vals)
	default: // reads, to keep the mix read-heavy
		id := w.key()
		got, err := w.h.s.read(ctx, readFirst, []int64{id})
		w.readDone(call, readSources[readFirst], []int64{id}, got, err)
	}
}

// multi writes two or three rows in one transaction, in the update forms,
// and commits or rolls back. Some committing transactions have their
// backend killed at COMMIT (unknown outcome).
func (w *worker) multi(ctx context.Context, call int64, rollback bool) {
	ids := w.keys(2 + w.rng.IntN(2))
	tag := w.tag()
	kill := !rollback && w.h.kills != nil && w.rng.IntN(1000) < w.h.cfg.killCommits
	var vals map[int64]checker.Value
	explicit := rollback && w.rng.IntN(2) == 0
	body := func(tx *gorm.DB) error {
		for _, id := range ids {
			form := updateForms[w.rng.IntN(len(updateForms))]
			if err := tx.Model(&Item{ID: id}).Updates(w.assignments(form, tag)).Error; err != nil {
				return err
			}
		}
		var err error
		if vals, err = readBack(tx, ids, tag); err != nil {
			return err
		}
		if rollback {
			return errRollback
		}
		if kill && len(vals) > 0 {
			var pid int
			if err := tx.Raw("SELECT pg_backend_pid()").Scan(&pid).Error; err != nil {
				return err
			}
			// The first row this transaction wrote names it at tx:before-commit.
			for _, id := range ids {
				if _, ok := vals[id]; ok {
					w.h.kills.Store(w.h.s.(*pluginStrategy).key(id), pid)
					break
				}
			}
		}
		return nil
	}
	var err error
	if explicit {
		tx := w.h.s.db().WithContext(ctx).Begin()
		err = body(tx)
		tx.Rollback()
	} else {
		err = w.h.s.db().WithContext(ctx).Transaction(body)
	}
	source := "tx"
	if kill {
		source = "tx-killed"
	}
	w.recordWrites(call, w.h.now(), source, err, vals)
}

// nested writes in an outer transaction and in one or two nested ones
// (savepoints), some of which roll back while the outer commits.
func (w *worker) nested(ctx context.Context, call int64) {
	ids := w.keys(3)
	outer, inner, innermost := w.tag(), w.tag(), w.tag()
	var vals map[int64]checker.Value
	write := func(tx *gorm.DB, id, tag int64) error {
		form := updateForms[w.rng.IntN(len(updateForms))]
		return tx.Model(&Item{ID: id}).Updates(w.assignments(form, tag)).Error
	}
	// Each write picks a row at or after the previous one: locks are taken
	// in id order.
	at := 0
	pick := func() int64 {
		at += w.rng.IntN(len(ids) - at)
		return ids[at]
	}
	err := w.h.s.db().WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := write(tx, ids[0], outer); err != nil {
			return err
		}
		err := tx.Transaction(func(tx2 *gorm.DB) error {
			if err := write(tx2, pick(), inner); err != nil {
				return err
			}
			if w.rng.IntN(2) == 0 {
				err := tx2.Transaction(func(tx3 *gorm.DB) error {
					if err := write(tx3, pick(), innermost); err != nil {
						return err
					}
					if w.rng.IntN(2) == 0 {
						return errRollback
					}
					return nil
				})
				if err != nil && !errors.Is(err, errRollback) {
					return err
				}
			}
			if w.rng.IntN(2) == 0 {
				return errRollback
			}
			return nil
		})
		if err != nil && !errors.Is(err, errRollback) {
			return err
		}
		if w.rng.IntN(3) == 0 {
			if err := write(tx, pick(), outer); err != nil {
				return err
			}
		}
		vals, err = readBack(tx, ids, outer, inner, innermost)
		return err
	})
	w.recordWrites(call, w.h.now(), "nested", err, vals)
}

// pluginStrategy is the plugin under test.
type pluginStrategy struct {
	gdb      *gorm.DB
	p        *writethrough.Plugin
	rdb      redis.UniversalClient // the test's look at the keys
	keys     []string              // by id
	consumer *cdc.Consumer         // cfg.consumer
}

func (s *pluginStrategy) name() string      { return "writethrough" }
func (s *pluginStrategy) db() *gorm.DB      { return s.gdb }
func (s *pluginStrategy) committed([]int64) {}

// settle drains the outbox: Soft mode's convergence (P3) is promised once
// it has drained. With a consumer, it first waits until the consumer has
// applied every change: writes that bypassed the plugin converge then.
func (s *pluginStrategy) settle() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s.consumer != nil {
		_ = s.consumer.Sync(ctx) // a consumer that cannot catch up shows as P3 divergence
	}
	for {
		n, err := s.p.Drain(ctx)
		switch {
		case err == nil && n == 0 || ctx.Err() != nil:
			return
		case err != nil:
			time.Sleep(50 * time.Millisecond) // Redis not back yet, or the breaker still open
		}
	}
}

func (s *pluginStrategy) statsLine() string {
	st := s.p.Stats()
	line := fmt.Sprintf("plugin: %d hits, %d misses, %d fills (%d lost), %d prepares (%d failed), %d finalizes (%d failed), %d read errors, %d outboxed, %d drained, breaker opened %d times",
		st.Hits, st.Misses, st.Fills, st.FillsLost, st.Prepares, st.PrepareErrors, st.Finalizes, st.FinalizeErrors,
		st.RedisErrors, st.Outboxed, st.Drained, st.BreakerOpens)
	if s.consumer != nil {
		cs := s.consumer.Stats()
		line += fmt.Sprintf("; consumer: %d transactions, %d keys invalidated, %d skipped (the plugin's own), %d purges, lag last %s, max %s",
			cs.Transactions, cs.KeysApplied, cs.KeysSkipped, cs.Purges, cs.Lag.Round(time.Microsecond), cs.MaxLag.Round(time.Microsecond))
	}
	return line
}
func (s *pluginStrategy) key(id int64) string {
	return s.keys[id]
}

func (s *pluginStrategy) read(ctx context.Context, how readHow, ids []int64) (map[int64]Item, error) {
	out := map[int64]Item{}
	db := s.gdb.WithContext(ctx)
	switch how {
	case readFirst:
		var it Item
		err := db.Scopes(writethrough.Cached).First(&it, ids[0]).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return out, nil
		}
		out[it.ID] = it
		return out, err
	case readGet:
		it, err := writethrough.Get[Item](ctx, db, ids[0])
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return out, nil
		}
		out[it.ID] = it
		return out, err
	case readFind:
		var its []Item
		if err := db.Scopes(writethrough.Cached).Find(&its, ids).Error; err != nil {
			return nil, err
		}
		for _, it := range its {
			out[it.ID] = it
		}
		return out, nil
	default:
		keys := make([]any, len(ids))
		for i, id := range ids {
			keys[i] = id
		}
		its, err := writethrough.GetMany[Item](ctx, db, keys...)
		for _, it := range its {
			out[it.ID] = it
		}
		return out, err
	}
}

func (s *pluginStrategy) cached(ctx context.Context, id int64) (cacheState, Item, error) {
	raw, err := s.rdb.Get(ctx, s.key(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return cacheAbsent, Item{}, nil
	}
	if err != nil {
		return 0, Item{}, err
	}
	en, err := writethrough.ParseEntry(raw)
	if err != nil {
		return cacheUndecoded, Item{}, nil
	}
	switch en.State {
	case writethrough.StateCommitted:
		var it Item
		if err := writethrough.DecodeRow(s.gdb, s.p, raw, &it); err != nil {
			return cacheUndecoded, Item{}, nil
		}
		return cacheRow, it, nil
	case writethrough.StateTombstone:
		return cacheNotFound, Item{}, nil
	case writethrough.StatePending:
		return cachePending, Item{}, nil
	}
	return cacheBusy, Item{}, nil
}

// items is a test's own items table, its DSN and its Redis prefix.
type items struct {
	db     *gorm.DB
	dsn    string
	rdb    *redis.Client
	prefix string
}

// openItems gives a test its own items table and Redis prefix.
func openItems(t testing.TB, gcfg *gorm.Config, clients int) items {
	t.Helper()
	if gcfg == nil {
		gcfg = &gorm.Config{}
	}
	gcfg.Logger = logger.Discard
	// Bulk updates lock rows in scan order, not id order, and may deadlock
	// with other writers: have PostgreSQL notice quickly.
	dsn := testenv.PostgresDSN(t) + " deadlock_timeout=100ms"
	db := testrig.Open(t, dsn, gcfg)
	testrig.Pool(t, db, clients+8, clients+8)
	require.NoError(t, db.Exec(itemsDDL).Error)
	rdb, prefix := testenv.Redis(t)
	return items{db: db, dsn: dsn, rdb: rdb, prefix: prefix}
}

// seedItems inserts the hot rows.
func seedItems(t testing.TB, db *gorm.DB, rows int) {
	t.Helper()
	for id := int64(1); id <= int64(rows); id++ {
		require.NoError(t, db.Create(&Item{ID: id, A: id, B: id}).Error)
	}
}

// newPluginRun sets up the plugin on a fresh schema, with a hook that
// terminates a transaction's backend at COMMIT when a client asked for it.
func newPluginRun(t testing.TB, gcfg *gorm.Config, cfg runConfig) *harness {
	t.Helper()
	it := openItems(t, gcfg, cfg.clients)
	return pluginRunOn(t, it, it.rdb, cfg)
}

// pluginRunOn runs the plugin with pluginRdb, and compares keys through
// it.rdb (the same server, perhaps not through the same path), or through
// pluginRdb when it.rdb is nil (a Redis Cluster).
func pluginRunOn(t testing.TB, it items, pluginRdb redis.UniversalClient, cfg runConfig) *harness {
	t.Helper()
	db := it.db
	var rdb redis.UniversalClient = it.rdb
	if it.rdb == nil {
		rdb = pluginRdb
	}
	pcfg := cfg.plugin
	pcfg.Prefix = it.prefix
	p := install(t, db, pluginRdb, pcfg)
	s := &pluginStrategy{gdb: db, p: p, rdb: rdb, keys: make([]string, cfg.rows+1)}
	for id := 1; id <= cfg.rows; id++ {
		k, err := writethrough.KeyOf(db, p, &Item{}, int64(id))
		require.NoError(t, err)
		s.keys[id] = k
	}
	h := &harness{cfg: cfg, s: s}
	if cfg.bypass > 0 {
		h.raw = rawPool(t, it.dsn, cfg.clients)
	}
	if cfg.consumer {
		s.consumer = startConsumer(t, db, it, pluginRdb)
	}
	if cfg.killCommits > 0 {
		h.kills = &sync.Map{}
		writethrough.SetHook(p, func(point, key string) {
			if point != "tx:before-commit" {
				return
			}
			if pid, ok := h.kills.LoadAndDelete(key); ok {
				// Wait until the backend is gone: the COMMIT that follows
				// meets a dead connection.
				db.Exec("SELECT pg_terminate_backend(?, 5000)", pid)
			}
		})
	}
	seedItems(t, db, cfg.rows)
	return h
}

// naiveThrough is the write-through every design review warns about: the
// write callbacks SET the rows they wrote, read back inside the
// transaction, before it commits. Rolled-back and not-yet-committed rows
// reach readers.
type naiveThrough struct {
	gdb    *gorm.DB
	rdb    *redis.Client
	prefix string
}

func (s *naiveThrough) name() string        { return "naive write-through (SET inside the transaction)" }
func (s *naiveThrough) db() *gorm.DB        { return s.gdb }
func (s *naiveThrough) committed([]int64)   {}
func (s *naiveThrough) settle()             {}
func (s *naiveThrough) key(id int64) string { return fmt.Sprintf("%s:naive:%d", s.prefix, id) }

func (s *naiveThrough) install(t testing.TB) {
	t.Helper()
	after := func(db *gorm.DB) {
		if db.Error != nil || db.Statement.Schema == nil || db.Statement.Schema.Table != "items" {
			return
		}
		ids := idsOf(db)
		if len(ids) == 0 {
			return
		}
		var rows []Item
		if err := db.Session(&gorm.Session{NewDB: true}).Where("id IN ?", ids).Find(&rows).Error; err != nil {
			return
		}
		ctx := context.Background()
		found := map[int64]bool{}
		for _, r := range rows {
			b, _ := json.Marshal(r)
			s.rdb.Set(ctx, s.key(r.ID), b, time.Hour)
			found[r.ID] = true
		}
		for _, id := range ids {
			if !found[id] {
				s.rdb.Del(ctx, s.key(id))
			}
		}
	}
	cb := s.gdb.Callback()
	require.NoError(t, cb.Create().After("gorm:create").Register("naive:after_create", after))
	require.NoError(t, cb.Update().After("gorm:update").Register("naive:after_update", after))
	require.NoError(t, cb.Delete().After("gorm:delete").Register("naive:after_delete", after))
}

// idsOf finds the rows a statement wrote: from its model or returned rows,
// else by running its WHERE again inside its transaction.
func idsOf(db *gorm.DB) []int64 {
	var ids []int64
	switch v := db.Statement.Model.(type) {
	case *Item:
		if v.ID != 0 {
			ids = append(ids, v.ID)
		}
	case *[]Item:
		for _, it := range *v {
			ids = append(ids, it.ID)
		}
	}
	if len(ids) > 0 {
		return ids
	}
	if c, ok := db.Statement.Clauses["WHERE"]; ok {
		var rows []Item
		db.Session(&gorm.Session{NewDB: true}).Unscoped().Clauses(c.Expression).Select("id").Find(&rows)
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

func (s *naiveThrough) read(ctx context.Context, _ readHow, ids []int64) (map[int64]Item, error) {
	return readAside(ctx, s.gdb, s.rdb, s.key, ids, nil)
}

func (s *naiveThrough) cached(ctx context.Context, id int64) (cacheState, Item, error) {
	return cachedJSON(ctx, s.rdb, s.key(id))
}

// readAside is the usual cache-aside read: GET, and on a miss SELECT and
// SET, with no lease to notice a write in between. beforeSet, when set, runs
// between the SELECT and the SET.
func readAside(ctx context.Context, db *gorm.DB, rdb *redis.Client, key func(int64) string, ids []int64, beforeSet func()) (map[int64]Item, error) {
	out := map[int64]Item{}
	for _, id := range ids {
		b, err := rdb.Get(ctx, key(id)).Bytes()
		if err == nil {
			var it Item
			if err := json.Unmarshal(b, &it); err != nil {
				return nil, err
			}
			out[id] = it
			continue
		}
		if !errors.Is(err, redis.Nil) {
			return nil, err
		}
		var it Item
		err = db.WithContext(ctx).Take(&it, id).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if beforeSet != nil {
			beforeSet()
		}
		b, _ = json.Marshal(it)
		rdb.Set(ctx, key(id), b, time.Hour)
		out[id] = it
	}
	return out, nil
}

func cachedJSON(ctx context.Context, rdb *redis.Client, key string) (cacheState, Item, error) {
	b, err := rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return cacheAbsent, Item{}, nil
	}
	if err != nil {
		return 0, Item{}, err
	}
	var it Item
	if err := json.Unmarshal(b, &it); err != nil {
		return cacheUndecoded, Item{}, nil
	}
	return cacheRow, it, nil
}

// cacheAside deletes after the write commits, the way an invalidation
// queue or a change stream does: a moment later. Readers fill on a miss
// with no lease.
type cacheAside struct {
	gdb      *gorm.DB
	rdb      *redis.Client
	prefix   string
	delay    time.Duration // from the write's return to its DEL
	inflight sync.WaitGroup
}

func (s *cacheAside) name() string        { return "cache-aside (DEL after commit, fill without lease)" }
func (s *cacheAside) db() *gorm.DB        { return s.gdb }
func (s *cacheAside) key(id int64) string { return fmt.Sprintf("%s:aside:%d", s.prefix, id) }
func (s *cacheAside) settle()             { s.inflight.Wait() }

func (s *cacheAside) committed(ids []int64) {
	s.inflight.Add(1)
	time.AfterFunc(s.delay, func() {
		defer s.inflight.Done()
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = s.key(id)
		}
		s.rdb.Del(context.Background(), keys...)
	})
}

func (s *cacheAside) read(ctx context.Context, _ readHow, ids []int64) (map[int64]Item, error) {
	return readAside(ctx, s.gdb, s.rdb, s.key, ids, nil)
}

func (s *cacheAside) cached(ctx context.Context, id int64) (cacheState, Item, error) {
	return cachedJSON(ctx, s.rdb, s.key(id))
}

func newBrokenRun(t testing.TB, which string, cfg runConfig) *harness {
	t.Helper()
	it := openItems(t, nil, cfg.clients)
	db, rdb, prefix := it.db, it.rdb, it.prefix
	var s strategy
	switch which {
	case "naive":
		n := &naiveThrough{gdb: db, rdb: rdb, prefix: prefix}
		n.install(t)
		s = n
	case "aside":
		s = &cacheAside{gdb: db, rdb: rdb, prefix: prefix, delay: 20 * time.Millisecond}
	}
	seedItems(t, db, cfg.rows)
	h := &harness{cfg: cfg, s: s}
	if cfg.bypass > 0 {
		h.raw = rawPool(t, it.dsn, cfg.clients)
	}
	return h
}

// boundedRun is the configuration `make test` runs: short, under -race.
func boundedRun(d time.Duration) runConfig {
	return runConfig{clients: 16, rows: 32, duration: d, window: time.Second, seed: uint64(time.Now().UnixNano()), rollbacks: 4}
}

func TestHistoriesThroughThePluginAreLinearizable(t *testing.T) {
	tests := []struct {
		name   string
		d      time.Duration
		plugin writethrough.Config
	}{
		{"finalize before Commit returns", 9 * time.Second, writethrough.Config{}},
		{"AsyncFinalize", 4 * time.Second, writethrough.Config{AsyncFinalize: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := boundedRun(tc.d)
			cfg.killCommits = 20
			cfg.plugin = tc.plugin
			// Redis is healthy here: a timeout far above any stall a loaded
			// machine causes keeps Redis trouble (which Soft mode turns into
			// a bound) out of this run.
			cfg.plugin.Timeout = 5 * time.Second
			cfg.plugin.DrainInterval = -1
			cfg.log = t.Logf
			h := newPluginRun(t, nil, cfg)
			rep, err := h.run(context.Background())
			require.NoError(t, err)
			t.Logf("seed %d: %s", cfg.seed, rep)
			requireLinearizable(t, rep)
			// Enough operations that the run checked something; not a
			// throughput target (a loaded machine runs fewer).
			require.Greater(t, rep.Reads, 50)
			require.Greater(t, rep.Writes, 25)
		})
	}
}

// requireLinearizable asserts P1, P2 and P3 over a run.
func requireLinearizable(t testing.TB, rep runReport) {
	t.Helper()
	require.Zero(t, rep.Violations, rep.details())
	require.Zero(t, rep.StaleReads, rep.details())
	require.Zero(t, rep.Phantoms, rep.details())
	require.Zero(t, rep.diverged, rep.details())
	require.Zero(t, rep.leftPending, rep.details())
	require.Zero(t, rep.Unknown, "porcupine gave up on some windows")
}

func TestCheckerCatchesBrokenStrategies(t *testing.T) {
	for _, which := range []string{"naive", "aside"} {
		t.Run(which, func(t *testing.T) {
			cfg := boundedRun(4 * time.Second)
			cfg.log = t.Logf
			h := newBrokenRun(t, which, cfg)
			rep, err := h.run(context.Background())
			require.NoError(t, err)
			t.Logf("seed %d: %s", cfg.seed, rep)
			require.Positive(t, rep.Violations, "the checker must catch %s", rep.strategy)
			require.Positive(t, rep.StaleReads+rep.Phantoms)
			if which == "naive" {
				require.Positive(t, rep.Phantoms, "rolled-back rows must show up as phantoms")
			}
		})
	}
}

// Without a transaction (SkipDefaultTransaction) no row lock orders a
// write's re-read and finalize against other writers: what P2 promises then
// is for this run to measure. Writes whose keys are known before the
// statement are made pending first; bulk writes learn their keys only from
// RETURNING, after they committed, so until their finalize a reader may
// still be served the previous row.
func TestHistoriesWithoutTransactionsAreBounded(t *testing.T) {
	cfg := boundedRun(5 * time.Second)
	cfg.plugin = writethrough.Config{Timeout: 5 * time.Second, DrainInterval: -1}
	cfg.log = t.Logf
	h := newPluginRun(t, &gorm.Config{SkipDefaultTransaction: true}, cfg)
	rep, err := h.run(context.Background())
	require.NoError(t, err)
	t.Logf("seed %d: %s", cfg.seed, rep)
	t.Logf("%s", rep.details())
	require.Zero(t, rep.Phantoms, rep.details())
	require.Zero(t, rep.diverged, rep.details())
	require.Zero(t, rep.leftPending, rep.details())
}

// redisFaults breaks the path to Redis now and then: connections reset,
// replies slower than the plugin's timeout, connections refused.
func redisFaults(proxy *faultproxy.Proxy, seed uint64) func(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(seed, 0xfa017))
	return func(stop <-chan struct{}) {
		defer func() {
			proxy.SetLatency(0)
			proxy.Unblock()
		}()
		pause := func(d time.Duration) bool {
			select {
			case <-stop:
				return false
			case <-time.After(d):
				return true
			}
		}
		for pause(time.Duration(100+rng.IntN(300)) * time.Millisecond) {
			switch rng.IntN(3) {
			case 0:
				proxy.ResetAll()
			case 1:
				proxy.SetLatency(100 * time.Millisecond)
				pause(150 * time.Millisecond)
				proxy.SetLatency(0)
			default:
				proxy.Block()
				pause(100 * time.Millisecond)
				proxy.Unblock()
			}
		}
	}
}

// newSoftFaultRun runs the plugin in Soft mode with its Redis client behind
// a fault proxy; the harness compares keys over a healthy client.
func newSoftFaultRun(t testing.TB, cfg runConfig) *harness {
	t.Helper()
	it := openItems(t, nil, cfg.clients)
	proxy := faultproxy.New(t, it.rdb.Options().Addr)
	prdb := testrig.FaultClient(t, proxy.Addr())
	cfg.faults = redisFaults(proxy, cfg.seed)
	cfg.plugin.Mode = writethrough.Soft
	if cfg.plugin.Timeout == 0 {
		cfg.plugin.Timeout = 50 * time.Millisecond
	}
	// settle drains by hand: a background drainer holding records (SKIP
	// LOCKED) would make a pass look empty before they are drained.
	cfg.plugin.DrainInterval = -1
	return pluginRunOn(t, it, prdb, cfg)
}

// Soft mode keeps writes going when Redis fails, and promises convergence
// (P3) once the outbox drains. Between, a key whose prepare failed keeps
// its old row in Redis and readers are served it: P2 becomes a bound, which
// this run measures (stale reads, the longest staleness). P1 still holds:
// no reader ever gets a row that did not commit.
func TestSoftModeUnderRedisFaultsIsBounded(t *testing.T) {
	cfg := boundedRun(5 * time.Second)
	cfg.log = t.Logf
	h := newSoftFaultRun(t, cfg)
	rep, err := h.run(context.Background())
	require.NoError(t, err)
	t.Logf("seed %d: %s", cfg.seed, rep)
	require.Zero(t, rep.Phantoms, rep.details())
	require.Zero(t, rep.diverged, "P3 once the outbox drained\n%s", rep.details())
	st := h.s.(*pluginStrategy).p.Stats()
	require.Positive(t, st.PrepareErrors+st.FinalizeErrors+st.RedisErrors, "the faults must have hit the plugin")
}
