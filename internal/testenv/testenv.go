// Package testenv gives tests their own corner of the shared PostgreSQL and
// Redis servers: a fresh schema per test, a unique key prefix per test, both
// removed when the test ends.
//
// The servers are found through DATABASE_URL and REDIS_URL, or at their
// default loopback addresses. `make test` (scripts/services.sh) starts them.
//
// Under `go test -short` every function that needs a server skips the test
// instead (see [SkipShort]), so that -short runs exactly the tests that need
// none.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// DefaultPostgresDSN is the server used when DATABASE_URL is not set.
const DefaultPostgresDSN = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable"

// DefaultRedisAddr is the server used when REDIS_URL is not set.
const DefaultRedisAddr = "127.0.0.1:6379"

// setupTimeout bounds each step of preparing or removing a test's corner.
const setupTimeout = 10 * time.Second

const howToStart = "start the servers with `make test` or `bash scripts/services.sh`"

// SkipShort skips the test under `go test -short`. Every helper here that
// needs PostgreSQL or Redis calls it first, and so does
// internal/redisproc.Start; call it directly before reaching a server some
// other way.
func SkipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL or Redis: skipped with -short")
	}
}

// PostgresDSN creates a schema with a unique name on the server of
// DATABASE_URL (or [DefaultPostgresDSN]) and returns a DSN whose connections
// use it as their search_path, so tables the test creates are its own. The
// connections also carry the schema's name as their application_name.
//
// When the test ends, connections left open with that application_name are
// terminated and the schema is dropped with everything in it.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	SkipShort(t)
	base := os.Getenv("DATABASE_URL")
	if base == "" {
		base = DefaultPostgresDSN
	}
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatalf("testenv: DATABASE_URL does not parse: %v", err)
	}
	where := net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))

	schema := "wt_" + randomHex(t, 8)
	exec := func(ctx context.Context, sql string, args ...any) error {
		conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql, args...)
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("testenv: PostgreSQL at %s does not answer or refuses CREATE SCHEMA: %v\n%s", where, err, howToStart)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		// A connection the test leaked may hold locks in the schema, and
		// DROP would wait for it forever.
		const terminate = `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = $1 AND pid <> pg_backend_pid()`
		if err := exec(ctx, terminate, schema); err != nil {
			t.Errorf("testenv: terminating connections to schema %s: %v", schema, err)
		}
		if err := exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Errorf("testenv: dropping schema %s: %v", schema, err)
		}
	})
	return withParams(base, map[string]string{
		"search_path":      schema,
		"application_name": schema,
	})
}

// withParams adds run-time parameters to a DSN in URL or keyword/value form.
func withParams(dsn string, params map[string]string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err == nil {
			q := u.Query()
			for k, v := range params {
				q.Set(k, v)
			}
			u.RawQuery = q.Encode()
			return u.String()
		}
	}
	var b strings.Builder
	b.WriteString(dsn)
	for k, v := range params {
		// The values come from randomHex: no quoting needed. A later
		// keyword overrides an earlier one.
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	return b.String()
}

// Postgres opens a GORM connection on a schema of its own (see
// [PostgresDSN]) and closes it when the test ends. A nil cfg means a
// &gorm.Config with a silent logger.
func Postgres(t testing.TB, cfg *gorm.Config) *gorm.DB {
	t.Helper()
	dsn := PostgresDSN(t)
	if cfg == nil {
		cfg = &gorm.Config{Logger: logger.Discard}
	}
	db, err := gorm.Open(postgres.Open(dsn), cfg)
	if err != nil {
		t.Fatalf("testenv: opening PostgreSQL: %v\n%s", err, howToStart)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
	return db
}

// Redis returns a client for REDIS_URL (or [DefaultRedisAddr]) and a key
// prefix unique to the test, such as "wttest:3f9c0a1b2d4e5f60". The client
// honours context deadlines (ContextTimeoutEnabled).
//
// When the test ends, every key that starts with the prefix is deleted and
// the client is closed.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	SkipShort(t)
	opts := redisOptions(t)
	rdb := redis.NewClient(opts)

	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		t.Fatalf("testenv: Redis at %s does not answer: %v\n%s", opts.Addr, err, howToStart)
	}

	prefix := "wttest:" + randomHex(t, 8)
	t.Cleanup(func() {
		// The test may have closed its client: sweep with our own.
		_ = rdb.Close()
		sweeper := redis.NewClient(redisOptions(t))
		defer sweeper.Close()
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		if err := deletePrefix(ctx, sweeper, prefix); err != nil {
			t.Errorf("testenv: deleting keys %s*: %v", prefix, err)
		}
	})
	return rdb, prefix
}

func redisOptions(t testing.TB) *redis.Options {
	t.Helper()
	opts := &redis.Options{Addr: DefaultRedisAddr}
	if u := os.Getenv("REDIS_URL"); u != "" {
		var err error
		if opts, err = redis.ParseURL(u); err != nil {
			t.Fatalf("testenv: REDIS_URL does not parse: %v", err)
		}
	}
	opts.ContextTimeoutEnabled = true
	return opts
}

// deletePrefix deletes every key that starts with prefix.
func deletePrefix(ctx context.Context, rdb *redis.Client, prefix string) error {
	var cursor uint64
	for {
		keys, next, err := rdb.Scan(ctx, cursor, prefix+"*", 1000).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := rdb.Del(ctx, keys...).Err(); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// randomHex returns 2n lowercase hex digits: valid unquoted in SQL names and
// free of glob characters in Redis patterns.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return hex.EncodeToString(b)
}
