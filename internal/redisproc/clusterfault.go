package redisproc

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Faults of a cluster, for tests of what clients see while the topology
// changes: a graceful failover, a master killed and replaced by its
// replica, a node paused, a slot migrated live. Each helper waits until the
// cluster has settled (every node that runs agrees on the change and says
// cluster_state:ok), so that what the test measures afterwards is the
// client's recovery, not the cluster's.

// faultTimeout bounds how long a helper waits for the cluster to settle:
// an automatic failover takes about node-timeout (2 s) plus the replica's
// election delay (0.5–1.5 s), several times over on a loaded machine.
const faultTimeout = 60 * time.Second

// nodeInfo is one line of CLUSTER NODES.
type nodeInfo struct {
	id, addr string
	flags    []string
	masterID string // "-" for a master
	slots    []string
}

func (n nodeInfo) is(flag string) bool {
	for _, f := range n.flags {
		if f == flag {
			return true
		}
	}
	return false
}

// serves reports whether n owns slot (migration markers aside).
func (n nodeInfo) serves(slot int) bool {
	for _, r := range n.slots {
		if strings.HasPrefix(r, "[") {
			continue
		}
		lo, hi, ok := strings.Cut(r, "-")
		if !ok {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && a <= slot && slot <= b {
			return true
		}
	}
	return false
}

// nodes asks s for its view of the cluster.
func (s *Server) nodes(ctx context.Context) ([]nodeInfo, error) {
	txt, err := s.Do(ctx, "CLUSTER", "NODES").Text()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", s.Addr(), err)
	}
	var out []nodeInfo
	for _, line := range strings.Split(strings.TrimSpace(txt), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		out = append(out, nodeInfo{id: f[0], addr: addr, flags: strings.Split(f[2], ","), masterID: f[3], slots: f[8:]})
	}
	return out, nil
}

// running reports whether s is up and not paused.
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.paused
}

// ID returns the node's cluster id.
func (c *Cluster) ID(ctx context.Context, s *Server) (string, error) {
	id, err := s.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return "", fmt.Errorf("CLUSTER MYID on %s: %w", s.Addr(), err)
	}
	return id, nil
}

