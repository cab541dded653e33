package writethrough_test

// The fault matrix: every fault of issue 4 (Redis killed, paused, out of
// memory, flushed, evicting; a slow or resetting network; a database
// connection killed mid-transaction, a failing COMMIT; a writer process
// killed, see crash_test.go), in Soft and in Strict mode, each with a
// redis-server of its own.
//
// Every run goes through four windows, each a quiescent point apart:
//
//	warm      readers only: the cache fills
//	fault     the fault is injected; writers and readers run
//	recovery  writers stop, the fault is healed; readers run while the
//	          test polls Redis until every key equals its row or is absent
//	after     writers and readers run on the healed system
//
// then the outbox is drained explicitly and every key is compared with its
// row once more. Every operation is recorded for internal/checker (porcupine
// per row, staleness, phantoms), and every read is also checked against the
// commit log: a read is stale when it returned a version older than one
// whose COMMIT had returned before the read began (P2). Writers own disjoint
// rows, so that the moment a COMMIT returns (the hook at
// write:before-finalize) can be tied to the version it committed.
//
// Asserted for every run: P1 (no read, and no row, ever holds a value from
// a transaction that did not commit: zero phantoms); P3 (the recovery
// window ends converged, and after the final drain no key holds anything
// but its row, pending entries expiring within PendingTTL); P4 (the
// database holds exactly the writes that returned success; Soft writes never
// fail because of Redis; Strict writes fail only with ErrCacheUnavailable,
// and do fail while Redis refuses); zero stale reads and zero
// linearizability violations outside the windows where the design states a
// bound (scenario.staleIn). Latency and time to converge are measured and
// reported, never asserted.
//
//	go test -run TestFaultMatrix -v                           # what make test runs
//	go test -run TestFaultMatrix -v -faults.long -faults.report  # docs/failure-modes.md

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/checker"
	"github.com/gorm-writethrough/writethrough/internal/faultproxy"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

var (
	faultsLong   = flag.Bool("faults.long", false, "fault matrix: hold each fault for seconds, with more clients (the docs/failure-modes.md run)")
	faultsReport = flag.Bool("faults.report", false, "fault matrix: print the failure-modes table when TestFaultMatrix ends")
	faultsDump   = flag.String("faults.dump", "", "fault matrix: write the whole history of every row found not linearizable to this directory, one JSON file each")
)

// FaultRow is the row of the fault runs. Every update increments Version
// under the row lock, and Tag names the write, so that every committed state
// is distinct. Slot is unique, checked at COMMIT: a write that takes another
// row's slot fails there.
type FaultRow struct {
	ID      int64 `gorm:"primaryKey;autoIncrement:false" cache:"ttl:10m"`
	Version int64
	Val     int64
	Tag     int64
	Slot    int64
}

const faultRowsDDL = `
CREATE TABLE fault_rows (
	id      bigint PRIMARY KEY,
	version bigint NOT NULL,
	val     bigint NOT NULL DEFAULT 0,
	tag     bigint NOT NULL DEFAULT 0,
	slot    bigint NOT NULL,
	CONSTRAINT fault_rows_slot UNIQUE (slot) DEFERRABLE INITIALLY DEFERRED
)`

func (r FaultRow) value() checker.Value {
	return checker.Value{Present: true, Version: r.Version, Row: fmt.Sprintf("val=%d tag=%d slot=%d", r.Val, r.Tag, r.Slot)}
}

// errFaultRollback is returned by transactions that roll back on purpose.
var errFaultRollback = errors.New("deliberate rollback")

// faultShape is how long and how hard a run goes.
type faultShape struct {
	warm, fault, after time.Duration
	writers, readers   int
	rowsPerWriter      int
	// Plugin settings. Timeout is the default; DrainInterval and
	// BreakerCooldown are shortened for make test; PendingTTL is shortened
	// everywhere, so that crashed writers' entries expire within the run.
	timeout, pendingTTL, drainInterval, breakerCooldown time.Duration
}

func shape() faultShape {
	if *faultsLong {
		return faultShape{
			warm: 500 * time.Millisecond, fault: 5 * time.Second, after: 2 * time.Second,
			writers: 4, readers: 6, rowsPerWriter: 4,
			timeout: 100 * time.Millisecond, pendingTTL: 2 * time.Second,
			drainInterval: time.Second, breakerCooldown: time.Second,
		}
	}
	return faultShape{
		warm: 150 * time.Millisecond, fault: 700 * time.Millisecond, after: 300 * time.Millisecond,
		writers: 3, readers: 3, rowsPerWriter: 4,
		timeout: 100 * time.Millisecond, pendingTTL: 2 * time.Second,
		drainInterval: 200 * time.Millisecond, breakerCooldown: 200 * time.Millisecond,
	}
}

// Window names.
const (
	winWarm     = "warm"
	winFault    = "fault"
	winRecovery = "recovery"
	winAfter    = "after"
)

// faultScenario is one row of the matrix, run once per mode.
type faultScenario struct {
	name      string
	modes     []writethrough.Mode // nil: Soft and Strict
	redisArgs []string
	proxy     bool // the plugin reaches Redis through a faultproxy
	// redisFault: the fault is Redis's (or the network's to it); otherwise
	// Redis is meant to be healthy all along.
	redisFault bool
	reserve    bool // row 1 belongs to no writer (crash tests write it)

	// inject puts the fault in place at the start of the fault window.
	// during, when set, runs on its own goroutine from then until stop is
	// closed, at the end of the fault window. heal undoes the fault at the
	// start of the recovery window.
	inject func(t *testing.T, r *faultRun)
	during func(r *faultRun, stop <-chan struct{})
	heal   func(t *testing.T, r *faultRun)
	// live: inject while the clients run (a crash); otherwise the fault
	// is in place before the fault window's clients start.
	live bool

	// sabotage, when set, breaks some explicit transactions during the
	// fault window (database faults).
	sabotage *sabotage

	// staleIn lists the windows, per mode, where the design allows stale
	// reads, and bound says what bounds them.
	staleIn func(writethrough.Mode) []string
	bound   string
	// strictFails: Redis refuses during the fault, so Strict writes must
	// fail (with ErrCacheUnavailable).
	strictFails bool
	// check adds assertions at the end of the run.
	check func(t *testing.T, r *faultRun)
}

