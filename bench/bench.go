// Package bench compares writethrough with what a user would use instead:
// raw go-redis, GORM's own pipeline, plain GORM, raw pgx and a naive
// write-through. The benchmarks live in bench_test.go; cmd/benchtable runs
// them several times and prints one table of ratios against the floor.
//
// Everything this package creates lives in the PostgreSQL schema [Schema]
// and under the Redis key prefix [Prefix]; [Cleanup] removes both.
package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/redis/go-redis/v9"
)

const (
	// Schema is the PostgreSQL schema holding the benchmark table.
	Schema = "wtbench"
	// Prefix starts every Redis key the benchmarks write.
	Prefix = "wtbench"
	// DefaultRows is the number of rows of the users table.
	DefaultRows = 100_000
	// BioLen is the length of User.Bio, the row's large text column.
	BioLen = 200
)

// User is the benchmark row: ten columns, about 360 bytes msgpack-encoded.
// The cache tag is read only by the writethrough plugin.
type User struct {
	ID        int64  `gorm:"primaryKey" cache:"ttl:1h"`
	Email     string `gorm:"not null"`
	Name      string `gorm:"not null"`
	Balance   int64  `gorm:"not null"`
	Status    string `gorm:"not null"`
	Logins    int64  `gorm:"not null"`
	Score     int64  `gorm:"not null"`
	Bio       string `gorm:"not null"`
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Columns lists the users table's columns in declaration order.
const Columns = "id, email, name, balance, status, logins, score, bio, created_at, updated_at"

// DatabaseURL returns $DATABASE_URL or the local default.
func DatabaseURL() string {
	if s := os.Getenv("DATABASE_URL"); s != "" {
		return s
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// RedisURL returns $REDIS_URL or the local default.
func RedisURL() string {
	if s := os.Getenv("REDIS_URL"); s != "" {
		return s
	}
	return "redis://127.0.0.1:6379/0"
}

// ConnConfig parses [DatabaseURL] and points search_path at [Schema].
func ConnConfig() (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(DatabaseURL())
	if err != nil {
		return nil, fmt.Errorf("bench: DATABASE_URL: %w", err)
	}
	cfg.RuntimeParams["search_path"] = Schema
	return cfg, nil
}

// PoolConfig parses [DatabaseURL] for pgxpool, with search_path at [Schema]
// and at most maxConns connections.
func PoolConfig(maxConns int32) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(DatabaseURL())
	if err != nil {
		return nil, fmt.Errorf("bench: DATABASE_URL: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = Schema
	cfg.MaxConns = maxConns
	return cfg, nil
}

// OpenSQL opens a database/sql handle through pgx's stdlib driver, the way
// gorm.io/driver/postgres does, limited to maxConns connections.
func OpenSQL(cfg *pgx.ConnConfig, maxConns int) *sql.DB {
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	return db
}

// NewRedis returns a client for [RedisURL].
func NewRedis() (*redis.Client, error) {
	opt, err := redis.ParseURL(RedisURL())
	if err != nil {
		return nil, fmt.Errorf("bench: REDIS_URL: %w", err)
	}
	return redis.NewClient(opt), nil
}

// MakeUser returns the deterministic content of row id.
func MakeUser(id int64, at time.Time) User {
	bio := fmt.Sprintf("user %d: ", id)
	bio += strings.Repeat("lorem ipsum dolor sit amet ", BioLen/27+1)[:BioLen-len(bio)]
	return User{
		ID:        id,
		Email:     fmt.Sprintf("user%d@example.com", id),
		Name:      fmt.Sprintf("User Number %d", id),
		Balance:   1000 + id%997,
		Status:    [...]string{"active", "inactive", "suspended"}[id%3],
		Logins:    id % 251,
		Score:     (id * 7919) % 100_000,
		Bio:       bio,
		CreatedAt: at,
		UpdatedAt: at,
	}
}

// Load creates [Schema].users with rows rows unless it already holds
// exactly ids 1..rows. It reports whether it (re)loaded the table.
func Load(ctx context.Context, pool *pgxpool.Pool, rows int) (bool, error) {
	var n, maxID int64
	err := pool.QueryRow(ctx, "SELECT count(*), coalesce(max(id), 0) FROM "+Schema+".users").Scan(&n, &maxID)
	if err == nil && n == int64(rows) && maxID == int64(rows) {
		return false, nil
	}
	ddl := []string{
		"CREATE SCHEMA IF NOT EXISTS " + Schema,
		"DROP TABLE IF EXISTS " + Schema + ".users",
		`CREATE TABLE ` + Schema + `.users (
			id         bigint PRIMARY KEY,
			email      text NOT NULL,
			name       text NOT NULL,
			balance    bigint NOT NULL,
			status     text NOT NULL,
			logins     bigint NOT NULL,
			score      bigint NOT NULL,
			bio        text NOT NULL,
			created_at timestamptz NOT NULL,
			updated_at timestamptz NOT NULL)`,
	}
	for _, q := range ddl {
		if _, err := pool.Exec(ctx, q); err != nil {
			return false, fmt.Errorf("bench: %s: %w", strings.Fields(q)[0], err)
		}
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	src := pgx.CopyFromSlice(rows, func(i int) ([]any, error) {
		u := MakeUser(int64(i+1), at)
		return []any{u.ID, u.Email, u.Name, u.Balance, u.Status, u.Logins, u.Score, u.Bio, u.CreatedAt, u.UpdatedAt}, nil
	})
	cols := strings.Split(strings.ReplaceAll(Columns, " ", ""), ",")
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{Schema, "users"}, cols, src); err != nil {
		return false, fmt.Errorf("bench: copy users: %w", err)
	}
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE "+Schema+".users"); err != nil {
		return false, fmt.Errorf("bench: vacuum: %w", err)
	}
	return true, nil
}

// Cleanup drops [Schema] and unlinks every Redis key under [Prefix].
func Cleanup(ctx context.Context) error {
	var errs []error
	cfg, err := ConnConfig()
	if err != nil {
		return err
	}
	if conn, err := pgx.ConnectConfig(ctx, cfg); err != nil {
		errs = append(errs, fmt.Errorf("bench: connect: %w", err))
	} else {
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+Schema+" CASCADE"); err != nil {
			errs = append(errs, fmt.Errorf("bench: drop schema: %w", err))
		}
		conn.Close(ctx)
	}
	rdb, err := NewRedis()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer rdb.Close()
	if _, err := DeleteKeys(ctx, rdb, Prefix+":*"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// DeleteKeys unlinks every key matching pattern, scanning in batches, and
// returns how many it removed. It never touches keys outside pattern.
func DeleteKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) (int, error) {
	var n int
	var cursor uint64
	for {
		keys, next, err := rdb.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return n, fmt.Errorf("bench: scan %s: %w", pattern, err)
		}
		if len(keys) > 0 {
			if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
				return n, fmt.Errorf("bench: unlink: %w", err)
			}
			n += len(keys)
		}
		if cursor = next; cursor == 0 {
			return n, nil
		}
	}
}

// ServerVersions describes the PostgreSQL and Redis servers the benchmarks
// use, one line each.
func ServerVersions(ctx context.Context) ([]string, error) {
	cfg, err := ConnConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	var pg string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&pg); err != nil {
		return nil, err
	}
	rdb, err := NewRedis()
	if err != nil {
		return nil, err
	}
	defer rdb.Close()
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return nil, err
	}
	rv := "?"
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			rv = v
		}
	}
	return []string{"PostgreSQL " + pg, "Redis " + rv}, nil
}
