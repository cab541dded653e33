// Command quickstart walks through writethrough's write-through cycle and
// prints what Redis holds after each step.
//
// It uses PostgreSQL and Redis when DATABASE_URL and REDIS_URL are set, and
// otherwise an embedded SQLite database and an in-process Redis, so it runs
// on any machine with Go:
//
//	make demo
//	DATABASE_URL=postgres://postgres@127.0.0.1/test REDIS_URL=redis://127.0.0.1:6379 make demo
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/glebarez/sqlite"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
)

// User is cached: the cache tag sits on the primary key.
type User struct {
	ID        uint   `gorm:"primaryKey" cache:"ttl:10m"`
	Email     string `gorm:"uniqueIndex"`
	Name      string
	Balance   int64
	Status    string `gorm:"default:active"`
	UpdatedAt time.Time
}

// TableName keeps the demo away from any real users table.
func (User) TableName() string { return "quickstart_users" }

func main() {
	db, rdb, backend, cleanup, err := open()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	if err := run(os.Stdout, db, rdb, backend); err != nil {
		log.Fatal(err)
	}
}

// sqlCounter counts the statements GORM sends to the database and keeps the
// last one, to show what a cache hit avoided.
type sqlCounter struct {
	logger.Interface
	n    *atomic.Int64
	last *atomic.Value
}

func (c sqlCounter) LogMode(logger.LogLevel) logger.Interface { return c }

func (c sqlCounter) Trace(_ context.Context, _ time.Time, fc func() (string, int64), _ error) {
	sql, _ := fc()
	c.n.Add(1)
	c.last.Store(sql)
}

var (
	statements atomic.Int64
	lastSQL    atomic.Value
)

func open() (*gorm.DB, redis.UniversalClient, string, func(), error) {
	cfg := &gorm.Config{Logger: sqlCounter{Interface: logger.Discard, n: &statements, last: &lastSQL}}
	dbURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if dbURL != "" && redisURL != "" {
		db, err := gorm.Open(postgres.Open(dbURL), cfg)
		if err != nil {
			return nil, nil, "", nil, err
		}
		opts, err := redis.ParseURL(redisURL)
		if err != nil {
			return nil, nil, "", nil, err
		}
		opts.ContextTimeoutEnabled = true
		rdb := redis.NewClient(opts)
		return db, rdb, "PostgreSQL + Redis", func() { _ = rdb.Close() }, nil
	}
	dir, err := os.MkdirTemp("", "writethrough-quickstart")
	if err != nil {
		return nil, nil, "", nil, err
	}
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "demo.db")), cfg)
	if err != nil {
		return nil, nil, "", nil, err
	}
	mr, err := miniredis.Run()
	if err != nil {
		return nil, nil, "", nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	return db, rdb, "embedded SQLite + in-process Redis (set DATABASE_URL and REDIS_URL for real servers)",
		func() { _ = rdb.Close(); mr.Close(); _ = os.RemoveAll(dir) }, nil
}

func run(w io.Writer, db *gorm.DB, rdb redis.UniversalClient, backend string) error {
	ctx := context.Background()
	fmt.Fprintf(w, "backend: %s\n\n", backend)

	p := writethrough.New(rdb, writethrough.Config{Prefix: "demo", OutboxTable: "quickstart_outbox"})
	if err := db.Use(p); err != nil {
		return err
	}
	defer p.Close()
	clearKeys := func() {
		if keys, err := rdb.Keys(ctx, "demo:quickstart_users:*").Result(); err == nil && len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	}
	clearKeys() // a run that was killed may have left entries behind
	if err := db.Migrator().DropTable(&User{}); err != nil {
		return err
	}
	if err := db.AutoMigrate(&User{}); err != nil {
		return err
	}
	defer func() {
		_ = db.Migrator().DropTable(&User{}, "quickstart_outbox")
		clearKeys()
	}()

	show := func(step string, id uint) error {
		e, err := writethrough.Inspect(ctx, db, &User{}, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s\n  redis %s: %s", step, e.Key, e.State)
		if u, ok := e.Row.(*User); ok {
			fmt.Fprintf(w, " {ID:%d Email:%s Name:%s Balance:%d Status:%s}", u.ID, u.Email, u.Name, u.Balance, u.Status)
		}
		if e.TTL > 0 {
			fmt.Fprintf(w, " (ttl %s)", e.TTL.Round(time.Second))
		}
		fmt.Fprintln(w)
		return nil
	}

	// 1. Create: the row is re-read inside the transaction (so the database
	// default for Status is there) and installed after COMMIT.
	u := User{Email: "ada@example.com", Name: "Ada", Balance: 100}
	if err := db.Create(&u).Error; err != nil {
		return err
	}
	if err := show("1. create", u.ID); err != nil {
		return err
	}

	// 2. Cached read: one GET, no SQL.
	before := statements.Load()
	var got User
	if err := db.Scopes(writethrough.Cached).First(&got, u.ID).Error; err != nil {
		return err
	}
	ran := statements.Load() - before
	avoided := db.ToSQL(func(tx *gorm.DB) *gorm.DB { return tx.First(&User{}, u.ID) })
	fmt.Fprintf(w, "2. cached read\n  got {Name:%s Balance:%d}; SQL statements run: %d\n  avoided: %s\n",
		got.Name, got.Balance, ran, avoided)

	// 3. Partial update with an expression: the cache gets the whole row as
	// the database has it, not the half-filled struct.
	if err := db.Model(&User{ID: u.ID}).Update("balance", gorm.Expr("balance + ?", 50)).Error; err != nil {
		return err
	}
	if err := show("3. partial update: balance = balance + 50", u.ID); err != nil {
		return err
	}

	// 4. A transaction that rolls back: its value never reaches readers. The
	// plugin leaves Redis alone until just before a transaction's COMMIT,
	// so readers meanwhile get the committed row, from the cache.
	errAbort := errors.New("abort")
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&User{ID: u.ID}).Update("balance", 0).Error; err != nil {
			return err
		}
		if err := show("4a. inside a transaction, before COMMIT (Redis untouched: readers get the committed row)", u.ID); err != nil {
			return err
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		return fmt.Errorf("expected the rollback, got %v", err)
	}
	if err := show("4b. after ROLLBACK (nothing to undo)", u.ID); err != nil {
		return err
	}
	if err := db.Scopes(writethrough.Cached).First(&got, u.ID).Error; err != nil {
		return err
	}
	if err := show(fmt.Sprintf("4c. next cached read, a hit: balance %d", got.Balance), u.ID); err != nil {
		return err
	}

	// 5. Delete: a tombstone answers "not found" without SQL.
	if err := db.Delete(&User{}, u.ID).Error; err != nil {
		return err
	}
	if err := show("5. delete", u.ID); err != nil {
		return err
	}
	before = statements.Load()
	err = db.Scopes(writethrough.Cached).First(&got, u.ID).Error
	fmt.Fprintf(w, "  cached read after delete: %v; SQL statements run: %d\n", err, statements.Load()-before)

	st := p.Stats()
	fmt.Fprintf(w, "\nstats: hits=%d misses=%d fills=%d prepares=%d finalizes=%d\n", st.Hits, st.Misses, st.Fills, st.Prepares, st.Finalizes)
	return nil
}