// sabotage breaks a transaction after its write was prepared, before
// COMMIT.
type sabotage struct {
	name string
	// assign adds to the write's assignments.
	assign func(r *faultRun, id int64) map[string]any
	// beforeCommit runs inside the transaction once the write returned
	// (its key is pending); pid is the transaction's backend.
	beforeCommit func(r *faultRun, pid int) error
	// collateral lists SQLSTATEs with which any write may fail while the
	// sabotage runs (certainly not committed): two transactions whose
	// deferred checks wait for each other at COMMIT deadlock, and the
	// victim may be an unbroken one.
	collateral []string
}

func softOnly(windows ...string) func(writethrough.Mode) []string {
	return func(m writethrough.Mode) []string {
		if m == writethrough.Soft {
			return windows
		}
		return nil
	}
}

func always(windows ...string) func(writethrough.Mode) []string {
	return func(writethrough.Mode) []string { return windows }
}

const boundDrain = "a Soft write whose prepare and release both failed leaves the old row in Redis until the outbox drains (DrainInterval after Redis answers, once the breaker lets the drain through)"

const boundFinalize = "a pending entry lost in Redis lets a reader fill the old row; it is served from the writer's COMMIT until the same writer's finalize deletes it"

func faultScenarios() []*faultScenario {
	list := []*faultScenario{
		{
			name:        "Redis SIGKILL, restarted empty",
			redisFault:  true,
			inject:      func(t *testing.T, r *faultRun) { r.srv.Kill() },
			heal:        func(t *testing.T, r *faultRun) { r.srv.Restart() },
			strictFails: true,
		},
		{
			name:        "Redis SIGSTOP, then SIGCONT (data kept)",
			redisFault:  true,
			inject:      func(t *testing.T, r *faultRun) { r.srv.Pause() },
			heal:        func(t *testing.T, r *faultRun) { r.srv.Resume() },
			strictFails: true,
			staleIn:     softOnly(winRecovery),
			bound:       boundDrain,
		},
		{
			name:       "Redis maxmemory, noeviction, full",
			redisFault: true,
			redisArgs:  []string{"--maxmemory-policy", "noeviction"},
			inject:     func(t *testing.T, r *faultRun) { testrig.FillRedis(t, r.rdb) },
			during:     (*faultRun).invalidateAll,
			heal: func(t *testing.T, r *faultRun) {
				require.NoError(t, r.rdb.ConfigSet(context.Background(), "maxmemory", "0").Err())
			},
			strictFails: true,
			check: func(t *testing.T, r *faultRun) {
				// Finalize's deletes are checked by the zero stale reads of
				// the fault window: a Soft write whose finalize failed would
				// leave the old row there.
				assert.Positive(t, r.invOK.Load(), "invalidations were tried out of memory")
				assert.Zero(t, r.invRefused.Load(), "Redis refuses no invalidation out of memory")
			},
		},
		{
			name:       "Redis FLUSHALL every 50ms",
			redisFault: true,
			during:     (*faultRun).flushAll,
			staleIn:    always(winFault),
			bound:      boundFinalize,
		},
		{
			name:       "Redis allkeys-lru, tiny maxmemory, evicting",
			redisFault: true,
			redisArgs:  []string{"--maxmemory-policy", "allkeys-lru", "--maxmemory-samples", "1"},
			during:     (*faultRun).evict,
			heal: func(t *testing.T, r *faultRun) {
				require.NoError(t, r.rdb.ConfigSet(context.Background(), "maxmemory", "0").Err())
			},
			staleIn: always(winFault),
			bound:   boundFinalize,
		},
		{
			name:       "proxy latency 3x Timeout",
			redisFault: true,
			proxy:      true,
			inject: func(t *testing.T, r *faultRun) {
				r.proxy.SetLatency(3 * r.cfg.Timeout)
			},
			heal: func(t *testing.T, r *faultRun) {
				// Reset too, so that no delayed command reaches Redis after
				// the heal.
				r.proxy.SetLatency(0)
				r.proxy.ResetAll()
			},
			strictFails: true,
			staleIn:     softOnly(winRecovery),
			bound:       boundDrain,
		},
		{
			name:       "proxy resets every connection every 20ms",
			redisFault: true,
			proxy:      true,
			during:     (*faultRun).resetAll,
			staleIn:    softOnly(winFault, winRecovery),
			bound:      boundDrain,
		},
		{
			name: "PostgreSQL backend killed between prepare and COMMIT",
			sabotage: &sabotage{
				name: "killed",
				beforeCommit: func(r *faultRun, pid int) error {
					var killed bool
					if err := r.db.Raw("SELECT pg_terminate_backend(?, 5000)", pid).Scan(&killed).Error; err != nil {
						return err
					}
					if !killed {
						return fmt.Errorf("backend %d was not terminated", pid)
					}
					return nil
				},
			},
		},
		{
			name: "COMMIT fails (deferred unique constraint)",
			sabotage: &sabotage{
				name: "failed at COMMIT",
				assign: func(r *faultRun, id int64) map[string]any {
					other := id%int64(r.rows) + 1 // another row's slot
					return map[string]any{"slot": other}
				},
				collateral: []string{"40P01", "23505"},
			},
		},
	}
	return append(list, crashScenarios()...) // crash_test.go (Linux only)
}

// TestFaultMatrix runs every scenario in Soft and in Strict. The rows run
// one at a time, not in parallel: each one measures timeouts and latency,
// and rows sharing the CPUs would make each other's Redis slow.
func TestFaultMatrix(t *testing.T) {
	sh := shape()
	rep := &faultReport{shape: sh}
	t.Cleanup(func() {
		if *faultsReport {
			rep.print(os.Stdout)
		}
	})
	for _, sc := range faultScenarios() {
		modes := sc.modes
		if modes == nil {
			modes = []writethrough.Mode{writethrough.Soft, writethrough.Strict}
		}
		for _, mode := range modes {
			t.Run(sc.name+"/"+mode.String(), func(t *testing.T) {
				r := newFaultRun(t, sc, mode, sh)
				row := r.run(t)
				rep.add(row)
			})
		}
	}
}

