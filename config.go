package writethrough

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"
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

// String returns "soft" or "strict".
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
	// RereadWrites makes every write read its rows back with a SELECT
	// after the statement, as on a dialect without RETURNING. By default,
	// on PostgreSQL, an update or create of a cached model takes the rows
	// from the statement itself (RETURNING, added below GORM), one
	// statement fewer per write; tables where RETURNING may not show the
	// stored row (triggers that run after the row is written, rules,
	// partitions, self-referencing foreign keys with actions), and writes
	// that GORM follows with association saves or After hooks, are re-read
	// anyway. Default false.
	RereadWrites bool
	// AsyncFinalize lets Commit return before the staged rows are installed
	// in Redis. Readers of a key that is still pending read the database, so
	// the promises hold; the cost is a database read for a read that lands
	// between Commit and the install. [Plugin.Close] waits for installs in
	// flight. Default false: Commit returns after the install.
	AsyncFinalize bool

	// WaitReplicas makes every change that a Redis failover must not lose
	// (a key made pending before its write commits, an invalidation) wait
	// until this many replicas of the key's master acknowledge it, with
	// Redis's WAIT on the connection that carried it. Redis replicates
	// asynchronously: without it, a master that dies right after a write
	// can take the write's pending mark with it, and the replica promoted
	// in its place serves the row as it was before the write until the TTL
	// ends. With it, a failover costs at most misses (a lost install stays
	// pending until PendingTTL). Set it to the number of replicas each
	// master has; a master with fewer live replicas than this fails its
	// writes' prepares like an unreachable Redis: Strict writes fail with
	// [ErrCacheUnavailable], Soft writes go to the outbox. Needs a
	// *redis.Client (a plain or Sentinel client) or a *redis.ClusterClient.
	// Default 0: no waiting.
	WaitReplicas int
	// WaitTimeout is how long WaitReplicas waits for the replicas. It must
	// be shorter than Timeout. Default Timeout/2.
	WaitTimeout time.Duration

	// CDC says that a change-data-capture consumer (package cdc) follows
	// this database. The plugin then writes a transactional logical message
	// (pg_logical_emit_message) with its writer token into each transaction
	// that staged keys, just before COMMIT: one more statement per write
	// transaction. The consumer leaves alone the keys that transaction's
	// writer already installed, so the plugin's own writes cost readers no
	// extra miss. A transaction that also ran raw SQL (db.Exec, db.Raw) is
	// not marked: the consumer invalidates all its keys. PostgreSQL only,
	// with wal_level = logical; db.Use checks both. Default false.
	CDC bool
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
	switch {
	case c.WaitReplicas < 0:
		return c, &ConfigError{Field: "WaitReplicas", Reason: fmt.Sprintf("negative count %d", c.WaitReplicas)}
	case c.WaitTimeout < 0:
		return c, &ConfigError{Field: "WaitTimeout", Reason: fmt.Sprintf("negative duration %s", c.WaitTimeout)}
	case c.WaitTimeout == 0:
		c.WaitTimeout = max(c.Timeout/2, time.Millisecond)
	case c.WaitTimeout < time.Millisecond:
		return c, &ConfigError{Field: "WaitTimeout", Reason: fmt.Sprintf("%s is below Redis's 1ms resolution", c.WaitTimeout)}
	}
	if c.WaitReplicas > 0 && c.WaitTimeout >= c.Timeout {
		return c, &ConfigError{Field: "WaitTimeout", Reason: fmt.Sprintf("%s must be shorter than Timeout %s", c.WaitTimeout, c.Timeout)}
	}
	if c.PendingTTL <= c.Timeout {
		return c, &ConfigError{Field: "PendingTTL", Reason: fmt.Sprintf("%s must be longer than Timeout %s", c.PendingTTL, c.Timeout)}
	}
	c.Models = append([]any(nil), c.Models...)
	return c, nil
}
