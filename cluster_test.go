package writethrough_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// The plugin on a Redis Cluster of three masters, each with a replica (a
// first slice of issue 13): every read and write form, with keys spread over
// the masters, gives what the database holds, and hits need no SQL.
func TestClusterReadsAndWrites(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	rdb := c.Client(t)
	db, sqls := openDB(t, nil)
	p := install(t, db, rdb, writethrough.Config{Prefix: "cl", DrainInterval: -1, Timeout: 2 * time.Second})
	require.NoError(t, db.AutoMigrate(&User{}))
	ctx := context.Background()

	users := make([]User, 12)
	for i := range users {
		users[i] = User{Email: "c" + string(rune('a'+i)) + "@x", Name: "n", Balance: int64(i)}
	}
	require.NoError(t, db.Create(&users).Error)
	ids := make([]any, len(users))
	masters := map[string]bool{}
	var en writethrough.Entry
	var err error
	for i, u := range users {
		ids[i] = u.ID
		en, err = writethrough.Inspect(ctx, db, &User{}, u.ID)
		require.NoError(t, err)
		require.Equal(t, writethrough.EntryCommitted, en.State, "the create installed %s", en.Key)
		node, err := rdb.MasterForKey(ctx, en.Key)
		require.NoError(t, err)
		masters[node.Options().Addr] = true
	}
	require.Len(t, masters, 3, "the keys span every master")

	want := func(id uint) User {
		var u User
		require.NoError(t, db.Session(&gorm.Session{NewDB: true}).First(&u, id).Error)
		return u
	}
	same := func(msg string) {
		t.Helper()
		got, err := writethrough.GetMany[User](ctx, db, ids...)
		require.NoError(t, err, msg)
		require.Len(t, got, len(users), msg)
		for _, g := range got {
			assert.Equal(t, want(g.ID), g, msg)
		}
	}

	// Hits without SQL: one key, many keys through the scope and GetMany.
	before := sqls.Load()
	var one User
	require.NoError(t, db.Scopes(writethrough.Cached).First(&one, users[0].ID).Error)
	var many []User
	require.NoError(t, db.Scopes(writethrough.Cached).Find(&many, ids...).Error)
	require.Len(t, many, len(users))
	got, err := writethrough.GetMany[User](ctx, db, ids...)
	require.NoError(t, err)
	require.Len(t, got, len(users))
	assert.Equal(t, before, sqls.Load(), "every read was a hit")
	same("hits")

	// GORM's own transaction, a transaction of the caller's, a rollback.
	require.NoError(t, db.Model(&users[1]).Update("balance", gorm.Expr("balance + 100")).Error)
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		for _, u := range users[2:8] {
			if err := tx.Model(&User{ID: u.ID}).Update("name", "tx").Error; err != nil {
				return err
			}
		}
		return nil
	}))
	errBack := errors.New("back")
	require.ErrorIs(t, db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&User{ID: users[9].ID}).Update("name", "never").Error; err != nil {
			return err
		}
		return errBack
	}), errBack)
	// A bulk write across slots, and a delete.
	require.NoError(t, db.Model(&User{}).Where("balance > ?", 9).Update("status", "big").Error)
	require.NoError(t, db.Delete(&User{}, users[11].ID).Error)
	ids = ids[:11]
	users = users[:11]
	same("after writes")

	// Invalidate empties the key; the next read fills it.
	require.NoError(t, writethrough.Invalidate(db, &User{}, users[3].ID))
	en, err = writethrough.Inspect(ctx, db, &User{}, users[3].ID)
	require.NoError(t, err)
	assert.Equal(t, writethrough.EntryAbsent, en.State)
	same("after Invalidate")
	assert.Zero(t, p.Stats().RedisErrors)
}
