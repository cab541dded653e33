// Package testrig holds the test helpers that the tests of several packages
// share, on top of [testenv] (a schema and a key prefix of one's own on the
// shared servers) and redisproc (a redis-server of one's own):
//
//   - [Open] and [Pool]: a GORM connection on a given DSN, closed when the
//     test ends;
//   - [CountSQL]: a GORM logger that counts the statements sent;
//   - [FaultClient]: a Redis client as a plugin under fault should have it;
//   - [FillRedis]: a Redis that refuses every command adding data;
//   - [Poll]: a wait for a state the test cannot be told about;
//   - [DropSlotAtCleanup]: a replication slot and publication removed when
//     the test ends;
//   - [SQLState]: the SQLSTATE of a PostgreSQL error.
//
// Like testenv, every helper that reaches a server skips the test under
// `go test -short`. Nothing here knows the plugin: the root package's own
// fixture is rig_test.go, which builds on these.
package testrig

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// Open opens dsn with GORM and closes the connection pool when the test
// ends. A nil cfg means a &gorm.Config with a silent logger. Use
// [testenv.PostgresDSN] for a DSN on a schema of the test's own.
func Open(t testing.TB, dsn string, cfg *gorm.Config) *gorm.DB {
	t.Helper()
	testenv.SkipShort(t)
	if cfg == nil {
		cfg = &gorm.Config{Logger: logger.Discard}
	}
	db, err := gorm.Open(postgres.Open(dsn), cfg)
	if err != nil {
		t.Fatalf("testrig: opening PostgreSQL: %v", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db
}

// Pool sets db's pool to at most open connections (0: no limit) of which
// at most idle are kept idle (0: none).
func Pool(t testing.TB, db *gorm.DB, open, idle int) {
	t.Helper()
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testrig: %v", err)
	}
	sqlDB.SetMaxOpenConns(open)
	sqlDB.SetMaxIdleConns(idle)
}

// CountSQL makes cfg's logger discard every message and count the
// statements GORM sends to the database (its Trace calls), and returns the
// count. Set it before opening the database.
func CountSQL(cfg *gorm.Config) *atomic.Int64 {
	n := &atomic.Int64{}
	cfg.Logger = sqlCounter{Interface: logger.Discard, n: n}
	return n
}

// sqlCounter counts statements GORM sends to the database.
type sqlCounter struct {
	logger.Interface
	n *atomic.Int64
}

// Trace implements logger.Interface: GORM calls it once per statement.
func (c sqlCounter) Trace(context.Context, time.Time, func() (string, int64), error) {
	c.n.Add(1)
}

// LogMode implements logger.Interface; the level changes nothing.
func (c sqlCounter) LogMode(logger.LogLevel) logger.Interface { return c }

// FaultClient returns a client for the Redis at addr as a plugin under a
// fault test should have it: it honours context deadlines
// (ContextTimeoutEnabled) and never retries a command (MaxRetries -1), so
// that each failure the test injects reaches the plugin once. It is closed
// when the test ends.
func FaultClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// FillRedis fills the Redis of rdb (keys "filler:0" to "filler:1999") and
// lowers its maxmemory below what it uses, so that every command that adds
// data is refused with an OOM error; it fails the test unless a SET is then
// refused so. Use it on a redis-server of the test's own, with the
// noeviction policy (redisproc's default).
func FillRedis(t testing.TB, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	pipe := rdb.Pipeline()
	for i := 0; i < 2000; i++ {
		pipe.Set(ctx, "filler:"+strconv.Itoa(i), string(make([]byte, 512)), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("testrig: filling Redis: %v", err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "1mb").Err(); err != nil {
		t.Fatalf("testrig: CONFIG SET maxmemory: %v", err)
	}
	err := rdb.Set(ctx, "probe", "x", 0).Err()
	if err == nil || !redis.IsOOMError(err) {
		t.Fatalf("testrig: Redis must now refuse writes, SET answered %v", err)
	}
}

// Poll calls cond until it holds, returns an error or within has passed
// (an error then). It is a wait for a state the test cannot be told about
// (a lock wait inside PostgreSQL, an entry expiring in Redis), not a wait
// for time to pass: it asks every millisecond at first, then every few
// milliseconds.
func Poll(within time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testrig: condition still false after %s", within)
		}
		time.Sleep(pause)
		pause = min(2*pause, pollMax)
	}
}

// pollMax is the longest pause between two calls of a Poll condition.
const pollMax = 8 * time.Millisecond

// SQLState returns the SQLSTATE of a PostgreSQL error in err's chain, or "".
func SQLState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// DropSlotAtCleanup drops the logical replication slot and the publication
// called name, on the server of dsn, when the test ends. A slot outlives
// the test's schema and, left behind, keeps WAL forever.
func DropSlotAtCleanup(t testing.TB, dsn, name string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("testrig: dropping slot %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		// The walsender of a stopped consumer may take a moment to exit.
		for {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '`+strings.ReplaceAll(name, "'", "''")+`'`).ReadAll()
			if err == nil || SQLState(err) != "55006" || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("testrig: dropping slot %s: %v", name, err)
		}
		if _, err := conn.Exec(ctx, `DROP PUBLICATION IF EXISTS "`+strings.ReplaceAll(name, `"`, `""`)+`"`).ReadAll(); err != nil {
			t.Errorf("testrig: dropping publication %s: %v", name, err)
		}
	})
}
