package writethrough_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// TestCDCMarkChangesNothingGORMDoes: with Config.CDC the plugin writes one
// more statement into each write transaction (the change-data-capture
// mark). GORM must return, write and call exactly what it does without the
// plugin, for commits, nested transactions, raw SQL in a transaction,
// rollbacks and bulk writes; and Redis must settle to the database.
func TestCDCMarkChangesNothingGORMDoes(t *testing.T) {
	tw := newTwin(t, twinOpts{cfg: writethrough.Config{CDC: true}, models: []any{&User{}}})
	var level string
	require.NoError(t, tw.cached.Raw("SHOW wal_level").Scan(&level).Error)
	if level != "logical" {
		t.Skipf("wal_level is %s; Config.CDC needs logical (scripts/services.sh sets it)", level)
	}
	tw.same(t, "create", func(db *gorm.DB) any {
		us := []User{{Email: "a@x", Balance: 1}, {Email: "b@x", Balance: 2}, {Email: "c@x", Balance: 3}}
		return res(us, db.Create(&us).Error)
	})
	tw.same(t, "cached read", func(db *gorm.DB) any {
		var u User
		return res(u, db.Scopes(writethrough.Cached).First(&u, 1).Error)
	})
	tw.same(t, "update in a transaction", func(db *gorm.DB) any {
		return res(nil, db.Transaction(func(tx *gorm.DB) error {
			return tx.Model(&User{ID: 1}).Update("balance", 10).Error
		}))
	})
	tw.same(t, "nested transaction", func(db *gorm.DB) any {
		return res(nil, db.Transaction(func(tx *gorm.DB) error {
			return tx.Transaction(func(tx2 *gorm.DB) error {
				return tx2.Model(&User{ID: 2}).Update("balance", 20).Error
			})
		}))
	})
	tw.same(t, "raw SQL in the transaction", func(db *gorm.DB) any {
		return res(nil, db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Model(&User{ID: 3}).Update("balance", 30).Error; err != nil {
				return err
			}
			return tx.Exec("UPDATE users SET balance = balance + 1 WHERE id = 3").Error
		}))
	})
	tw.same(t, "raw query in the transaction", func(db *gorm.DB) any {
		var ids []int64
		err := db.Transaction(func(tx *gorm.DB) error {
			return tx.Raw("UPDATE users SET balance = balance + 1 WHERE id = 3 RETURNING id").Scan(&ids).Error
		})
		return res(ids, err)
	})
	tw.same(t, "raw SQL in a transaction begun outside GORM", func(db *gorm.DB) any {
		sqlDB, err := db.DB()
		if err != nil {
			return res(nil, err)
		}
		stx, err := sqlDB.Begin()
		if err != nil {
			return res(nil, err)
		}
		defer func() { _ = stx.Rollback() }()
		// A statement of its own (Set makes it), on the transaction.
		s := db.Session(&gorm.Session{NewDB: true}).Set("writethrough:test", true)
		s.Statement.ConnPool = stx
		s = s.Session(&gorm.Session{})
		var n int
		err = s.Raw("SELECT count(*) FROM users").Scan(&n).Error
		if err == nil {
			err = s.Exec("UPDATE users SET balance = balance WHERE id = 0").Error
		}
		return res(n, err)
	})
	tw.same(t, "rolled back", func(db *gorm.DB) any {
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Model(&User{ID: 1}).Update("balance", 99).Error; err != nil {
				return err
			}
			return errors.New("no")
		})
		return res(nil, err)
	})
	tw.same(t, "bulk update", func(db *gorm.DB) any {
		r := db.Model(&User{}).Where("balance > ?", 5).Update("balance", gorm.Expr("balance * 2"))
		return res(r.RowsAffected, r.Error)
	})
	tw.same(t, "delete", func(db *gorm.DB) any {
		r := db.Delete(&User{}, 2)
		return res(r.RowsAffected, r.Error)
	})
	tw.same(t, "cached reads after the writes", func(db *gorm.DB) any {
		var us []User
		return res(us, db.Scopes(writethrough.Cached).Find(&us, []uint{1, 2, 3}).Error)
	})
	tw.sameRows(t)
	tw.settled(t)
}
