package writethrough_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// replicaPair is a master with one replica and a plain client for the
// plugin that a test can move to the replica once it promoted it: a
// failover without Sentinel or Cluster.
type replicaPair struct {
	master, replica *redisproc.Server
	rdb             *redis.Client // dials whatever addr holds
	addr            atomic.Value  // string: where rdb dials
}

func startReplicaPair(t *testing.T) *replicaPair {
	t.Helper()
	rp := &replicaPair{master: redisproc.Start(t, "--repl-diskless-sync-delay", "0")}
	host, port, err := net.SplitHostPort(rp.master.Addr())
	require.NoError(t, err)
	rp.replica = redisproc.Start(t, "--replicaof", host, port)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, redisproc.WaitAcked(ctx, rp.master.Client(t), "pair:probe", 1))
	rp.addr.Store(rp.master.Addr())
	rp.rdb = redis.NewClient(&redis.Options{
		Addr:                  rp.master.Addr(),
		ContextTimeoutEnabled: true,
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, rp.addr.Load().(string))
		},
	})
	t.Cleanup(func() { _ = rp.rdb.Close() })
	return rp
}

// synced waits until the replica holds everything the master has so far.
func (rp *replicaPair) synced(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, redisproc.WaitAcked(ctx, rp.master.Client(t), "pair:probe", 1))
}

// cut stops the replica and its link, so that nothing the master does from
// now on reaches it (a stopped process still receives into its socket).
func (rp *replicaPair) cut(t *testing.T) {
	t.Helper()
	rp.replica.Pause()
	require.NoError(t, rp.master.Do(context.Background(), "CLIENT", "KILL", "TYPE", "replica").Err())
}

// failover kills the master, promotes the replica and points the plugin's
// client at it.
func (rp *replicaPair) failover(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	rp.master.Kill()
	rp.replica.Resume()
	require.NoError(t, rp.replica.Do(ctx, "REPLICAOF", "NO", "ONE").Err())
	rp.addr.Store(rp.replica.Addr())
	require.Eventually(t, func() bool { return rp.rdb.Ping(ctx).Err() == nil }, time.Minute, 20*time.Millisecond)
}

// TestWriteWithoutTransactionSurvivesFailover checks the writes that make
// their keys pending only after the statement committed (no transaction,
// keys the statement itself gives: a bulk UPDATE's RETURNING, a database-made
// key): the prepare and the finalize share one round trip, and when no
// replica acknowledged them the key must go to the outbox. Otherwise a
// failover brings back the entry from before the write: the old row, or a
// cached not-found for a row that now exists.
func TestWriteWithoutTransactionSurvivesFailover(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  writethrough.Mode
		write func(db *gorm.DB, u *User) error
		want  func(t *testing.T, db *gorm.DB, u *User) User
	}{
		{
			name: "bulk update", mode: writethrough.Strict,
			write: func(db *gorm.DB, u *User) error {
				return db.Model(&User{}).Where("balance = ?", 1).Update("name", "after").Error
			},
		},
		{
			name: "bulk update, Soft", mode: writethrough.Soft,
			write: func(db *gorm.DB, u *User) error {
				return db.Model(&User{}).Where("balance = ?", 1).Update("name", "after").Error
			},
		},
		{
			name: "create over a cached not-found", mode: writethrough.Strict,
			write: func(db *gorm.DB, u *User) error {
				return db.Create(&User{Email: "fo2@x", Name: "new", Balance: 5}).Error
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			rp := startReplicaPair(t)
			db, _ := openDB(t, &gorm.Config{SkipDefaultTransaction: true})
			p := install(t, db, rp.rdb, writethrough.Config{
				Mode: tc.mode, Prefix: "nofo", DrainInterval: -1,
				Timeout: 2 * time.Second, WaitTimeout: 200 * time.Millisecond, WaitReplicas: 1,
			})
			require.NoError(t, db.AutoMigrate(&User{}))

			u := User{Email: "fo@x", Name: "before", Balance: 1}
			require.NoError(t, db.Create(&u).Error)
			_, err := writethrough.Get[User](ctx, db, u.ID)
			require.NoError(t, err)
			next := u.ID + 1 // the id the create case's row gets
			_, err = writethrough.Get[User](ctx, db, next)
			require.ErrorIs(t, err, gorm.ErrRecordNotFound)
			for _, id := range []uint{u.ID, next} {
				en, err := writethrough.Inspect(ctx, db, &User{}, id)
				require.NoError(t, err)
				require.Contains(t, []writethrough.EntryState{writethrough.EntryCommitted, writethrough.EntryTombstone}, en.State)
			}
			rp.synced(t)

			rp.cut(t)
			require.NoError(t, tc.write(db, &u), "the statement committed")
			rp.failover(t)

			for _, id := range []uint{u.ID, next} {
				var want User
				err := db.Session(&gorm.Session{NewDB: true}).First(&want, id).Error
				got, gerr := writethrough.Get[User](ctx, db, id)
				if errors.Is(err, gorm.ErrRecordNotFound) {
					assert.ErrorIs(t, gerr, gorm.ErrRecordNotFound, "row %d", id)
					continue
				}
				require.NoError(t, err)
				require.NoError(t, gerr, "row %d exists in the database", id)
				assert.Equal(t, want, got, "the promoted replica must not serve row %d from before the write", id)
			}
			_ = p
		})
	}
}