// faultRun is one run of the matrix: a redis-server, a schema, a plugin,
// the workload's clients, and what they saw.
type faultRun struct {
	t     *testing.T
	sc    *faultScenario
	mode  writethrough.Mode
	sh    faultShape
	cfg   writethrough.Config
	srv   *redisproc.Server
	proxy *faultproxy.Proxy
	dsn   string
	db    *gorm.DB
	rdb   *redis.Client // straight to the server, for the test's own looks
	p     *writethrough.Plugin
	rows  int
	keys  []string // by id
	ids   map[string]int64
	start time.Time
	tags  atomic.Int64

	writers []*faultWriter
	chk     checker.Checker

	sabotaging atomic.Bool

	mu        sync.Mutex             // protects the fields below
	inflight  map[int64]int64        // row -> version its open transaction wrote
	tentative map[int64]commitMark   // row -> version whose COMMIT just returned (or failed)
	commits   map[int64][]commitMark // row -> committed versions, in order
	notes     []string

	extra []checker.Op // operations of other processes, for the current window
	crash *crash       // the crashed writer (crash_test.go)

	// Invalidate calls during the fault (OOM): succeeded, tried, refused
	// by Redis (an error reply; a client-side timeout is not a refusal).
	invOK, invTotal, invRefused atomic.Int64

	faultStats writethrough.Stats // plugin counters gained in the fault window
}

// commitMark is a version of a row and when its COMMIT had returned, on the
// run's clock.
type commitMark struct {
	version int64
	at      int64
}

func newFaultRun(t *testing.T, sc *faultScenario, mode writethrough.Mode, sh faultShape) *faultRun {
	t.Helper()
	r := &faultRun{
		t: t, sc: sc, mode: mode, sh: sh,
		rows:      sh.writers * sh.rowsPerWriter,
		ids:       map[string]int64{},
		inflight:  map[int64]int64{},
		tentative: map[int64]commitMark{},
		commits:   map[int64][]commitMark{},
	}
	if sc.reserve {
		r.rows++
	}
	r.srv = redisproc.Start(t, sc.redisArgs...)
	r.rdb = r.srv.Client(t)
	addr := r.srv.Addr()
	if sc.proxy {
		r.proxy = faultproxy.New(t, r.srv.Addr())
		addr = r.proxy.Addr()
	}
	prdb := testrig.FaultClient(t, addr)

	r.dsn = testenv.PostgresDSN(t)
	db := testrig.Open(t, r.dsn, nil)
	testrig.Pool(t, db, sh.writers+sh.readers+8, sh.writers+sh.readers+8)
	require.NoError(t, db.Exec(faultRowsDDL).Error)

	r.cfg = writethrough.Config{
		Prefix:          "fault",
		Mode:            mode,
		Timeout:         sh.timeout,
		PendingTTL:      sh.pendingTTL,
		DrainInterval:   sh.drainInterval,
		BreakerCooldown: sh.breakerCooldown,
	}
	r.p = install(t, db, prdb, r.cfg) // closed before the database
	writethrough.SetHook(r.p, r.hook)
	// The version a transaction wrote, as soon as its UPDATE returned it,
	// while it holds the row lock.
	require.NoError(t, db.Callback().Update().After("gorm:update").Register("faulttest:inflight", func(tx *gorm.DB) {
		if row, ok := tx.Statement.Model.(*FaultRow); ok && tx.Error == nil && row.Version != 0 {
			r.mu.Lock()
			r.inflight[row.ID] = row.Version
			r.mu.Unlock()
		}
	}))
	r.db = db

	r.keys = make([]string, r.rows+1)
	for id := int64(1); id <= int64(r.rows); id++ {
		// Seeded in SQL: the plugin's part starts with the run.
		require.NoError(t, db.Exec("INSERT INTO fault_rows (id, version, slot) VALUES (?, 1, ?)", id, id).Error)
		k, err := writethrough.KeyOf(db, r.p, &FaultRow{}, id)
		require.NoError(t, err)
		r.keys[id] = k
		r.ids[k] = id
		r.commits[id] = []commitMark{{version: 1}}
	}
	first := int64(1)
	if sc.reserve {
		first = 2
	}
	for i := 0; i < sh.writers; i++ {
		w := &faultWriter{r: r, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i))), expect: map[int64]checker.Value{}, maybe: map[int64][]checker.Value{}}
		for j := 0; j < sh.rowsPerWriter; j++ {
			id := first + int64(i*sh.rowsPerWriter+j)
			w.own = append(w.own, id)
			var row FaultRow
			require.NoError(t, db.Take(&row, id).Error)
			w.expect[id] = row.value()
		}
		r.writers = append(r.writers, w)
	}
	r.start = time.Now()
	return r
}

func (r *faultRun) now() int64 { return int64(time.Since(r.start)) }

func (r *faultRun) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// hook notes the moment a COMMIT returned (or failed: the writer drops the
// mark then) for the version the transaction wrote.
func (r *faultRun) hook(point, key string) {
	if point != "write:before-finalize" {
		return
	}
	id, ok := r.ids[key]
	if !ok {
		return
	}
	at := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.inflight[id]; ok {
		r.tentative[id] = commitMark{version: v, at: at}
		delete(r.inflight, id)
	}
}

// committed records that the write of version to row id returned success
// at ret; its COMMIT returned at the hook's mark, or by ret.
func (r *faultRun) committed(id, version, ret int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := ret
	if m, ok := r.tentative[id]; ok && m.version == version {
		at = m.at
	}
	delete(r.tentative, id)
	delete(r.inflight, id)
	r.commits[id] = append(r.commits[id], commitMark{version: version, at: at})
}

func (r *faultRun) failed(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.tentative, id)
	delete(r.inflight, id)
}

// window is what the clients did between two quiescent points.
type window struct {
	name  string
	start int64
	ops   []checker.Op

	writes    int // writes attempted, deliberate rollbacks aside
	writesOK  int
	rollbacks int // deliberate rollbacks
	injected  int // transactions the scenario broke (database faults)
	cacheErrs int // writes that failed with ErrCacheUnavailable
	otherErrs []string
	lat       []time.Duration

	reads    int
	readErrs []string

	sabotageMissed int      // broken transactions that committed anyway
	notReleased    []string // keys of failed transactions still pending, or holding an older row
	leaked         []string // keys holding a failed transaction's row (P1)

	// redisErrs counts the plugin's failed Redis calls on the write path
	// (prepare, finalize) during the window: a fault's, or a loaded
	// machine's timeouts.
	redisErrs uint64

	res        checker.WindowResult
	violations []checker.Violation // this window's, as examples
	stale      int                 // reads older than a version committed before they began
	maxStale   time.Duration       // the longest of those
	examples   []string
}

