package writethrough

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
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

// Mode says what a write does when Redis cannot take part in it.
type Mode int

const (
	// Soft lets the write commit when Redis fails and invalidates the keys it
	// touched as soon as Redis answers again. It is the default.
	Soft Mode = iota
	// Strict fails the write with [ErrCacheUnavailable] and rolls its
	// transaction back when Redis fails, so that cache and database never
	// diverge.
	Strict
)

func (m Mode) String() string {
	switch m {
	case Soft:
		return "soft"
	case Strict:
		return "strict"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config configures a [Plugin]. The zero value of every field means the
// documented default; [New] copies the Config and never changes the caller's.
type Config struct {
	// Prefix is the key namespace: every key the plugin writes starts with
	// Prefix + ":". Default "wt".
	Prefix string
	// DefaultTTL is the lifetime of a cached row for models whose tag names no
	// ttl. Default one hour.
	DefaultTTL time.Duration
	// NegativeTTL is the lifetime of a "not found" entry (a tombstone).
	// Default one minute.
	NegativeTTL time.Duration
	// LeaseTTL bounds how long a reader that missed may take to fill the key
	// from the database. Default two seconds.
	LeaseTTL time.Duration
	// PendingTTL bounds how long a key stays "pending" when the writer that
	// staged it never finalizes it (a crash, a lost connection). It must be
	// longer than any transaction that writes cached rows. Default one minute.
	PendingTTL time.Duration
	// Timeout bounds every Redis operation the plugin performs. A stalled
	// Redis holds a transaction's row locks at most this long. Default 100ms.
	Timeout time.Duration
	// Mode is the default for models whose tag names none. Default Soft.
	Mode Mode
	// Jitter is the default spread of committed TTLs, in percent of the TTL
	// (a TTL of 1h with Jitter 10 lands between 54m and 66m). Default 10;
	// a negative value disables jitter.
	Jitter int
	// MaxRowSize is the largest encoded row the plugin stores, in bytes.
	// Larger rows are served from the database and their keys invalidated
	// on write. Default 1 MiB.
	MaxRowSize int
	// OutboxTable is the table where Soft writes record keys that Redis
	// could not take, to be invalidated once it answers. The plugin creates
	// it. Default "writethrough_outbox".
	OutboxTable string
	// DisableOutbox turns the outbox off: Soft writes that Redis missed are
	// then bounded only by PendingTTL and the model TTL.
	DisableOutbox bool
	// DrainInterval is how often the outbox drainer retries; it also runs
	// at start-up and whenever a key is recorded. Default 1s. A negative
	// value runs no drainer: the caller calls [Plugin.Drain].
	DrainInterval time.Duration
	// BreakerThreshold is the number of consecutive Redis connection
	// failures that opens the circuit breaker. Default 5; negative disables it.
	BreakerThreshold int
	// BreakerCooldown is how long an open breaker keeps the plugin off
	// Redis before it lets one probe through. Default 1s.
	BreakerCooldown time.Duration
	// AsyncFinalize lets Commit return before the staged rows are installed
	// in Redis. Readers of a key that is still pending read the database, so
	// the promises hold; the cost is a database read for a read that lands
	// between Commit and the install. [Plugin.Close] waits for installs in
	// flight. Default false: Commit returns after the install.
	AsyncFinalize bool
	// CacheReads serves every eligible read on the database from the cache,
	// as if each carried the [Cached] scope: statements of sessions made with
	// NewDB, gorm.G[T] reads, Association(...).Find, and the sub-queries of
	// Preload (a belongs-to preload "WHERE id IN (...)" is a key lookup; a
	// has-many preload "WHERE user_id IN (...)" runs in SQL). Only reads whose
	// complete condition is a primary-key lookup are served; everything else,
	// and every read inside a transaction, runs in SQL as without the plugin.
	// [Uncached] opts one statement out. Default false: only statements
	// marked with [Cached] (or made through [CachedDB]) are served.
	CacheReads bool
	// Models are checked when the plugin is registered, so that a malformed
	// cache tag fails db.Use instead of the first statement on the model.
	// The plugin also learns their tables and foreign keys then: a write
	// that names a cached model's table without the model
	// (db.Table("accounts")), or a delete whose foreign keys cascade to a
	// cached model, is recognised only for models the plugin has seen
	// (listed here, or used by a statement before).
	Models []any
	// Logger receives reports of cache trouble that does not fail the
	// statement (a Redis error on a read, a failed finalize). Nil is silent.
	Logger *slog.Logger
}

const (
	defaultPrefix      = "wt"
	defaultTTL         = time.Hour
	defaultNegativeTTL = time.Minute
	defaultLeaseTTL    = 2 * time.Second
	defaultPendingTTL  = time.Minute
	defaultTimeout     = 100 * time.Millisecond
	defaultJitter      = 10
	defaultMaxRowSize  = 1 << 20
	maxWriters         = 64 // concurrent writers one pending entry tracks
)

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_.\-:]+$`)

// withDefaults returns a copy of c with defaults filled in, or the first
// invalid field.
func (c Config) withDefaults() (Config, error) {
	manualDrain := c.DrainInterval < 0
	if manualDrain {
		c.DrainInterval = 0
	}
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DefaultTTL", &c.DefaultTTL, defaultTTL},
		{"NegativeTTL", &c.NegativeTTL, defaultNegativeTTL},
		{"LeaseTTL", &c.LeaseTTL, defaultLeaseTTL},
		{"PendingTTL", &c.PendingTTL, defaultPendingTTL},
		{"Timeout", &c.Timeout, defaultTimeout},
		{"DrainInterval", &c.DrainInterval, time.Second},
		{"BreakerCooldown", &c.BreakerCooldown, time.Second},
	}
	for _, d := range durations {
		switch {
		case *d.v < 0:
			return c, &ConfigError{Field: d.name, Reason: fmt.Sprintf("negative duration %s", *d.v)}
		case *d.v == 0:
			*d.v = d.def
		case *d.v < time.Millisecond:
			return c, &ConfigError{Field: d.name, Reason: fmt.Sprintf("%s is below Redis's 1ms resolution", *d.v)}
		}
	}
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if !prefixRE.MatchString(c.Prefix) {
		return c, &ConfigError{Field: "Prefix", Reason: fmt.Sprintf("%q: use letters, digits and _ . - :", c.Prefix)}
	}
	if c.Mode != Soft && c.Mode != Strict {
		return c, &ConfigError{Field: "Mode", Reason: fmt.Sprintf("unknown mode %d (use writethrough.Soft or writethrough.Strict)", int(c.Mode))}
	}
	switch {
	case c.Jitter == 0:
		c.Jitter = defaultJitter
	case c.Jitter < 0:
		c.Jitter = 0
	case c.Jitter > 100:
		return c, &ConfigError{Field: "Jitter", Reason: fmt.Sprintf("%d%% is above 100%%", c.Jitter)}
	}
	switch {
	case c.MaxRowSize < 0:
		return c, &ConfigError{Field: "MaxRowSize", Reason: fmt.Sprintf("negative size %d", c.MaxRowSize)}
	case c.MaxRowSize == 0:
		c.MaxRowSize = defaultMaxRowSize
	}
	if manualDrain {
		c.DrainInterval = -1
	}
	if c.OutboxTable == "" {
		c.OutboxTable = "writethrough_outbox"
	}
	if !identRE.MatchString(c.OutboxTable) {
		return c, &ConfigError{Field: "OutboxTable", Reason: fmt.Sprintf("%q is not an SQL identifier", c.OutboxTable)}
	}
	switch {
	case c.BreakerThreshold == 0:
		c.BreakerThreshold = 5
	case c.BreakerThreshold < 0:
		c.BreakerThreshold = 0
	}
	if c.PendingTTL <= c.Timeout {
		return c, &ConfigError{Field: "PendingTTL", Reason: fmt.Sprintf("%s must be longer than Timeout %s", c.PendingTTL, c.Timeout)}
	}
	c.Models = append([]any(nil), c.Models...)
	return c, nil
}

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
	return p
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
	Hits           uint64 // reads served from Redis, including "not found"
	Misses         uint64 // cacheable reads that went to the database
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
		Fills: c.fills.Load(), FillsLost: c.fillsLost.Load(),
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

// deadlinePolicy decides whether Redis calls need a context deadline to
// honour Config.Timeout, and explains when they cannot honour it.
func deadlinePolicy(rdb redis.UniversalClient, timeout time.Duration) (bool, string) {
	var enabled bool
	var rt, wt time.Duration
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		enabled, rt, wt = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout
	case *redis.ClusterClient:
		o := c.Options()
		enabled, rt, wt = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout
	default:
		return true, ""
	}
	within := rt > 0 && rt <= timeout && wt > 0 && wt <= timeout
	switch {
	case within:
		return false, ""
	case !enabled:
		return false, fmt.Sprintf("writethrough: the Redis client ignores context deadlines (ContextTimeoutEnabled is false), "+
			"so Redis calls are bounded by its ReadTimeout %s and WriteTimeout %s rather than Config.Timeout %s", rt, wt, timeout)
	}
	return true, ""
}
