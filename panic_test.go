package writethrough_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// Panics in user code, with and without the plugin. The rule (docs/design.md,
// "Panics"): user code that GORM runs for the statement panics as it does
// without the plugin; user code the plugin runs on its own account (decoding
// or encoding a cached row, re-reading a written row) never panics out of
// it, and the panic, with its stack, is logged or returned; a reader that
// shared another's database read never raises that reader's panic.

// The next n calls of a touchy Scan, a touchy Value, panicRow.AfterFind or
// an skey Value panic, once scanSkip calls of Scan have passed.
var scanPanics, valuePanics, findPanics, keyValuePanics, scanSkip atomic.Int32

var errScanBoom = errors.New("boom in Scan")

// takeOne consumes one armed panic.
func takeOne(c *atomic.Int32) bool {
	for {
		n := c.Load()
		if n <= 0 {
			return false
		}
		if c.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func disarm() {
	for _, c := range []*atomic.Int32{&scanPanics, &valuePanics, &findPanics, &keyValuePanics, &scanSkip} {
		c.Store(0)
	}
}

// touchy is a column type whose Scan and Value panic on demand.
type touchy string

func (t *touchy) Scan(src any) error {
	if !takeOne(&scanSkip) && takeOne(&scanPanics) {
		panic(errScanBoom)
	}
	switch v := src.(type) {
	case string:
		*t = touchy(v)
	case []byte:
		*t = touchy(v)
	case nil:
		*t = ""
	default:
		return fmt.Errorf("touchy: cannot scan %T", src)
	}
	return nil
}

func (t touchy) Value() (driver.Value, error) {
	if takeOne(&valuePanics) {
		panic("boom in Value")
	}
	return string(t), nil
}

type panicRow struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m"`
	Mood touchy
	Name string
}

func (r *panicRow) AfterFind(*gorm.DB) error {
	if takeOne(&findPanics) {
		panic("boom in AfterFind")
	}
	return nil
}

// skey is a key type that the plugin spells with String; only the driver
// calls its Value, inside GORM's query.
type skey string

func (k skey) String() string { return string(k) }

func (k skey) Value() (driver.Value, error) {
	if takeOne(&keyValuePanics) {
		panic("boom in a key's Value")
	}
	return string(k), nil
}

func (k *skey) Scan(src any) error {
	switch v := src.(type) {
	case string:
		*k = skey(v)
	case []byte:
		*k = skey(v)
	default:
		return fmt.Errorf("skey: cannot scan %T", src)
	}
	return nil
}

type keyedRow struct {
	ID   skey `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
}

type strictPanicRow struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m;mode:strict"`
	Mood touchy
	Name string
}

// logSink keeps what the plugin logs.
type logSink struct {
	mu   sync.Mutex // protects recs
	recs []string
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s *logSink) WithGroup(string) slog.Handler            { return s }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value.Any())
		return true
	})
	s.mu.Lock()
	s.recs = append(s.recs, b.String())
	s.mu.Unlock()
	return nil
}

// take returns what was logged since the last call.
func (s *logSink) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := strings.Join(s.recs, "\n")
	s.recs = nil
	return out
}

// callOutcome is what a call did: returned an error, or panicked with a value.
type callOutcome struct {
	panicked any
	err      error
}

func attempt(fn func() error) (o callOutcome) {
	defer func() { o.panicked = recover() }()
	o.err = fn()
	return o
}

func newPanicTwin(t *testing.T) (*twin, *logSink) {
	t.Helper()
	t.Cleanup(disarm)
	sink := &logSink{}
	tw := newTwin(t, twinOpts{
		cfg:    writethrough.Config{Logger: slog.New(sink), Timeout: 5 * time.Second}, // a loaded machine must not time a lookup out
		models: []any{&panicRow{}, &strictPanicRow{}, &keyedRow{}},
	})
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		rows := []panicRow{{Mood: "calm", Name: "a"}, {Mood: "glad", Name: "b"}, {Mood: "sad", Name: "c"}}
		require.NoError(t, db.Create(&rows).Error)
		require.NoError(t, db.Create(&[]strictPanicRow{{Mood: "calm", Name: "a"}}).Error)
		require.NoError(t, db.Create(&[]keyedRow{{ID: "k1", Name: "a"}, {ID: "k2", Name: "b"}}).Error)
	}
	return tw, sink
}