func (w *window) merge(o *window) {
	w.ops = append(w.ops, o.ops...)
	w.writes += o.writes
	w.writesOK += o.writesOK
	w.rollbacks += o.rollbacks
	w.injected += o.injected
	w.cacheErrs += o.cacheErrs
	w.otherErrs = append(w.otherErrs, o.otherErrs...)
	w.lat = append(w.lat, o.lat...)
	w.reads += o.reads
	w.readErrs = append(w.readErrs, o.readErrs...)
	w.sabotageMissed += o.sabotageMissed
	w.notReleased = append(w.notReleased, o.notReleased...)
	w.leaked = append(w.leaked, o.leaked...)
}

// runWindow runs the readers (and the writers, when writers is set) while
// body runs, then stops them and checks what they did.
func (r *faultRun) runWindow(name string, writers bool, pre, body func()) *window {
	t := r.t
	t.Helper()
	init := r.snapshot(t)
	if pre != nil {
		pre()
	}
	win := &window{name: name, start: r.now()}
	before := r.p.Stats()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	parts := make([]*window, 0, len(r.writers)+r.sh.readers)
	ctx := context.Background()
	if writers {
		for _, w := range r.writers {
			part := &window{}
			parts = append(parts, part)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stopped(stop) {
					w.step(ctx, part)
				}
			}()
		}
	}
	for i := 0; i < r.sh.readers; i++ {
		part := &window{}
		parts = append(parts, part)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(100+i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopped(stop) {
				r.read(ctx, rng, i, part)
			}
		}()
	}
	body()
	close(stop)
	wg.Wait()
	for _, part := range parts {
		win.merge(part)
	}
	r.mu.Lock()
	win.ops = append(win.ops, r.extra...)
	r.extra = nil
	r.mu.Unlock()
	after := r.p.Stats()
	win.redisErrs = after.PrepareErrors + after.FinalizeErrors - before.PrepareErrors - before.FinalizeErrors
	violations := len(r.chk.Violations)
	win.res = r.chk.CheckWindow(init, win.start, win.ops)
	win.violations = r.chk.Violations[violations:]
	r.staleVsCommits(win)
	if *faultsDump != "" {
		for _, v := range r.chk.Violations[violations:] {
			r.dump(v, win)
		}
	}
	return win
}

// dump writes the whole history of a row found not linearizable, for
// porcupine's visualizer or a closer look.
func (r *faultRun) dump(v checker.Violation, win *window) {
	var ops []checker.Op
	for _, o := range win.ops {
		if o.Key == v.Key {
			ops = append(ops, o)
		}
	}
	slices.SortFunc(ops, func(a, b checker.Op) int { return cmp.Compare(a.Call, b.Call) })
	b, err := json.MarshalIndent(map[string]any{"test": r.t.Name(), "window": win.name, "key": v.Key, "init": v.Init, "ops": ops}, "", " ")
	if err == nil {
		name := fmt.Sprintf("%s-%s-row%d.json", strings.NewReplacer("/", "_", " ", "_").Replace(r.t.Name()), win.name, v.Key)
		err = os.WriteFile(filepath.Join(*faultsDump, name), b, 0o644)
	}
	if err != nil {
		r.t.Logf("faults.dump: %v", err)
	}
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// snapshot reads every row from the database.
func (r *faultRun) snapshot(t *testing.T) map[int64]checker.Value {
	t.Helper()
	var rows []FaultRow
	require.NoError(t, r.db.Order("id").Find(&rows).Error)
	out := make(map[int64]checker.Value, len(rows))
	for _, row := range rows {
		out[row.ID] = row.value()
	}
	return out
}

// staleVsCommits counts the window's reads that returned a version older
// than one whose COMMIT had returned before the read began.
func (r *faultRun) staleVsCommits(win *window) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range win.ops {
		if o.Kind != checker.Read {
			continue
		}
		if !o.Value.Present {
			continue // rows are never deleted: the checker counts it as a phantom
		}
		for _, m := range r.commits[o.Key] {
			if m.version <= o.Value.Version {
				continue
			}
			// m is the first version newer than the one read.
			if m.at < o.Call {
				win.stale++
				d := time.Duration(o.Call - m.at)
				win.maxStale = max(win.maxStale, d)
				if len(win.examples) < 5 {
					win.examples = append(win.examples, fmt.Sprintf("%s read v%d of row %d %s after v%d committed", o.Source, o.Value.Version, o.Key, d, m.version))
				}
			}
			break
		}
	}
}

// read runs one cached read: First, Get, or GetMany of three rows.
func (r *faultRun) read(ctx context.Context, rng *rand.Rand, client int, win *window) {
	id := 1 + rng.Int64N(int64(r.rows))
	call := r.now()
	var got []FaultRow
	var ids []int64
	var err error
	source := ""
	switch n := rng.IntN(10); {
	case n < 6:
		source, ids = "cached-first", []int64{id}
		var row FaultRow
		err = r.db.WithContext(ctx).Scopes(writethrough.Cached).First(&row, id).Error
		got = []FaultRow{row}
	case n < 9:
		source, ids = "get", []int64{id}
		var row FaultRow
		row, err = writethrough.Get[FaultRow](ctx, r.db, id)
		got = []FaultRow{row}
	default:
		source = "get-many"
		keys := make([]any, 0, 3)
		for len(ids) < 3 {
			k := 1 + rng.Int64N(int64(r.rows))
			if !slices.Contains(ids, k) {
				ids = append(ids, k)
				keys = append(keys, k)
			}
		}
		got, err = writethrough.GetMany[FaultRow](ctx, r.db, keys...)
	}
	ret := r.now()
	win.reads++
	if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
		if len(win.readErrs) < 5 {
			win.readErrs = append(win.readErrs, err.Error())
		}
		return
	}
	byID := map[int64]FaultRow{}
	if err == nil {
		for _, row := range got {
			byID[row.ID] = row
		}
	}
	for _, id := range ids {
		v := checker.Absent
		if row, ok := byID[id]; ok {
			v = row.value()
		}
		win.ops = append(win.ops, checker.Op{Key: id, Kind: checker.Read, Value: v, Call: call, Return: ret, Client: 1000 + client, Source: source})
	}
}

