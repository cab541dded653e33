package main

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/glebarez/sqlite"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
)

// The plugin on SQLite, where its behaviour rests on different machinery
// than on PostgreSQL: RETURNING from SQLite 3.35, savepoints, and an
// in-process Redis that cannot compile Redis 7 script flags.
func TestSQLiteWritePaths(t *testing.T) {
	for _, skip := range []bool{false, true} {
		name := "Transactions"
		if skip {
			name = "SkipDefaultTransaction"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			db, err := gorm.Open(sqlite.Open(filepath.Join(t.TempDir(), "t.db")),
				&gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: skip})
			if err != nil {
				t.Fatal(err)
			}
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			p := writethrough.New(rdb, writethrough.Config{Prefix: "sq", DrainInterval: -1})
			if err := db.Use(p); err != nil {
				t.Fatal(err)
			}
			if err := db.AutoMigrate(&User{}); err != nil {
				t.Fatal(err)
			}
			us := []User{{Email: "a", Balance: 1}, {Email: "b", Balance: 2}, {Email: "c", Balance: 3}}
			if err := db.Create(&us).Error; err != nil {
				t.Fatal(err)
			}
			state := func(id uint) string {
				e, err := writethrough.Inspect(ctx, db, &User{}, id)
				if err != nil {
					t.Fatal(err)
				}
				return e.State.String()
			}
			// cachedBalance returns the cached balance, or want when the key
			// is absent and absence is allowed: without a transaction, keys
			// learned only after the statement (generated ids, bulk writes)
			// are invalidated rather than installed.
			cachedBalance := func(id uint, want int64) int64 {
				e, err := writethrough.Inspect(ctx, db, &User{}, id)
				if err != nil {
					t.Fatal(err)
				}
				if skip && e.State == writethrough.EntryAbsent {
					return want
				}
				if e.State != writethrough.EntryCommitted {
					t.Fatalf("user %d: want a committed entry, got %q", id, e.State)
				}
				return e.Row.(*User).Balance
			}
			for _, u := range us {
				if got := cachedBalance(u.ID, u.Balance); got != u.Balance {
					t.Fatalf("create: cached balance %d, want %d", got, u.Balance)
				}
			}

			// Bulk update: the keys come back through SQLite's RETURNING.
			res := db.Model(&User{}).Where("balance >= ?", 2).Update("balance", gorm.Expr("balance * 10"))
			if res.Error != nil || res.RowsAffected != 2 {
				t.Fatalf("bulk update: %v, %d rows", res.Error, res.RowsAffected)
			}
			if cachedBalance(us[1].ID, 20) != 20 || cachedBalance(us[2].ID, 30) != 30 || cachedBalance(us[0].ID, 1) != 1 {
				t.Fatal("bulk update did not leave the database rows in the cache")
			}

			// A savepoint rolled back inside a committed transaction.
			if !skip {
				errInner := errors.New("inner")
				err = db.Transaction(func(tx *gorm.DB) error {
					if err := tx.Model(&us[0]).Update("balance", 5).Error; err != nil {
						return err
					}
					_ = tx.Transaction(func(inner *gorm.DB) error {
						if err := inner.Model(&us[1]).Update("balance", 666).Error; err != nil {
							return err
						}
						return errInner
					})
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if cachedBalance(us[0].ID, 5) != 5 {
					t.Fatal("the outer write is cached")
				}
				if st := state(us[1].ID); st != "absent" {
					t.Fatalf("the rolled-back savepoint's key is %q, want absent", st)
				}
			}

			// An update by key without a transaction is made pending before
			// the statement and installed after it.
			if err := db.Model(&User{ID: us[0].ID}).Update("balance", 7).Error; err != nil {
				t.Fatal(err)
			}
			if st := state(us[0].ID); st != "committed" {
				t.Fatalf("update by key: key is %q, want committed", st)
			}

			// Bulk delete leaves tombstones (or, without a transaction, no entry).
			if err := db.Where("balance >= ?", 20).Delete(&User{}).Error; err != nil {
				t.Fatal(err)
			}
			if st := state(us[2].ID); st != "tombstone" && !(skip && st == "absent") {
				t.Fatalf("bulk delete: key is %q, want tombstone", st)
			}
			var got User
			if err := db.Scopes(writethrough.Cached).First(&got, us[2].ID).Error; !errors.Is(err, gorm.ErrRecordNotFound) {
				t.Fatalf("cached read after delete: %v", err)
			}
		})
	}
}
