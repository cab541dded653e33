package cdc_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

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
