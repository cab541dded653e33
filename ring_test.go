package writethrough_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// TestRingBatchReadsAreHits checks a batch read on a *redis.Ring, whose
// keys live on different shards: one MGET would go to the first key's
// shard and miss the others.
func TestRingBatchReadsAreHits(t *testing.T) {
	a, b := redisproc.Start(t), redisproc.Start(t)
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": a.Addr(), "b": b.Addr()}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = ring.Close() })
	db, sqls := openDB(t, nil)
	install(t, db, ring, writethrough.Config{Prefix: "ring", DrainInterval: -1, Timeout: time.Second})
	require.NoError(t, db.AutoMigrate(&User{}))
	users := make([]User, 20)
	for i := range users {
		users[i] = User{Email: "r" + string(rune('a'+i)) + "@x", Name: "n"}
	}
	require.NoError(t, db.Create(&users).Error)
	ids := make([]any, len(users))
	for i, u := range users {
		ids[i] = u.ID
	}
	ctx := context.Background()
	onA, err := a.Do(ctx, "DBSIZE").Int()
	require.NoError(t, err)
	require.NotZero(t, onA, "keys on both shards")
	require.Less(t, onA, len(users), "keys on both shards")

	before := sqls.Load()
	got, err := writethrough.GetMany[User](ctx, db, ids...)
	require.NoError(t, err)
	assert.Len(t, got, len(users))
	assert.Equal(t, before, sqls.Load(), "every key a hit")
}
