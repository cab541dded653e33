package writethrough

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// Plugin is the write-through cache. Register it with db.Use right after
// gorm.Open, before plugins that replace the connection pool (dbresolver).
type Plugin struct {
	rdb     redis.UniversalClient
	cfg     Config
	cfgErr  error
	scripts entry.Scripts

	specs sync.Map // reflect.Type -> *specEntry

	tablesMu sync.Mutex              // protects tables
	tables   map[string][]*modelSpec // relation name -> cached models on it (tables.go)

	cascMu   sync.Mutex               // protects cascSeen and cascades
	cascSeen map[*schema.Schema]bool  // schemas whose relations are recorded
	cascades map[string][]cascadeRule // parent table -> foreign keys onto it with actions (cascade.go)

	flights singleflight.Group
	readSeq atomic.Uint64 // orders a flight's database read against its followers' arrival

	mu     sync.Mutex   // protects inited and home
	inited map[any]bool // callback registries already hooked
	home   uintptr      // the Plugins map of the database the plugin serves; 0 before

	hook func(point, key string) // test-only interleaving points; nil in production
	// anyReplica (tests only) lets the reads that must see the primary go
	// where dbresolver sends them: the bug the replica tests must catch.
	anyReplica bool

	brk *breaker

	// ctxTimeout: bound each Redis call with a context deadline. False when
	// the client ignores deadlines (ContextTimeoutEnabled off) or its own
	// read and write timeouts are already within Config.Timeout.
	ctxTimeout     bool
	timeoutWarning string

	db           *gorm.DB // the registered database, for the outbox drainer
	outboxOnce   sync.Once
	drainStarted atomic.Bool
	drainMu      sync.Mutex // protects stopDrain, drainDone
	stopDrain    context.CancelFunc
	drainDone    chan struct{}
	drainFails   int       // consecutive failed drain passes; the drainer's goroutine only
	drainLogged  time.Time // when the drainer last logged a failure; the drainer's goroutine only
	wake         chan struct{}
	suspects     suspects // keys in the outbox, read from the database meanwhile
	gate         gate     // work Close waits for; closed by Close

	stats counters
}

var _ gorm.Plugin = (*Plugin)(nil)

// Name is the name the plugin registers under; callback names derive from it.
const Name = "writethrough"

// New returns a plugin that caches in rdb. The caller owns rdb. A bad cfg is
// reported by db.Use.
func New(rdb redis.UniversalClient, cfg Config) *Plugin {
	p := &Plugin{rdb: rdb, inited: make(map[any]bool), wake: make(chan struct{}, 1)}
	p.gate.idle = make(chan struct{})
	p.cfg, p.cfgErr = cfg.withDefaults()
	p.brk = &breaker{threshold: p.cfg.BreakerThreshold, cooldown: p.cfg.BreakerCooldown, now: time.Now}
	p.ctxTimeout, p.timeoutWarning = deadlinePolicy(rdb, p.cfg.Timeout)
	if p.cfgErr == nil && rdb == nil {
		p.cfgErr = &ConfigError{Field: "rdb", Reason: "New was given a nil Redis client"}
	}
	if p.cfgErr == nil && p.cfg.WaitReplicas > 0 {
		switch rdb.(type) {
		case *redis.Client, *redis.ClusterClient:
		default:
			p.cfgErr = &ConfigError{Field: "WaitReplicas", Reason: fmt.Sprintf("waiting for replicas needs a *redis.Client or *redis.ClusterClient, not %T", rdb)}
		}
	}
	if rt := clientReadTimeout(rdb); p.cfgErr == nil && p.cfg.WaitReplicas > 0 && rt > 0 && p.cfg.WaitTimeout >= rt {
		// The client stops reading a reply after ReadTimeout: a WAIT that
		// takes its whole timeout would fail as a connection error (the
		// breaker counts it), after go-redis resent the batch, scripts
		// and all, MaxRetries times.
		p.cfgErr = &ConfigError{Field: "WaitTimeout", Reason: fmt.Sprintf("%s is not shorter than the Redis client's ReadTimeout %s", p.cfg.WaitTimeout, rt)}
	}
	return p
}

// clientReadTimeout returns the ReadTimeout of a *redis.Client or
// *redis.ClusterClient (go-redis's default when unset; negative for
// none), and 0 for other clients.
func clientReadTimeout(rdb redis.UniversalClient) time.Duration {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().ReadTimeout
	case *redis.ClusterClient:
		return c.Options().ReadTimeout
	}
	return 0
}

// Name implements gorm.Plugin.
func (p *Plugin) Name() string { return Name }

