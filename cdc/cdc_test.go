package cdc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

type Account struct {
	ID      int64 `gorm:"primaryKey" cache:"ttl:1h"`
	Owner   string
	Balance int64
}

type Tag struct {
	Name  string `gorm:"primaryKey" cache:"ttl:1h"`
	Uses  int
	Notes string
}

type Grant struct {
	UserID int64  `gorm:"primaryKey" cache:"ttl:1h"`
	Role   string `gorm:"primaryKey"`
	Level  int
}

// rig is one test's database schema, key prefix, plugin and consumer.
type rig struct {
	t      testing.TB
	db     *gorm.DB
	raw    *pgx.Conn // a connection that bypasses GORM
	c      *cdc.Consumer
	cfg    cdc.Config
	dsn    string
	stop   func()
	models []any
	hook   func(point string) // set on the consumers start makes (cdc.SetHook)
}

func requireLogical(t testing.TB, db *gorm.DB) {
	t.Helper()
	var level string
	if err := db.Raw("show wal_level").Scan(&level).Error; err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Skipf("wal_level is %s; the cdc tests need logical (scripts/services.sh sets it)", level)
	}
}

func newRig(t testing.TB, models ...any) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL and Redis")
	}
	rdb, prefix := testenv.Redis(t)
	return newRigOn(t, rdb, prefix, models...)
}

// newRigOn is newRig on a Redis of the test's choosing.
func newRigOn(t testing.TB, rdb redis.UniversalClient, prefix string, models ...any) *rig {
	t.Helper()
	return newRigWith(t, rdb, writethrough.Config{Prefix: prefix}, models...)
}

// newRigWith is newRigOn with the plugin's Config.
func newRigWith(t testing.TB, rdb redis.UniversalClient, wcfg writethrough.Config, models ...any) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL and Redis")
	}
	return newRigAt(t, testenv.PostgresDSN(t), rdb, wcfg, models...)
}

// newRigAt is newRigWith on the PostgreSQL database of dsn (a private
// cluster, for tests that restart it).
func newRigAt(t testing.TB, dsn string, rdb redis.UniversalClient, wcfg writethrough.Config, models ...any) *rig {
	t.Helper()
	prefix := wcfg.Prefix
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		t.Cleanup(func() { _ = sqlDB.Close() })
	}
	requireLogical(t, db)
	if err := db.Use(writethrough.New(rdb, wcfg)); err != nil {
		t.Fatal(err)
	}
	if err := db.AutoMigrate(models...); err != nil {
		t.Fatal(err)
	}
	raw, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close(context.Background()) })
	name := "wt_cdc_" + strings.TrimPrefix(prefix, "wttest:")
	r := &rig{t: t, db: db, raw: raw, dsn: dsn, models: models}
	r.cfg = cdc.Config{
		Redis: rdb, Prefix: prefix, Models: models, Slot: name, Publication: name,
		StatusInterval: 50 * time.Millisecond, StandbyPoll: 50 * time.Millisecond,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}
	t.Cleanup(func() {
		// The slot outlives the schema: drop it, or it keeps WAL forever.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		// The walsender of a stopped consumer may take a moment to exit.
		for {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
			if err == nil || !strings.Contains(err.Error(), "55006") || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("cleanup: drop slot %s: %v", name, err)
		}
		if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+name); err != nil {
			t.Errorf("cleanup: drop publication %s: %v", name, err)
		}
	})
	return r
}

// start runs a consumer until the test ends and waits until it streams.
func (r *rig) start() *cdc.Consumer {
	r.t.Helper()
	c, err := cdc.New(r.db, r.cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.hook != nil {
		cdc.SetHook(c, r.hook)
	}
	r.stop = r.run(c)
	r.c = c
	r.eventually("consumer streaming", func() error {
		if st := c.Stats(); st.State != cdc.StateStreaming {
			return fmt.Errorf("state %s, last error %q", st.State, st.LastError)
		}
		return nil
	})
	return c
}

// run runs c until the test ends or stop is called, and fails the test if
// Run returns an error.
func (r *rig) run(c *cdc.Consumer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("Run: %v", err)
		}
	})
	r.t.Cleanup(stop)
	return stop
}

