package bench_test

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough/bench"
)

var (
	flagRows = flag.Int("wt.rows", bench.DefaultRows, "rows in the users table (1,000 with -benchtime 1x unless given)")
	flagKeep = flag.Bool("wt.keep", false, "keep the schema and Redis keys after the run (the runner sets it between rounds)")
)

// maxConns bounds every PostgreSQL pool: the server is shared, and all
// contenders get the same number of connections.
const maxConns = 8

// rowTTL is the TTL of every cached row, for every contender.
const rowTTL = time.Hour

// env is what every benchmark shares: connections, the loaded table and
// the warm raw cache. It is built once per process, by the first benchmark
// that needs it, so that `go test` without -bench touches no server.
type env struct {
	rows     int64
	rdb      *redis.Client
	pool     *pgxpool.Pool
	sqlDB    *sql.DB
	gorm     *gorm.DB // GORM's defaults: implicit transactions, no PrepareStmt
	gormPrep *gorm.DB // the same with PrepareStmt

	redisCalls atomic.Int64 // Redis round trips: commands and pipelines
	sqlCalls   atomic.Int64 // SQL statements, BEGIN and COMMIT included
}

var (
	envOnce sync.Once
	theEnv  *env
	envErr  error
)

// errUnavailable marks a server that could not be reached: benchmarks skip.
type errUnavailable struct{ err error }

func (e errUnavailable) Error() string { return "server unavailable: " + e.err.Error() }
func (e errUnavailable) Unwrap() error { return e.err }

func getEnv(b *testing.B) *env {
	b.Helper()
	envOnce.Do(func() { theEnv, envErr = setup(context.Background()) })
	var u errUnavailable
	switch {
	case errors.As(envErr, &u):
		b.Skip(envErr)
	case envErr != nil:
		b.Fatal(envErr)
	}
	return theEnv
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if theEnv != nil {
		theEnv.close()
		if !*flagKeep {
			if err := bench.Cleanup(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, err)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// smokeRows is the table size when the benchmarks run once each
// (-benchtime 1x, as make test's smoke check does) and -wt.rows is not
// given: enough to exercise every path, quick to load.
const smokeRows = 1000

// rows returns the table size to use.
func rows() int64 {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "wt.rows" })
	if bt := flag.Lookup("test.benchtime"); !set && bt != nil && bt.Value.String() == "1x" {
		return smokeRows
	}
	return int64(*flagRows)
}

func setup(ctx context.Context) (*env, error) {
	e := &env{rows: rows()}
	rdb, err := bench.NewRedis()
	if err != nil {
		return nil, err
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, errUnavailable{err}
	}
	rdb.AddHook(redisCounter{&e.redisCalls})
	e.rdb = rdb

	pcfg, err := bench.PoolConfig(maxConns)
	if err != nil {
		return nil, err
	}
	pcfg.ConnConfig.Tracer = sqlCounter{&e.sqlCalls}
	if e.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, err
	}
	if err := e.pool.Ping(ctx); err != nil {
		e.close()
		return nil, errUnavailable{err}
	}
	loaded, err := bench.Load(ctx, e.pool, int(e.rows))
	if err != nil {
		e.close()
		return nil, err
	}

	ccfg, err := bench.ConnConfig()
	if err != nil {
		return nil, err
	}
	ccfg.Tracer = sqlCounter{&e.sqlCalls}
	e.sqlDB = bench.OpenSQL(ccfg, maxConns)
	quiet := logger.Discard
	if e.gorm, err = gorm.Open(postgres.New(postgres.Config{Conn: e.sqlDB}), &gorm.Config{Logger: quiet}); err != nil {
		return nil, err
	}
	if e.gormPrep, err = gorm.Open(postgres.New(postgres.Config{Conn: e.sqlDB}), &gorm.Config{Logger: quiet, PrepareStmt: true}); err != nil {
		return nil, err
	}
	if err := e.warmRaw(ctx, loaded); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.sqlDB != nil {
		e.sqlDB.Close()
	}
	if e.pool != nil {
		e.pool.Close()
	}
	if e.rdb != nil {
		e.rdb.Close()
	}
}

// rawKey is the key under which the floor and the naive write-through keep
// row id: plain msgpack, no header.
func rawKey(id int64) string { return bench.Prefix + ":users:" + strconv.FormatInt(id, 10) }

const warmMarker = bench.Prefix + ":warm"

// warmRaw writes every row, msgpack-encoded, under its raw key, unless a
// previous run of the same table already did.
func (e *env) warmRaw(ctx context.Context, reloaded bool) error {
	if reloaded {
		// Rows changed: whatever an earlier run cached is stale.
		if _, err := bench.DeleteKeys(ctx, e.rdb, bench.Prefix+":*"); err != nil {
			return err
		}
	} else if n, err := e.rdb.Get(ctx, warmMarker).Int64(); err == nil && n == e.rows {
		return nil
	}
	rows, err := e.pool.Query(ctx, "SELECT "+bench.Columns+" FROM users ORDER BY id")
	if err != nil {
		return err
	}
	defer rows.Close()
	pipe := e.rdb.Pipeline()
	for rows.Next() {
		u, err := pgx.RowToStructByPos[bench.User](rows)
		if err != nil {
			return err
		}
		buf, err := msgpack.Marshal(&u)
		if err != nil {
			return err
		}
		pipe.Set(ctx, rawKey(u.ID), buf, rowTTL)
		if pipe.Len() == 1000 {
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	return e.rdb.Set(ctx, warmMarker, e.rows, 0).Err()
}

// redisCounter counts round trips: one per command, one per pipeline.
type redisCounter struct{ n *atomic.Int64 }

func (h redisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h redisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// sqlCounter counts SQL statements sent by pgx, BEGIN and COMMIT included.
type sqlCounter struct{ n *atomic.Int64 }

func (t sqlCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.n.Add(1)
	return ctx
}

func (t sqlCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