// assertStack checks that text carries the stack of the code that panicked.
func assertStack(t *testing.T, text, frame string) {
	t.Helper()
	assert.Contains(t, text, "goroutine ", "the stack is kept")
	assert.Contains(t, text, frame, "the stack reaches the code that panicked")
}

func TestPanicsOnTheReadPathComparedWithGORM(t *testing.T) {
	tw, sink := newPanicTwin(t)
	ctx := context.Background()
	ids := []uint{1, 2, 3}
	cold := func(t *testing.T) {
		require.NoError(t, writethrough.Invalidate(tw.cached, &panicRow{}, 1, 2, 3))
		require.NoError(t, writethrough.Invalidate(tw.cached, &keyedRow{}, "k1", "k2"))
	}
	warm := func(t *testing.T) {
		cold(t)
		var rs []panicRow
		require.NoError(t, tw.cached.Scopes(writethrough.Cached).Find(&rs, ids).Error)
		var k keyedRow
		require.NoError(t, tw.cached.Scopes(writethrough.Cached).Where("id = ?", skey("k1")).First(&k).Error)
		for _, id := range ids {
			en, err := writethrough.Inspect(ctx, tw.cached, &panicRow{}, id)
			require.NoError(t, err)
			require.Equal(t, writethrough.EntryCommitted, en.State)
		}
		en, err := writethrough.Inspect(ctx, tw.cached, &keyedRow{}, "k1")
		require.NoError(t, err)
		require.Equal(t, writethrough.EntryCommitted, en.State)
	}
	first := func(db *gorm.DB) error {
		var r panicRow
		return db.Scopes(writethrough.Cached).First(&r, 1).Error
	}
	firstKeyed := func(db *gorm.DB) error {
		var r keyedRow
		return db.Scopes(writethrough.Cached).Where("id = ?", skey("k1")).First(&r).Error
	}
	find := func(db *gorm.DB) error {
		var rs []panicRow
		if err := db.Scopes(writethrough.Cached).Find(&rs, ids).Error; err != nil {
			return err
		}
		if len(rs) != len(ids) {
			return fmt.Errorf("%d rows, want %d", len(rs), len(ids))
		}
		return nil
	}
	// Get and GetMany; without the plugin, the queries they stand for.
	get := func(db *gorm.DB) error {
		if db == tw.plain {
			var r panicRow
			return db.Where("id = ?", 1).First(&r).Error
		}
		_, err := writethrough.Get[panicRow](ctx, db, 1)
		return err
	}
	getMany := func(db *gorm.DB) error {
		if db == tw.plain {
			var rs []panicRow
			return db.Where("id IN ?", ids).Find(&rs).Error
		}
		rs, err := writethrough.GetMany[panicRow](ctx, db, 1, 2, 3)
		if err == nil && len(rs) != len(ids) {
			err = fmt.Errorf("%d rows, want %d", len(rs), len(ids))
		}
		return err
	}

	type want int
	const (
		returns  want = iota // no panic, no error
		panics               // the original panic value
		panicsPE             // a *writethrough.PanicError holding the original value and its stack
		// A Scan that panics inside database/sql's Rows.Scan leaves the
		// rows' lock held, and GORM's deferred rows.Close then waits for
		// it forever (golang/go#76465): not run.
		hangs
	)
	tests := []struct {
		name          string
		prepare       func(*testing.T)
		arm           *atomic.Int32
		call          func(*gorm.DB) error
		plain, cached want
		logged        string // a frame of the stack the plugin logs
	}{
		// The flight's leader runs GORM's query inside singleflight, which
		// recovers; the leader raises the panic again, once, with its stack.
		{"cold First, the key's Value panics in the driver", cold, &keyValuePanics, firstKeyed, panics, panicsPE, ""},
		// A hit binds no key.
		{"warm First, the key's Value would panic in the driver", warm, &keyValuePanics, firstKeyed, panics, returns, ""},
		// The plugin decodes a cached row with Scan, outside database/sql:
		// an undecodable entry, deleted; GORM's own read then succeeds.
		{"warm First, Scan panics", warm, &scanPanics, first, hangs, returns, "touchy).Scan"},
		{"warm Get, Scan panics", warm, &scanPanics, get, hangs, returns, "touchy).Scan"},
		{"warm Find of many, Scan panics", warm, &scanPanics, find, hangs, returns, "touchy).Scan"},
		{"warm GetMany, Scan panics", warm, &scanPanics, getMany, hangs, returns, "touchy).Scan"},
		// Only the plugin calls Value on a read, to encode the row it fills.
		{"cold First, Value panics", cold, &valuePanics, first, returns, returns, "touchy.Value"},
		{"cold Find of many, Value panics", cold, &valuePanics, find, returns, returns, "touchy.Value"},
		// GORM runs AfterFind (Get runs it in GORM's place on a hit).
		{"cold First, AfterFind panics", cold, &findPanics, first, panics, panics, ""},
		{"warm First, AfterFind panics", warm, &findPanics, first, panics, panics, ""},
		{"warm Get, AfterFind panics", warm, &findPanics, get, panics, panics, ""},
		{"warm Find of many, AfterFind panics", warm, &findPanics, find, panics, panics, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			disarm()
			tc.prepare(t)
			sink.take()
			check := func(side string, db *gorm.DB, w want) {
				t.Helper()
				if w == hangs {
					return
				}
				tc.arm.Store(1)
				o := attempt(func() error { return tc.call(db) })
				disarm()
				switch w {
				case returns:
					assert.Nil(t, o.panicked, "%s: no panic", side)
					assert.NoError(t, o.err, side)
				case panics:
					require.NotNil(t, o.panicked, "%s: panics", side)
					_, wrapped := o.panicked.(*writethrough.PanicError)
					assert.False(t, wrapped, "%s: the panic value is the original, %v", side, o.panicked)
				case panicsPE:
					require.NotNil(t, o.panicked, "%s: panics", side)
					pe, ok := o.panicked.(*writethrough.PanicError)
					require.True(t, ok, "%s: panics with a *PanicError, not %T", side, o.panicked)
					assert.Equal(t, "boom in a key's Value", pe.Value, "the original value")
					assert.ErrorIs(t, pe, writethrough.ErrPanic)
					assertStack(t, pe.Error(), "skey.Value")
				}
			}
			check("plain GORM", tw.plain, tc.plain)
			check("with the plugin", tw.cached, tc.cached)
			if tc.logged != "" {
				assertStack(t, sink.take(), tc.logged)
			}
			// The plugin keeps serving, from the cache again.
			cold(t)
			for i := 0; i < 2; i++ {
				var rs []panicRow
				require.NoError(t, tw.cached.Scopes(writethrough.Cached).Find(&rs, ids).Error)
				require.Len(t, rs, len(ids))
			}
			r, err := writethrough.Get[panicRow](ctx, tw.cached, 2)
			require.NoError(t, err)
			assert.Equal(t, touchy("glad"), r.Mood)
			k, err := writethrough.Get[keyedRow](ctx, tw.cached, "k2")
			require.NoError(t, err)
			assert.Equal(t, "b", k.Name)
		})
	}
}

