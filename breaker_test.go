package writethrough_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gorm-writethrough/writethrough"
)

// readWith runs every kind of cached read of u with ctx, ignoring their
// errors: the caller's context may have ended.
func readWith(ctx context.Context, e *env, id uint) {
	var got User
	_ = e.db.WithContext(ctx).Scopes(writethrough.Cached).First(&got, id).Error
	var list []User
	_ = e.db.WithContext(ctx).Scopes(writethrough.Cached).Find(&list, []uint{id, id + 1000}).Error
	_, _ = writethrough.Get[User](ctx, e.db, id)
	_, _ = writethrough.GetMany[User](ctx, e.db, id, id+1000)
}

func TestCallerCancellationsDoNotOpenTheBreaker(t *testing.T) {
	cases := []struct {
		name   string
		callee func(t *testing.T) context.Context
	}{
		{"cancelled context", func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}},
		{"caller deadline shorter than Timeout (already passed)", func(t *testing.T) context.Context {
			ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			t.Cleanup(cancel)
			return ctx
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := setupFault(t, writethrough.Config{Mode: writethrough.Strict, BreakerThreshold: 2, Timeout: 5 * time.Second})
			u := User{Email: "c@x", Balance: 1}
			require.NoError(t, e.db.Create(&u).Error)
			for i := 0; i < 6; i++ {
				readWith(tc.callee(t), e, u.ID)
			}
			st := e.p.Stats()
			assert.Equal(t, writethrough.BreakerClosed, st.Breaker, "the caller gave up, Redis did not fail")
			assert.Zero(t, st.BreakerOpens)
			require.NoError(t, e.db.Model(&u).Update("balance", 7).Error, "a Strict write with a live context")
			got, err := writethrough.Get[User](context.Background(), e.db, u.ID)
			require.NoError(t, err)
			assert.Equal(t, int64(7), got.Balance)
		})
	}
}

func TestRedisFailuresStillOpenTheBreaker(t *testing.T) {
	e := setupFault(t, writethrough.Config{Mode: writethrough.Strict, BreakerThreshold: 2, BreakerCooldown: time.Hour})
	u := User{Email: "k@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error)
	e.srv.Kill()
	for i := 0; i < 2; i++ {
		readWith(context.Background(), e, u.ID)
	}
	st := e.p.Stats()
	assert.Equal(t, writethrough.BreakerOpen, st.Breaker)
	assert.Equal(t, uint64(1), st.BreakerOpens)
	err := e.db.Model(&u).Update("balance", 7).Error
	assert.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
}
