package bench_test

// Redis Cluster against a single Redis, in one run (issue 13). The
// measured run (docs/benchmarks.md, "Redis Cluster"):
//
//	go run ./cmd/benchtable -count 5 -bench '^BenchmarkCluster$' -benchtime 1s -raw results/YYYY-MM-DD-cluster.txt
//
// The benchmark starts a cluster of its own (three masters, one replica
// each, on free loopback ports, through internal/redisproc: redis-server
// and redis-cli must be installed) and measures on it the plugin's hit
// (Get), batch of 100 (GetMany) and 95/5 mix, and the floor's. Each row
// measures inside itself, as references, the same paths on the single
// Redis of the other benchmarks: floor-p50-us / floor-ops/s is the single
// Redis's floor (both rows), base-p50-us / base-ops/s the plugin on it
// (the plugin's row). The cluster and its keys go away when the benchmark
// ends.

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/bench"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// BenchmarkCluster runs the hit, batch-of-100 and 95/5 workloads on a
// 3-master cluster of the benchmark's own. Besides the usual metrics, the
// batch rows report node-trips/op (round trips that carried GETs, summed
// over the cluster's nodes) and trips/node (those per node a batch
// reached: 1 when each owner gets one pipeline).
func BenchmarkCluster(b *testing.B) {
	e := getEnv(b)
	cs := mustContenders(b, e)
	single := map[string]contender{}
	for _, c := range cs {
		single[c.name] = c
	}
	cl := startCluster(b, e)
	rows := []struct {
		c    contender // on the cluster
		refs []ref     // on the single Redis
	}{
		{cl.floor, []ref{{"floor", single["floor"]}}},
		{cl.get, []ref{{"floor", single["floor"]}, {"base", single["wt-get"]}}},
	}

	for _, r := range rows {
		b.Run("hit/"+r.c.name, func(b *testing.B) {
			ids := randomIDs(e.rows, 4096, 1)
			reads := func(c contender) opFunc { return byID(c.read, ids) }
			latency(b, e, reads(r.c), nil, r.refs, reads)
		})
	}
	for _, r := range rows {
		b.Run("batch100/"+r.c.name, func(b *testing.B) {
			batches := randomBatches(e.rows, 64, 100)
			reads := func(c contender) opFunc {
				return func(ctx context.Context, i int) error { return c.batch(ctx, batches[i%len(batches)]) }
			}
			var ops atomic.Int64
			trips0, reached0 := cl.trips.total.Load(), cl.trips.reached.Load()
			op := reads(r.c)
			counted := func(ctx context.Context, i int) error {
				before := cl.trips.snapshot()
				err := op(ctx, i)
				cl.trips.reached.Add(int64(cl.trips.nodesSince(before)))
				ops.Add(1)
				return err
			}
			latency(b, e, counted, nil, r.refs, reads)
			trips, reached := cl.trips.total.Load()-trips0, cl.trips.reached.Load()-reached0
			if n := ops.Load(); n > 0 {
				b.ReportMetric(float64(trips)/float64(n), "node-trips/op")
			}
			if reached > 0 {
				b.ReportMetric(float64(trips)/float64(reached), "trips/node")
			}
		})
	}
	for _, zipf := range []bool{false, true} {
		for _, g := range []int{8, 64} {
			dist := "uniform"
			if zipf {
				dist = "zipf"
			}
			for _, r := range rows {
				b.Run(fmt.Sprintf("r95-%s-g%d/%s", dist, g, r.c.name), func(b *testing.B) {
					benchMix(b, e, r.c, r.refs, g, 5, zipf)
				})
			}
		}
	}
}

// clusterContenders are the floor and the plugin on the benchmark's cluster.
type clusterContenders struct {
	floor, get contender
	trips      *nodeTrips
}