// faultWriter writes the rows it owns, one transaction at a time, and
// knows what each of them must hold.
type faultWriter struct {
	r      *faultRun
	rng    *rand.Rand
	own    []int64
	expect map[int64]checker.Value   // the last value that committed
	maybe  map[int64][]checker.Value // writes of unknown outcome
}

func (w *faultWriter) step(ctx context.Context, win *window) {
	r := w.r
	id := w.own[w.rng.IntN(len(w.own))]
	tag := r.tags.Add(1)
	assign := map[string]any{"version": gorm.Expr("version + 1"), "val": w.rng.Int64N(1_000_000), "tag": tag}
	db := r.db.WithContext(ctx)
	row := FaultRow{ID: id}
	update := func(tx *gorm.DB) error {
		return tx.Model(&row).Clauses(clause.Returning{}).Updates(assign).Error
	}
	var sab *sabotage
	if s := r.sc.sabotage; s != nil && r.sabotaging.Load() && w.rng.IntN(100) < 30 {
		sab = s
	}
	n := w.rng.IntN(100)
	deliberate := sab == nil && n >= 88
	call := r.now()
	var err error
	switch {
	case sab != nil:
		if sab.assign != nil {
			for k, v := range sab.assign(r, id) {
				assign[k] = v
			}
		}
		err = db.Transaction(func(tx *gorm.DB) error {
			var pid int
			if err := tx.Raw("SELECT pg_backend_pid()").Scan(&pid).Error; err != nil {
				return err
			}
			if err := update(tx); err != nil {
				return err
			}
			if sab.beforeCommit != nil {
				return sab.beforeCommit(r, pid)
			}
			return nil
		})
	case n < 60: // GORM's implicit transaction
		err = update(db)
	case n < 88: // an explicit transaction that commits
		err = db.Transaction(update)
	default: // one that rolls back
		err = db.Transaction(func(tx *gorm.DB) error {
			if err := update(tx); err != nil {
				return err
			}
			return errFaultRollback
		})
	}
	ret := r.now()
	if deliberate {
		win.rollbacks++
		r.failed(id)
		switch {
		case errors.Is(err, errFaultRollback):
		case errors.Is(err, writethrough.ErrCacheUnavailable):
			win.cacheErrs++ // Strict: the write failed before the rollback
		default:
			win.otherErrs = append(win.otherErrs, "rollback: "+err.Error())
		}
		return
	}
	win.writes++
	win.lat = append(win.lat, time.Duration(ret-call))
	switch {
	case sab != nil && err != nil:
		// Broken before COMMIT, or at COMMIT: certainly not committed.
		win.injected++
		r.failed(id)
		w.checkReleased(ctx, id, row.value(), win)
	case err == nil:
		if row.Version == 0 {
			win.otherErrs = append(win.otherErrs, fmt.Sprintf("row %d: the update returned no row", id))
			return
		}
		if sab != nil {
			win.sabotageMissed++
		}
		win.writesOK++
		v := row.value()
		w.expect[id] = v
		r.committed(id, row.Version, ret)
		win.ops = append(win.ops, checker.Op{Key: id, Kind: checker.Write, Value: v, Call: call, Return: ret, Client: int(w.own[0]), Source: "write"})
	case errors.Is(err, writethrough.ErrCacheUnavailable):
		win.cacheErrs++
		r.failed(id)
	case r.sc.sabotage != nil && slices.Contains(r.sc.sabotage.collateral, testrig.SQLState(err)):
		win.injected++
		r.failed(id)
		w.checkReleased(ctx, id, row.value(), win)
	default:
		r.failed(id)
		if len(win.otherErrs) < 5 {
			win.otherErrs = append(win.otherErrs, err.Error())
		}
		if row.Version != 0 {
			v := row.value()
			w.maybe[id] = append(w.maybe[id], v)
			win.ops = append(win.ops, checker.Op{Key: id, Kind: checker.MaybeWrite, Value: v, Call: call, Return: ret, Client: int(w.own[0]), Source: "write"})
		}
	}
}

// checkReleased looks at the key of a transaction that just failed: its
// pending entry must be gone, and anything there must be the row as it was
// (readers may have leased or filled it meanwhile). Only this writer writes
// the row.
func (w *faultWriter) checkReleased(ctx context.Context, id int64, failed checker.Value, win *window) {
	bad, leak := "", false
	// The release may still be on its way when its call timed out: poll
	// for a second (the entry would otherwise expire at PendingTTL).
	_ = testrig.Poll(time.Second, func() (bool, error) {
		bad, leak = w.released(ctx, id, failed)
		return bad == "" || leak, nil
	})
	switch {
	case leak:
		win.leaked = append(win.leaked, fmt.Sprintf("row %d: %s", id, bad))
	case bad != "":
		win.notReleased = append(win.notReleased, fmt.Sprintf("row %d: %s", id, bad))
	}
}

// released reports what is wrong with the key of row id after a
// transaction that wrote failed, and whether it is the failed value itself.
func (w *faultWriter) released(ctx context.Context, id int64, failed checker.Value) (string, bool) {
	r := w.r
	raw, err := r.rdb.Get(ctx, r.keys[id]).Bytes()
	if errors.Is(err, redis.Nil) {
		return "", false
	}
	bad, leak := "", false
	switch {
	case err != nil:
		bad = err.Error() // Redis did not answer: nothing known
	default:
		en, err := writethrough.ParseEntry(raw)
		switch {
		case err != nil:
			bad, leak = err.Error(), true
		case en.State == writethrough.StatePending:
			bad = "still pending"
		case en.State == writethrough.StateCommitted:
			var row FaultRow
			switch err := writethrough.DecodeRow(r.db, r.p, raw, &row); {
			case err != nil:
				bad, leak = err.Error(), true
			case row.value() == failed:
				bad, leak = fmt.Sprintf("holds the failed transaction's %s", failed), true
			case row.value() != w.expect[id]:
				bad = fmt.Sprintf("holds %s, not the committed %s", row.value(), w.expect[id])
			}
		case en.State == writethrough.StateTombstone:
			bad, leak = "holds a tombstone", true
		}
	}
	return bad, leak
}