// byAddr returns the node listening on addr.
func (c *Cluster) byAddr(addr string) *Server {
	for _, s := range c.Nodes {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// Slot returns the hash slot of key, as the cluster computes it.
func (c *Cluster) Slot(ctx context.Context, key string) (int, error) {
	for _, s := range c.Nodes {
		if !s.running() {
			continue
		}
		n, err := s.Do(ctx, "CLUSTER", "KEYSLOT", key).Int()
		if err != nil {
			return 0, fmt.Errorf("CLUSTER KEYSLOT on %s: %w", s.Addr(), err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no node is running")
}

// view returns the cluster as the first running node sees it.
func (c *Cluster) view(ctx context.Context) ([]nodeInfo, error) {
	for _, s := range c.Nodes {
		if s.running() {
			return s.nodes(ctx)
		}
	}
	return nil, fmt.Errorf("no node is running")
}

// Owner returns the master that serves slot and its replicas, as the first
// running node sees the cluster.
func (c *Cluster) Owner(ctx context.Context, slot int) (master *Server, replicas []*Server, err error) {
	ns, err := c.view(ctx)
	if err != nil {
		return nil, nil, err
	}
	var mid string
	for _, n := range ns {
		if n.is("master") && !n.is("fail") && n.serves(slot) {
			master, mid = c.byAddr(n.addr), n.id
		}
	}
	if master == nil {
		return nil, nil, fmt.Errorf("no master serves slot %d", slot)
	}
	for _, n := range ns {
		if n.masterID == mid && !n.is("fail") {
			if r := c.byAddr(n.addr); r != nil {
				replicas = append(replicas, r)
			}
		}
	}
	return master, replicas, nil
}

// OwnerOfKey is [Cluster.Owner] of key's slot.
func (c *Cluster) OwnerOfKey(ctx context.Context, key string) (master *Server, replicas []*Server, err error) {
	slot, err := c.Slot(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	return c.Owner(ctx, slot)
}

// Masters returns the nodes that serve slots now.
func (c *Cluster) Masters(ctx context.Context) ([]*Server, error) {
	ns, err := c.view(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Server
	for _, n := range ns {
		if n.is("master") && !n.is("fail") && len(n.slots) > 0 {
			out = append(out, c.byAddr(n.addr))
		}
	}
	return out, nil
}

// settled waits until every running node says cluster_state:ok and sees
// want as the master of slot, with none of the other running nodes
// flagged as failing. want nil skips the slot check.
func (c *Cluster) settled(ctx context.Context, slot int, want *Server) error {
	var last string
	for {
		last = c.disagreement(ctx, slot, want)
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster did not settle: %w (last: %s)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// disagreement says what keeps the cluster from being settled, or "".
func (c *Cluster) disagreement(ctx context.Context, slot int, want *Server) string {
	for _, s := range c.Nodes {
		if !s.running() {
			continue
		}
		info, err := s.Do(ctx, "CLUSTER", "INFO").Text()
		if err != nil {
			return fmt.Sprintf("%s: %v", s.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return s.Addr() + ": cluster_state not ok"
		}
		ns, err := s.nodes(ctx)
		if err != nil {
			return err.Error()
		}
		for _, n := range ns {
			peer := c.byAddr(n.addr)
			if peer != nil && peer.running() && (n.is("fail") || n.is("fail?")) {
				return fmt.Sprintf("%s sees %s as failing", s.Addr(), n.addr)
			}
			if want != nil && n.serves(slot) && n.addr != want.Addr() {
				return fmt.Sprintf("%s sees %s serving slot %d, not %s", s.Addr(), n.addr, slot, want.Addr())
			}
			if want != nil && n.addr == want.Addr() && !n.is("master") {
				return fmt.Sprintf("%s does not see %s as a master yet", s.Addr(), n.addr)
			}
		}
	}
	return ""
}

// WaitSettled waits until every running node says cluster_state:ok and
// sees no running node as failing (after a paused node resumed, or a
// killed one rejoined).
func (c *Cluster) WaitSettled(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	if err := c.settled(ctx, 0, nil); err != nil {
		t.Fatalf("redisproc: %v", err)
	}
}

// Failover hands slot's master role to one of its replicas with CLUSTER
// FAILOVER run on the replica: the replica waits until it has every write
// the master acknowledged, so nothing is lost. It waits until every node
// sees the replica as the slot's master and returns the old master (now a
// replica) and the new one.
func (c *Cluster) Failover(t testing.TB, slot int) (old, promoted *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	old, replicas, err := c.Owner(ctx, slot)
	if err != nil {
		t.Fatalf("redisproc: failover: %v", err)
	}
	if len(replicas) == 0 {
		t.Fatalf("redisproc: failover: the master of slot %d has no replica", slot)
	}
	promoted = replicas[0]
	// A manual failover that cannot complete (the replica's link not up
	// yet, a slow handshake on a loaded machine) is aborted by Redis after
	// a few seconds without an error to the caller: ask again until the
	// replica reports itself master.
	for {
		err = promoted.Do(ctx, "CLUSTER", "FAILOVER").Err()
		if err == nil {
			try, cancelTry := context.WithTimeout(ctx, 10*time.Second)
			err = waitFor(try, func() (bool, error) {
				r, err := promoted.Do(try, "ROLE").Slice()
				return err == nil && len(r) > 0 && r[0] == "master", err
			})
			cancelTry()
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("redisproc: CLUSTER FAILOVER on %s: %v", promoted.Addr(), err)
	}
	if err := c.settled(ctx, slot, promoted); err != nil {
		t.Fatalf("redisproc: failover of slot %d to %s: %v", slot, promoted.Addr(), err)
	}
	// The old master must also have become the new one's replica.
	if err := waitFor(ctx, func() (bool, error) {
		role, err := old.Do(ctx, "ROLE").Slice()
		if err != nil {
			return false, err
		}
		return len(role) > 0 && role[0] == "slave", nil
	}); err != nil {
		t.Fatalf("redisproc: failover: %s did not become a replica: %v", old.Addr(), err)
	}
	return old, promoted
}

// KillMaster kills slot's master with SIGKILL and waits until one of its
// replicas was elected in its place and every running node says
// cluster_state:ok ([Cluster.Kill], then [Cluster.WaitPromotion]). Writes
// the master acknowledged but had not yet sent to the replica are lost
// (replication is asynchronous). It returns the killed node, which
// [Cluster.Rejoin] brings back as a replica, and the promoted one.
func (c *Cluster) KillMaster(t testing.TB, slot int) (killed, promoted *Server) {
	t.Helper()
	killed = c.Kill(t, slot)
	return killed, c.WaitPromotion(t, slot, killed)
}

// Kill kills slot's master with SIGKILL and returns it at once, while the
// cluster still routes the slot to it.
func (c *Cluster) Kill(t testing.TB, slot int) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	master, replicas, err := c.Owner(ctx, slot)
	if err != nil {
		t.Fatalf("redisproc: kill master: %v", err)
	}
	if len(replicas) == 0 {
		t.Fatalf("redisproc: kill master: the master of slot %d has no replica", slot)
	}
	master.Kill()
	return master
}

// WaitPromotion waits until a node other than killed serves slot and every
// running node agrees and says cluster_state:ok, and returns that node.
func (c *Cluster) WaitPromotion(t testing.TB, slot int, killed *Server) (promoted *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	var last string
	if err := waitFor(ctx, func() (bool, error) {
		m, _, err := c.Owner(ctx, slot)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		if m == killed {
			return false, nil
		}
		promoted = m
		last = c.disagreement(ctx, slot, m)
		return last == "", nil
	}); err != nil {
		t.Fatalf("redisproc: no replica took over slot %d from %s: %v (last: %s)", slot, killed.Addr(), err, last)
	}
	return promoted
}

// Rejoin restarts a killed node on its port with its cluster
// configuration (nodes.conf survives in its directory) and no data: it
// rejoins as a replica of the master that replaced it. It waits until every
// node sees it and says cluster_state:ok, and until it has synced with its
// master: until then it could not take over from it.
func (c *Cluster) Rejoin(t testing.TB, s *Server) {
	t.Helper()
	s.Restart()
	c.WaitSettled(t)
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	if err := waitFor(ctx, func() (bool, error) {
		info, err := s.Do(ctx, "INFO", "replication").Text()
		return err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up"), err
	}); err != nil {
		t.Fatalf("redisproc: %s rejoined but did not sync with a master: %v", s.Addr(), err)
	}
}

// waitFor polls cond every 20ms until it is true or ctx ends.
func waitFor(ctx context.Context, cond func() (bool, error)) error {
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Migration is a slot being moved from one master to another, live. While
// it is under way, the source answers ASK for the slot's keys it no longer
// holds and the target answers MOVED to clients that did not send ASKING.
type Migration struct {
	c        *Cluster
	slot     int
	src, dst *Server
	srcID    string
	dstID    string
}

// BeginMigration starts moving slot from its master to dst (another
// master): CLUSTER SETSLOT IMPORTING on dst, then MIGRATING on the source,
// in that order (cluster-setslot's live resharding steps). No key has moved
// yet: see [Migration.Move] and [Migration.Finish].
func (c *Cluster) BeginMigration(t testing.TB, slot int, dst *Server) *Migration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	src, _, err := c.Owner(ctx, slot)
	if err != nil {
		t.Fatalf("redisproc: migration: %v", err)
	}
	if src == dst {
		t.Fatalf("redisproc: migration: %s already serves slot %d", dst.Addr(), slot)
	}
	m := &Migration{c: c, slot: slot, src: src, dst: dst}
	if m.srcID, err = c.ID(ctx, src); err == nil {
		m.dstID, err = c.ID(ctx, dst)
	}
	if err == nil {
		err = dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", m.srcID).Err()
	}
	if err == nil {
		err = src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", m.dstID).Err()
	}
	if err != nil {
		t.Fatalf("redisproc: migration of slot %d from %s to %s: %v", slot, src.Addr(), dst.Addr(), err)
	}
	return m
}

// Source and Target return the two masters of the migration.
func (m *Migration) Source() *Server { return m.src }
func (m *Migration) Target() *Server { return m.dst }

// Move moves up to n of the slot's keys still on the source (all of them
// when n <= 0) with MIGRATE, which moves each key atomically with its TTL,
// and returns how many it moved.
func (m *Migration) Move(t testing.TB, n int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	moved, err := m.move(ctx, n)
	if err != nil {
		t.Fatalf("redisproc: migration of slot %d: %v", m.slot, err)
	}
	return moved
}

func (m *Migration) move(ctx context.Context, n int) (int, error) {
	host, port, _ := strings.Cut(m.dst.Addr(), ":")
	moved := 0
	for n <= 0 || moved < n {
		batch := 100
		if n > 0 {
			batch = min(batch, n-moved)
		}
		keys, err := m.src.Do(ctx, "CLUSTER", "GETKEYSINSLOT", m.slot, batch).StringSlice()
		if err != nil {
			return moved, fmt.Errorf("CLUSTER GETKEYSINSLOT: %w", err)
		}
		if len(keys) == 0 {
			return moved, nil
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		// NOKEY (every key gone meanwhile) is not an error here.
		if err := m.src.Do(ctx, args...).Err(); err != nil && !strings.Contains(err.Error(), "NOKEY") {
			return moved, fmt.Errorf("MIGRATE to %s: %w", m.dst.Addr(), err)
		}
		moved += len(keys)
	}
	return moved, nil
}

// Finish moves the keys left and assigns the slot to the target: CLUSTER
// SETSLOT NODE on the target, then on the source, then on every other
// master, so that no node keeps sending clients to the source. It waits
// until every running node agrees.
func (m *Migration) Finish(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	if _, err := m.move(ctx, 0); err != nil {
		t.Fatalf("redisproc: migration of slot %d: %v", m.slot, err)
	}
	masters, err := m.c.Masters(ctx)
	if err != nil {
		t.Fatalf("redisproc: migration of slot %d: %v", m.slot, err)
	}
	// Replicas refuse SETSLOT; their masters' gossip reaches them.
	order := []*Server{m.dst, m.src}
	for _, s := range masters {
		if s != m.src && s != m.dst && s.running() {
			order = append(order, s)
		}
	}
	for _, s := range order {
		if err := s.Do(ctx, "CLUSTER", "SETSLOT", m.slot, "NODE", m.dstID).Err(); err != nil {
			t.Fatalf("redisproc: CLUSTER SETSLOT %d NODE on %s: %v", m.slot, s.Addr(), err)
		}
	}
	if err := m.c.settled(ctx, m.slot, m.dst); err != nil {
		t.Fatalf("redisproc: migration of slot %d to %s: %v", m.slot, m.dst.Addr(), err)
	}
}

// MigrateSlot moves slot to dst, keys and all: [Cluster.BeginMigration],
// then [Migration.Finish].
func (c *Cluster) MigrateSlot(t testing.TB, slot int, dst *Server) {
	t.Helper()
	c.BeginMigration(t, slot, dst).Finish(t)
}

// WaitReplicated waits until every replica of master has acknowledged
// every write master accepted so far (their offsets in its INFO
// replication equal its own).
func (c *Cluster) WaitReplicated(t testing.TB, master *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	var last string
	if err := waitFor(ctx, func() (bool, error) {
		info, err := master.Do(ctx, "INFO", "replication").Text()
		if err != nil {
			return false, err
		}
		last = info
		var offset string
		var offsets []string
		for _, line := range strings.Split(info, "\n") {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
				offset = v
			}
			if _, rest, ok := strings.Cut(line, ",offset="); ok && strings.HasPrefix(line, "slave") {
				off, _, _ := strings.Cut(rest, ",")
				offsets = append(offsets, off)
			}
		}
		replicas, caught := len(offsets), 0
		for _, off := range offsets {
			if off == offset {
				caught++
			}
		}
		return replicas > 0 && caught == replicas, nil
	}); err != nil {
		t.Fatalf("redisproc: the replicas of %s did not catch up: %v (last: %s)", master.Addr(), err, last)
	}
}
