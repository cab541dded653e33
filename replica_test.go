package writethrough_test

// Read replicas: the plugin beside gorm.io/plugin/dbresolver, on a primary
// and a streaming replica of the test's own (internal/pgproc) whose WAL
// replay the test pauses, so that the replica lags behind by exactly the
// writes the test made. Every read through the plugin is compared with the
// primary, what Redis holds afterwards too (a fill read from the replica
// would leave a row older than the primary's: a stale fill), and the same
// reads without the plugin (plain GORM with dbresolver) show what the lag
// does to them.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/plugin/dbresolver"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/faultproxy"
	"github.com/gorm-writethrough/writethrough/internal/pgproc"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// Ledger is cached write-through: a write installs its new row.
type Ledger struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Owner   string
	Balance int64
	Version int
}

// LedgerNote is cached aside: a write only invalidates, so the next read
// fills.
type LedgerNote struct {
	ID      uint `gorm:"primaryKey" cache:"strategy:aside"`
	Body    string
	Version int
}

// countedPool is a connection pool that records every statement and
// transaction sent through it.
type countedPool struct {
	*sql.DB
	mu   sync.Mutex // protects sqls
	sqls []string
}

func (c *countedPool) note(q string) {
	c.mu.Lock()
	c.sqls = append(c.sqls, q)
	c.mu.Unlock()
}

// take returns the statements recorded so far and forgets them.
func (c *countedPool) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.sqls
	c.sqls = nil
	return out
}

func (c *countedPool) PrepareContext(ctx context.Context, q string) (*sql.Stmt, error) {
	c.note(q)
	return c.DB.PrepareContext(ctx, q)
}

func (c *countedPool) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	c.note(q)
	return c.DB.ExecContext(ctx, q, args...)
}

func (c *countedPool) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	c.note(q)
	return c.DB.QueryContext(ctx, q, args...)
}

func (c *countedPool) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	c.note(q)
	return c.DB.QueryRowContext(ctx, q, args...)
}

func (c *countedPool) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	c.note("BEGIN")
	return c.DB.BeginTx(ctx, opts)
}

// withReplica registers dbresolver on db with replica as its one read
// replica (the source stays db's own pool), reached through a counted pool.
func withReplica(t *testing.T, db *gorm.DB, replica *pgproc.Replica) *countedPool {
	t.Helper()
	rdb := testrig.Open(t, replica.DSN("postgres"), nil)
	sqlDB, err := rdb.DB()
	require.NoError(t, err)
	pool := &countedPool{DB: sqlDB}
	require.NoError(t, db.Use(dbresolver.Register(dbresolver.Config{
		Replicas: []gorm.Dialector{postgres.New(postgres.Config{Conn: pool})},
	})))
	pool.take()
	return pool
}

// lagRig is one run on the shared primary and replica.
type lagRig struct {
	replica *pgproc.Replica
	truth   *gorm.DB // the primary, without plugin or resolver
	db      *gorm.DB // the plugin, then dbresolver
	twin    *gorm.DB // dbresolver without the plugin
	p       *writethrough.Plugin
	rdb     *redis.Client
	prefix  string
	onRepl  *countedPool // db's replica

	mu      sync.Mutex // protects blocked
	blocked map[string]chan struct{}
	reached chan string
}

