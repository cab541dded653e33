package cdc_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// TestWaitReplicasHoldsBackUntilAReplicaHasTheChange: with WaitReplicas,
// a change is applied (Sync returns) only once the replica holds the
// invalidation; while the replica is stopped the consumer retries and
// confirms nothing, so a failover then could not bring the row back.
func TestWaitReplicasHoldsBackUntilAReplicaHasTheChange(t *testing.T) {
	master := redisproc.Start(t, "--repl-diskless-sync-delay", "0")
	host, port, _ := net.SplitHostPort(master.Addr())
	replica := redisproc.Start(t, "--replicaof", host, port)
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := redisproc.WaitAcked(wctx, master.Client(t), "probe", 1); err != nil {
		t.Fatal(err)
	}
	r := newRigOn(t, master.Client(t), "wttest:cdcwait", &Account{})
	r.cfg.WaitReplicas = 1
	r.cfg.WaitTimeout = 200 * time.Millisecond
	r.accounts(1)
	c := r.start()
	r.fill(&Account{}, int64(1))

	replica.Pause()
	r.exec("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	if err := c.Sync(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sync while the replica is stopped: %v, want the context's deadline", err)
	}
	if st := c.Stats(); !strings.Contains(st.LastError, "not acknowledged by enough replicas") {
		t.Errorf("the consumer's last error: %q", st.LastError)
	}

	replica.Resume()
	sctx2, scancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer scancel2()
	if err := c.Sync(sctx2); err != nil {
		t.Fatalf("Sync once the replica runs: %v", err)
	}
	if s := r.state(&Account{}, int64(1)); s != "absent" {
		t.Fatalf("key 1 after Sync: %s", s)
	}
}

// TestWaitTimeoutBelowAMillisecondIsRefused: Redis's WAIT counts
// milliseconds and takes 0 for "forever", so a shorter WaitTimeout (or a
// Timeout under 2ms, whose half is the default) is a configuration error,
// as for the plugin; so is one that the client's ReadTimeout would cut
// short.
func TestWaitTimeoutBelowAMillisecondIsRefused(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ReadTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	for _, tc := range []struct {
		name             string
		timeout, waitFor time.Duration
	}{
		{"WaitTimeout", time.Second, 500 * time.Microsecond},
		{"Timeout's half", 1500 * time.Microsecond, 0},
		// The client would cut the WAIT short.
		{"WaitTimeout not below the client's ReadTimeout", time.Second, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cdc.New(nil, cdc.Config{
				Redis: rdb, Models: []any{&Account{}}, ConnString: "host=127.0.0.1",
				WaitReplicas: 1, Timeout: tc.timeout, WaitTimeout: tc.waitFor,
			})
			if !errors.Is(err, cdc.ErrInvalidConfig) || !strings.Contains(err.Error(), "WaitTimeout") {
				t.Fatalf("got %v, want an ErrInvalidConfig naming WaitTimeout", err)
			}
		})
	}
}
