package entry_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/keyspec"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// replicaOf starts a redis-server replicating master and waits until the
// replication link is up.
func replicaOf(t *testing.T, master *redisproc.Server) *redisproc.Server {
	t.Helper()
	host, port, err := net.SplitHostPort(master.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r := redisproc.Start(t, "--replicaof", host, port)
	waitFor(t, "replication link up", func(ctx context.Context) bool {
		info, err := r.Do(ctx, "INFO", "replication").Text()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := redisproc.WaitAcked(ctx, master.Client(t), "replica:probe", 1); err != nil {
		t.Fatal(err)
	}
	return r
}

func waitFor(t *testing.T, what string, ok func(ctx context.Context) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !ok(ctx) {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func prepareOn(key string) *entry.Call {
	return entry.Prepare(key, entry.PrepareArgs{Token: "TTTTTTTTTTTTTTTT", Fingerprint: "FPFPFPFP", PendingTTL: time.Minute, MaxWriters: 4})
}

var ack = entry.Replication{Replicas: 1, Timeout: 200 * time.Millisecond}

// TestRunReplicatedWaitsForTheReplica checks that a durable call returns
// only once the replica holds it, and fails with ErrNotReplicated when the
// replica cannot acknowledge it, while calls whose loss costs only misses
// keep their results.
func TestRunReplicatedWaitsForTheReplica(t *testing.T) {
	master := redisproc.Start(t, "--repl-diskless-sync-delay", "0")
	replica := replicaOf(t, master)
	rdb := master.Client(t)
	ctx := context.Background()
	s := &entry.Scripts{}

	calls := []*entry.Call{prepareOn("r:a"), entry.Invalidate("r:b"), prepareOn("r:c")}
	s.RunReplicated(ctx, rdb, calls, ack)
	for _, c := range calls {
		if c.Err != nil {
			t.Fatalf("%s: %v", c.Key, c.Err)
		}
	}
	for _, k := range []string{"r:a", "r:c"} {
		if n, err := replica.Do(ctx, "EXISTS", k).Int(); err != nil || n != 1 {
			t.Fatalf("the replica does not hold %s right after the call returned (%d, %v)", k, n, err)
		}
	}

	replica.Pause()
	defer replica.Resume()
	fill := entry.Fill("r:d", "LLLLLLLLLLLLLLLL", []byte("x"), time.Minute)
	calls = []*entry.Call{prepareOn("r:e"), fill, entry.Invalidate("r:a")}
	s.RunReplicated(ctx, rdb, calls, ack)
	for _, c := range []*entry.Call{calls[0], calls[2]} {
		if !errors.Is(c.Err, entry.ErrNotReplicated) {
			t.Errorf("%s with the replica stopped: got %v, want ErrNotReplicated", c.Key, c.Err)
		}
	}
	if fill.Err != nil {
		t.Errorf("a fill needs no replica: %v", fill.Err)
	}
	if n, err := master.Do(ctx, "EXISTS", "r:e").Int(); err != nil || n != 1 {
		t.Errorf("the master ran the prepare all the same (%d, %v)", n, err)
	}
}

// TestRunReplicatedOnACluster checks that calls on keys of every master
// wait on their own master: stopping one master's replica fails only the
// durable calls on that master's keys.
func TestRunReplicatedOnACluster(t *testing.T) {
	c := redisproc.StartCluster(t, 3, 1)
	rdb := c.Client(t)
	ctx := context.Background()
	s := &entry.Scripts{}

	var calls []*entry.Call
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"} {
		calls = append(calls, prepareOn("cl:"+k))
	}
	s.RunReplicated(ctx, rdb, calls, ack)
	masterOf := map[string]string{}
	for _, call := range calls {
		if call.Err != nil {
			t.Fatalf("%s: %v", call.Key, call.Err)
		}
		node, err := rdb.MasterForKey(ctx, call.Key)
		if err != nil {
			t.Fatal(err)
		}
		masterOf[call.Key] = node.Options().Addr
	}
	victim := masterOf["cl:a"]
	replica := c.ReplicaOf(ctx, victim)
	if replica == nil {
		t.Fatalf("no replica of %s", victim)
	}
	replica.Pause()
	defer replica.Resume()

	for _, call := range calls {
		call.Err = nil
	}
	s.RunReplicated(ctx, rdb, calls, ack)
	failed := 0
	for _, call := range calls {
		onVictim := masterOf[call.Key] == victim
		switch {
		case onVictim && !errors.Is(call.Err, entry.ErrNotReplicated):
			t.Errorf("%s on the master whose replica stopped: got %v, want ErrNotReplicated", call.Key, call.Err)
		case !onVictim && call.Err != nil:
			t.Errorf("%s on a healthy master: %v", call.Key, call.Err)
		}
		if onVictim {
			failed++
		}
	}
	if failed == len(calls) {
		t.Fatalf("every key is on one master; the test needs keys on several")
	}
}

// TestRunReplicatedFollowsSlotMigration checks the redirections of a
// resharding: while a slot migrates, a key the source no longer holds is
// answered with ASK and must run on the importing node (after ASKING) and
// be acknowledged by that node's replica; once the slot has moved, a
// client with the old slot map meets MOVED and resends.
func TestRunReplicatedFollowsSlotMigration(t *testing.T) {
	c := redisproc.StartCluster(t, 3, 1)
	rdb := c.Client(t)
	ctx := context.Background()
	s := &entry.Scripts{}

	key := "mig:a"
	slot := int64(keyspec.Slot(key))
	node, err := rdb.MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	src := c.Node(node.Options().Addr)
	var dst *redisproc.Server
	for _, n := range c.Nodes {
		if n != src && redisproc.IsMaster(ctx, n) {
			dst = n
			break
		}
	}
	id := func(n *redisproc.Server) string {
		v, err := n.Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	must := func(n *redisproc.Server, args ...any) {
		if err := n.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	must(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", id(src))
	must(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", id(dst))

	call := prepareOn(key)
	s.RunReplicated(ctx, rdb, []*entry.Call{call}, ack)
	if call.Err != nil {
		t.Fatalf("a prepare on a key of a migrating slot: %v", call.Err)
	}
	if n, _ := dst.Do(ctx, "CLUSTER", "COUNTKEYSINSLOT", slot).Int(); n != 1 {
		t.Fatalf("the importing node holds %d keys of the slot, want the prepared one", n)
	}

	for _, n := range c.Nodes {
		if redisproc.IsMaster(ctx, n) {
			must(n, "CLUSTER", "SETSLOT", slot, "NODE", id(dst))
		}
	}
	call = entry.Invalidate(key)
	s.RunReplicated(ctx, rdb, []*entry.Call{call}, ack)
	if call.Err != nil {
		t.Fatalf("an invalidation after the slot moved: %v", call.Err)
	}
	if call.Invalidated() != entry.InvalidateMarked {
		t.Fatalf("the invalidation did not find the pending entry on the new owner (result %d)", call.Invalidated())
	}
}
