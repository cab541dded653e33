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
	wtentry "github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

func TestStrictFailsAndRollsBackWhenRedisIsDown(t *testing.T) {
	e := setupFault(t, writethrough.Config{Mode: writethrough.Strict, BreakerThreshold: -1})
	u := User{Email: "s@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	e.srv.Kill()

	err := e.db.Create(&User{Email: "s2@x"}).Error
	require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
	var n int64
	require.NoError(t, e.db.Model(&User{}).Where("email = ?", "s2@x").Count(&n).Error)
	assert.Zero(t, n, "the implicit transaction rolled back")

	err = e.db.Model(&u).Update("balance", 2).Error
	require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
	assert.Equal(t, int64(1), e.dbUser(t, u.ID).Balance)

	// In a transaction of the caller's the keys are made pending just
	// before COMMIT: the statement runs, the COMMIT fails and rolls back.
	tx := e.db.Begin()
	require.NoError(t, tx.Model(&u).Update("balance", 3).Error)
	err = tx.Commit().Error
	require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
	assert.Equal(t, int64(1), e.dbUser(t, u.ID).Balance)
}

func TestStrictPerModelTagOverridesSoftDefault(t *testing.T) {
	type Ledger struct {
		ID     uint `gorm:"primaryKey" cache:"mode:strict"`
		Amount int
	}
	e := setupFault(t, writethrough.Config{BreakerThreshold: -1})
	require.NoError(t, e.db.AutoMigrate(&Ledger{}))
	e.srv.Kill()
	require.NoError(t, e.db.Create(&User{Email: "soft@x"}).Error, "User is Soft")
	require.ErrorIs(t, e.db.Create(&Ledger{Amount: 1}).Error, writethrough.ErrCacheUnavailable, "Ledger is Strict")
}

func TestSoftCommitsThenTheOutboxRemovesTheStaleEntry(t *testing.T) {
	e := setupFault(t, writethrough.Config{BreakerThreshold: -1})
	u := User{Email: "p@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))

	e.srv.Pause() // keeps the old committed entry
	require.NoError(t, e.db.Model(&u).Update("balance", 2).Error, "Soft never fails a write because of Redis")
	assert.Equal(t, int64(2), e.dbUser(t, u.ID).Balance)
	assert.Equal(t, uint64(1), e.p.Stats().Outboxed)

	var pending int64
	require.NoError(t, e.db.Table("writethrough_outbox").Count(&pending).Error)
	require.Equal(t, int64(1), pending, "one record, written in the write's transaction")
	// While Redis is paused the drain fails and keeps the record.
	_, err := e.p.Drain(context.Background())
	require.Error(t, err)
	require.NoError(t, e.db.Table("writethrough_outbox").Count(&pending).Error)
	require.Equal(t, int64(1), pending)

	e.srv.Resume()
	n, err := e.p.Drain(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(2), got.Balance, "no stale entry survives the drain")
}

func TestSoftRollbackRecordsNothing(t *testing.T) {
	e := setupFault(t, writethrough.Config{BreakerThreshold: -1})
	u := User{Email: "r@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	e.srv.Kill()
	boom := errors.New("boom")
	require.ErrorIs(t, e.db.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Model(&u).Update("balance", 9).Error)
		return boom
	}), boom)
	var n int64
	require.NoError(t, e.db.Table("writethrough_outbox").Count(&n).Error)
	assert.Zero(t, n, "the outbox record rolled back with the write")
}

func TestOutOfMemoryRedisStillInvalidates(t *testing.T) {
	for _, mode := range []writethrough.Mode{writethrough.Soft, writethrough.Strict} {
		t.Run(mode.String(), func(t *testing.T) {
			e := setupFault(t, writethrough.Config{Mode: mode, BreakerThreshold: -1}, "--maxmemory-policy", "noeviction")
			ctx := context.Background()
			u := User{Email: "oom@x", Balance: 1}
			require.NoError(t, e.db.Create(&u).Error)
			key := e.key("users", u.ID)
			require.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))
			testrig.FillRedis(t, e.rdb)

			err := e.db.Model(&u).Update("balance", 2).Error
			if mode == writethrough.Strict {
				require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
				assert.Equal(t, int64(1), e.dbUser(t, u.ID).Balance)
				return
			}
			require.NoError(t, err)
			// The prepare was refused, but finalize deletes (allow-oom): the
			// old value is gone at once, not after a drain.
			assert.Equal(t, byte(0), e.state(t, key))
			n, err := e.p.Drain(ctx)
			require.NoError(t, err, "delete-only invalidation works out of memory")
			assert.Equal(t, 1, n)
			var got User
			require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
			assert.Equal(t, int64(2), got.Balance)
			require.NoError(t, writethrough.Invalidate(e.db, &User{}, u.ID), "Invalidate works out of memory")
		})
	}
}

func TestBreakerOpensAndCloses(t *testing.T) {
	e := setupFault(t, writethrough.Config{BreakerThreshold: 2, BreakerCooldown: 50 * time.Millisecond})
	u := User{Email: "b@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	e.srv.Pause()
	var got User
	for i := 0; i < 2; i++ {
		require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	}
	st := e.p.Stats()
	assert.Equal(t, writethrough.BreakerOpen, st.Breaker)
	assert.Equal(t, uint64(1), st.BreakerOpens)
	// Open: the read does not wait on Redis at all, and a Soft write goes
	// straight to the outbox.
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	require.NoError(t, e.db.Model(&u).Update("balance", 5).Error)
	assert.Equal(t, uint64(1), e.p.Stats().Outboxed)

	e.srv.Resume()
	require.Eventually(t, func() bool {
		_, _ = e.p.Drain(context.Background()) // the drainer's call is the probe
		return e.p.Stats().Breaker == writethrough.BreakerClosed
	}, 5*time.Second, 20*time.Millisecond, "a probe after the cool-down closes it")
	_, err := e.p.Drain(context.Background())
	require.NoError(t, err)
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(5), got.Balance)
}

