package cdc_test

import (
	"context"
	"flag"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

var (
	staleOps  = flag.Int("stale.ops", 4000, "operations of the bypass consistency test (make cdc-soak raises it)")
	staleKeys = flag.Int("stale.keys", 20, "rows the bypass consistency test writes and reads")
)

type Counter struct {
	ID      int64 `gorm:"primaryKey" cache:"ttl:1h"`
	Version int64
}

// write is one committed write: the row's new version, and when the
// writer saw its commit return.
type write struct {
	version int64
	done    time.Time
	gorm    bool // through the plugin; false: bypassed it
}

// read is one cached read: the version it returned and when it began.
type read struct {
	id      int64
	version int64
	start   time.Time
}

// history is what a run of writers and readers did.
type history struct {
	mu     sync.Mutex // protects writes and reads
	writes map[int64][]write
	reads  []read
}

func (h *history) wrote(id, version int64, gorm bool) {
	now := time.Now()
	h.mu.Lock()
	h.writes[id] = append(h.writes[id], write{version, now, gorm})
	h.mu.Unlock()
}

func (h *history) read(id, version int64, start time.Time) {
	h.mu.Lock()
	h.reads = append(h.reads, read{id, version, start})
	h.mu.Unlock()
}

// staleness returns, for every read that returned a version older than a
// write (through the plugin when gorm is true, else bypassing it) that
// committed before the read began, how long before the read that first
// newer write had committed.
func (h *history) staleness(gorm bool) []time.Duration {
	var out []time.Duration
	for _, r := range h.reads {
		first := time.Time{}
		for _, w := range h.writes[r.id] {
			if w.gorm == gorm && w.version > r.version && w.done.Before(r.start) && (first.IsZero() || w.done.Before(first)) {
				first = w.done
			}
		}
		if !first.IsZero() {
			out = append(out, r.start.Sub(first))
		}
	}
	return out
}

// runMix runs writers that bypass GORM (pgx, autocommit), writers through
// the plugin (GORM transactions) and cached readers over the same rows.
func runMix(t *testing.T, r *rig, ops int) *history {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, r.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	keys := int64(*staleKeys)
	for id := int64(1); id <= keys; id++ {
		if err := r.db.Create(&Counter{ID: id}).Error; err != nil {
			t.Fatal(err)
		}
	}
	if r.c != nil {
		r.caughtUp()
	}
	h := &history{writes: map[int64][]write{}}
	var left atomic.Int64
	left.Store(int64(ops))
	var wg sync.WaitGroup
	var failed atomic.Value
	fail := func(err error) {
		failed.CompareAndSwap(nil, err)
		left.Store(0)
	}
	worker := func(seed uint64, op func(rng *rand.Rand, id int64) error) {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 7))
		for left.Add(-1) >= 0 {
			if err := op(rng, 1+rng.Int64N(keys)); err != nil {
				fail(err)
				return
			}
		}
	}
	rawWrite := func(_ *rand.Rand, id int64) error {
		var v int64
		if err := pool.QueryRow(ctx, "UPDATE counters SET version = version + 1 WHERE id = $1 RETURNING version", id).Scan(&v); err != nil {
			return err
		}
		h.wrote(id, v, false)
		return nil
	}
	gormWrite := func(_ *rand.Rand, id int64) error {
		var c Counter
		err := r.db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).First(&c, id).Error; err != nil {
				return err
			}
			c.Version++
			return tx.Save(&c).Error
		})
		if err != nil {
			return err
		}
		h.wrote(id, c.Version, true)
		return nil
	}
	cachedRead := func(_ *rand.Rand, id int64) error {
		start := time.Now()
		var c Counter
		if err := r.db.Scopes(writethrough.Cached).First(&c, id).Error; err != nil {
			return err
		}
		h.read(id, c.Version, start)
		return nil
	}
	for i := range 2 {
		wg.Add(3)
		go worker(uint64(10+i), rawWrite)
		go worker(uint64(20+i), gormWrite)
		go worker(uint64(30+i), cachedRead)
	}
	wg.Add(2)
	go worker(40, cachedRead)
	go worker(41, cachedRead)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestBypassWritesAreStaleAtMostTheLag: with a consumer running, a cached
// read that begins after a write that bypassed GORM committed may return
// the older row only while the consumer has not applied that commit yet: no
// stale read is older than the longest lag the consumer measured. Without
// a consumer the same run serves stale rows far longer (the check catches
// them).
func TestBypassWritesAreStaleAtMostTheLag(t *testing.T) {
	t.Run("with cdc", func(t *testing.T) {
		// The plugin marks its transactions (Config.CDC): the consumer
		// skips the keys they installed, which must not make any read stale.
		rdb, prefix := testenv.Redis(t)
		r := newRigWith(t, rdb, writethrough.Config{Prefix: prefix, CDC: true}, &Counter{})
		c := r.start()
		h := runMix(t, r, *staleOps)
		st := c.Stats()
		if p2 := h.staleness(true); len(p2) > 0 {
			t.Fatalf("%d reads older than a write through the plugin that completed before they began (P2)", len(p2))
		}
		stale := h.staleness(false)
		slices.Sort(stale)
		worst := time.Duration(0)
		if len(stale) > 0 {
			worst = stale[len(stale)-1]
		}
		t.Logf("%d reads, %d stale; worst staleness %v; consumer: %d transactions, lag last %v max %v, %d visibility waits",
			len(h.reads), len(stale), worst, st.Transactions, st.Lag, st.MaxLag, st.VisibilityWaits)
		// Clocks: the consumer's lag is taken against PostgreSQL's commit
		// timestamp, which precedes the writer's own "commit returned".
		if worst > st.MaxLag {
			t.Fatalf("a read was stale for %v, longer than the consumer's longest lag %v", worst, st.MaxLag)
		}
	})
	t.Run("without cdc", func(t *testing.T) {
		// Under heavy load the cache may answer few reads (timeouts send
		// them to the database): try a few runs before calling the check
		// blind.
		for attempt := 1; ; attempt++ {
			r := newRig(t, &Counter{})
			h := runMix(t, r, *staleOps/2)
			if p2 := h.staleness(true); len(p2) > 0 {
				t.Fatalf("%d reads older than a write through the plugin that completed before they began (P2)", len(p2))
			}
			stale := h.staleness(false)
			slices.Sort(stale)
			if len(stale) > 0 {
				t.Logf("without a consumer: %d of %d reads stale, worst %v", len(stale), len(h.reads), stale[len(stale)-1])
				return
			}
			if attempt == 3 {
				t.Fatal("no stale read without a consumer in 3 runs: the check cannot see what it is for")
			}
		}
	})
}