// TestPanicOfAFlightLeaderIsNotRaisedInItsFollowers has readers of one cold
// key share one database read whose query panics (a key's Value method, in
// the driver). singleflight raises a leader's panic in every follower; the
// plugin must not: the leader raises it, once, and the followers read the
// database themselves.
func TestPanicOfAFlightLeaderIsNotRaisedInItsFollowers(t *testing.T) {
	tw, _ := newPanicTwin(t)
	require.NoError(t, writethrough.Invalidate(tw.cached, &keyedRow{}, "k1"))
	const n = 8
	allIn, release := gatherFlight(tw.p, n)
	keyValuePanics.Store(1) // the leader's query: followers wait on the flight meanwhile
	outs := make([]callOutcome, n)
	rows := make([]keyedRow, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			outs[i] = attempt(func() error {
				return tw.cached.Scopes(writethrough.Cached).Where("id = ?", skey("k1")).First(&rows[i]).Error
			})
		}(i)
	}
	awaitFlight(t, allIn)
	release()
	wg.Wait()
	var raised []any
	for i, o := range outs {
		if o.panicked != nil {
			raised = append(raised, o.panicked)
			continue
		}
		assert.NoError(t, o.err, "reader %d", i)
		assert.Equal(t, "a", rows[i].Name, "reader %d reads the row", i)
	}
	require.Len(t, raised, 1, "only the leader raises the panic")
	pe, ok := raised[0].(*writethrough.PanicError)
	require.True(t, ok, "a *PanicError, not %T", raised[0])
	assert.Equal(t, "boom in a key's Value", pe.Value)
	assertStack(t, pe.Error(), "skey.Value")

	writethrough.SetHook(tw.p, nil)
	k, err := writethrough.Get[keyedRow](context.Background(), tw.cached, "k2")
	require.NoError(t, err, "the plugin keeps serving")
	assert.Equal(t, "b", k.Name)
}

