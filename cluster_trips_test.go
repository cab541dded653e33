package writethrough_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// meetWithin bounds how long the first node's round trip of a batch waits
// for the other owners' to start: generous, since they only have to be
// scheduled, and spent in full only when the batch is sent node by node.
const meetWithin = 10 * time.Second

// A batch read on a Redis Cluster (issue 13) is split by hash slot and sent
// to the masters that own its keys concurrently, one round trip per master:
// GetMany and a cached Find of 100 keys, spread over the three masters and
// over two of them. Round trips are counted by hooks on the cluster
// client's node clients, which see each node's share of a pipeline.
func TestClusterBatchReadIsOneRoundTripPerNode(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	rdb := c.Client(t)
	trips := watchNodeTrips(rdb) // before the first command creates the node clients
	db, sqls := openDB(t, nil)
	// Timeout above meetWithin: a round trip held at the meeting must not
	// time out and turn the batch into database reads.
	install(t, db, rdb, writethrough.Config{Prefix: "trips", DrainInterval: -1, Timeout: 3 * meetWithin})
	require.NoError(t, db.AutoMigrate(&User{}))
	ctx := context.Background()

	users := make([]User, 100)
	for i := range users {
		users[i] = User{Email: fmt.Sprintf("trip%d@x", i), Name: "n"}
	}
	require.NoError(t, db.Create(&users).Error)
	ids := make([]uint, len(users))
	keyOf := map[uint]string{}
	for i, u := range users {
		ids[i] = u.ID
		en, err := writethrough.Inspect(ctx, db, &User{}, u.ID)
		require.NoError(t, err)
		require.Equal(t, writethrough.EntryCommitted, en.State, "the create installed %s", en.Key)
		keyOf[u.ID] = en.Key
	}
	owners := func(ids []uint) map[string][]string {
		m := map[string][]string{}
		for _, id := range ids {
			node, err := rdb.MasterForKey(ctx, keyOf[id])
			require.NoError(t, err)
			m[node.Options().Addr] = append(m[node.Options().Addr], keyOf[id])
		}
		return m
	}
	all := owners(ids)
	require.Len(t, all, 3, "the 100 keys span every master")
	var spared string // a master that owns none of the second batch's keys
	for addr := range all {
		spared = addr
		break
	}
	var two []uint
	for _, id := range ids {
		if !slices.Contains(all[spared], keyOf[id]) {
			two = append(two, id)
		}
	}
	require.Len(t, owners(two), 2)

	reads := []struct {
		name string
		read func(ids []uint) (int, error)
	}{
		{"GetMany", func(ids []uint) (int, error) {
			keys := make([]any, len(ids))
			for i, id := range ids {
				keys[i] = id
			}
			got, err := writethrough.GetMany[User](ctx, db, keys...)
			return len(got), err
		}},
		{"Find", func(ids []uint) (int, error) {
			var got []User
			err := db.Scopes(writethrough.Cached).Find(&got, ids).Error
			return len(got), err
		}},
	}
	batches := []struct {
		name string
		ids  []uint
	}{
		{"three masters", ids},
		{"two masters", two},
	}
	for _, r := range reads {
		for _, b := range batches {
			t.Run(r.name+"/"+b.name, func(t *testing.T) {
				own := owners(b.ids)
				trips.arm(len(own), meetWithin)
				before := sqls.Load()
				n, err := r.read(b.ids)
				got := trips.disarm()
				require.NoError(t, err)
				assert.Equal(t, len(b.ids), n)
				assert.Equal(t, before, sqls.Load(), "every key was a hit")
				assert.Empty(t, got.problems(own))
			})
		}
	}

	// The check catches a batch sent key by key, and one sent node by node.
	// Sent in sequence, round trips can never meet: a short wait proves it
	// as well as a long one.
	t.Run("caught/key by key", func(t *testing.T) {
		trips.arm(len(all), 100*time.Millisecond)
		for _, id := range ids {
			require.NoError(t, rdb.Get(ctx, keyOf[id]).Err())
		}
		got := trips.disarm()
		problems := got.problems(all)
		for addr, keys := range all {
			assert.Contains(t, problems, fmt.Sprintf("%s owns %d keys of the batch and got %d round trips for them, want 1", addr, len(keys), len(keys)))
		}
		assert.Contains(t, problems, "the owners' round trips were never in flight together")
	})
	t.Run("caught/node by node", func(t *testing.T) {
		trips.arm(len(all), 100*time.Millisecond)
		for _, keys := range all {
			node, err := rdb.MasterForKey(ctx, keys[0])
			require.NoError(t, err)
			_, err = node.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for _, k := range keys {
					pipe.Get(ctx, k)
				}
				return nil
			})
			require.NoError(t, err)
		}
		got := trips.disarm()
		assert.Equal(t, []string{"the owners' round trips were never in flight together"}, got.problems(all))
	})
}