// startCluster starts a 3-master cluster with one replica per master, loads
// every row into it for the floor (msgpack under the raw keys) and the
// plugin (through GetMany), and returns both contenders. The cluster
// client has go-redis's defaults, as the single Redis's client does; its
// round trips count in redis/op like the single client's (a pipeline
// once, however many nodes it reaches), and its node clients' GET round
// trips in trips.
func startCluster(b *testing.B, e *env) *clusterContenders {
	b.Helper()
	c := redisproc.StartCluster(b, 3, 1)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	b.Cleanup(func() { _ = rdb.Close() })
	trips := &nodeTrips{}
	rdb.OnNewNode(func(node *redis.Client) {
		n := &atomic.Int64{}
		trips.add(n)
		node.AddHook(getTrips{n: n, total: &trips.total})
	})
	rdb.AddHook(redisCounter{&e.redisCalls})
	ctx := context.Background()
	if err := rdb.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
		return node.Ping(ctx).Err() // creates every node's client
	}); err != nil {
		b.Fatal(err)
	}

	db, err := gorm.Open(postgres.New(postgres.Config{Conn: e.sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		b.Fatal(err)
	}
	p := writethrough.New(rdb, writethrough.Config{Prefix: pluginPrefix, Models: []any{&bench.User{}}})
	if err := db.Use(p); err != nil {
		b.Fatal(err)
	}
	if err := warmCluster(ctx, e, rdb, db); err != nil {
		b.Fatal(err)
	}
	// Every row must now be a hit: a fill that failed would make some of
	// the hit rows' reads misses.
	misses := p.Stats().Misses
	if err := readAll(ctx, e, db); err != nil {
		b.Fatal(err)
	}
	if n := p.Stats().Misses - misses; n > 0 {
		b.Fatalf("after warming the plugin's cache on the cluster, %d of %d rows were still misses", n, e.rows)
	}

	tmpl := bench.MakeUser(0, time.Now().UTC())
	floor := contender{
		name:  "floor-cluster",
		mixed: true,
		read: func(ctx context.Context, id int64) error {
			buf, err := rdb.Get(ctx, rawKey(id)).Bytes()
			if err != nil {
				return err
			}
			var u bench.User
			return msgpack.Unmarshal(buf, &u)
		},
		// MGET of keys on several slots fails with CROSSSLOT: a pipeline
		// of GETs is what a user writes, and go-redis sends each node its
		// share at once.
		batch: func(ctx context.Context, ids []int64) error {
			cmds := make([]*redis.StringCmd, len(ids))
			if _, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for i, id := range ids {
					cmds[i] = pipe.Get(ctx, rawKey(id))
				}
				return nil
			}); err != nil {
				return err
			}
			for _, c := range cmds {
				buf, err := c.Bytes()
				if err != nil {
					return err
				}
				var u bench.User
				if err := msgpack.Unmarshal(buf, &u); err != nil {
					return err
				}
			}
			return nil
		},
		update: func(ctx context.Context, id int64) error {
			u := tmpl
			u.ID, u.Balance, u.UpdatedAt = id, u.Balance+1, time.Now()
			buf, err := msgpack.Marshal(&u)
			if err != nil {
				return err
			}
			return rdb.Set(ctx, rawKey(id), buf, rowTTL).Err()
		},
	}
	get := contender{
		name:  "wt-get-cluster",
		mixed: true,
		read: func(ctx context.Context, id int64) error {
			_, err := writethrough.Get[bench.User](ctx, db, id)
			return err
		},
		batch: func(ctx context.Context, ids []int64) error {
			keys := make([]any, len(ids))
			for i, id := range ids {
				keys[i] = id
			}
			us, err := writethrough.GetMany[bench.User](ctx, db, keys...)
			if err != nil {
				return err
			}
			return wantRows(len(us), len(ids))
		},
		update: func(ctx context.Context, id int64) error {
			return db.WithContext(ctx).Model(&bench.User{ID: id}).Update("balance", gorm.Expr("balance + 1")).Error
		},
		hits: func() (uint64, uint64, uint64) {
			st := p.Stats()
			return st.Hits, st.Misses, st.PendingMisses
		},
	}
	if err := warmUp([]contender{floor, get}); err != nil {
		b.Fatal(err)
	}
	return &clusterContenders{floor: floor, get: get, trips: trips}
}