// keyScan is what Redis holds for every row, compared with the database.
type keyScan struct {
	exact, absent, lease, pending int
	wrong                         []string // a row other than the database's, or no row for an existing one
}

func (s keyScan) converged() bool { return len(s.wrong) == 0 && s.pending == 0 }

func (r *faultRun) scan(ctx context.Context) (keyScan, error) {
	var s keyScan
	var rows []FaultRow
	if err := r.db.WithContext(ctx).Find(&rows).Error; err != nil {
		return s, err
	}
	want := map[int64]checker.Value{}
	for _, row := range rows {
		want[row.ID] = row.value()
	}
	raws, err := r.rdb.MGet(ctx, r.keys[1:]...).Result()
	if err != nil {
		return s, err
	}
	for i, v := range raws {
		id := int64(i + 1)
		str, ok := v.(string)
		if !ok {
			s.absent++
			continue
		}
		raw := []byte(str)
		en, err := writethrough.ParseEntry(raw)
		if err != nil {
			s.wrong = append(s.wrong, fmt.Sprintf("row %d: undecodable: %v", id, err))
			continue
		}
		switch en.State {
		case writethrough.StateCommitted:
			var row FaultRow
			if err := writethrough.DecodeRow(r.db, r.p, raw, &row); err != nil {
				s.wrong = append(s.wrong, fmt.Sprintf("row %d: %v", id, err))
			} else if row.value() != want[id] {
				s.wrong = append(s.wrong, fmt.Sprintf("row %d: cache %s, database %s", id, row.value(), want[id]))
			} else {
				s.exact++
			}
		case writethrough.StatePending:
			s.pending++
		case writethrough.StateLease:
			s.lease++
		default:
			s.wrong = append(s.wrong, fmt.Sprintf("row %d: state %q for an existing row", id, en.State))
		}
	}
	return s, nil
}

// crash is what the parent knows of a writer process it killed
// (crash_test.go).
type crash struct {
	at        time.Time
	want      checker.Value // what row 1 must hold
	committed bool

	mu        sync.Mutex // protects staleFree, converged
	staleFree time.Duration
	converged time.Duration
	done      chan struct{} // closed when the watch ends
}

// faultRow is one row of the report.
type faultRow struct {
	scenario, mode   string
	order            int
	writes, writesOK int
	injected         int
	p99              time.Duration
	staleFree        time.Duration // from the heal until no key held another row
	converged        time.Duration // until every key held its row or nothing
	stale            int
	staleBy          map[string]int // stale reads per window
	maxStale         time.Duration
	violations       int
	phantoms         int
	bound            string
	notes            []string
}