// eventually retries check until it passes; it fails the test after a
// generous bound (a hung consumer, not a slow one: under make test the root
// package's race-detector runs share the two cores, and every walsender
// decodes all of the server's WAL).
func (r *rig) eventually(what string, check func() error) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// caughtUp waits until the consumer applied everything written so far.
func (r *rig) caughtUp() {
	r.t.Helper()
	want := r.flushed()
	r.eventually("consumer caught up to "+want.String(), func() error {
		st := r.c.Stats()
		got, err := pglogrepl.ParseLSN(st.ConfirmedLSN)
		if err != nil || got < want {
			return fmt.Errorf("confirmed %s; consumer %+v", st.ConfirmedLSN, st)
		}
		return nil
	})
}

// accounts creates Account rows 1..n through the plugin, balance = id.
func (r *rig) accounts(n int64) {
	r.t.Helper()
	for i := int64(1); i <= n; i++ {
		if err := r.db.Create(&Account{ID: i, Balance: i}).Error; err != nil {
			r.t.Fatal(err)
		}
	}
}

// fillAccounts reads Account rows 1..n with cached reads.
func (r *rig) fillAccounts(n int64) {
	r.t.Helper()
	for i := int64(1); i <= n; i++ {
		r.fill(&Account{}, i)
	}
}

func (r *rig) exec(sql string, args ...any) {
	r.t.Helper()
	if _, err := r.raw.Exec(context.Background(), sql, args...); err != nil {
		r.t.Fatalf("%s: %v", sql, err)
	}
}

// state is the key's entry state for model and key.
func (r *rig) state(model, key any) string {
	r.t.Helper()
	e, err := writethrough.Inspect(context.Background(), r.db, model, key)
	if err != nil {
		r.t.Fatal(err)
	}
	return e.State.String()
}

// fill reads the row of key with a cached read (filling the cache). key is
// an integer, or a string for Tag.
func (r *rig) fill(dst any, key any) {
	r.t.Helper()
	var err error
	if s, ok := key.(string); ok {
		err = r.db.Scopes(writethrough.Cached).First(dst, "name = ?", s).Error
	} else {
		err = r.db.Scopes(writethrough.Cached).First(dst, key).Error
	}
	if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
		r.t.Fatal(err)
	}
}

func (r *rig) gone(model, key any) {
	r.t.Helper()
	r.eventually(fmt.Sprintf("key %v invalidated", key), func() error {
		if s := r.state(model, key); s != "absent" {
			return fmt.Errorf("state %s", s)
		}
		return nil
	})
}