// TestNotReplicatedDoesNotOpenTheBreaker checks that a master which
// answers but whose replicas do not acknowledge is not taken for an
// unreachable Redis: its writes fail or go to the outbox, and reads keep
// being served from Redis.
func TestNotReplicatedDoesNotOpenTheBreaker(t *testing.T) {
	ctx := context.Background()
	rp := startReplicaPair(t)
	db, _ := openDB(t, nil)
	p := install(t, db, rp.rdb, writethrough.Config{
		Mode: writethrough.Soft, Prefix: "nobrk", DrainInterval: -1,
		Timeout: 2 * time.Second, WaitTimeout: 50 * time.Millisecond, WaitReplicas: 1, BreakerThreshold: 3,
	})
	require.NoError(t, db.AutoMigrate(&User{}))
	var users []User
	for i := range 2 {
		u := User{Email: "b" + strings.Repeat("x", i) + "@x", Name: "n", Balance: 1}
		require.NoError(t, db.Create(&u).Error)
		users = append(users, u)
	}
	_, err := writethrough.Get[User](ctx, db, users[1].ID)
	require.NoError(t, err)

	rp.cut(t)
	defer rp.replica.Resume()
	for i := range 5 {
		require.NoError(t, db.Model(&users[0]).Update("balance", 10+i).Error, "Soft: the key goes to the outbox")
	}
	// The drainer retries the outbox until a replica acknowledges.
	for range 5 {
		_, err := p.Drain(ctx)
		require.ErrorIs(t, err, writethrough.ErrNotReplicated)
	}
	st := p.Stats()
	assert.Equal(t, writethrough.BreakerClosed, st.Breaker, "Redis answered every call")
	assert.Zero(t, st.BreakerOpens)
	assert.NotZero(t, st.Outboxed, "the writes' keys went to the outbox")

	hits := p.Stats().Hits
	got, err := writethrough.Get[User](ctx, db, users[1].ID)
	require.NoError(t, err)
	assert.Equal(t, users[1].ID, got.ID)
	assert.Equal(t, hits+1, p.Stats().Hits, "an unrelated cached row is still served from Redis")
}

// TestStrictWithoutTransactionReleasesEveryKeyWhenOnePrepareFails checks
// a Strict write without a transaction on keys of two masters of a
// cluster, one of whose replica does not acknowledge: the write fails
// before the statement, and every key it made pending is released, the
// one whose prepare ran on its master but was not acknowledged included.
// They stayed pending (read from the database) until PendingTTL.
func TestStrictWithoutTransactionReleasesEveryKeyWhenOnePrepareFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := redisproc.StartCluster(t, 3, 1)
	rdb := c.Client(t)
	db, _ := openDB(t, &gorm.Config{SkipDefaultTransaction: true})
	install(t, db, rdb, writethrough.Config{
		Mode: writethrough.Strict, Prefix: "rel", DrainInterval: -1,
		Timeout: 2 * time.Second, WaitTimeout: 200 * time.Millisecond, WaitReplicas: 1, PendingTTL: time.Hour,
	})
	require.NoError(t, db.AutoMigrate(&User{}))

	masterOf := map[uint]string{}
	var ids []uint
	for i := 0; len(ids) < 2; i++ {
		require.Less(t, i, 50, "keys on two masters")
		u := User{Email: "rel" + strings.Repeat("x", i) + "@x", Name: "before", Balance: 1}
		require.NoError(t, db.Create(&u).Error)
		en, err := writethrough.Inspect(ctx, db, &User{}, u.ID)
		require.NoError(t, err)
		node, err := rdb.MasterForKey(ctx, en.Key)
		require.NoError(t, err)
		masterOf[u.ID] = node.Options().Addr
		if len(ids) == 0 || masterOf[ids[0]] != masterOf[u.ID] {
			ids = append(ids, u.ID)
		}
	}
	for _, victim := range ids {
		t.Run("replica of the master of user "+strings.Repeat("I", int(victim)), func(t *testing.T) {
			for _, id := range ids { // what an earlier case left
				en, err := writethrough.Inspect(ctx, db, &User{}, id)
				require.NoError(t, err)
				require.NoError(t, rdb.Del(ctx, en.Key).Err())
			}
			replica := c.ReplicaOf(ctx, masterOf[victim])
			require.NotNil(t, replica)
			replica.Pause()
			// Rows named by the model: their keys are made pending before
			// the statement.
			err := db.Delete(&[]User{{ID: ids[0]}, {ID: ids[1]}}).Error
			replica.Resume()
			require.ErrorIs(t, err, writethrough.ErrNotReplicated)
			for _, id := range ids {
				en, err := writethrough.Inspect(ctx, db, &User{}, id)
				require.NoError(t, err)
				assert.NotEqual(t, writethrough.EntryPending, en.State, "user %d (victim %d) left pending by a write that never ran", id, victim)
			}
		})
	}
}
