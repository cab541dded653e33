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
// ok and knows every other node. The servers are killed when the test
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
			// A replica that rejoins needs a full sync; don't wait 5 s to
			// start it (a replica that never synced cannot take over).
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
	return c
}

// waitHealthy waits until every node says cluster_state:ok, knows all the
// nodes and knows which of them are replicas of which master.
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
			// Gossip tells each node who replicates whom a little later
			// than it learns the nodes: fault helpers need to know.
			ns, err := s.nodes(ctx)
			if err != nil {
				bad = err.Error()
				break
			}
			replicas := 0
			for _, n := range ns {
				if n.is("slave") && n.masterID != "-" {
					replicas++
				}
			}
			if replicas != len(c.Nodes)-c.masters {
				bad = fmt.Sprintf("%s: sees %d replicas", s.Addr(), replicas)
				break
			}
			// A replica that never finished its first sync refuses to
			// take over from a failed master: its data is too old.
			repl, err := s.Do(ctx, "INFO", "replication").Text()
			if err != nil {
				bad = err.Error()
				break
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				bad = s.Addr() + ": replica link not up"
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
