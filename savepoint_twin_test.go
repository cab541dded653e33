package writethrough_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// TestRawRollbackToSavepointUndoesCachedWrite: a savepoint the user's own
// tx.Exec rolls back undoes, for the cache too, a cached write made inside
// it, whatever PostgreSQL spelling the rollback uses and however the
// savepoints' names are quoted. The transaction then commits; the row the
// savepoint rolled back must never be installed in Redis. (A raw ROLLBACK of
// the whole transaction is followed the same way: the COMMIT after it
// succeeds, with a warning, and commits nothing.)
func TestRawRollbackToSavepointUndoesCachedWrite(t *testing.T) {
	cases := []struct {
		name   string
		before []string // statements before the cached write
		after  []string // statements after it, the last one rolling it back
	}{
		{"ROLLBACK TO SAVEPOINT", []string{"SAVEPOINT sp"}, []string{"ROLLBACK TO SAVEPOINT sp"}},
		{"ROLLBACK TO", []string{"SAVEPOINT sp"}, []string{"ROLLBACK TO sp"}},
		{"ROLLBACK TRANSACTION TO SAVEPOINT", []string{"SAVEPOINT sp"}, []string{"ROLLBACK TRANSACTION TO SAVEPOINT sp"}},
		{"ROLLBACK WORK TO", []string{"SAVEPOINT sp"}, []string{"rollback work to sp"}},
		{"an unquoted name is folded to lower case", []string{"SAVEPOINT Sp"}, []string{"ROLLBACK TO SAVEPOINT sp"}},
		{"a quoted name keeps its case: \"sp\" is not \"SP\"",
			[]string{`SAVEPOINT "sp"`}, []string{`SAVEPOINT "SP"`, `ROLLBACK TO SAVEPOINT "sp"`}},
		{"a quoted name keeps its case: \"Sp\" is not sp",
			[]string{`SAVEPOINT "Sp"`}, []string{`SAVEPOINT Sp`, `ROLLBACK TO SAVEPOINT "Sp"`}},
		{"a quoted name with a space", []string{`SAVEPOINT "my sp"`}, []string{`SAVEPOINT my`, `ROLLBACK TO "my sp"`}},
		{"a ROLLBACK of the whole transaction", nil, []string{"ROLLBACK"}},
	}
	for _, prep := range []bool{false, true} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("PrepareStmt=%v/%s", prep, tc.name), func(t *testing.T) {
				tw := newTwin(t, twinOpts{
					gorm:   func() *gorm.Config { return &gorm.Config{PrepareStmt: prep} },
					models: []any{&User{}},
				})
				tw.same(t, "create", func(db *gorm.DB) any {
					return res(nil, db.Create(&User{Email: "sp@x", Balance: 1}).Error)
				})
				tw.same(t, "transaction", func(db *gorm.DB) any {
					return res(nil, db.Transaction(func(tx *gorm.DB) error {
						for _, s := range tc.before {
							if err := tx.Exec(s).Error; err != nil {
								return err
							}
						}
						if err := tx.Model(&User{ID: 1}).Update("balance", 666).Error; err != nil {
							return err
						}
						for _, s := range tc.after {
							if err := tx.Exec(s).Error; err != nil {
								return err
							}
						}
						return nil
					}))
				})
				tw.sameRows(t)
				tw.settled(t)
				var got User
				require.NoError(t, tw.cached.Scopes(writethrough.Cached).First(&got, 1).Error)
				assert.Equal(t, int64(1), got.Balance, "the savepoint's write was rolled back")
			})
		}
	}
}