// newLagRig opens the three databases on primary, recreates and seeds the
// tables, and waits until the replica has them. The plugin is registered
// first, as the README says, then dbresolver; or the other way round when
// resolverFirst.
func newLagRig(t *testing.T, primary *pgproc.Server, replica *pgproc.Replica, cfg writethrough.Config, resolverFirst bool) *lagRig {
	t.Helper()
	r := &lagRig{replica: replica, blocked: map[string]chan struct{}{}, reached: make(chan string, 1)}
	r.truth = testrig.Open(t, primary.DSN("postgres"), nil)
	require.NoError(t, r.truth.Migrator().DropTable(&Ledger{}, &LedgerNote{}))
	require.NoError(t, r.truth.AutoMigrate(&Ledger{}, &LedgerNote{}))
	for id := uint(1); id <= 12; id++ {
		require.NoError(t, r.truth.Create(&Ledger{ID: id, Owner: fmt.Sprintf("o%d", id%3), Balance: 100, Version: 1}).Error)
	}
	for id := uint(1); id <= 6; id++ {
		require.NoError(t, r.truth.Create(&LedgerNote{ID: id, Body: "n", Version: 1}).Error)
	}

	r.rdb, r.prefix = testenv.Redis(t)
	cfg.Prefix = r.prefix
	cfg.DrainInterval = -1
	r.db = testrig.Open(t, primary.DSN("postgres"), &gorm.Config{Logger: logger.Discard})
	if resolverFirst {
		r.onRepl = withReplica(t, r.db, replica)
	}
	r.p = install(t, r.db, r.rdb, cfg)
	writethrough.SetHook(r.p, r.hook)
	if !resolverFirst {
		r.onRepl = withReplica(t, r.db, replica)
	}
	r.twin = testrig.Open(t, primary.DSN("postgres"), nil)
	withReplica(t, r.twin, replica)
	replica.CatchUp()
	return r
}

// hook holds a writer whose key is blocked after its COMMIT, before its
// finalize: the key stays pending while the test reads it.
func (r *lagRig) hook(point, key string) {
	if point != "write:before-finalize" {
		return
	}
	r.mu.Lock()
	release, ok := r.blocked[key]
	delete(r.blocked, key)
	r.mu.Unlock()
	if ok {
		r.reached <- key
		<-release
	}
}

func (r *lagRig) block(key string) chan struct{} {
	release := make(chan struct{})
	r.mu.Lock()
	r.blocked[key] = release
	r.mu.Unlock()
	return release
}

func (r *lagRig) key(table string, id uint) string {
	return fmt.Sprintf("%s:%s:%d", r.prefix, table, id)
}

// evict deletes every key of the run from Redis, as eviction or expiry
// would: the next reads miss and fill.
func (r *lagRig) evict(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	keys, err := r.rdb.Keys(ctx, r.prefix+":*").Result()
	require.NoError(t, err)
	if len(keys) > 0 {
		require.NoError(t, r.rdb.Del(ctx, keys...).Err())
	}
}

// lagReport is what a run found.
type lagReport struct {
	stale           []string // Redis holds a row older than the primary's, or "not found" for a row it has
	offPrimary      []string // a read through the plugin gave other rows than the primary holds
	twinStale       int      // reads without the plugin that gave other rows than the primary holds
	pending         []string // keys left pending once every write has returned
	writesOnReplica []string
	replicaReads    int // statements the plugin's database sent to the replica during the reads
}

var ledgerIDs = []uint{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 100, 101}
var noteIDs = []uint{1, 2, 3, 4, 5, 6, 50}

