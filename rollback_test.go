package writethrough_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// A transaction of the caller's that writes a key and rolls back leaves
// Redis as it was: the next read is a hit on the committed row, not a miss.
// After a commit the new row is installed as before; after a rollback to a
// savepoint inside a committed transaction the key is deleted (made pending
// at the COMMIT, then released), never the undone row.
func TestRollbackKeepsTheCommittedRowCached(t *testing.T) {
	t.Parallel()
	e, _ := setupAccounts(t, nil)
	a, key := e.account(t, "ann", 100)
	before := e.dbAccount(t, a.ID)
	e.assertHit(t, a.ID, before)

	errBack := errors.New("back")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Model(&Account{ID: a.ID}).Update("balance", 500).Error)
		return errBack
	})
	require.ErrorIs(t, err, errBack)
	require.Equal(t, byte(writethrough.StateCommitted), e.entry(t, key).state, "Redis untouched")
	e.assertHit(t, a.ID, before)

	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		return tx.Model(&Account{ID: a.ID}).Update("balance", 200).Error
	}))
	after := e.dbAccount(t, a.ID)
	require.Equal(t, int64(200), after.Balance)
	e.assertHit(t, a.ID, after)

	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		_ = tx.Transaction(func(tx2 *gorm.DB) error {
			require.NoError(t, tx2.Model(&Account{ID: a.ID}).Update("balance", 900).Error)
			return errBack
		})
		return nil
	}))
	assert.Equal(t, byte(0), e.entry(t, key).state, "released at the end, never installed")
	got, err := e.cachedAccount(a.ID)
	require.NoError(t, err)
	assert.Equal(t, after, got)
}
