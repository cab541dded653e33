package writethrough_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// The examples run against the PostgreSQL and Redis servers the tests use
// (DATABASE_URL and REDIS_URL, or 127.0.0.1:5432 and :6379; `make test`
// starts them), each in a schema and under a key prefix of its own, both
// removed at the end; `go test -short` leaves them out. The plugin also runs on SQLite with an in-process
// Redis (examples/quickstart tests it so), but those would be heavy
// dependencies of this module.

// TestMain leaves the examples out of `go test -short`, which runs without
// servers (docs/testing.md): an example cannot skip itself.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		skip := "^Example"
		if prev := flag.Lookup("test.skip").Value.String(); prev != "" {
			skip = prev + "|" + skip
		}
		_ = flag.Set("test.skip", skip)
	}
	os.Exit(m.Run())
}

// Product is the examples' cached model.
type Product struct {
	ID    uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name  string
	Price int64
}

// exampleEnv is one example's database, Redis and plugin.
type exampleEnv struct {
	db     *gorm.DB
	rdb    *redis.Client
	prefix string
	p      *writethrough.Plugin
}

// exampleServers opens the example's schema and a Redis client, and gives
// its key prefix; cleanup removes the schema and the keys.
func exampleServers() (db *gorm.DB, rdb *redis.Client, prefix string, cleanup func()) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	must := func(err error) {
		if err != nil {
			cleanup()
			panic(err)
		}
	}
	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		dsn = testenv.DefaultPostgresDSN
	}
	base, err := pgx.ParseConfig(dsn)
	must(err)
	admin := stdlib.OpenDB(*base)
	undo = append(undo, func() { _ = admin.Close() })
	id := make([]byte, 6)
	_, _ = rand.Read(id)
	schema := "wt_example_" + hex.EncodeToString(id)
	_, err = admin.Exec("CREATE SCHEMA " + schema)
	must(err)
	undo = append(undo, func() { _, _ = admin.Exec("DROP SCHEMA " + schema + " CASCADE") })

	own := base.Copy()
	own.RuntimeParams["search_path"] = schema
	sqlDB := stdlib.OpenDB(*own)
	undo = append(undo, func() { _ = sqlDB.Close() })
	db, err = gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{Logger: logger.Discard})
	must(err)

	opts := &redis.Options{Addr: testenv.DefaultRedisAddr}
	if u := os.Getenv("REDIS_URL"); u != "" {
		opts, err = redis.ParseURL(u)
		must(err)
	}
	opts.ContextTimeoutEnabled = true
	rdb = redis.NewClient(opts)
	prefix = "wtexample:" + hex.EncodeToString(id)
	undo = append(undo, func() {
		ctx := context.Background()
		keys, _ := rdb.Keys(ctx, prefix+":*").Result()
		if len(keys) > 0 {
			_ = rdb.Del(ctx, keys...).Err()
		}
		_ = rdb.Close()
	})
	return db, rdb, prefix, cleanup
}

// newExample registers a plugin with cfg (its Prefix the example's) on the
// example's database and creates the products table.
func newExample(cfg writethrough.Config) (*exampleEnv, func()) {
	db, rdb, prefix, cleanup := exampleServers()
	cfg.Prefix = prefix
	p := writethrough.New(rdb, cfg)
	if err := db.Use(p); err != nil {
		cleanup()
		panic(err)
	}
	if err := db.AutoMigrate(&Product{}); err != nil {
		cleanup()
		panic(err)
	}
	return &exampleEnv{db: db, rdb: rdb, prefix: prefix, p: p}, func() {
		_ = p.Close()
		cleanup()
	}
}

// seed creates products 1, 2 and 3.
func (e *exampleEnv) seed() {
	ps := []Product{{Name: "pen", Price: 2}, {Name: "ink", Price: 5}, {Name: "pad", Price: 3}}
	if err := e.db.Create(&ps).Error; err != nil {
		panic(err)
	}
}

// shortKey is a Redis key without the example's own prefix.
func (e *exampleEnv) shortKey(key string) string { return strings.TrimPrefix(key, e.prefix+":") }