// warmCluster writes every row under its raw key for the floor, and fills
// the plugin's cache with every row through GetMany.
func warmCluster(ctx context.Context, e *env, rdb *redis.ClusterClient, db *gorm.DB) error {
	const chunk = 500
	ids := make([]int64, 0, chunk)
	for id := int64(1); id <= e.rows; id++ {
		ids = append(ids, id)
		if len(ids) < chunk && id < e.rows {
			continue
		}
		var us []bench.User
		if err := e.gorm.WithContext(ctx).Find(&us, ids).Error; err != nil {
			return err
		}
		pipe := rdb.Pipeline()
		for i := range us {
			buf, err := msgpack.Marshal(&us[i])
			if err != nil {
				return err
			}
			pipe.Set(ctx, rawKey(us[i].ID), buf, rowTTL)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("warming the cluster: %w", err)
		}
		keys := make([]any, len(ids))
		for i, id := range ids {
			keys[i] = id
		}
		got, err := writethrough.GetMany[bench.User](ctx, db, keys...)
		if err != nil {
			return fmt.Errorf("warming the plugin's cache on the cluster: %w", err)
		}
		if err := wantRows(len(got), len(ids)); err != nil {
			return fmt.Errorf("warming the plugin's cache on the cluster: %w", err)
		}
		ids = ids[:0]
	}
	return nil
}

// readAll reads every row through GetMany, in chunks.
func readAll(ctx context.Context, e *env, db *gorm.DB) error {
	const chunk = 500
	keys := make([]any, 0, chunk)
	for id := int64(1); id <= e.rows; id++ {
		keys = append(keys, id)
		if len(keys) < chunk && id < e.rows {
			continue
		}
		got, err := writethrough.GetMany[bench.User](ctx, db, keys...)
		if err != nil {
			return err
		}
		if err := wantRows(len(got), len(keys)); err != nil {
			return err
		}
		keys = keys[:0]
	}
	return nil
}

// nodeTrips counts the round trips carrying GETs of every node client of a
// cluster client.
type nodeTrips struct {
	total   atomic.Int64                    // round trips, all nodes
	reached atomic.Int64                    // nodes reached, summed over the counted operations
	nodes   atomic.Pointer[[]*atomic.Int64] // one counter per node client
}

// add registers a node's counter; node clients are created while requests
// run, so the list is replaced, never changed in place.
func (t *nodeTrips) add(n *atomic.Int64) {
	for {
		old := t.nodes.Load()
		var next []*atomic.Int64
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, n)
		if t.nodes.CompareAndSwap(old, &next) {
			return
		}
	}
}

// maxNodes bounds the nodes a snapshot holds: a fixed array keeps the
// counting out of the batch rows' allocations.
const maxNodes = 16

// snapshot returns each node's count so far.
func (t *nodeTrips) snapshot() (out [maxNodes]int64) {
	if nodes := t.nodes.Load(); nodes != nil {
		for i, n := range (*nodes)[:min(len(*nodes), maxNodes)] {
			out[i] = n.Load()
		}
	}
	return out
}

// nodesSince returns how many nodes made a round trip since before.
func (t *nodeTrips) nodesSince(before [maxNodes]int64) int {
	reached := 0
	now := t.snapshot()
	for i := range now {
		if now[i] != before[i] {
			reached++
		}
	}
	return reached
}

// getTrips counts one node client's round trips that carry a GET: a
// pipeline holding GETs once, a GET sent alone once.
type getTrips struct {
	n, total *atomic.Int64
}

func (h getTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h getTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isGet(cmd) {
			h.n.Add(1)
			h.total.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h getTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if isGet(cmd) {
				h.n.Add(1)
				h.total.Add(1)
				break
			}
		}
		return next(ctx, cmds)
	}
}

func isGet(cmd redis.Cmder) bool {
	name := cmd.Name()
	return strings.EqualFold(name, "get") || strings.EqualFold(name, "mget")
}
