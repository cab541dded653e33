package cdc_test

import (
	"context"
	"errors"
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
