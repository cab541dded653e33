package redisproc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// within returns a context for a test's own commands on a cluster that
// settled.
func within(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func role(t *testing.T, s *redisproc.Server) string {
	t.Helper()
	r, err := s.Do(within(t), "ROLE").Slice()
	if err != nil {
		t.Fatalf("ROLE on %s: %v", s.Addr(), err)
	}
	return r[0].(string)
}

func TestClusterFailoverSwapsRolesAndKeepsWrites(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	ctx := within(t)
	rdb := c.Client(t)
	if err := rdb.Set(ctx, "fo", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	slot, err := c.Slot(ctx, "fo")
	if err != nil {
		t.Fatal(err)
	}
	old, promoted := c.Failover(t, slot)
	if role(t, old) != "slave" || role(t, promoted) != "master" {
		t.Fatalf("roles after failover: old %s, promoted %s", role(t, old), role(t, promoted))
	}
	m, _, err := c.Owner(ctx, slot)
	if err != nil || m != promoted {
		t.Fatalf("owner of slot %d: %v, %v; want %s", slot, m, err, promoted.Addr())
	}
	// The write survived (a graceful failover waits for the replica), and
	// the old master sends clients away.
	if v, err := promoted.Do(ctx, "GET", "fo").Text(); err != nil || v != "v" {
		t.Fatalf("GET on the new master: %q, %v", v, err)
	}
	if err := old.Do(ctx, "GET", "fo").Err(); err == nil || !strings.HasPrefix(err.Error(), "MOVED") {
		t.Fatalf("GET on the old master: %v, want MOVED", err)
	}
	if v, err := rdb.Get(ctx, "fo").Result(); err != nil || v != "v" {
		t.Fatalf("GET through the cluster client: %q, %v", v, err)
	}
}

func TestClusterKillMasterPromotesItsReplica(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	ctx := within(t)
	slot, err := c.Slot(ctx, "km")
	if err != nil {
		t.Fatal(err)
	}
	master, replicas, err := c.Owner(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	// SET then WAIT on the master's own connection: the replica has it.
	if err := master.Do(ctx, "SET", "km", "v").Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := master.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT: %d, %v", n, err)
	}
	killed, promoted := c.KillMaster(t, slot)
	if killed != master || promoted != replicas[0] {
		t.Fatalf("killed %s, promoted %s; want %s, %s", killed.Addr(), promoted.Addr(), master.Addr(), replicas[0].Addr())
	}
	if role(t, promoted) != "master" {
		t.Fatalf("%s is not a master", promoted.Addr())
	}
	if v, err := promoted.Do(ctx, "GET", "km").Text(); err != nil || v != "v" {
		t.Fatalf("GET on the promoted replica: %q, %v", v, err)
	}
	c.Rejoin(t, killed)
	if role(t, killed) != "slave" {
		t.Fatalf("%s rejoined as %s, want a replica", killed.Addr(), role(t, killed))
	}
	if m, _, err := c.Owner(ctx, slot); err != nil || m != promoted {
		t.Fatalf("owner after the rejoin: %v, %v", m, err)
	}
}

func TestClusterPausedMasterBelowNodeTimeoutKeepsItsSlots(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	ctx := within(t)
	slot, err := c.Slot(ctx, "pm")
	if err != nil {
		t.Fatal(err)
	}
	master, _, err := c.Owner(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	master.Pause()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := master.Do(short, "PING").Err(); err == nil {
		t.Fatal("a paused node answered")
	}
	time.Sleep(time.Second) // the fault itself: half the node timeout
	master.Resume()
	c.WaitSettled(t)
	if m, _, err := c.Owner(ctx, slot); err != nil || m != master {
		t.Fatalf("owner after a pause below node timeout: %v, %v; want %s", m, err, master.Addr())
	}
}

func TestClusterMigrationHalfwayAnswersAskThenFinishes(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	ctx := within(t)
	rdb := c.Client(t)
	keys := []string{"{mig}a", "{mig}b", "{mig}c"}
	for _, k := range keys {
		if err := rdb.Set(ctx, k, k, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	slot, err := c.Slot(ctx, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	src, _, err := c.Owner(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var dst *redisproc.Server
	for _, m := range masters {
		if m != src {
			dst = m
			break
		}
	}
	m := c.BeginMigration(t, slot, dst)
	if n := m.Move(t, 1); n != 1 {
		t.Fatalf("moved %d keys, want 1", n)
	}
	left, err := src.Do(ctx, "CLUSTER", "COUNTKEYSINSLOT", slot).Int()
	if err != nil || left != 2 {
		t.Fatalf("keys left on the source: %d, %v", left, err)
	}
	// The moved key: the source answers ASK, the target MOVED without
	// ASKING; the cluster client follows both.
	var moved string
	for _, k := range keys {
		if n, _ := src.Do(ctx, "EXISTS", k).Int(); n == 0 {
			moved = k
		}
	}
	if err := src.Do(ctx, "GET", moved).Err(); err == nil || !strings.HasPrefix(err.Error(), "ASK") {
		t.Fatalf("GET %s on the source: %v, want ASK", moved, err)
	}
	if err := dst.Do(ctx, "GET", moved).Err(); err == nil || !strings.HasPrefix(err.Error(), "MOVED") {
		t.Fatalf("GET %s on the target without ASKING: %v, want MOVED", moved, err)
	}
	for _, k := range keys {
		if v, err := rdb.Get(ctx, k).Result(); err != nil || v != k {
			t.Fatalf("GET %s mid-migration: %q, %v", k, v, err)
		}
	}
	m.Finish(t)
	if o, _, err := c.Owner(ctx, slot); err != nil || o != dst {
		t.Fatalf("owner after the migration: %v, %v; want %s", o, err, dst.Addr())
	}
	if n, _ := dst.Do(ctx, "CLUSTER", "COUNTKEYSINSLOT", slot).Int(); n != 3 {
		t.Fatalf("the target holds %d keys of the slot, want 3", n)
	}
	if ttl, err := dst.Do(ctx, "PTTL", keys[0]).Int(); err != nil || ttl <= 0 {
		t.Fatalf("TTL after MIGRATE: %d, %v", ttl, err)
	}
	if err := src.Do(ctx, "GET", keys[0]).Err(); err == nil || !strings.HasPrefix(err.Error(), "MOVED") {
		t.Fatalf("GET on the source after the migration: %v, want MOVED", err)
	}
	for _, k := range keys {
		if v, err := rdb.Get(ctx, k).Result(); err != nil || v != k {
			t.Fatalf("GET %s after the migration: %q, %v", k, v, err)
		}
	}
}