func ExampleNew() {
	db, rdb, prefix, done := exampleServers() // a *gorm.DB from gorm.Open, a *redis.Client
	defer done()

	p := writethrough.New(rdb, writethrough.Config{Prefix: prefix, Models: []any{&Product{}}})
	defer p.Close()
	if err := db.Use(p); err != nil { // right after gorm.Open, before other plugins
		fmt.Println(err)
		return
	}
	db.AutoMigrate(&Product{})

	pen := Product{Name: "pen", Price: 2}
	db.Create(&pen)                                         // cached as it commits
	db.Model(&pen).Update("price", gorm.Expr("price * 10")) // the row as the database has it now

	var got Product
	db.Scopes(writethrough.Cached).First(&got, pen.ID) // one GET, no SQL
	fmt.Println(got.Name, got.Price, p.Stats().Hits)
	// Output: pen 20 1
}

func ExampleCached() {
	e, done := newExample(writethrough.Config{})
	defer done()
	e.seed()
	db := e.db

	var p Product
	db.Scopes(writethrough.Cached).First(&p, 1) // a hit: Create cached the row
	var ps []Product
	db.Scopes(writethrough.Cached).Find(&ps, []uint{1, 2, 3}) // one round trip for all three
	err := db.Scopes(writethrough.Cached).First(&Product{}, 4).Error
	db.Scopes(writethrough.Cached).First(&Product{}, 4) // the "not found" was cached

	st := e.p.Stats()
	fmt.Println(p.Name, len(ps), errors.Is(err, gorm.ErrRecordNotFound))
	fmt.Println("hits:", st.Hits, "misses:", st.Misses, "fills:", st.Fills)
	// Output:
	// pen 3 true
	// hits: 5 misses: 1 fills: 1
}

func ExampleGet() {
	e, done := newExample(writethrough.Config{})
	defer done()
	e.seed()
	ctx := context.Background()

	p, err := writethrough.Get[Product](ctx, e.db, 2)
	fmt.Println(p.Name, p.Price, err)
	_, err = writethrough.Get[Product](ctx, e.db, 9)
	fmt.Println(errors.Is(err, gorm.ErrRecordNotFound))
	_, err = writethrough.Get[Product](ctx, e.db, "2; DROP TABLE products")
	fmt.Println(errors.Is(err, writethrough.ErrUnsupported))
	// Output:
	// ink 5 <nil>
	// true
	// true
}

func ExampleGetMany() {
	e, done := newExample(writethrough.Config{})
	defer done()
	e.seed()

	ps, err := writethrough.GetMany[Product](context.Background(), e.db, 3, 9, 1, 3)
	for _, p := range ps {
		fmt.Println(p.ID, p.Name)
	}
	fmt.Println(err)
	// Output:
	// 3 pad
	// 1 pen
	// <nil>
}

func ExampleInvalidate() {
	e, done := newExample(writethrough.Config{})
	defer done()
	e.seed()
	ctx := context.Background()

	// A write GORM never sees: the cache still holds the old price.
	e.db.Exec("UPDATE products SET price = 7 WHERE id = 1")
	p, _ := writethrough.Get[Product](ctx, e.db, 1)
	fmt.Println("before:", p.Price)

	err := writethrough.Invalidate(e.db, &Product{}, 1)
	p, _ = writethrough.Get[Product](ctx, e.db, 1)
	fmt.Println("after:", p.Price, err)
	// Output:
	// before: 2
	// after: 7 <nil>
}

func ExampleInspect() {
	e, done := newExample(writethrough.Config{})
	defer done()
	e.seed()
	ctx := context.Background()

	en, err := writethrough.Inspect(ctx, e.db, &Product{}, 2)
	fmt.Println(e.shortKey(en.Key), en.State, en.Row.(*Product).Name, err)

	e.db.Delete(&Product{}, 2)
	en, _ = writethrough.Inspect(ctx, e.db, &Product{}, 2)
	fmt.Println(en.State)

	_ = writethrough.Invalidate(e.db, &Product{}, 2)
	en, _ = writethrough.Inspect(ctx, e.db, &Product{}, 2)
	fmt.Println(en.State == writethrough.EntryAbsent)
	// Output:
	// products:2 committed ink <nil>
	// tombstone
	// true
}
