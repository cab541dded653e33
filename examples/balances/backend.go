package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/glebarez/sqlite"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Defaults tried when neither DATABASE_URL nor REDIS_URL is set.
const (
	defaultDatabaseURL = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable"
	defaultRedisURL    = "redis://127.0.0.1:6379/0"
)

// Backend modes accepted by -backend.
const (
	backendAuto     = "auto"
	backendReal     = "real"
	backendEmbedded = "embedded"
)

// env is where one run of the demo keeps its data: a database reachable
// through open, a Redis client, and a run id that namespaces the run's
// schema and keys so that concurrent runs on shared servers don't meet.
type env struct {
	desc     string // printed as "backend: ..."
	runID    string
	rdb      redis.UniversalClient
	dsn      string // database DSN scoped to the run's schema or file
	dialer   func(dsn string) gorm.Dialector
	embedded bool

	cleanup []func() error // run in reverse order by close
}

// openEnv picks and prepares a backend. In auto mode it uses real servers
// when DATABASE_URL or REDIS_URL is set, or when the defaults on 127.0.0.1
// answer within a short timeout, and the embedded pair otherwise.
func openEnv(ctx context.Context, mode string) (*env, error) {
	runID := randomID()
	switch mode {
	case backendEmbedded:
		return openEmbedded(runID, "")
	case backendReal:
		return openReal(ctx, runID)
	case backendAuto:
	default:
		return nil, fmt.Errorf("-backend: want %s, %s or %s, got %q", backendAuto, backendReal, backendEmbedded, mode)
	}
	if os.Getenv("DATABASE_URL") != "" || os.Getenv("REDIS_URL") != "" {
		return openReal(ctx, runID)
	}
	if why := probeDefaults(); why != "" {
		return openEmbedded(runID, why)
	}
	return openReal(ctx, runID)
}

// probeDefaults reports why the default servers can't be used, or "".
func probeDefaults() string {
	for _, addr := range []string{"127.0.0.1:5432", "127.0.0.1:6379"} {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return fmt.Sprintf("nothing answers on %s", addr)
		}
		c.Close()
	}
	return ""
}

func openReal(ctx context.Context, runID string) (*env, error) {
	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		dbURL = defaultDatabaseURL
	}
	redisURL := os.Getenv("REDIS_URL")
	if redisURL == "" {
		redisURL = defaultRedisURL
	}
	e := &env{runID: runID, dialer: postgres.Open}

	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	opts.DialTimeout = 2 * time.Second
	rdb := redis.NewClient(opts)
	e.rdb = rdb
	e.cleanup = append(e.cleanup, rdb.Close)
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	info, err := rdb.Info(pctx, "server").Result()
	if err != nil {
		e.close()
		return nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
	}
	redisDesc := "Redis " + infoField(info, "redis_version") + " (" + opts.Addr + ")"

	admin, err := gorm.Open(postgres.Open(dbURL), quietGorm())
	if err == nil {
		err = pingGorm(pctx, admin)
	}
	if err != nil {
		e.close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	schema := "balances_" + runID
	var version string
	if err := admin.WithContext(pctx).Raw("SHOW server_version").Scan(&version).Error; err != nil {
		closeGorm(admin)
		e.close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := admin.WithContext(pctx).Exec("CREATE SCHEMA " + schema).Error; err != nil {
		closeGorm(admin)
		e.close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	e.cleanup = append(e.cleanup, func() error { return closeGorm(admin) }, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return admin.WithContext(ctx).Exec("DROP SCHEMA " + schema + " CASCADE").Error
	})
	e.dsn, err = withSearchPath(dbURL, schema)
	if err != nil {
		e.close()
		return nil, err
	}
	e.cleanup = append(e.cleanup, func() error { return deleteKeys(rdb, keyPrefix(runID)+"*") })
	e.desc = fmt.Sprintf("PostgreSQL %s (schema %s) + %s", strings.Fields(version + " ")[0], schema, redisDesc)
	return e, nil
}

// openEmbedded runs SQLite in a temporary directory and an in-process Redis.
// SQLite serializes writers: every transaction begins IMMEDIATE and waits for
// the write lock (busy_timeout); WAL lets readers run beside the writer.
func openEmbedded(runID, why string) (*env, error) {
	dir, err := os.MkdirTemp("", "balances-")
	if err != nil {
		return nil, err
	}
	e := &env{runID: runID, dialer: sqlite.Open, embedded: true}
	e.cleanup = append(e.cleanup, func() error { return os.RemoveAll(dir) })
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		e.close()
		return nil, err
	}
	e.cleanup = append(e.cleanup, func() error { mr.Close(); return nil })
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	e.rdb = rdb
	e.cleanup = append(e.cleanup, rdb.Close)
	e.dsn = "file:" + filepath.Join(dir, "balances.db") +
		"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := gorm.Open(sqlite.Open(e.dsn), quietGorm())
	if err != nil {
		e.close()
		return nil, err
	}
	var version string
	err = db.Raw("SELECT sqlite_version()").Scan(&version).Error
	closeGorm(db)
	if err != nil {
		e.close()
		return nil, err
	}
	e.desc = fmt.Sprintf("embedded: SQLite %s (WAL, %s) + miniredis (in-process)", version, dir)
	if why != "" {
		e.desc += "; " + why
	}
	return e, nil
}

// open returns a new connection pool to the run's database, sized for n
// concurrent users.
func (e *env) open(n int) (*gorm.DB, error) {
	db, err := gorm.Open(e.dialer(e.dsn), quietGorm())
	if err != nil {
		return nil, err
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(n)
	sqlDB.SetMaxIdleConns(n)
	return db, nil
}

// close drops the run's schema or files and keys, and closes the clients.
func (e *env) close() error {
	var errs []error
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, e.cleanup[i]())
	}
	e.cleanup = nil
	return errors.Join(errs...)
}

// keyPrefix is the namespace of every Redis key a run writes.
func keyPrefix(runID string) string { return "balances:" + runID + ":" }

func deleteKeys(rdb redis.UniversalClient, pattern string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, pattern, 500).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return err
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		if err := rdb.Del(ctx, keys[:n]...).Err(); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// withSearchPath scopes a PostgreSQL DSN, URL or key=value form, to schema.
func withSearchPath(dsn, schema string) (string, error) {
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("DATABASE_URL: %w", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return dsn + " search_path=" + schema, nil
}

func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return "?"
}

func quietGorm() *gorm.Config {
	return &gorm.Config{Logger: logger.Discard}
}

func pingGorm(ctx context.Context, db *gorm.DB) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	return sqlDB.PingContext(ctx)
}

func closeGorm(db *gorm.DB) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	return sqlDB.Close()
}

func randomID() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}
