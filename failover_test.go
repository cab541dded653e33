package writethrough_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// TestFailoverAfterAnUnreplicatedWrite is the write a Redis failover can
// lose. A cached row is replicated; the master's replica stops (as a
// replica that lags does); a write updates the row; the master dies and
// the replica, which never saw the write, is promoted.
//
// Without WaitReplicas the promoted replica serves the row as it was
// before the write: the test shows that stale read, since it is what
// WaitReplicas exists for. With WaitReplicas the write learns that no
// replica holds its pending mark: Strict fails it (database and cache keep
// the old row), Soft commits it and records the key in the outbox, whose
// drain removes the old row once the promoted master has a replica again.
func TestFailoverAfterAnUnreplicatedWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  writethrough.Config
	}{
		{"without WaitReplicas", writethrough.Config{Mode: writethrough.Strict}},
		{"WaitReplicas, Strict", writethrough.Config{Mode: writethrough.Strict, WaitReplicas: 1}},
		{"WaitReplicas, Soft", writethrough.Config{Mode: writethrough.Soft, WaitReplicas: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := redisproc.StartCluster(t, 3, 1)
			rdb := c.Client(t)
			db, _ := openDB(t, nil)
			cfg := tc.cfg
			cfg.Prefix, cfg.DrainInterval, cfg.Timeout, cfg.WaitTimeout = "fo", -1, 2*time.Second, 300*time.Millisecond
			p := install(t, db, rdb, cfg)
			require.NoError(t, db.AutoMigrate(&User{}))

			u := User{Email: "fo@x", Name: "before", Balance: 1}
			require.NoError(t, db.Create(&u).Error)
			en, err := writethrough.Inspect(ctx, db, &User{}, u.ID)
			require.NoError(t, err)
			require.Equal(t, writethrough.EntryCommitted, en.State)
			node, err := rdb.MasterForKey(ctx, en.Key)
			require.NoError(t, err)
			master := c.Node(node.Options().Addr)
			replica := c.ReplicaOf(ctx, master.Addr())
			require.NotNil(t, replica, "the key's master has a replica")
			// The probe shares the entry's slot: once the replica has it,
			// it has the entry too (one master's stream is ordered).
			require.NoError(t, redisproc.WaitAcked(ctx, node, "{"+en.Key+"}:probe", 1))

			// Stop the replica and cut its link, so that nothing the master
			// sends from now on reaches it (a stopped process still receives
			// into its socket buffer).
			replica.Pause()
			require.NoError(t, master.Do(ctx, "CLIENT", "KILL", "TYPE", "replica").Err())
			err = db.Model(&u).Updates(User{Name: "after", Balance: 2}).Error
			switch {
			case tc.cfg.WaitReplicas > 0 && tc.cfg.Mode == writethrough.Strict:
				require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
				require.ErrorIs(t, err, writethrough.ErrNotReplicated)
			default:
				require.NoError(t, err)
			}

			master.Kill()
			replica.Resume()
			promoted(t, rdb, replica, en.Key)

			var want User
			require.NoError(t, db.Session(&gorm.Session{NewDB: true}).First(&want, u.ID).Error)
			got, err := writethrough.Get[User](ctx, db, u.ID)
			require.NoError(t, err)
			switch {
			case tc.cfg.WaitReplicas == 0:
				assert.Equal(t, "after", want.Name)
				assert.Equal(t, "before", got.Name, "the promoted replica serves the row from before the write (the loss WaitReplicas prevents)")
			case tc.cfg.Mode == writethrough.Strict:
				assert.Equal(t, "before", want.Name, "the write failed and rolled back")
				assert.Equal(t, want, got)
			default:
				assert.Equal(t, "after", want.Name, "the Soft write committed")
				assert.Equal(t, want, got, "this process reads keys its outbox holds from the database")
				_, err := p.Drain(ctx)
				require.ErrorIs(t, err, writethrough.ErrNotReplicated, "the promoted master has no replica: the outbox waits for one")
			}

			// The old master comes back as the new master's replica.
			master.Restart()
			require.Eventually(t, func() bool { return !redisproc.IsMaster(ctx, master) }, time.Minute, 50*time.Millisecond)
			require.NoError(t, redisproc.WaitAcked(ctx, promotedNode(t, rdb, en.Key), "{"+en.Key+"}:probe", 1))
			if tc.cfg.WaitReplicas > 0 && tc.cfg.Mode == writethrough.Soft {
				n, err := p.Drain(ctx)
				require.NoError(t, err)
				assert.Equal(t, 1, n, "the key was in the outbox")
				got, err = writethrough.Get[User](ctx, db, u.ID)
				require.NoError(t, err)
				assert.Equal(t, want, got, "after the drain the cache serves the committed row")
			}
			require.NoError(t, db.Model(&want).Update("balance", 3).Error)
			want = User{}
			require.NoError(t, db.Session(&gorm.Session{NewDB: true}).First(&want, u.ID).Error)
			got, err = writethrough.Get[User](ctx, db, u.ID)
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

func promotedNode(t *testing.T, rdb *redis.ClusterClient, key string) *redis.Client {
	t.Helper()
	node, err := rdb.MasterForKey(context.Background(), key)
	require.NoError(t, err)
	return node
}

// promoted waits until replica is a master serving key, every node of c
// sees the cluster ok, and rdb routes key to replica.
func promoted(t *testing.T, rdb *redis.ClusterClient, replica *redisproc.Server, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		ok := redisproc.IsMaster(ctx, replica)
		if ok {
			info, err := replica.Do(ctx, "CLUSTER", "INFO").Text()
			ok = err == nil && strings.Contains(info, "cluster_state:ok")
		}
		if ok {
			rdb.ReloadState(ctx)
			node, err := rdb.MasterForKey(ctx, key)
			ok = err == nil && node.Options().Addr == replica.Addr()
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("replica %s not promoted in time", replica.Addr())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestWaitReplicasNeedsAClientThatCanWait checks that a client on which
// WAIT cannot reach the key's master is refused by db.Use, not at the
// first write.
func TestWaitReplicasNeedsAClientThatCanWait(t *testing.T) {
	db, _ := openDB(t, nil)
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	t.Cleanup(func() { _ = ring.Close() })
	err := db.Use(writethrough.New(ring, writethrough.Config{WaitReplicas: 1}))
	require.ErrorIs(t, err, writethrough.ErrInvalidConfig)
	assert.ErrorContains(t, err, "*redis.Ring")
}
