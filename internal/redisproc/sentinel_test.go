package redisproc_test

import (
	"context"
	"testing"
	"time"

	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// retried calls f until it succeeds, for the commands of a client that is
// still catching up with a failover; it fails the test after a minute.
func retried(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSentinelPromotesTheReplicaWhenTheMasterIsKilled(t *testing.T) {
	t.Parallel()
	s := redisproc.StartSentinel(t)
	ctx := context.Background()
	first, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first != s.Nodes[0] {
		t.Fatalf("the sentinels name %s as master, want %s", first.Addr(), s.Nodes[0].Addr())
	}
	rdb := s.Client(t)
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the sentinels: %v", err)
	}
	// WAIT: the replica has the key before its master dies.
	if n, err := rdb.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v; want 1", n, err)
	}

	start := time.Now()
	old, master := s.KillMaster(t)
	t.Logf("failover after the kill: %s", time.Since(start))
	if old != s.Nodes[0] || master != s.Nodes[1] {
		t.Fatalf("killed %s and promoted %s, want %s and %s", old.Addr(), master.Addr(), s.Nodes[0].Addr(), s.Nodes[1].Addr())
	}
	if addr, err := s.MasterAddr(ctx); err != nil || addr != master.Addr() {
		t.Fatalf("MasterAddr = %s, %v; want %s", addr, err, master.Addr())
	}
	// The same client follows the sentinels to the new master.
	retried(t, "SET after the failover", func(ctx context.Context) error { return rdb.Set(ctx, "k2", "v2", 0).Err() })
	if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k on the new master = %q, %v; want v", got, err)
	}
	if got, err := master.Do(ctx, "GET", "k2").Text(); err != nil || got != "v2" {
		t.Fatalf("GET k2 on %s = %q, %v; want v2", master.Addr(), got, err)
	}
}

func TestSentinelFailoverDemotesTheOldMaster(t *testing.T) {
	t.Parallel()
	s := redisproc.StartSentinel(t)
	ctx := context.Background()
	rdb := s.Client(t)
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	start := time.Now()
	old, master := s.Failover(t)
	t.Logf("failover: %s", time.Since(start))
	if old != s.Nodes[0] || master != s.Nodes[1] {
		t.Fatalf("failover from %s to %s, want %s to %s", old.Addr(), master.Addr(), s.Nodes[0].Addr(), s.Nodes[1].Addr())
	}
	if err := old.Do(ctx, "SET", "x", "y").Err(); err == nil {
		t.Fatal("the old master still accepts writes")
	}
	retried(t, "SET after the failover", func(ctx context.Context) error { return rdb.Set(ctx, "k2", "v2", 0).Err() })
	if got, err := master.Do(ctx, "GET", "k2").Text(); err != nil || got != "v2" {
		t.Fatalf("GET k2 on %s = %q, %v; want v2", master.Addr(), got, err)
	}
	// And back: the old master, now a replica, can be promoted again. A
	// graceful failover does not wait for the replica to catch up (a run on
	// a loaded machine lost k2, written just before it): wait for it first.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := s.WaitReplicated(wctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	back, again := s.Failover(t)
	t.Logf("second failover: %s", time.Since(start))
	if back != master || again != old {
		t.Fatalf("second failover from %s to %s, want %s to %s", back.Addr(), again.Addr(), master.Addr(), old.Addr())
	}
	retried(t, "GET after the second failover", func(ctx context.Context) error { return rdb.Get(ctx, "k2").Err() })
}
