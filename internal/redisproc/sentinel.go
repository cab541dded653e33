package redisproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the name under which StartSentinel's sentinels monitor
// the master.
const SentinelMaster = "wtmaster"

// sentinelReadyTimeout bounds how long StartSentinel waits for the
// sentinels to know each other and the replica.
const sentinelReadyTimeout = 30 * time.Second

// switchTimeout bounds how long KillMaster and Failover wait for the
// sentinels to promote the replica: with down-after-milliseconds 1000 a
// failover takes about 2 s on an idle machine, far more on a loaded one.
const switchTimeout = 60 * time.Second

// Sentinel is a master, its replica and three sentinels monitoring them,
// owned by one test.
type Sentinel struct {
	// Nodes holds the data nodes: Nodes[0] started as the master, Nodes[1]
	// as its replica. Which one is the master now is the sentinels' answer
	// ([Sentinel.Master]).
	Nodes []*Server
	// Sentinels holds the three sentinel processes.
	Sentinels []*Server
	// Name is the master's name for the sentinels (SentinelMaster).
	Name string
}

// StartSentinel starts a master, a replica of it (--replicaof) and three
// sentinels (`redis-server <conf> --sentinel`, each with a configuration
// file of its own in a temporary directory, which Sentinel rewrites) on
// free loopback ports. The sentinels agree on a failure with a quorum of
// 2 after 1 s without an answer (down-after-milliseconds 1000,
// failover-timeout 5000, parallel-syncs 1). It waits until every sentinel
// knows the two others and the replica, and the replica's link to the
// master is up. args go to both data nodes. Everything is killed when the
// test ends; like [Start], it skips the test under `go test -short`.
func StartSentinel(t testing.TB, args ...string) *Sentinel {
	t.Helper()
	master := Start(t, args...)
	replica := Start(t, append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(master.port)}, args...)...)
	s := &Sentinel{Nodes: []*Server{master, replica}, Name: SentinelMaster}
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		conf := filepath.Join(dir, "sentinel"+strconv.Itoa(i)+".conf")
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 5000\n"+
			"sentinel parallel-syncs %[1]s 1\n", s.Name, master.port)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatalf("redisproc: %v", err)
		}
		s.Sentinels = append(s.Sentinels, startWith(t, conf, "--sentinel"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), sentinelReadyTimeout)
	defer cancel()
	if err := s.waitReady(ctx); err != nil {
		t.Fatalf("redisproc: sentinels not ready: %v", err)
	}
	return s
}

// waitReady waits until every sentinel reports the master with two other
// sentinels and one replica, and the replica's link to the master is up.
func (s *Sentinel) waitReady(ctx context.Context) error {
	return poll(ctx, func() error {
		for _, sn := range s.Sentinels {
			m, err := sn.Do(ctx, "SENTINEL", "MASTER", s.Name).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", sn.Addr(), err)
			}
			f := fields(m)
			if f["num-other-sentinels"] != "2" || f["num-slaves"] != "1" {
				return fmt.Errorf("%s: num-other-sentinels %s, num-slaves %s", sn.Addr(), f["num-other-sentinels"], f["num-slaves"])
			}
		}
		info, err := s.Nodes[1].Do(ctx, "INFO", "replication").Text()
		if err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		if !strings.Contains(info, "master_link_status:up") {
			return errors.New("replica: master link not up")
		}
		return nil
	})
}

// poll calls cond until it returns nil or ctx ends, and then returns
// ctx's error together with cond's last one.
func poll(ctx context.Context, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// fields turns a reply of names and values into a map: a map in RESP3, a
// flat name, value, name, value array in RESP2.
func fields(reply any) map[string]string {
	m := map[string]string{}
	switch r := reply.(type) {
	case map[any]any:
		for k, v := range r {
			m[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	case []any:
		for i := 0; i+1 < len(r); i += 2 {
			m[fmt.Sprint(r[i])] = fmt.Sprint(r[i+1])
		}
	}
	return m
}

// SentinelAddrs returns the sentinels' host:port.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		addrs[i] = sn.Addr()
	}
	return addrs
}

// FailoverOptions returns new options for redis.NewFailoverClient on these
// sentinels, with context deadlines honoured.
func (s *Sentinel) FailoverOptions() *redis.FailoverOptions {
	return &redis.FailoverOptions{
		MasterName:            s.Name,
		SentinelAddrs:         s.SentinelAddrs(),
		ContextTimeoutEnabled: true,
	}
}

// Client returns a new failover client (see [Sentinel.FailoverOptions]),
// closed when t ends.
func (s *Sentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewFailoverClient(s.FailoverOptions())
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// MasterAddr returns the master's host:port as the first sentinel that
// answers gives it (SENTINEL get-master-addr-by-name).
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for _, sn := range s.Sentinels {
		addr, err := sn.masterAddr(ctx, s.Name)
		if err == nil {
			return addr, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("no sentinel answered: %w", errors.Join(errs...))
}

// MasterAddrs returns the master's host:port as each running sentinel
// gives it. The sentinels learn of a failover one after the other, so the
// answers differ for a moment.
func (s *Sentinel) MasterAddrs(ctx context.Context) ([]string, error) {
	var addrs []string
	for _, sn := range s.Sentinels {
		if !sn.running() {
			continue
		}
		addr, err := sn.masterAddr(ctx, s.Name)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, addr)
	}
	return addrs, nil
}

func (sn *Server) masterAddr(ctx context.Context, name string) (string, error) {
	hp, err := sn.Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name).StringSlice()
	if err != nil {
		return "", fmt.Errorf("%s: %w", sn.Addr(), err)
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("%s: get-master-addr-by-name answered %q", sn.Addr(), hp)
	}
	return hp[0] + ":" + hp[1], nil
}

// Master returns the data node the sentinels name as the master.
func (s *Sentinel) Master(ctx context.Context) (*Server, error) {
	addr, err := s.MasterAddr(ctx)
	if err != nil {
		return nil, err
	}
	return s.node(addr)
}

func (s *Sentinel) node(addr string) (*Server, error) {
	for _, n := range s.Nodes {
		if n.Addr() == addr {
			return n, nil
		}
	}
	return nil, fmt.Errorf("the sentinels name %s, which is none of the data nodes", addr)
}

// KillMaster kills the current master with SIGKILL and waits until the
// sentinels have promoted the replica (see [Sentinel.WaitSwitch]). It
// returns the killed node and the new master.
func (s *Sentinel) KillMaster(t testing.TB) (old, master *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), switchTimeout)
	defer cancel()
	old, err := s.Master(ctx)
	if err != nil {
		t.Fatalf("redisproc: %v", err)
	}
	old.Kill()
	master, err = s.WaitSwitch(ctx, old.Addr())
	if err != nil {
		t.Fatalf("redisproc: no failover after killing the master %s: %v", old.Addr(), err)
	}
	return old, master
}