// Initialize implements gorm.Plugin. It wraps the connection pool so that the
// plugin sees every real COMMIT and ROLLBACK, and registers the callbacks.
// It is safe to call more than once (dbresolver does).
//
// One Plugin serves one database: registering it on a second *gorm.DB (a
// second gorm.Open) fails with an error wrapping gorm.ErrRegistered, since
// its outbox lives in the first database. Create one Plugin per database;
// they may share the Redis client. (A second db.Use(p) on the same *gorm.DB
// gets GORM's own gorm.ErrRegistered, "registered": GORM answers before the
// plugin is called.)
func (p *Plugin) Initialize(db *gorm.DB) error {
	if p.cfgErr != nil {
		return p.cfgErr
	}
	if db == nil || db.Config == nil {
		return fmt.Errorf("writethrough: Initialize needs a *gorm.DB from gorm.Open")
	}
	// Sessions of one database and the copies dbresolver opens share its
	// Config's Plugins map; another gorm.Open has its own.
	home := reflect.ValueOf(db.Config.Plugins).Pointer()
	p.mu.Lock()
	other := p.home != 0 && p.home != home
	p.mu.Unlock()
	if other {
		return fmt.Errorf("writethrough: this Plugin is already registered on another *gorm.DB; "+
			"create one Plugin per database with writethrough.New (they may share the Redis client): %w", gorm.ErrRegistered)
	}
	for _, m := range p.cfg.Models {
		if _, err := p.specFor(db, m); err != nil {
			return err
		}
	}
	if p.timeoutWarning != "" {
		p.logf(p.timeoutWarning)
	}
	if p.cfg.CDC {
		if err := checkCDC(db); err != nil {
			return err
		}
	}
	txhook.Install(db, txOwner{p})
	if err := p.startOutbox(db); err != nil {
		return err
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	reg := any(db.Callback())
	if p.inited[reg] {
		return nil
	}
	if err := p.registerCallbacks(db); err != nil {
		return fmt.Errorf("writethrough: register callbacks: %w", err)
	}
	p.inited[reg] = true
	if p.home == 0 {
		p.home = home
	}
	return nil
}

// Close ends the plugin's background work and waits for the work in flight:
// the finalizes of transactions that committed or rolled back before it
// (with [Config.AsyncFinalize], those still running in the background), the
// cached reads and fills that began before it, and the outbox drainer's
// current pass. It does not close the Redis client or the database, which
// the caller owns. Close is safe to call more than once and from several
// goroutines; each call returns once everything above has ended. It must
// not be called from code the plugin runs (a Scan method, a hook).
//
// After Close the database keeps working and the cache promises still hold:
//   - Writes run the whole protocol, synchronously: a Commit returns only
//     after its keys are finalized, even with AsyncFinalize. Keys Redis
//     misses go to the outbox as before (a Strict write fails), but no
//     drainer runs: they are invalidated by [Plugin.Drain], or by the next
//     process that starts the plugin on the database.
//   - Reads ([Cached], [Get], [GetMany], [Config.CacheReads]) go to the
//     database and fill nothing.
//   - [Invalidate], [Inspect] and [Plugin.Drain] work as before.
//
// So the caller may close the Redis client once Close has returned; writes
// that then fail to reach it behave as with Redis down.
func (p *Plugin) Close() error {
	p.gate.close()
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	if p.stopDrain != nil {
		p.stopDrain()
		<-p.drainDone
		p.stopDrain = nil
	}
	return nil
}

// gate counts the work Close waits for, and refuses new work once Close has
// begun. Entering never blocks, so work refused at Close takes its
// documented path instead (a read goes to the database, a finalize runs in
// the committing goroutine). Counting with atomics keeps reads off a shared
// lock: closed is set before Close reads the count, and every enter adds to
// the count before it reads closed, so an enter that Close did not count
// sees closed and backs out.
type gate struct {
	active atomic.Int64  // work in flight, and enters backing out
	closed atomic.Bool   // set once, by close
	once   sync.Once     // closes idle
	idle   chan struct{} // closed when closed is set and active reaches zero
}

// enter reports whether work may start; if so, the caller must call leave
// when it ends.
func (g *gate) enter() bool {
	g.active.Add(1)
	if g.closed.Load() {
		g.leave()
		return false
	}
	return true
}

// leave ends work that enter let start.
func (g *gate) leave() {
	if g.active.Add(-1) == 0 && g.closed.Load() {
		g.once.Do(func() { close(g.idle) })
	}
}

// close refuses new work and waits for the work in flight.
func (g *gate) close() {
	g.closed.Store(true)
	if g.active.Load() == 0 {
		g.once.Do(func() { close(g.idle) })
	}
	<-g.idle
}

func (g *gate) isClosed() bool { return g.closed.Load() }

// Stats counts what the plugin did since it was created.
type Stats struct {
	Hits           uint64 // keys served from Redis, including "not found"
	Misses         uint64 // keys of cacheable reads that went to the database (a Find of several keys with one miss reads them all)
	PendingMisses  uint64 // of the misses, keys found with a write in flight (pending)
	Bypasses       uint64 // reads of a cached model (or marked Cached) in a shape the cache does not serve
	Fills          uint64 // rows (or tombstones) written by readers after a miss
	FillsLost      uint64 // fills refused because a write or another reader won
	Prepares       uint64 // keys staged by writes
	PrepareErrors  uint64 // stagings Redis refused or did not answer
	Finalizes      uint64 // keys finalized after COMMIT or ROLLBACK
	FinalizeErrors uint64 // finalizes that failed (the pending entry then expires)
	Invalidations  uint64 // keys invalidated (Invalidate, failed writes)
	DecodeErrors   uint64 // entries in Redis that could not be decoded (deleted)
	RedisErrors    uint64 // Redis errors on reads (the read fell back to SQL)
	Outboxed       uint64 // keys recorded in the outbox
	Drained        uint64 // outbox records drained
	Breaker        BreakerState
	BreakerOpens   uint64 // times the circuit breaker opened
}

type counters struct {
	hits, misses, bypasses, fills, fillsLost atomic.Uint64
	pendingMisses                            atomic.Uint64
	prepares, prepareErrors                  atomic.Uint64
	finalizes, finalizeErrors, invalidations atomic.Uint64
	decodeErrors, redisErrors                atomic.Uint64
	outboxed, drained                        atomic.Uint64
}

// Stats returns a snapshot of the plugin's counters.
func (p *Plugin) Stats() Stats {
	c := &p.stats
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Bypasses: c.bypasses.Load(),
		PendingMisses: c.pendingMisses.Load(),
		Fills:         c.fills.Load(), FillsLost: c.fillsLost.Load(),
		Prepares: c.prepares.Load(), PrepareErrors: c.prepareErrors.Load(),
		Finalizes: c.finalizes.Load(), FinalizeErrors: c.finalizeErrors.Load(),
		Invalidations: c.invalidations.Load(), DecodeErrors: c.decodeErrors.Load(),
		RedisErrors: c.redisErrors.Load(),
		Outboxed:    c.outboxed.Load(), Drained: c.drained.Load(),
		Breaker: p.brk.current(), BreakerOpens: p.brk.opens.Load(),
	}
}

