package writethrough_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

func TestInspectIsBoundedByTimeoutAndGoesThroughTheBreaker(t *testing.T) {
	e, proxy := setupBehindProxy(t, writethrough.Config{
		Timeout:          50 * time.Millisecond,
		BreakerThreshold: 1,
		BreakerCooldown:  time.Hour, // stays open for the rest of the test
	})
	ctx := context.Background()
	u := User{Email: "inspect@x", Balance: 3}
	require.NoError(t, e.db.Create(&u).Error)
	en, err := writethrough.Inspect(ctx, e.db, &User{}, u.ID)
	require.NoError(t, err)
	assert.Equal(t, writethrough.EntryCommitted, en.State)
	assert.Equal(t, "committed", en.State.String())

	// Redis slower than Timeout: Inspect gives up, and the breaker counts it.
	proxy.SetLatency(time.Minute)
	_, err = writethrough.Inspect(ctx, e.db, &User{}, u.ID)
	require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
	assert.Equal(t, writethrough.BreakerOpen, e.p.Stats().Breaker)

	// Redis fast again, but the breaker is open: Inspect does not call it.
	proxy.SetLatency(0)
	_, err = writethrough.Inspect(ctx, e.db, &User{}, u.ID)
	require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
}

func TestInspectReportsEveryState(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	ctx := context.Background()
	u := User{Email: "states@x"}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	tests := []struct {
		name  string
		raw   []byte // nil: delete the key
		state writethrough.EntryState
		word  string
	}{
		{"absent", nil, writethrough.EntryAbsent, "absent"},
		{"corrupt", []byte("not an entry"), writethrough.EntryCorrupt, "corrupt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.raw == nil {
				require.NoError(t, e.rdb.Del(ctx, key).Err())
			} else {
				require.NoError(t, e.rdb.Set(ctx, key, tc.raw, time.Minute).Err())
			}
			en, err := writethrough.Inspect(ctx, e.db, &User{}, u.ID)
			require.NoError(t, err)
			assert.Equal(t, tc.state, en.State)
			assert.Equal(t, tc.word, en.State.String())
		})
	}
	require.NoError(t, e.db.Delete(&User{}, u.ID).Error)
	en, err := writethrough.Inspect(ctx, e.db, &User{}, u.ID)
	require.NoError(t, err)
	assert.Equal(t, writethrough.EntryTombstone, en.State)
}

func TestNotRegisteredIsASentinel(t *testing.T) {
	ctx := context.Background()
	plain := testenv.Postgres(t, nil)
	calls := []struct {
		name string
		run  func() error
	}{
		{"Get", func() error { _, err := writethrough.Get[User](ctx, plain, 1); return err }},
		{"GetMany", func() error { _, err := writethrough.GetMany[User](ctx, plain, 1, 2); return err }},
		{"Invalidate", func() error { return writethrough.Invalidate(plain, &User{}, 1) }},
		{"Inspect", func() error { _, err := writethrough.Inspect(ctx, plain, &User{}, 1); return err }},
		{"Inspect on a nil db", func() error { _, err := writethrough.Inspect(ctx, nil, &User{}, 1); return err }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			require.ErrorIs(t, err, writethrough.ErrNotRegistered)
		})
	}
}