// Failover asks a sentinel for a failover of a master that is up (SENTINEL
// FAILOVER) and waits until the replica is promoted (see
// [Sentinel.WaitSwitch]) and the old master has become its replica with
// its link up (so that a second failover does not promote a replica that
// has not synced yet, which loses what the master took meanwhile). It
// returns the old master and the new one.
func (s *Sentinel) Failover(t testing.TB) (old, master *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), switchTimeout)
	defer cancel()
	old, err := s.Master(ctx)
	if err != nil {
		t.Fatalf("redisproc: %v", err)
	}
	// A sentinel refuses while it has no fresh word of a replica to promote
	// (-NOGOODSLAVE); ask again until one accepts.
	err = poll(ctx, func() error { return s.Sentinels[0].Do(ctx, "SENTINEL", "FAILOVER", s.Name).Err() })
	if err != nil {
		t.Fatalf("redisproc: SENTINEL FAILOVER: %v", err)
	}
	master, err = s.WaitSwitch(ctx, old.Addr())
	if err != nil {
		t.Fatalf("redisproc: no failover: %v", err)
	}
	want := "master_port:" + strconv.Itoa(master.port)
	err = poll(ctx, func() error {
		info, err := old.Do(ctx, "INFO", "replication").Text()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "role:slave") || !strings.Contains(info, want) || !strings.Contains(info, "master_link_status:up") {
			return errors.New("the old master is not the new one's replica in sync yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("redisproc: after the failover: %v", err)
	}
	return old, master
}

// WaitSwitch waits until every sentinel still running names a master other
// than from (SENTINEL get-master-addr-by-name: the +switch-master has
// happened) and that node answers ROLE with "master", and returns it.
func (s *Sentinel) WaitSwitch(ctx context.Context, from string) (*Server, error) {
	var master *Server
	err := poll(ctx, func() error {
		var addr string
		for _, sn := range s.Sentinels {
			if !sn.running() {
				continue
			}
			a, err := sn.masterAddr(ctx, s.Name)
			if err != nil {
				return err
			}
			if a == from {
				return fmt.Errorf("%s still names %s", sn.Addr(), from)
			}
			if addr != "" && a != addr {
				return fmt.Errorf("the sentinels name %s and %s", addr, a)
			}
			addr = a
		}
		n, err := s.node(addr)
		if err != nil {
			return err
		}
		role, err := n.Do(ctx, "ROLE").Slice()
		if err != nil {
			return fmt.Errorf("ROLE on %s: %w", addr, err)
		}
		if len(role) == 0 || role[0] != "master" {
			return fmt.Errorf("%s answers ROLE %v", addr, role)
		}
		master = n
		return nil
	})
	return master, err
}

// WaitReplicated waits until every data node that is a replica of the
// current master has processed everything the master had taken when it
// was called (its slave_repl_offset reached the master's
// master_repl_offset). Replication is asynchronous: a master killed before
// that loses what its replica had not received.
func (s *Sentinel) WaitReplicated(ctx context.Context) error {
	master, err := s.Master(ctx)
	if err != nil {
		return err
	}
	info, err := master.Do(ctx, "INFO", "replication").Text()
	if err != nil {
		return fmt.Errorf("master %s: %w", master.Addr(), err)
	}
	want, err := infoInt(info, "master_repl_offset")
	if err != nil {
		return fmt.Errorf("master %s: %w", master.Addr(), err)
	}
	of := "master_port:" + strconv.Itoa(master.port)
	for _, n := range s.Nodes {
		if n == master || !n.running() {
			continue
		}
		err := poll(ctx, func() error {
			info, err := n.Do(ctx, "INFO", "replication").Text()
			if err != nil {
				return err
			}
			if !strings.Contains(info, of) {
				return nil // not this master's replica (an old master not yet converted)
			}
			got, err := infoInt(info, "slave_repl_offset")
			if err != nil {
				return err
			}
			if got < want {
				return fmt.Errorf("offset %d of %d", got, want)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("replica %s: %w", n.Addr(), err)
		}
	}
	return nil
}

// infoInt returns the integer field name of an INFO reply.
func infoInt(info, name string) (int64, error) {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in INFO", name)
}