// runLagged warms some keys, pauses replay, writes through the plugin,
// reads every row through it in every served form while the replica is
// behind, and reports what differs from the primary.
func runLagged(t *testing.T, r *lagRig) lagReport {
	t.Helper()
	ctx := context.Background()
	var rep lagReport
	// Warm: keys 1 to 4 of each table (and 11, 12 of the ledgers) are
	// cached while the replica is in step.
	for _, id := range []uint{1, 2, 3, 4, 11, 12} {
		_, err := writethrough.Get[Ledger](ctx, r.db, id)
		require.NoError(t, err)
		if id <= 4 {
			_, err = writethrough.Get[LedgerNote](ctx, r.db, id)
			require.NoError(t, err)
		}
	}

	r.replica.PauseReplay()
	r.onRepl.take()
	defer func() {
		r.replica.ResumeReplay()
		r.replica.CatchUp()
	}()
	bump := map[string]any{"balance": gorm.Expr("balance + 10"), "version": gorm.Expr("version + 1")}
	noTx := r.db.Session(&gorm.Session{SkipDefaultTransaction: true})
	// Cached keys in GORM's transaction and in none; others in yours.
	require.NoError(t, r.db.Model(&Ledger{ID: 1}).Updates(bump).Error)
	require.NoError(t, noTx.Model(&Ledger{ID: 3}).Updates(bump).Error)
	require.NoError(t, r.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Ledger{ID: 5}).Updates(bump).Error; err != nil {
			return err
		}
		if err := tx.Create(&Ledger{ID: 100, Owner: "new", Balance: 1, Version: 1}).Error; err != nil {
			return err
		}
		return tx.Delete(&Ledger{ID: 2}).Error
	}))
	require.NoError(t, noTx.Create(&Ledger{ID: 101, Owner: "new", Balance: 2, Version: 1}).Error)
	require.NoError(t, noTx.Delete(&Ledger{ID: 7}).Error)
	require.NoError(t, r.db.Model(&Ledger{}).Where("id IN ?", []uint{8, 9}).Updates(bump).Error) // bulk
	rollback := errors.New("roll back")
	require.ErrorIs(t, r.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Ledger{ID: 4}).Updates(bump).Error; err != nil {
			return err
		}
		return rollback
	}), rollback)
	noteBump := map[string]any{"body": "changed", "version": gorm.Expr("version + 1")}
	require.NoError(t, r.db.Model(&LedgerNote{ID: 1}).Updates(noteBump).Error)
	require.NoError(t, noTx.Model(&LedgerNote{ID: 5}).Updates(noteBump).Error)
	require.NoError(t, r.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Delete(&LedgerNote{ID: 2}).Error; err != nil {
			return err
		}
		return tx.Create(&LedgerNote{ID: 50, Body: "new", Version: 1}).Error
	}))
	rep.writesOnReplica = r.onRepl.take()

	// A write that has committed but not finalized: its key is pending.
	// The plugin's readers of it must see the committed row.
	release := r.block(r.key("ledgers", 10))
	var once sync.Once
	let := func() { once.Do(func() { close(release) }) }
	defer let() // a failed assertion must not leave the writer held
	done := make(chan error, 1)
	go func() { done <- r.db.Model(&Ledger{ID: 10}).Updates(bump).Error }()
	select {
	case <-r.reached:
	case err := <-done:
		t.Fatalf("the write of key 10 ended (%v) without reaching its finalize", err)
	}
	r.compare(t, &rep, "pending", []uint{10, 11})
	let()
	require.NoError(t, <-done)
	r.check(t, &rep, "after the pending write")

	// Every form of read, first on cold keys (fills), then on the filled
	// ones (hits).
	r.evict(t)
	r.compare(t, &rep, "cold", ledgerIDs)
	r.check(t, &rep, "after the cold reads")
	r.compare(t, &rep, "warm", ledgerIDs)
	r.check(t, &rep, "after the warm reads")

	// The replica is there for reads the plugin does not serve: they go to
	// it, as without the plugin.
	r.onRepl.take()
	var some, someTwin []Ledger
	require.NoError(t, r.db.Where("owner = ?", "new").Order("id").Find(&some).Error)
	require.NoError(t, r.twin.Where("owner = ?", "new").Order("id").Find(&someTwin).Error)
	require.Equal(t, someTwin, some, "a read the plugin does not serve")
	rep.replicaReads = len(r.onRepl.take())
	return rep
}

