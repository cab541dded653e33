package redisproc

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/keyspec"
)

// clusterReadyTimeout bounds how long StartCluster waits for every node to
// report a healthy cluster.
const clusterReadyTimeout = 30 * time.Second

// Cluster is a Redis Cluster of redis-servers owned by one test: its first
// masters nodes were created as masters, the rest as their replicas.
type Cluster struct {
	Nodes   []*Server
	masters int
}

// StartCluster starts masters*(1+replicas) redis-servers with cluster mode
// on, on free loopback ports, joins them with `redis-cli --cluster create`
// (replicas per master), and waits until every node reports cluster_state
// ok, knows every other node and, on a replica, has its replication link
// up. The servers are killed when the test
// ends. Like [Start], it skips the test under `go test -short`.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redisproc: redis-cli is not installed (%v); run `bash scripts/services.sh`, which installs it", err)
	}
	c := &Cluster{masters: masters}
	n := masters * (1 + replicas)
	for len(c.Nodes) < n {
		s := Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
			"--repl-diskless-sync-delay", "0")
		if s.port+10000 > 65535 {
			s.Kill() // its cluster bus port would not exist
			continue
		}
		c.Nodes = append(c.Nodes, s)
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Nodes {
		args = append(args, s.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redisproc: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.waitHealthy(ctx); err != nil {
		t.Fatalf("redisproc: cluster not ready: %v", err)
	}
	if replicas > 0 {
		if err := c.waitReplicating(ctx, replicas); err != nil {
			t.Fatalf("redisproc: cluster replicas not acknowledging: %v", err)
		}
	}
	return c
}

// waitReplicating writes a key on every master and WAITs until replicas
// replicas acknowledge it. A replica counts as online once its link is
// up, but acknowledges writes only after its first REPLCONF ACK, up to a
// second later; a test that WAITs before then would wait for nothing.
func (c *Cluster) waitReplicating(ctx context.Context, replicas int) error {
	slots, err := c.Nodes[0].Do(ctx, "CLUSTER", "SLOTS").Slice()
	if err != nil {
		return err
	}
	for _, r := range slots {
		rng, ok := r.([]any)
		if !ok || len(rng) < 3 {
			return fmt.Errorf("unexpected CLUSTER SLOTS entry %v", r)
		}
		first, _ := rng[0].(int64)
		master, _ := rng[2].([]any)
		if len(master) < 2 {
			return fmt.Errorf("unexpected CLUSTER SLOTS entry %v", r)
		}
		port, _ := master[1].(int64)
		var node *Server
		for _, s := range c.Nodes {
			if s.port == int(port) {
				node = s
			}
		}
		if node == nil {
			return fmt.Errorf("CLUSTER SLOTS names an unknown node on port %d", port)
		}
		if err := WaitAcked(ctx, node.rdb, keyInSlot(uint16(first)), replicas); err != nil {
			return fmt.Errorf("%s: %w", node.Addr(), err)
		}
	}
	return nil
}

// keyInSlot returns a key of the given hash slot.
func keyInSlot(slot uint16) string {
	for i := 0; ; i++ {
		if k := "redisproc:ready:" + strconv.Itoa(i); keyspec.Slot(k) == slot {
			return k
		}
	}
}

// WaitAcked sets key on rdb (one node) and waits, on the same connection,
// until replicas replicas have acknowledged it, retrying until ctx ends.
func WaitAcked(ctx context.Context, rdb *redis.Client, key string, replicas int) error {
	for {
		var wait *redis.Cmd
		_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, key, "1", time.Minute)
			wait = pipe.Do(ctx, "wait", replicas, 1000)
			return nil
		})
		if err == nil {
			if n, _ := wait.Int(); n >= replicas {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d replicas did not acknowledge a write: %w (last: %v)", replicas, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitHealthy waits until every node says cluster_state:ok and knows all
// the nodes.
func (c *Cluster) waitHealthy(ctx context.Context) error {
	want := "cluster_known_nodes:" + strconv.Itoa(len(c.Nodes))
	for {
		var bad string
		for _, s := range c.Nodes {
			info, err := s.Do(ctx, "CLUSTER", "INFO").Text()
			if err != nil {
				bad = fmt.Sprintf("%s: %v", s.Addr(), err)
				break
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, want) {
				bad = s.Addr() + ": " + strings.Join(strings.Fields(info)[:2], " ")
				break
			}
			repl, err := s.Do(ctx, "INFO", "replication").Text()
			if err != nil || strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") ||
				strings.Count(repl, ",state=") != strings.Count(repl, ",state=online,") {
				bad = s.Addr() + ": replica not in sync"
				break
			}
		}
		if bad == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %s)", ctx.Err(), bad)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Addrs returns every node's host:port.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Options returns new cluster client options for the cluster, with context
// deadlines honoured.
func (c *Cluster) Options() *redis.ClusterOptions {
	return &redis.ClusterOptions{Addrs: c.Addrs(), ContextTimeoutEnabled: true}
}

// Client returns a new cluster client (see [Cluster.Options]), closed when
// t ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	rdb := redis.NewClusterClient(c.Options())
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Node returns the node listening on addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, s := range c.Nodes {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// ReplicaOf returns a running node that replicates the master at addr, or
// nil.
func (c *Cluster) ReplicaOf(ctx context.Context, addr string) *Server {
	for _, s := range c.Nodes {
		role, err := s.Do(ctx, "ROLE").Slice()
		if err != nil || len(role) < 3 || role[0] != "slave" {
			continue
		}
		if port, ok := role[2].(int64); ok && fmt.Sprintf("%v:%d", role[1], port) == addr {
			return s
		}
	}
	return nil
}

// IsMaster reports whether s answers ROLE as a master.
func IsMaster(ctx context.Context, s *Server) bool {
	role, err := s.Do(ctx, "ROLE").Slice()
	return err == nil && len(role) > 0 && role[0] == "master"
}
