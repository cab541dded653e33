package writethrough_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gorm-writethrough/writethrough"
)

// Hits and misses count keys, whatever the read's shape, and PendingMisses
// counts, among the misses, the keys found with a write in flight.
func TestStatsCountKeys(t *testing.T) {
	t.Parallel()
	e, pts := setupAccounts(t, nil)
	a, keyA := e.account(t, "ann", 1)
	b, _ := e.account(t, "bob", 2)
	c, _ := e.account(t, "cy", 3)
	ids := []uint{a.ID, b.ID, c.ID}
	require.NoError(t, writethrough.Invalidate(e.db, &Account{}, c.ID))

	delta := func(read func()) (hits, misses, pending uint64) {
		t.Helper()
		before := e.p.Stats()
		read()
		after := e.p.Stats()
		return after.Hits - before.Hits, after.Misses - before.Misses, after.PendingMisses - before.PendingMisses
	}
	find := func() {
		var list []Account
		require.NoError(t, e.db.Scopes(writethrough.Cached).Find(&list, ids).Error)
		require.Len(t, list, 3)
	}

	hits, misses, pending := delta(find)
	assert.Equal(t, [3]uint64{0, 3, 0}, [3]uint64{hits, misses, pending}, "one key missed: all three read from the database")
	hits, misses, pending = delta(find)
	assert.Equal(t, [3]uint64{3, 0, 0}, [3]uint64{hits, misses, pending}, "filled: three hits")

	// A write in GORM's own transaction, paused after its key became pending.
	pa := pts.pauseAt("write:after-prepare", keyA)
	w := async(func() (struct{}, error) {
		return struct{}{}, e.db.Model(&Account{ID: a.ID}).Update("balance", 5).Error
	})
	pa.wait(t)
	hits, misses, pending = delta(func() {
		got, err := e.cachedAccount(a.ID)
		require.NoError(t, err)
		assert.Equal(t, int64(1), got.Balance, "the committed balance")
	})
	assert.Equal(t, [3]uint64{0, 1, 1}, [3]uint64{hits, misses, pending}, "a read of a pending key")
	pa.resume()
	require.NoError(t, await(t, w).err)
}
