package writethrough_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

func TestCreateThenCachedReadIsAHit(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "a@x", Name: "Ann", Balance: 10}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))

	before := e.sqls.Load()
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, before, e.sqls.Load(), "a hit must not reach the database")
	assert.Equal(t, "Ann", got.Name)
	assert.Equal(t, "active", got.Status, "the cached row holds the database default")
	assert.Equal(t, 1, got.finds, "AfterFind runs on a hit")

	var fromDB User
	require.NoError(t, e.db.First(&fromDB, u.ID).Error)
	got.finds, fromDB.finds = 0, 0
	assert.Equal(t, fromDB, got)
}

func TestPartialUpdateCachesTheWholeRow(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "b@x", Name: "Bob", Balance: 10}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, e.db.Model(&User{ID: u.ID}).Update("balance", gorm.Expr("balance + ?", 5)).Error)

	before := e.sqls.Load()
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, before, e.sqls.Load())
	assert.Equal(t, int64(15), got.Balance)
	assert.Equal(t, "Bob", got.Name)
	assert.Equal(t, "b@x", got.Email)
}

func TestRollbackLeavesNoPendingEntry(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "c@x", Name: "Cy", Balance: 10}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	boom := errors.New("boom")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Model(&u).Update("balance", 999).Error)
		// A transaction of the caller's leaves Redis alone until its COMMIT.
		assert.NotEqual(t, byte(writethrough.StatePending), e.state(t, key))
		return boom
	})
	require.ErrorIs(t, err, boom)
	assert.NotEqual(t, byte(writethrough.StatePending), e.state(t, key), "a rollback leaves no pending entry")
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(10), got.Balance)
}

func TestDeleteLeavesATombstone(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "d@x", Name: "Di"}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, e.db.Delete(&User{}, u.ID).Error)
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StateTombstone), e.state(t, key))
	before := e.sqls.Load()
	var got User
	err := e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error
	assert.ErrorIs(t, err, gorm.ErrRecordNotFound)
	assert.Equal(t, before, e.sqls.Load())
}

func TestMissFillsThenHits(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "e@x", Name: "Eve"}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, u.ID))
	key := e.key("users", u.ID)
	assert.Equal(t, byte(0), e.state(t, key))
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))
	assert.Equal(t, uint64(1), e.p.Stats().Fills)

	var many []User
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).Find(&many, []uint{u.ID}).Error)
	assert.Equal(t, before, e.sqls.Load())
	require.Len(t, many, 1)

	g, err := writethrough.Get[User](context.Background(), e.db, u.ID)
	require.NoError(t, err)
	assert.Equal(t, "Eve", g.Name)
	assert.Equal(t, 1, g.finds)
}

func TestAsyncFinalizeInstallsAfterCommitReturns(t *testing.T) {
	e := setup(t, nil, writethrough.Config{AsyncFinalize: true})
	release := make(chan struct{})
	writethrough.SetHook(e.p, func(point, key string) {
		if point == "write:before-finalize" {
			<-release
		}
	})
	u := User{Email: "async@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error, "Create returns before the install")
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StatePending), e.state(t, key))
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, "async@x", got.Email, "a read after Commit returned sees the write (from the database)")
	close(release)
	require.NoError(t, e.p.Close(), "Close waits for the install")
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))
}
