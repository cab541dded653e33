package cdc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/pgproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestWithoutLogicalWAL: on a PostgreSQL at wal_level replica, db.Use
// refuses Config.CDC, and a consumer stops at once with ErrNotLogical
// instead of retrying, having made nothing.
func TestWithoutLogicalWAL(t *testing.T) {
	srv := pgproc.Start(t, "wal_level=replica")
	open := func() *gorm.DB {
		db, err := gorm.Open(postgres.Open(srv.DSN("postgres")), &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatal(err)
		}
		if sqlDB, err := db.DB(); err == nil {
			t.Cleanup(func() { _ = sqlDB.Close() })
		}
		return db
	}
	rdb, prefix := testenv.Redis(t)

	err := open().Use(writethrough.New(rdb, writethrough.Config{Prefix: prefix, CDC: true}))
	var ce *writethrough.ConfigError
	if !errors.As(err, &ce) || ce.Field != "CDC" || !strings.Contains(err.Error(), "wal_level is replica") {
		t.Fatalf("db.Use with Config.CDC at wal_level replica: %v", err)
	}

	db := open()
	if err := db.Use(writethrough.New(rdb, writethrough.Config{Prefix: prefix})); err != nil {
		t.Fatal(err)
	}
	if err := db.AutoMigrate(&Account{}); err != nil {
		t.Fatal(err)
	}
	c, err := cdc.New(db, cdc.Config{Redis: rdb, Prefix: prefix, Models: []any{&Account{}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Run(ctx); !errors.Is(err, cdc.ErrNotLogical) {
		t.Fatalf("Run at wal_level replica: %v (stats %+v)", err, c.Stats())
	}
	var pubs, slots int64
	db.Raw("SELECT count(*) FROM pg_publication").Scan(&pubs)
	db.Raw("SELECT count(*) FROM pg_replication_slots").Scan(&slots)
	if pubs != 0 || slots != 0 {
		t.Fatalf("a consumer that cannot stream left %d publications and %d slots", pubs, slots)
	}
}

// TestARoleWithoutReplicationStops: a role that may not open a replication
// connection is a failure retrying cannot fix: Run returns it.
func TestARoleWithoutReplicationStops(t *testing.T) {
	r := newRig(t, &Account{})
	role := "wt_norepl_" + strings.TrimPrefix(r.cfg.Slot, "wt_cdc_")
	r.exec("CREATE ROLE " + role + " LOGIN NOREPLICATION")
	t.Cleanup(func() {
		if _, err := r.raw.Exec(context.Background(), "DROP ROLE IF EXISTS "+role); err != nil {
			t.Errorf("drop role: %v", err)
		}
	})
	pc, err := pgconn.ParseConfig(r.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.cfg
	cfg.ConnString = fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", pc.Host, pc.Port, role, pc.Database)
	c, err := cdc.New(nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("Run with a role without REPLICATION: %v (stats %+v)", err, c.Stats())
	}
}

type Late struct {
	ID int64 `gorm:"primaryKey" cache:"ttl:1h"`
	N  int
}

// TestATableMigratedLaterIsWaitedFor: a consumer started before the
// migration that creates a followed table retries, and streams once the
// table exists.
func TestATableMigratedLaterIsWaitedFor(t *testing.T) {
	r := newRig(t, &Account{})
	r.cfg.Models = []any{&Account{}, &Late{}}
	c, err := cdc.New(r.db, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.run(c)
	r.c = c
	r.eventually("a failure for the missing table", func() error {
		if st := c.Stats(); !strings.Contains(st.LastError, "does not exist") {
			return fmt.Errorf("state %s, last error %q", st.State, st.LastError)
		}
		return nil
	})
	if err := r.db.AutoMigrate(&Late{}); err != nil {
		t.Fatal(err)
	}
	if err := r.db.Create(&Late{ID: 1}).Error; err != nil {
		t.Fatal(err)
	}
	r.eventually("streaming", func() error {
		if st := c.Stats(); st.State != cdc.StateStreaming {
			return fmt.Errorf("state %s, last error %q", st.State, st.LastError)
		}
		return nil
	})
	r.caughtUp()
	r.fill(&Late{}, int64(1))
	r.exec("UPDATE lates SET n = 5 WHERE id = 1")
	r.gone(&Late{}, int64(1))
}

// TestABadKeyTemplateStops: a Tables key template that names no key column
// is a configuration error retrying cannot fix: Run returns it.
func TestABadKeyTemplateStops(t *testing.T) {
	r := newRig(t, &Account{})
	r.cfg.Models = nil
	r.cfg.Tables = []cdc.Table{{Name: "accounts", Key: "acct:{nosuchcol}"}}
	r.cfg.ConnString = r.dsn
	c, err := cdc.New(nil, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx)
	if !errors.Is(err, cdc.ErrInvalidConfig) || !strings.Contains(err.Error(), "acct:{nosuchcol}") {
		t.Fatalf("Run with a bad key template: %v", err)
	}
	t.Log(err)
}

// TestASlotOfAnotherDatabaseIsLeftAlone: slot names are the server's; a
// consumer whose slot name another database already uses stops with
// ErrInvalidConfig, and the other database's slot survives.
func TestASlotOfAnotherDatabaseIsLeftAlone(t *testing.T) {
	r := newRig(t, &Account{})
	pc, err := pgconn.ParseConfig(r.dsn)
	if err != nil {
		t.Fatal(err)
	}
	other := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable", pc.Host, pc.Port, pc.User)
	testrig.DropSlotAtCleanup(t, other, r.cfg.Slot)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", r.cfg.Slot); err != nil {
		t.Fatal(err)
	}
	c, err := cdc.New(r.db, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Run(rctx); !errors.Is(err, cdc.ErrInvalidConfig) {
		t.Fatalf("Run with another database's slot name: %v (%+v)", err, c.Stats())
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT database FROM pg_replication_slots WHERE slot_name = $1", r.cfg.Slot).Scan(&db); err != nil || db != "postgres" {
		t.Fatalf("the other database's slot: %q, %v", db, err)
	}
}