// compare reads ids through the plugin (First and Get one by one, Find
// and GetMany of all, for both models, each from a cold Redis in turn when
// cold is "cold") and without it, and records what differs from the
// primary.
func (r *lagRig) compare(t *testing.T, rep *lagReport, phase string, ids []uint) {
	t.Helper()
	ctx := context.Background()
	truthL := map[uint]Ledger{}
	var all []Ledger
	require.NoError(t, r.truth.Find(&all).Error)
	for _, l := range all {
		truthL[l.ID] = l
	}
	truthN := map[uint]LedgerNote{}
	var notes []LedgerNote
	require.NoError(t, r.truth.Find(&notes).Error)
	for _, n := range notes {
		truthN[n.ID] = n
	}
	off := func(form string, id uint, got, want any) {
		rep.offPrimary = append(rep.offPrimary, fmt.Sprintf("%s %s %d: %+v, primary %+v", phase, form, id, got, want))
	}
	cold := phase == "cold"
	nids := noteIDs
	if phase == "pending" {
		nids = nil
	}
	forms := []struct {
		name string
		one  bool
		read func(db *gorm.DB, ids []uint) (map[uint]any, error)
	}{
		{"First", true, func(db *gorm.DB, ids []uint) (map[uint]any, error) {
			var l Ledger
			err := db.Scopes(writethrough.Cached).First(&l, ids[0]).Error
			return oneRow(l.ID, l, err)
		}},
		{"Get", true, func(db *gorm.DB, ids []uint) (map[uint]any, error) {
			if db == r.twin { // what Get means, in plain GORM
				var l Ledger
				err := db.First(&l, ids[0]).Error
				return oneRow(l.ID, l, err)
			}
			l, err := writethrough.Get[Ledger](ctx, db, ids[0])
			return oneRow(l.ID, l, err)
		}},
		{"Find", false, func(db *gorm.DB, ids []uint) (map[uint]any, error) {
			var ls []Ledger
			err := db.Scopes(writethrough.Cached).Find(&ls, ids).Error
			return rowsByID(ls, func(l Ledger) uint { return l.ID }), err
		}},
		{"GetMany", false, func(db *gorm.DB, ids []uint) (map[uint]any, error) {
			if db == r.twin {
				var ls []Ledger
				err := db.Find(&ls, ids).Error
				return rowsByID(ls, func(l Ledger) uint { return l.ID }), err
			}
			ls, err := writethrough.GetMany[Ledger](ctx, db, anys(ids)...)
			return rowsByID(ls, func(l Ledger) uint { return l.ID }), err
		}},
	}
	for _, f := range forms {
		if cold {
			r.evict(t)
		}
		check := func(db *gorm.DB, ids []uint, differ func(id uint, got, want any)) {
			got, err := f.read(db, ids)
			require.NoError(t, err, "%s %s %v", phase, f.name, ids)
			for _, id := range ids {
				want, ok := truthL[id]
				g, gok := got[id]
				if ok != gok || (ok && g != any(want)) {
					differ(id, g, want)
				}
			}
		}
		if f.one {
			for _, id := range ids {
				check(r.db, []uint{id}, func(id uint, got, want any) { off(f.name, id, got, want) })
				check(r.twin, []uint{id}, func(uint, any, any) { rep.twinStale++ })
			}
		} else {
			check(r.db, ids, func(id uint, got, want any) { off(f.name, id, got, want) })
			check(r.twin, ids, func(uint, any, any) { rep.twinStale++ })
		}
	}
	// The aside model: every read of a written key fills.
	for _, id := range nids {
		var n LedgerNote
		err := r.db.Scopes(writethrough.Cached).First(&n, id).Error
		got, err := oneRow(n.ID, n, err)
		require.NoError(t, err)
		want, ok := truthN[id]
		if g, gok := got[id]; ok != gok || (ok && g != any(want)) {
			off("First(note)", id, g, want)
		}
	}
	if len(nids) > 0 {
		notes, err := writethrough.GetMany[LedgerNote](ctx, r.db, anys(nids)...)
		require.NoError(t, err)
		got := rowsByID(notes, func(n LedgerNote) uint { return n.ID })
		for _, id := range nids {
			want, ok := truthN[id]
			if g, gok := got[id]; ok != gok || (ok && g != any(want)) {
				off("GetMany(note)", id, g, want)
			}
		}
	}
}

// check records every key whose Redis entry is older than the primary's
// row: a committed row that differs from it, or a tombstone where it has a
// row. Absent keys are safe; so would a lease be, but none is left.
func (r *lagRig) check(t *testing.T, rep *lagReport, when string) {
	t.Helper()
	ctx := context.Background()
	inspect := func(model any, id uint, want any, exists bool) {
		e, err := writethrough.Inspect(ctx, r.db, model, id)
		require.NoError(t, err)
		switch e.State {
		case writethrough.EntryCommitted:
			got := reflectDeref(e.Row)
			if !exists || got != want {
				rep.stale = append(rep.stale, fmt.Sprintf("%s: %s holds %+v, primary %+v (exists %v)", when, e.Key, got, want, exists))
			}
		case writethrough.EntryTombstone:
			if exists {
				rep.stale = append(rep.stale, fmt.Sprintf("%s: %s holds not found, primary %+v", when, e.Key, want))
			}
		case writethrough.EntryPending:
			// No write is in flight when check runs: a pending key is a
			// write whose transaction the plugin did not see.
			rep.pending = append(rep.pending, when+": "+e.Key)
		}
	}
	for _, id := range ledgerIDs {
		var l Ledger
		err := r.truth.Take(&l, id).Error
		inspect(&Ledger{}, id, l, err == nil)
	}
	for _, id := range noteIDs {
		var n LedgerNote
		err := r.truth.Take(&n, id).Error
		inspect(&LedgerNote{}, id, n, err == nil)
	}
}