func TestRawWritesInvalidateTheirKeys(t *testing.T) {
	r := newRig(t, &Account{})
	r.start()
	for i := int64(1); i <= 3; i++ {
		if err := r.db.Create(&Account{ID: i, Owner: "o", Balance: 10 * i}).Error; err != nil {
			t.Fatal(err)
		}
	}
	r.caughtUp() // the inserts' own invalidations are behind us
	var a Account
	r.fill(&a, 1)
	r.fill(&Account{}, 2)
	r.fill(&Account{}, 9) // a tombstone
	if s := r.state(&Account{}, 1); s != "committed" {
		t.Fatalf("after a cached read: %s", s)
	}
	if s := r.state(&Account{}, 9); s != "tombstone" {
		t.Fatalf("after a cached read of a missing row: %s", s)
	}

	r.exec("UPDATE accounts SET balance = 111 WHERE id = 1")
	r.gone(&Account{}, 1)
	r.fill(&a, 1)
	if a.Balance != 111 {
		t.Fatalf("balance after a raw update: %d, want 111", a.Balance)
	}

	r.exec("DELETE FROM accounts WHERE id = 2")
	r.gone(&Account{}, 2)

	r.exec("INSERT INTO accounts (id, owner, balance) VALUES (9, 'n', 90)")
	r.gone(&Account{}, 9) // the tombstone goes
	var b Account
	r.fill(&b, 9)
	if b.Balance != 90 {
		t.Fatalf("row inserted by raw SQL: %+v", b)
	}

	// A key change invalidates both keys.
	r.caughtUp()
	r.fill(&Account{}, 3)
	r.fill(&Account{}, 30)
	if s := r.state(&Account{}, 30); s != "tombstone" {
		t.Fatalf("key 30 before the key change: %s", s)
	}
	r.exec("UPDATE accounts SET id = 30 WHERE id = 3")
	r.gone(&Account{}, 3)
	r.gone(&Account{}, 30)
	if st := r.c.Stats(); st.Transactions < 4 || st.KeysApplied < 5 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestTruncateRemovesEveryKeyOfTheTable(t *testing.T) {
	r := newRig(t, &Account{}, &Tag{})
	r.start()
	r.accounts(50)
	if err := r.db.Create(&Tag{Name: "go"}).Error; err != nil {
		t.Fatal(err)
	}
	r.caughtUp()
	for i := int64(1); i <= 50; i++ {
		r.fill(&Account{}, i)
		if s := r.state(&Account{}, i); s != "committed" {
			t.Fatalf("key %d before TRUNCATE: %s", i, s)
		}
	}
	r.fill(&Tag{}, "go")
	r.exec("TRUNCATE accounts")
	for i := int64(1); i <= 50; i++ {
		r.gone(&Account{}, i)
	}
	if s := r.state(&Tag{}, "go"); s != "committed" {
		t.Fatalf("another table's key after TRUNCATE accounts: %s", s)
	}
}

func TestStringAndCompositeKeys(t *testing.T) {
	r := newRig(t, &Tag{}, &Grant{})
	r.start()
	names := []string{"go", "a:b", "100%", "{x}", "ünï code"}
	for _, n := range names {
		if err := r.db.Create(&Tag{Name: n}).Error; err != nil {
			t.Fatal(err)
		}
	}
	if err := r.db.Create(&Grant{UserID: 7, Role: "admin:all", Level: 1}).Error; err != nil {
		t.Fatal(err)
	}
	r.caughtUp()
	for _, n := range names {
		r.fill(&Tag{}, n)
		if s := r.state(&Tag{}, n); s != "committed" {
			t.Fatalf("tag %q before the raw update: %s", n, s)
		}
	}
	var g Grant
	if err := r.db.Scopes(writethrough.Cached).Where(&Grant{UserID: 7, Role: "admin:all"}).First(&g).Error; err != nil {
		t.Fatal(err)
	}
	key := []any{int64(7), "admin:all"}
	if s := r.state(&Grant{}, key); s != "committed" {
		t.Fatalf("grant after a cached read: %s", s)
	}
	r.exec("UPDATE tags SET uses = uses + 1")
	for _, n := range names {
		r.gone(&Tag{}, n)
	}
	r.exec("UPDATE grants SET level = 2")
	r.gone(&Grant{}, key)
}

func TestANewSlotPurgesTheTablesFirst(t *testing.T) {
	r := newRig(t, &Account{})
	for i := int64(1); i <= 20; i++ {
		if err := r.db.Create(&Account{ID: i, Balance: i}).Error; err != nil {
			t.Fatal(err)
		}
		r.fill(&Account{}, i)
		if s := r.state(&Account{}, i); s != "committed" {
			t.Fatalf("key %d: %s", i, s)
		}
	}
	// Written while no consumer ran and before any slot existed: the cache
	// cannot know; the new slot's purge covers it.
	r.exec("UPDATE accounts SET balance = -1")
	c := r.start()
	for i := int64(1); i <= 20; i++ {
		if s := r.state(&Account{}, i); s != "absent" {
			t.Fatalf("key %d after the first start: %s", i, s)
		}
	}
	if st := c.Stats(); st.Purges != 1 || st.PurgedKeys != 20 {
		t.Fatalf("stats after the first start: %+v", st)
	}
}

func TestChangesWhileStoppedAreAppliedOnRestart(t *testing.T) {
	r := newRig(t, &Account{})
	r.start()
	r.accounts(5)
	r.eventually("inserts applied", func() error {
		if n := r.c.Stats().Transactions; n < 5 {
			return fmt.Errorf("%d transactions", n)
		}
		return nil
	})
	r.stop()
	r.fillAccounts(5)
	r.exec("UPDATE accounts SET balance = balance + 100 WHERE id <= 3")
	c := r.start()
	for i := int64(1); i <= 3; i++ {
		r.gone(&Account{}, i)
	}
	for i := int64(4); i <= 5; i++ {
		if s := r.state(&Account{}, i); s != "committed" {
			t.Fatalf("untouched key %d: %s", i, s)
		}
	}
	if st := c.Stats(); st.Purges != 0 {
		t.Fatalf("a restart on the same slot purged: %+v", st)
	}
}

func TestASecondConsumerWaitsAndTakesOver(t *testing.T) {
	r := newRig(t, &Account{})
	r.start()
	first := r.stop
	c2, err := cdc.New(r.db, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.run(c2)
	r.eventually("second consumer in standby", func() error {
		if s := c2.Stats().State; s != cdc.StateStandby {
			return fmt.Errorf("state %s", s)
		}
		return nil
	})
	first()
	r.c = c2
	r.eventually("second consumer streaming", func() error {
		if s := c2.Stats().State; s != cdc.StateStreaming {
			return fmt.Errorf("state %s (%s)", s, c2.Stats().LastError)
		}
		return nil
	})
	if err := r.db.Create(&Account{ID: 1, Balance: 1}).Error; err != nil {
		t.Fatal(err)
	}
	r.caughtUp()
	r.fill(&Account{}, 1)
	if s := r.state(&Account{}, 1); s != "committed" {
		t.Fatalf("before the raw update: %s", s)
	}
	r.exec("UPDATE accounts SET balance = 2")
	r.gone(&Account{}, 1)
}

type Session struct {
	ID    string `gorm:"primaryKey;type:uuid" cache:"ttl:1h;key:sess:{id}"`
	Owner string
}

func TestTemplatesAndUUIDKeys(t *testing.T) {
	r := newRig(t, &Session{})
	r.start()
	ids := []string{"6f1b9a2e-4c3d-4e5f-8a9b-0c1d2e3f4a5b", "00000000-0000-0000-0000-000000000001"}
	for _, id := range ids {
		if err := r.db.Create(&Session{ID: id, Owner: "a"}).Error; err != nil {
			t.Fatal(err)
		}
	}
	r.caughtUp()
	for _, id := range ids {
		// An upper-case spelling reads the same row and the same key.
		var s Session
		if err := r.db.Scopes(writethrough.Cached).First(&s, "id = ?", strings.ToUpper(id)).Error; err != nil {
			t.Fatal(err)
		}
		if st := r.state(&Session{}, id); st != "committed" {
			t.Fatalf("session %s: %s", id, st)
		}
	}
	r.exec("UPDATE sessions SET owner = 'b'")
	for _, id := range ids {
		r.gone(&Session{}, id)
	}
}

type Blob struct {
	ID []byte `gorm:"primaryKey" cache:"ttl:1h"`
	N  int
}

// TestTablesWithoutModels: a consumer that knows only table names and key
// templates (the sidecar) names the keys the application's models give.
func TestTablesWithoutModels(t *testing.T) {
	r := newRig(t, &Account{}, &Grant{}, &Session{}, &Blob{})
	r.cfg.Models = nil
	r.cfg.Tables = []cdc.Table{{Name: "accounts"}, {Name: "grants"}, {Name: "sessions", Key: "sess:{id}"}, {Name: "blobs"}}
	r.cfg.ConnString = r.dsn
	c, err := cdc.New(nil, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.run(c)
	r.c = c
	sid := "6f1b9a2e-4c3d-4e5f-8a9b-0c1d2e3f4a5b"
	blob := []byte{0xde, 0xad, ':', 0}
	for _, v := range []any{&Account{ID: 1}, &Grant{UserID: 7, Role: "a:b"}, &Session{ID: sid}, &Blob{ID: blob}} {
		if err := r.db.Create(v).Error; err != nil {
			t.Fatal(err)
		}
	}
	r.eventually("streaming", func() error {
		if s := c.Stats().State; s != cdc.StateStreaming {
			return fmt.Errorf("state %s (%s)", s, c.Stats().LastError)
		}
		return nil
	})
	r.caughtUp()
	r.fill(&Account{}, 1)
	var g Grant
	if err := r.db.Scopes(writethrough.Cached).Where(&Grant{UserID: 7, Role: "a:b"}).First(&g).Error; err != nil {
		t.Fatal(err)
	}
	var s Session
	if err := r.db.Scopes(writethrough.Cached).First(&s, "id = ?", sid).Error; err != nil {
		t.Fatal(err)
	}
	var b Blob
	if err := r.db.Scopes(writethrough.Cached).First(&b, "id = ?", blob).Error; err != nil {
		t.Fatal(err)
	}
	keys := []struct {
		model, key any
	}{{&Account{}, 1}, {&Grant{}, []any{int64(7), "a:b"}}, {&Session{}, sid}, {&Blob{}, blob}}
	for _, k := range keys {
		if st := r.state(k.model, k.key); st != "committed" {
			t.Fatalf("%T %v before the raw updates: %s", k.model, k.key, st)
		}
	}
	r.exec("UPDATE accounts SET balance = 5")
	r.exec("UPDATE grants SET level = 5")
	r.exec("UPDATE sessions SET owner = 'x'")
	r.exec("UPDATE blobs SET n = 5")
	for _, k := range keys {
		r.gone(k.model, k.key)
	}
}

// TestThePluginsOwnWritesCostNoMiss: with Config.CDC the plugin marks its
// transactions, and the consumer leaves alone the keys they installed; a
// transaction that also ran raw SQL is not marked, and its keys go.
func TestThePluginsOwnWritesCostNoMiss(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL and Redis")
	}
	rdb, prefix := testenv.Redis(t)
	r := newRigWith(t, rdb, writethrough.Config{Prefix: prefix, CDC: true}, &Account{})
	c := r.start()
	r.accounts(3)
	r.caughtUp()
	for i := int64(1); i <= 3; i++ {
		if s := r.state(&Account{}, i); s != "committed" {
			t.Fatalf("key %d after the plugin's own insert was applied: %s", i, s)
		}
	}
	skipped := c.Stats().KeysSkipped
	if skipped < 3 {
		t.Fatalf("the consumer skipped %d keys of the plugin's own inserts, want 3: %+v", skipped, c.Stats())
	}
	// An update in a transaction: installed by the plugin, left by the consumer.
	err := r.db.Transaction(func(tx *gorm.DB) error {
		return tx.Model(&Account{ID: 1}).Update("balance", 100).Error
	})
	if err != nil {
		t.Fatal(err)
	}
	r.caughtUp()
	e, err := writethrough.Inspect(context.Background(), r.db, &Account{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if e.State != writethrough.EntryCommitted || e.Row.(*Account).Balance != 100 {
		t.Fatalf("key 1 after the plugin's update was applied: %s %+v", e.State, e.Row)
	}
	// Raw SQL in the same transaction: the plugin does not follow it, so the
	// transaction is not marked and the consumer invalidates its keys.
	err = r.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: 2}).Update("balance", 200).Error; err != nil {
			return err
		}
		return tx.Exec("UPDATE accounts SET owner = 'raw' WHERE id = 2").Error
	})
	if err != nil {
		t.Fatal(err)
	}
	r.gone(&Account{}, 2)
	var a Account
	r.fill(&a, 2)
	if a.Owner != "raw" || a.Balance != 200 {
		t.Fatalf("row 2 after the raw statement: %+v", a)
	}
	// A nested transaction (savepoints) is still the plugin's own.
	err = r.db.Transaction(func(tx *gorm.DB) error {
		return tx.Transaction(func(tx2 *gorm.DB) error {
			return tx2.Model(&Account{ID: 3}).Update("balance", 300).Error
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	r.caughtUp()
	if s := r.state(&Account{}, 3); s != "committed" {
		t.Fatalf("key 3 after a nested transaction of the plugin: %s", s)
	}
}
