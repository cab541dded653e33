package cdc

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config configures a [Consumer]. The zero value of every field but Redis
// and Models means the documented default.
type Config struct {
	// Redis is the client the plugin uses. Required.
	Redis redis.UniversalClient

	// Prefix is the plugin's Config.Prefix; keys are built exactly as the
	// plugin builds them. Default "wt", as in the plugin.
	Prefix string

	// Models are the cached models (pointers to structs with a cache tag)
	// whose tables the consumer follows. Models or Tables is required.
	Models []any

	// Tables name cached tables without their models, for a consumer that
	// runs apart from the application: each with the key template of its
	// model's tag, if any. A composite key's columns are taken in column
	// order, which is the model's field order when AutoMigrate made them.
	Tables []Table

	// ConnString is the PostgreSQL connection string for the replication
	// connection (URL or key=value). Default: the DSN the GORM postgres
	// dialector was opened with. The role needs REPLICATION.
	ConnString string

	// Slot is the replication slot's name. Default "writethrough".
	Slot string

	// Publication is the publication's name. Default "writethrough".
	Publication string

	// StatusInterval is how often the consumer confirms progress to
	// PostgreSQL while changes arrive. Default 1s.
	StatusInterval time.Duration

	// StandbyPoll is how often a consumer whose slot another consumer holds
	// tries to take it. Default 1s.
	StandbyPoll time.Duration

	// RetryMin and RetryMax bound the backoff after a failure (PostgreSQL
	// or Redis). Defaults 100ms and 10s.
	RetryMin, RetryMax time.Duration

	// Timeout bounds one Redis round trip. Default 2s.
	Timeout time.Duration

	// WaitReplicas makes the consumer confirm a change to PostgreSQL only
	// once this many replicas of each key's master acknowledge its
	// invalidation (Redis's WAIT), as the plugin's Config.WaitReplicas
	// does for its writes: a Redis failover then cannot bring back a row
	// the consumer removed. A master with fewer live replicas holds the
	// consumer back, retrying, as an unreachable Redis does. Needs a
	// *redis.Client or *redis.ClusterClient. Default 0: no waiting.
	WaitReplicas int
	// WaitTimeout is how long WaitReplicas waits. It must be shorter than
	// Timeout. Default Timeout/2.
	WaitTimeout time.Duration

	// PurgeBatch is how many keys one SCAN step asks for when the consumer
	// removes every key of a table. Default 500.
	PurgeBatch int

	// Logger receives what the consumer does; nil is silent.
	Logger *slog.Logger

	// OnApply, when set, is called after each transaction that changed a
	// followed table was applied in Redis, on the consumer's goroutine:
	// keep it short. For metrics (lag histograms) and tests.
	OnApply func(Applied)
}

// Applied describes one transaction the consumer applied.
type Applied struct {
	CommitTime time.Time // when PostgreSQL committed it (the server's clock)
	AppliedAt  time.Time // when its invalidations were applied in Redis
	Keys       int       // keys it invalidated
	Truncates  int       // tables it truncated
	Own        bool      // the plugin wrote it (its own message was in it)
}

// ErrInvalidConfig is returned by [New] for a Config it cannot use.
var ErrInvalidConfig = errors.New("cdc: invalid config")

// ErrNotLogical is returned by [Consumer.Run] when PostgreSQL's wal_level
// is not logical: no slot can decode changes, and retrying cannot help.
var ErrNotLogical = errors.New("cdc: wal_level is not logical")

// nameRE is what PostgreSQL accepts for a replication slot name; the
// publication follows the same rule here so that neither needs quoting.
var nameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func (c Config) withDefaults() (Config, error) {
	bad := func(field, why string) (Config, error) {
		return c, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, why)
	}
	if c.Redis == nil {
		return bad("Redis", "required")
	}
	if len(c.Models) == 0 && len(c.Tables) == 0 {
		return bad("Models", "at least one cached model (or Tables)")
	}
	for _, t := range c.Tables {
		if strings.TrimSpace(t.Name) == "" {
			return bad("Tables", "a table without a name")
		}
	}
	if c.Prefix == "" {
		c.Prefix = "wt"
	}
	if c.WaitReplicas < 0 {
		return bad("WaitReplicas", "negative")
	}
	if c.WaitReplicas > 0 {
		switch c.Redis.(type) {
		case *redis.Client, *redis.ClusterClient:
		default:
			return bad("WaitReplicas", fmt.Sprintf("waiting for replicas needs a *redis.Client or *redis.ClusterClient, not %T", c.Redis))
		}
	}
	if c.Slot == "" {
		c.Slot = "writethrough"
	}
	if c.Publication == "" {
		c.Publication = "writethrough"
	}
	if !nameRE.MatchString(c.Slot) {
		return bad("Slot", "lower-case letters, digits and underscores, at most 63")
	}
	if !nameRE.MatchString(c.Publication) {
		return bad("Publication", "lower-case letters, digits and underscores, at most 63")
	}
	def := func(d *time.Duration, v time.Duration, name string) error {
		if *d < 0 {
			return fmt.Errorf("%w: %s: negative", ErrInvalidConfig, name)
		}
		if *d == 0 {
			*d = v
		}
		return nil
	}
	for _, d := range []struct {
		p    *time.Duration
		v    time.Duration
		name string
	}{
		{&c.StatusInterval, time.Second, "StatusInterval"},
		{&c.StandbyPoll, time.Second, "StandbyPoll"},
		{&c.RetryMin, 100 * time.Millisecond, "RetryMin"},
		{&c.RetryMax, 10 * time.Second, "RetryMax"},
		{&c.Timeout, 2 * time.Second, "Timeout"},
	} {
		if err := def(d.p, d.v, d.name); err != nil {
			return c, err
		}
	}
	if c.RetryMax < c.RetryMin {
		return bad("RetryMax", "less than RetryMin")
	}
	if err := def(&c.WaitTimeout, c.Timeout/2, "WaitTimeout"); err != nil {
		return c, err
	}
	if c.WaitReplicas > 0 && c.WaitTimeout >= c.Timeout {
		return bad("WaitTimeout", "not shorter than Timeout")
	}
	if c.PurgeBatch < 0 {
		return bad("PurgeBatch", "negative")
	}
	if c.PurgeBatch == 0 {
		c.PurgeBatch = 500
	}
	return c, nil
}