func reflectDeref(row any) any {
	switch v := row.(type) {
	case *Ledger:
		return *v
	case *LedgerNote:
		return *v
	}
	return row
}

func oneRow[T any](id uint, row T, err error) (map[uint]any, error) {
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return map[uint]any{}, nil
	}
	return map[uint]any{id: row}, err
}

func rowsByID[T any](rows []T, id func(T) uint) map[uint]any {
	out := map[uint]any{}
	for _, r := range rows {
		out[id(r)] = r
	}
	return out
}

func anys(ids []uint) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

// TestReadReplicas runs the plugin with dbresolver against a replica of
// the test's own, on one primary and replica pair.
//
// A lagging replica: writes of every kind, then reads of every row in every
// served form, cold and warm, while replay is paused. The plugin's reads
// give the primary's rows, Redis never holds a row older than the
// primary's, the writes send nothing to the replica, and reads the plugin
// does not serve still go to the replica. Plain GORM with dbresolver, on
// the same reads, gives the replica's older rows. With fills and pending
// reads sent to the replica (ReadAnyReplica), the same run finds stale
// entries and reads.
//
// Then the two reads that Redis cannot answer: a key Redis missed a write
// of (suspect) is read from the primary; with Redis unreachable, a read
// goes where dbresolver sends it, as without the plugin, and fills nothing.
func TestReadReplicas(t *testing.T) {
	primary := pgproc.Start(t)
	replica := pgproc.StartReplica(t, primary)
	for _, tc := range []struct {
		name          string
		cfg           writethrough.Config
		resolverFirst bool
		broken        bool
	}{
		{name: "returning", cfg: calm()},
		{name: "reread", cfg: writethrough.Config{Timeout: calm().Timeout, RereadWrites: true}},
		{name: "dbresolver registered first", cfg: calm(), resolverFirst: true},
		{name: "broken: fills and pending reads go to the replica", cfg: calm(), broken: true},
	} {
		t.Run("lagging/"+tc.name, func(t *testing.T) {
			r := newLagRig(t, primary, replica, tc.cfg, tc.resolverFirst)
			writethrough.ReadAnyReplica(r.p, tc.broken)
			rep := runLagged(t, r)
			require.Empty(t, rep.writesOnReplica, "statements of the writes sent to the replica")
			require.Empty(t, rep.pending, "keys the writes left pending")
			require.Positive(t, rep.twinStale, "the replica is not behind: plain GORM with dbresolver read no old row, so the run proves nothing")
			require.Positive(t, rep.replicaReads, "a read the plugin does not serve did not reach the replica")
			if tc.broken {
				require.NotEmpty(t, rep.stale, "the checker missed the stale fills of fills that read the replica")
				require.NotEmpty(t, rep.offPrimary, "the comparison missed the replica's rows served through the plugin")
				require.True(t, slices.ContainsFunc(rep.offPrimary, func(s string) bool { return strings.HasPrefix(s, "pending ") }),
					"the comparison missed a pending key read from the replica: %v", rep.offPrimary)
				t.Logf("found, as it must: %d stale entries, %d reads off the primary; first: %s", len(rep.stale), len(rep.offPrimary), rep.stale[0])
				return
			}
			require.Empty(t, rep.stale, "Redis holds rows older than the primary's")
			require.Empty(t, rep.offPrimary, "reads through the plugin that did not give the primary's rows")
			t.Logf("plain GORM with dbresolver: %d reads gave the replica's older rows; the plugin: none", rep.twinStale)
		})
	}
	t.Run("suspect key is read from the primary", func(t *testing.T) {
		e, proxy, onRepl := newReplicaFaultEnv(t, primary, replica)
		ctx := context.Background()
		u := User{Email: "suspect@x", Balance: 1}
		require.NoError(t, e.db.Create(&u).Error)
		replica.CatchUp()
		replica.PauseReplay()
		defer func() { replica.ResumeReplay(); replica.CatchUp() }()
		proxy.Block() // the write commits; Redis keeps the old row, the key goes to the outbox
		require.NoError(t, e.db.Model(&u).Update("balance", 2).Error)
		proxy.Unblock()
		require.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", u.ID)), "Redis still holds the old row")
		read := func() []int64 {
			var got User
			require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
			g, err := writethrough.Get[User](ctx, e.db, u.ID)
			require.NoError(t, err)
			gs, err := writethrough.GetMany[User](ctx, e.db, u.ID)
			require.NoError(t, err)
			require.Len(t, gs, 1)
			return []int64{got.Balance, g.Balance, gs[0].Balance}
		}
		onRepl.take()
		require.Equal(t, []int64{2, 2, 2}, read(), "First, Get, GetMany of a key whose write Redis missed")
		require.Empty(t, onRepl.take(), "reads of a suspect key sent to the replica")
		writethrough.ReadAnyReplica(e.p, true)
		require.Equal(t, []int64{1, 1, 1}, read(), "the broken variant reads the paused replica: the test must see its old row")
		writethrough.ReadAnyReplica(e.p, false)
	})
	t.Run("Redis unreachable: reads go to the replica and fill nothing", func(t *testing.T) {
		e, proxy, onRepl := newReplicaFaultEnv(t, primary, replica)
		ctx := context.Background()
		u := User{Email: "down@x", Balance: 1}
		require.NoError(t, e.db.Create(&u).Error)
		replica.CatchUp()
		replica.PauseReplay()
		defer func() { replica.ResumeReplay(); replica.CatchUp() }()
		require.NoError(t, e.db.Model(&u).Update("balance", 2).Error)
		require.NoError(t, writethrough.Invalidate(e.db, &User{}, u.ID))
		proxy.Block()
		onRepl.take()
		var got User
		require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
		g, err := writethrough.Get[User](ctx, e.db, u.ID)
		require.NoError(t, err)
		assert.Equal(t, []int64{1, 1}, []int64{got.Balance, g.Balance},
			"with Redis unreachable the read is dbresolver's: the paused replica's row, as plain GORM with dbresolver gives")
		assert.Len(t, onRepl.take(), 2, "each read went to the replica")
		proxy.Unblock()
		assert.Equal(t, byte(0), e.state(t, e.key("users", u.ID)), "nothing was filled")
		require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
		assert.Equal(t, int64(2), got.Balance, "once Redis answers, the miss fills from the primary")
		assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", u.ID)))
	})
}

// newReplicaFaultEnv is the rig's env on primary's postgres database (its
// users table made anew), with a redis-server of the test's own behind a
// fault proxy, the plugin in Soft mode without a breaker, and dbresolver
// with replica as its read replica through a counted pool.
func newReplicaFaultEnv(t *testing.T, primary *pgproc.Server, replica *pgproc.Replica) (*env, *faultproxy.Proxy, *countedPool) {
	t.Helper()
	gcfg := &gorm.Config{}
	n := testrig.CountSQL(gcfg)
	db := testrig.Open(t, primary.DSN("postgres"), gcfg)
	require.NoError(t, db.Migrator().DropTable(&User{}))
	var proxy *faultproxy.Proxy
	e := newEnv(t, rigOpts{db: db, sqls: n, cfg: faultDefaults(writethrough.Config{BreakerThreshold: -1}), own: true,
		via: func(srv *redisproc.Server) string {
			proxy = faultproxy.New(t, srv.Addr())
			return proxy.Addr()
		}})
	return e, proxy, withReplica(t, e.db, replica)
}