// at runs the test hook for a named interleaving point.
func (p *Plugin) at(point, key string) {
	if p.hook != nil {
		p.hook(point, key)
	}
}

func (p *Plugin) logf(msg string, args ...any) {
	if p.cfg.Logger != nil {
		p.cfg.Logger.Warn(msg, args...)
	}
}

// pluginOf returns the writethrough plugin registered on db.
func pluginOf(db *gorm.DB) (*Plugin, error) {
	if db == nil || db.Config == nil {
		return nil, fmt.Errorf("%w: the *gorm.DB is nil", ErrNotRegistered)
	}
	if pl, ok := db.Config.Plugins[Name]; ok {
		if p, ok := pl.(*Plugin); ok {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w (call db.Use(writethrough.New(...)))", ErrNotRegistered)
}

// checkCDC makes sure the transactions of db can carry the change-data-capture
// mark (Config.CDC): a PostgreSQL with wal_level = logical that accepts
// pg_logical_emit_message. It runs the mark once in a transaction it rolls
// back, outside GORM's callbacks.
func checkCDC(db *gorm.DB) error {
	bad := func(reason string) error { return &ConfigError{Field: "CDC", Reason: reason} }
	if db.Dialector.Name() != "postgres" {
		return bad("needs PostgreSQL, not " + db.Dialector.Name())
	}
	sqlDB, err := db.DB()
	if err != nil {
		return bad(err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := sqlDB.BeginTx(ctx, nil)
	if err != nil {
		return bad("cannot begin a transaction to check the mark: " + err.Error())
	}
	defer func() { _ = tx.Rollback() }()
	// pg_logical_emit_message works at wal_level replica too, but no
	// consumer could read the mark.
	var level string
	if err := tx.QueryRowContext(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return bad("cannot read wal_level: " + err.Error())
	}
	if level != "logical" {
		return bad("wal_level is " + level + "; change data capture needs wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)")
	}
	if _, err := tx.ExecContext(ctx, cdcMark, []byte("writethrough-check")); err != nil {
		return bad("pg_logical_emit_message failed (wal_level must be logical): " + err.Error())
	}
	return nil
}