// run runs the four windows, asserts, and returns the report row.
func (r *faultRun) run(t *testing.T) faultRow {
	ctx := context.Background()
	sc := r.sc
	wins := map[string]*window{}

	wins[winWarm] = r.runWindow(winWarm, false, nil, func() { holdFor(r.sh.warm) })

	before := r.p.Stats()
	inject := func() {
		r.sabotaging.Store(sc.sabotage != nil)
		if sc.inject != nil {
			sc.inject(t, r)
		}
	}
	pre := inject
	if sc.live {
		pre = nil
	}
	wins[winFault] = r.runWindow(winFault, true, pre, func() {
		if sc.live {
			inject()
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		if sc.during != nil {
			go func() {
				defer close(done)
				sc.during(r, stop)
			}()
		} else {
			close(done)
		}
		holdFor(r.sh.fault)
		close(stop)
		<-done
		r.sabotaging.Store(false)
	})
	r.faultStats = diffStats(r.p.Stats(), before)

	// Recovery: writers stopped, readers on, until every key holds its row
	// or nothing.
	var staleFree, converged time.Duration
	deadline := r.cfg.PendingTTL + 2*r.cfg.DrainInterval + r.cfg.BreakerCooldown + 10*time.Second
	var last keyScan
	var lastErr error
	wins[winRecovery] = r.runWindow(winRecovery, false, nil, func() {
		healAt := time.Now()
		if sc.heal != nil {
			sc.heal(t, r)
		}
		for time.Since(healAt) < deadline {
			last, lastErr = r.scan(ctx)
			if lastErr == nil && len(last.wrong) == 0 && staleFree == 0 {
				staleFree = max(time.Since(healAt), time.Nanosecond)
			}
			if lastErr == nil && last.converged() {
				converged = max(time.Since(healAt), time.Nanosecond)
				return
			}
			time.Sleep(10 * time.Millisecond) // polling Redis's state
		}
	})
	assert.NotZero(t, converged, "P3: not converged %s after the heal: %+v, %v", deadline, last, lastErr)
	// The after window tests the healed system: a breaker still open from
	// the fault closes with the first probe after its cool-down.
	var q FaultRow
	require.NoError(t, testrig.Poll(deadline, func() (bool, error) {
		if r.p.Stats().Breaker == writethrough.BreakerClosed {
			return true, nil
		}
		return false, r.db.Scopes(writethrough.Cached).First(&q, 1).Error
	}), "the breaker never closed")

	wins[winAfter] = r.runWindow(winAfter, true, nil, func() { holdFor(r.sh.after) })

	// P3 after the final drain: nothing but rows equal to the database's;
	// pending entries (never served) expire within PendingTTL.
	_, err := r.p.Drain(ctx)
	require.NoError(t, err, "the outbox drains once Redis is healthy")
	s, err := r.scan(ctx)
	require.NoError(t, err)
	assert.Empty(t, s.wrong, "P3 after the drain")
	require.NoError(t, testrig.Poll(r.cfg.PendingTTL+5*time.Second, func() (bool, error) {
		s, err := r.scan(ctx)
		return err == nil && s.converged(), err
	}), "P3: pending entries left after the drain did not expire")
	var left int64
	require.NoError(t, r.db.Table("writethrough_outbox").Count(&left).Error)
	assert.Zero(t, left, "the outbox is empty after the drain")

	r.assertDatabase(t)
	var prev *window
	for _, name := range []string{winWarm, winFault, winRecovery, winAfter} {
		r.assertWindow(t, wins[name], prev)
		prev = wins[name]
	}
	if sc.check != nil {
		sc.check(t, r)
	}

	fw := wins[winFault]
	row := faultRow{
		scenario: sc.name, mode: r.mode.String(),
		writes: fw.writes, writesOK: fw.writesOK, injected: fw.injected,
		p99: percentile(fw.lat, 0.99), staleFree: staleFree, converged: converged,
		bound: sc.bound,
	}
	if cr := r.crash; cr != nil {
		// A crash has no heal: time from the kill, for the crashed row.
		<-cr.done
		cr.mu.Lock()
		row.staleFree, row.converged = cr.staleFree, cr.converged
		cr.mu.Unlock()
	}
	row.staleBy = map[string]int{}
	for _, w := range wins {
		row.staleBy[w.name] = w.stale
		row.stale += w.stale
		row.maxStale = max(row.maxStale, w.maxStale)
		row.violations += w.res.Violations
		row.phantoms += w.res.Phantoms
	}
	st := r.p.Stats()
	r.mu.Lock()
	row.notes = append(row.notes, r.notes...)
	r.mu.Unlock()
	if st.BreakerOpens > 0 {
		row.notes = append(row.notes, fmt.Sprintf("breaker opened %dx", st.BreakerOpens))
	}
	if st.Outboxed > 0 {
		row.notes = append(row.notes, fmt.Sprintf("%d keys outboxed", st.Outboxed))
	}
	if fw.cacheErrs > 0 {
		row.notes = append(row.notes, fmt.Sprintf("%d ErrCacheUnavailable", fw.cacheErrs))
	}
	if fs := r.faultStats; fs.PrepareErrors+fs.FinalizeErrors > 0 {
		row.notes = append(row.notes, fmt.Sprintf("%d prepare and %d finalize errors", fs.PrepareErrors, fs.FinalizeErrors))
	}
	if !sc.redisFault {
		var n uint64
		for _, w := range wins {
			n += w.redisErrs
		}
		if n > 0 {
			row.notes = append(row.notes, fmt.Sprintf("%d Redis errors (timeouts) with Redis meant to be healthy", n))
		}
	}
	t.Logf("%s/%s: fault window %d/%d writes ok (%d injected failures), p99 %s; stale-free after %s, converged after %s; "+
		"%d stale reads (max %s), %d violations, %d phantoms; checker %s; notes %v",
		row.scenario, row.mode, row.writesOK, row.writes, row.injected, row.p99, row.staleFree, row.converged,
		row.stale, row.maxStale, row.violations, row.phantoms, r.chk.Totals, row.notes)
	return row
}

// assertWindow asserts P1, P4 and the staleness promise for one window;
// prev is the window before it.
//
// Where Redis is meant to be healthy, a Soft write can still meet a Redis
// error (a timeout on a loaded machine, enough of them to open the
// breaker). Its key is then bounded by the outbox drain, as under any Redis
// fault: stale reads are allowed in that window and the next, and noted.
// Anything read that no committed write produced is never allowed.
func (r *faultRun) assertWindow(t *testing.T, w *window, prev *window) {
	t.Helper()
	name := w.name
	assert.Zero(t, w.res.Phantoms, "P1: %s window: reads of values no committed write produced: %v", name, r.chk.PhantomOps)
	assert.Empty(t, w.leaked, "P1: %s window: a failed transaction's row reached Redis", name)
	assert.Empty(t, w.readErrs, "%s window: reads must not fail because of Redis", name)
	assert.Empty(t, w.otherErrs, "P4: %s window: writes failed for another reason than the cache", name)
	assert.Zero(t, w.sabotageMissed, "%s window: a broken transaction committed", name)
	if w.redisErrs == 0 {
		assert.Empty(t, w.notReleased, "P1: %s window: a failed transaction's key was not released", name)
	}
	if r.mode == writethrough.Soft {
		assert.Zero(t, w.cacheErrs, "P4: %s window: Soft writes never fail because of Redis", name)
	}
	if r.mode == writethrough.Strict && name == winFault && r.sc.strictFails {
		assert.Positive(t, w.cacheErrs, "P4: Strict writes fail while Redis refuses")
	}
	var allowed []string
	if r.sc.staleIn != nil {
		allowed = r.sc.staleIn(r.mode)
	}
	if slices.Contains(allowed, name) {
		return
	}
	healthy := name == winWarm || name == winAfter || !r.sc.redisFault
	unplanned := w.redisErrs
	if prev != nil {
		unplanned += prev.redisErrs
	}
	if r.mode == writethrough.Soft && healthy && unplanned > 0 {
		if w.stale > 0 || w.res.Violations > 0 {
			r.note("%d stale reads in the %s window after %d Redis errors where Redis was meant to be healthy", w.stale, name, unplanned)
		}
		return
	}
	assert.Zero(t, w.stale, "P2: %s window: stale reads: %v", name, w.examples)
	assert.Zero(t, w.res.Violations, "P2: %s window: not linearizable: %v", name, w.violations)
}

// assertDatabase checks P4 on the database: every row holds the last write
// that returned success (or one whose outcome was unknown), and its version
// counts exactly the writes that committed.
func (r *faultRun) assertDatabase(t *testing.T) {
	t.Helper()
	got := r.snapshot(t)
	for _, w := range r.writers {
		for _, id := range w.own {
			want := w.expect[id]
			if got[id] == want {
				continue
			}
			assert.Contains(t, w.maybe[id], got[id], "P4: row %d holds %s; the last committed write left %s", id, got[id], want)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.writers {
		for _, id := range w.own {
			if len(w.maybe[id]) == 0 {
				assert.Equal(t, int64(len(r.commits[id])), got[id].Version, "P4: row %d: one version per committed write", id)
			}
		}
	}
}

func diffStats(a, b writethrough.Stats) writethrough.Stats {
	return writethrough.Stats{
		PrepareErrors:  a.PrepareErrors - b.PrepareErrors,
		FinalizeErrors: a.FinalizeErrors - b.FinalizeErrors,
		Outboxed:       a.Outboxed - b.Outboxed,
		BreakerOpens:   a.BreakerOpens - b.BreakerOpens,
	}
}

// holdFor lets the workload run for d: a deadline, not an ordering.
func holdFor(d time.Duration) {
	<-time.After(d)
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	return string(out), err
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*q+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Fault injectors that run during the fault window.

// invalidateAll calls Invalidate on random rows until stop.
func (r *faultRun) invalidateAll(stop <-chan struct{}) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for i := int64(0); ; i++ {
		select {
		case <-stop:
			r.note("Invalidate %d/%d ok, %d refused", r.invOK.Load(), r.invTotal.Load(), r.invRefused.Load())
			return
		case <-tick.C:
		}
		r.invTotal.Add(1)
		err := writethrough.Invalidate(r.db, &FaultRow{}, 1+i%int64(r.rows))
		var reply redis.Error
		switch {
		case err == nil:
			r.invOK.Add(1)
		case errors.As(err, &reply):
			r.invRefused.Add(1)
			r.note("Invalidate refused: %v", err)
		}
	}
}

// flushAll runs FLUSHALL every 50ms until stop.
func (r *faultRun) flushAll(stop <-chan struct{}) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	n := 0
	for {
		select {
		case <-stop:
			r.note("FLUSHALL %dx", n)
			return
		case <-tick.C:
		}
		if r.rdb.FlushAll(context.Background()).Err() == nil {
			n++
		}
	}
}

// evict sets maxmemory just above what Redis uses and writes 32 KiB values
// every 2ms until stop, so that Redis evicts keys (with one sample per
// eviction, nearly at random: pending entries too) all along.
func (r *faultRun) evict(stop <-chan struct{}) {
	ctx := context.Background()
	used := infoInt(ctx, r.rdb, "memory", "used_memory")
	evicted := infoInt(ctx, r.rdb, "stats", "evicted_keys")
	if err := r.rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used+256<<10, 10)).Err(); err != nil {
		r.note("CONFIG SET maxmemory: %v", err)
		return
	}
	junk := strings.Repeat("x", 32<<10)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			r.note("%d keys evicted", infoInt(ctx, r.rdb, "stats", "evicted_keys")-evicted)
			return
		case <-tick.C:
		}
		r.rdb.Set(ctx, "junk:"+strconv.Itoa(i), junk, 0)
	}
}