func TestBadConfigFailsUse(t *testing.T) {
	db := testenv.Postgres(t, nil)
	rdb, _ := testenv.Redis(t)
	for _, tc := range []struct {
		field string
		cfg   writethrough.Config
	}{
		{"Timeout", writethrough.Config{Timeout: -time.Second}},
		{"OutboxTable", writethrough.Config{OutboxTable: "bad table; drop"}},
		{"Prefix", writethrough.Config{Prefix: "has space"}},
		{"Mode", writethrough.Config{Mode: writethrough.Mode(7)}},
		{"Jitter", writethrough.Config{Jitter: 200}},
	} {
		t.Run(tc.field, func(t *testing.T) {
			err := db.Use(writethrough.New(rdb, tc.cfg))
			var ce *writethrough.ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.field, ce.Field)
			assert.ErrorIs(t, err, writethrough.ErrInvalidConfig)
		})
	}
}

func TestBackgroundDrainerConvergesAfterRedisReturns(t *testing.T) {
	e := setupFault(t, writethrough.Config{BreakerThreshold: -1, DrainInterval: 20 * time.Millisecond})
	u := User{Email: "bg@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	e.srv.Pause()
	require.NoError(t, e.db.Model(&u).Update("balance", 2).Error)
	e.srv.Resume()
	require.Eventually(t, func() bool {
		var n int64
		return e.db.Table("writethrough_outbox").Count(&n).Error == nil && n == 0
	}, 10*time.Second, 20*time.Millisecond, "the drainer empties the outbox once Redis answers")
	assert.NotEqual(t, byte(writethrough.StateCommitted), e.state(t, key), "the stale balance is gone")
	require.NoError(t, e.p.Close())
	require.NoError(t, e.p.Close(), "Close is idempotent")
}

func TestSoftWriterReadsItsOwnWriteWhileTheOutboxWaits(t *testing.T) {
	e, proxy := setupBehindProxy(t, writethrough.Config{BreakerThreshold: -1})
	u := User{Email: "own@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	proxy.Block() // commands fail without reaching Redis: the old entry stays
	require.NoError(t, e.db.Model(&u).Update("balance", 2).Error)
	proxy.Unblock()
	require.Equal(t, byte(writethrough.StateCommitted), e.state(t, key), "Redis still holds the old row")

	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(2), got.Balance, "this process reads the database while the key is in the outbox")
	g, err := writethrough.Get[User](context.Background(), e.db, u.ID)
	require.NoError(t, err)
	assert.Equal(t, int64(2), g.Balance)
	gs, err := writethrough.GetMany[User](context.Background(), e.db, u.ID)
	require.NoError(t, err)
	require.Len(t, gs, 1)
	assert.Equal(t, int64(2), gs[0].Balance)

	_, err = e.p.Drain(context.Background())
	require.NoError(t, err)
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(2), got.Balance)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key), "after the drain the cache fills again")
}

func TestRolledBackOutboxRecordsDoNotKeepKeysUncached(t *testing.T) {
	e, proxy := setupBehindProxy(t, writethrough.Config{BreakerThreshold: -1})
	u := User{Email: "rb@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, u.ID))
	proxy.Block()
	boom := errors.New("boom")
	require.ErrorIs(t, e.db.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Model(&u).Update("balance", 2).Error)
		return boom
	}), boom)
	proxy.Unblock()
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(1), got.Balance)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", u.ID)),
		"the rolled-back write left the key cacheable: the read filled it")
}

// A Strict transaction whose prepare before COMMIT fails on one key rolls
// back, and releases the keys that did become pending in the same round
// trip: they must not stay pending (a miss for every reader) until
// PendingTTL. The failing key is refused because PendingTTL-bound writers
// that never finalized fill its entry.
func TestStrictCommitThatFailsReleasesTheKeysItMadePending(t *testing.T) {
	ctx := context.Background()
	e := setup(t, nil, writethrough.Config{Mode: writethrough.Strict})
	a := User{Email: "pa@x", Balance: 1}
	b := User{Email: "pb@x", Balance: 1}
	require.NoError(t, e.db.Create(&a).Error)
	require.NoError(t, e.db.Create(&b).Error)
	keyA, keyB := e.key("users", a.ID), e.key("users", b.ID)
	crashed := make([]*wtentry.Call, 64) // the plugin's limit of writers per entry
	for i := range crashed {
		crashed[i] = wtentry.Prepare(keyB, wtentry.PrepareArgs{Token: wtentry.NewToken(), Fingerprint: "crashed!",
			PendingTTL: time.Minute, MaxWriters: len(crashed)})
	}
	(&wtentry.Scripts{}).Run(ctx, e.rdb, crashed)
	for _, c := range crashed {
		require.NoError(t, c.Err)
	}

	// b is staged first, so its refusal comes before a's success.
	err := e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&User{ID: b.ID}).Update("balance", 2).Error; err != nil {
			return err
		}
		return tx.Model(&User{ID: a.ID}).Update("balance", 2).Error
	})
	require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
	assert.Equal(t, int64(1), e.dbUser(t, a.ID).Balance, "rolled back")
	assert.NotEqual(t, byte(writethrough.StatePending), e.state(t, keyA), "released by its finalize")
	got, err := writethrough.Get[User](ctx, e.db, a.ID)
	require.NoError(t, err)
	assert.Equal(t, int64(1), got.Balance)
}