func TestPanicsOnTheWritePathComparedWithGORM(t *testing.T) {
	tw, sink := newPanicTwin(t)
	ctx := context.Background()
	update := func(model any) func(db *gorm.DB) error {
		return func(db *gorm.DB) error {
			return db.Model(model).Where("id = ?", 1).Update("name", "new").Error
		}
	}
	// After the write the plugin re-reads the row (its Scan runs inside
	// database/sql and is left alone here: see hangs above), then encodes it
	// with Value and decodes it again with Scan to check the round trip.
	// GORM alone runs neither for this Update. The row is then not cached:
	// its key is invalidated, in Soft and Strict mode alike.
	tests := []struct {
		name   string
		model  any
		arm    func()
		logged string // a frame of the stack the plugin logs
	}{
		{"encode: Value panics", &panicRow{}, func() { valuePanics.Store(1) }, "touchy.Value"},
		{"round trip: Scan panics", &panicRow{}, func() { scanSkip.Store(1); scanPanics.Store(1) }, "touchy).Scan"},
		{"round trip: Scan panics, Strict", &strictPanicRow{}, func() { scanSkip.Store(1); scanPanics.Store(1) }, "touchy).Scan"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			disarm()
			sink.take()
			tc.arm()
			plain := attempt(func() error { return update(tc.model)(tw.plain) })
			disarm()
			require.Nil(t, plain.panicked)
			require.NoError(t, plain.err)

			tc.arm()
			cached := attempt(func() error { return update(tc.model)(tw.cached) })
			disarm()
			require.Nil(t, cached.panicked, "the plugin never panics out of its own work")
			require.NoError(t, cached.err, "as without the plugin")
			assertStack(t, sink.take(), tc.logged)
			en, err := writethrough.Inspect(ctx, tw.cached, tc.model, 1)
			require.NoError(t, err)
			assert.Equal(t, writethrough.EntryAbsent, en.State, "the key is invalidated, never left stale")

			// The plugin keeps serving: the next write caches its row.
			require.NoError(t, tw.cached.Model(tc.model).Where("id = ?", 1).Update("name", "again").Error)
			en, err = writethrough.Inspect(ctx, tw.cached, tc.model, 1)
			require.NoError(t, err)
			assert.Equal(t, writethrough.EntryCommitted, en.State)
		})
	}

	// A panic in the plugin's own code in a write callback fails the
	// statement with the stack, and GORM rolls the write back.
	t.Run("plugin code panics in a write callback", func(t *testing.T) {
		var armed atomic.Bool
		armed.Store(true)
		writethrough.SetHook(tw.p, func(point, key string) {
			if point == "write:after-reread" && armed.CompareAndSwap(true, false) {
				panic("boom in the plugin")
			}
		})
		defer writethrough.SetHook(tw.p, nil)
		o := attempt(func() error {
			return tw.cached.Model(&panicRow{}).Where("id = ?", 2).Update("name", "lost").Error
		})
		require.Nil(t, o.panicked)
		require.ErrorIs(t, o.err, writethrough.ErrPanic)
		var pe *writethrough.PanicError
		require.ErrorAs(t, o.err, &pe)
		assert.Equal(t, "boom in the plugin", pe.Value)
		assertStack(t, pe.Error(), "TestPanicsOnTheWritePathComparedWithGORM")
		var r panicRow
		require.NoError(t, tw.cached.First(&r, 2).Error)
		assert.Equal(t, "b", r.Name, "the failed statement rolled back")
		require.NoError(t, tw.cached.Model(&panicRow{}).Where("id = ?", 2).Update("name", "kept").Error)
	})
}