func infoInt(ctx context.Context, rdb *redis.Client, section, field string) int64 {
	info, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// resetAll resets every connection through the proxy every 20ms until stop.
func (r *faultRun) resetAll(stop <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	n := 0
	for {
		select {
		case <-stop:
			r.note("%d resets", n)
			return
		case <-tick.C:
		}
		r.proxy.ResetAll()
		n++
	}
}

// faultReport collects the rows of the matrix.
type faultReport struct {
	shape faultShape
	mu    sync.Mutex // protects rows
	rows  []faultRow
}

func (rep *faultReport) add(row faultRow) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.rows = append(rep.rows, row)
}

func (rep *faultReport) print(f *os.File) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	sh := rep.shape
	var b strings.Builder
	fmt.Fprintf(&b, "\nFault matrix: %s, %d CPUs (%s), %s/%s, %s; PostgreSQL %s, redis-server %s.\n",
		cpuModel(), runtime.NumCPU(), hostNote(), runtime.GOOS, runtime.GOARCH, runtime.Version(), pgVersion(), redisVersion())
	fmt.Fprintf(&b, "Each fault held %s with %d writers and %d readers on %d rows; Timeout %s, PendingTTL %s, DrainInterval %s, BreakerCooldown %s, BreakerThreshold 5.\n\n",
		sh.fault, sh.writers, sh.readers, sh.writers*sh.rowsPerWriter, sh.timeout, sh.pendingTTL, sh.drainInterval, sh.breakerCooldown)
	b.WriteString("Converged: from the heal (from the kill for the writer crashes) until no key held another row than the database's / until every key held its row or nothing (pending entries expired).\n")
	b.WriteString("Stale reads: reads that returned a version older than one whose COMMIT had returned before the read began, by window.\n\n")
	b.WriteString("| fault | mode | writes ok / attempted during the fault | p99 write latency during the fault | converged after recovery: no stale key / every key exact | stale reads (max staleness; window) | linearizability violations | phantom reads | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range rep.rows {
		writes := fmt.Sprintf("%d / %d", row.writesOK, row.writes)
		if row.injected > 0 {
			writes += fmt.Sprintf(" (%d broken on purpose)", row.injected)
		}
		stale := "0"
		if row.stale > 0 {
			var in []string
			for _, name := range []string{winWarm, winFault, winRecovery, winAfter} {
				if n := row.staleBy[name]; n > 0 {
					in = append(in, fmt.Sprintf("%d %s", n, name))
				}
			}
			stale = fmt.Sprintf("%d (max %s; %s)", row.stale, row.maxStale.Round(10*time.Microsecond), strings.Join(in, ", "))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s / %s | %s | %d | %d | %s |\n",
			row.scenario, row.mode, writes, row.p99.Round(10*time.Microsecond),
			roundMs(row.staleFree), roundMs(row.converged), stale, row.violations, row.phantoms, strings.Join(row.notes, "; "))
	}
	b.WriteString("\nStale-read bounds the design states, by fault:\n\n")
	seen := map[string]bool{}
	for _, row := range rep.rows {
		if row.bound != "" && !seen[row.scenario] {
			seen[row.scenario] = true
			fmt.Fprintf(&b, "- %s: %s.\n", row.scenario, row.bound)
		}
	}
	fmt.Fprint(f, b.String())
}

func roundMs(d time.Duration) string {
	if d == 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String()
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func hostNote() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load unknown"
	}
	return "load average " + strings.Join(strings.Fields(string(b))[:3], " ")
}

func pgVersion() string {
	db, err := gorm.Open(postgres.Open(testenv.DefaultPostgresDSN), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return "?"
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	var v string
	db.Raw("SHOW server_version").Scan(&v)
	return v
}

func redisVersion() string {
	out, err := execOutput("redis-server", "--version")
	if err != nil {
		return "?"
	}
	for _, f := range strings.Fields(out) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return v
		}
	}
	return strings.TrimSpace(out)
}