// nodeTrips records the round trips carrying GETs that each node client of a
// cluster client makes while armed, and makes them meet: each waits until
// every owner of the batch has one in flight, or until a deadline.
type nodeTrips struct {
	mu      sync.Mutex // protects the fields below
	armed   bool
	trips   map[string]int      // node address -> round trips carrying GETs
	keys    map[string][]string // node address -> keys those GETs read
	want    int                 // owners expected at the meeting
	met     map[string]bool     // owners arrived at the meeting
	open    chan struct{}       // closed when the meeting is over
	missed  bool                // the meeting ended by its deadline
	within  time.Duration
	started bool // the meeting's deadline runs
}

// tripReport is what nodeTrips saw between arm and disarm.
type tripReport struct {
	trips  map[string]int
	keys   map[string][]string
	missed bool
}

// watchNodeTrips hooks every node client rdb creates from now on.
func watchNodeTrips(rdb *redis.ClusterClient) *nodeTrips {
	tr := &nodeTrips{}
	rdb.OnNewNode(func(node *redis.Client) {
		node.AddHook(tripHook{addr: node.Options().Addr, tr: tr})
	})
	return tr
}

// arm starts counting a batch whose keys live on owners nodes, which must
// all have a round trip in flight within the given time.
func (tr *nodeTrips) arm(owners int, within time.Duration) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.armed, tr.want, tr.within, tr.missed, tr.started = true, owners, within, false, false
	tr.trips, tr.keys, tr.met = map[string]int{}, map[string][]string{}, map[string]bool{}
	tr.open = make(chan struct{})
}

// disarm stops counting and returns what was seen.
func (tr *nodeTrips) disarm() tripReport {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.armed = false
	return tripReport{trips: tr.trips, keys: tr.keys, missed: tr.missed}
}

// trip records one round trip of node addr carrying GETs of keys, then waits
// at the meeting.
func (tr *nodeTrips) trip(addr string, keys []string) {
	tr.mu.Lock()
	if !tr.armed {
		tr.mu.Unlock()
		return
	}
	tr.trips[addr]++
	tr.keys[addr] = append(tr.keys[addr], keys...)
	tr.met[addr] = true
	open := tr.open
	first := !tr.started
	tr.started = true
	if len(tr.met) == tr.want {
		select {
		case <-open:
		default:
			close(open)
		}
	}
	within := tr.within
	tr.mu.Unlock()
	if !first {
		<-open
		return
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-open:
	case <-timer.C:
		tr.mu.Lock()
		select {
		case <-open:
		default:
			tr.missed = true
			close(open)
		}
		tr.mu.Unlock()
	}
}

// problems lists how the round trips depart from one per owning node (owners
// maps each master's address to the batch's keys it owns), with the owners'
// round trips in flight together and nothing sent elsewhere.
func (r tripReport) problems(owners map[string][]string) []string {
	var out []string
	for addr, keys := range owners {
		if n := r.trips[addr]; n != 1 {
			out = append(out, fmt.Sprintf("%s owns %d keys of the batch and got %d round trips for them, want 1", addr, len(keys), n))
		}
		if got, want := slices.Sorted(slices.Values(r.keys[addr])), slices.Sorted(slices.Values(keys)); !slices.Equal(got, want) {
			out = append(out, fmt.Sprintf("%s was asked for %d keys, want its own %d", addr, len(got), len(want)))
		}
	}
	for addr, n := range r.trips {
		if _, ok := owners[addr]; !ok {
			out = append(out, fmt.Sprintf("%s owns none of the batch and got %d round trips", addr, n))
		}
	}
	if r.missed {
		out = append(out, "the owners' round trips were never in flight together")
	}
	return out
}

// tripHook feeds one node client's GETs to nodeTrips: a pipeline holding
// GETs is one round trip, and so is a GET sent alone.
type tripHook struct {
	addr string
	tr   *nodeTrips
}

func (h tripHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h tripHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if keys := getKeys([]redis.Cmder{cmd}); len(keys) > 0 {
			h.tr.trip(h.addr, keys)
		}
		return next(ctx, cmd)
	}
}

func (h tripHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if keys := getKeys(cmds); len(keys) > 0 {
			h.tr.trip(h.addr, keys)
		}
		return next(ctx, cmds)
	}
}

// getKeys returns the keys of the GET and MGET commands among cmds.
func getKeys(cmds []redis.Cmder) []string {
	var keys []string
	for _, cmd := range cmds {
		switch strings.ToLower(cmd.Name()) {
		case "get", "mget":
			for _, a := range cmd.Args()[1:] {
				keys = append(keys, fmt.Sprint(a))
			}
		}
	}
	return keys
}
