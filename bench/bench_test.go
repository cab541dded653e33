package bench_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/gorm-writethrough/writethrough/bench"
)

// Every benchmark reports, besides ns/op and allocations:
//
//	p50-us, p99-us  one-goroutine latency percentiles (latency workloads)
//	ops/s           operations per second (throughput workloads)
//	cpu-us/op       process CPU time (user+system) per operation
//	redis/op        Redis round trips per operation (a pipeline counts once)
//	sql/op          SQL statements per operation, BEGIN and COMMIT included
//
// The machine these run on is shared and noisy, so a contender's benchmark
// also measures its references, interleaved with its own operations: the
// floor (floor-p50-us, floor-ops/s) and, for a row whose target names
// another contender, that contender (base-p50-us, base-ops/s). A ratio to
// a reference compares two measurements made under the same conditions,
// milliseconds apart.

// block is how many operations a latency benchmark runs before switching
// to the next reference.
const block = 8

// refStride shifts the keys a reference reads away from the keys the
// contender has just read: reading the same rows right after it would find
// them warm in Redis's and the CPU's caches, and flatter the reference.
const refStride = 1021

// phase is how long a throughput benchmark runs one party (the contender
// or a reference) before draining and switching to the next.
const phase = 50 * time.Millisecond

// targetBases names, for the rows whose target compares them with another
// contender than the floor, that contender ("workload/contender" →
// contender; throughput rows by mix).
var targetBases = map[string]string{
	"Hit/wt-scope":            "gorm-dryrun+floor",
	"Update/wt-scope":         "naive-wt",
	"Update/wt-async":         "naive-wt",
	"Throughput/r95/wt-scope": "naive-wt",
	"Throughput/r95/wt-get":   "naive-wt",
}

// A ref is a contender measured inside another's benchmark; name prefixes
// its metrics.
type ref struct {
	name string // "floor" or "base"
	c    contender
}

// refsFor returns the references of c in workload w: the floor, then the
// target's base if c's row has one.
func refsFor(cs []contender, w string, c contender) []ref {
	var refs []ref
	if c.name != cs[0].name {
		refs = append(refs, ref{"floor", cs[0]})
	}
	if base, ok := targetBases[w+"/"+c.name]; ok {
		for _, o := range cs {
			if o.name == base {
				refs = append(refs, ref{"base", o})
			}
		}
	}
	return refs
}

// opFunc is the i-th operation of a latency benchmark.
type opFunc func(ctx context.Context, i int) error

// latency runs b.N operations of op, timed one by one, and as many of each
// reference, interleaved in blocks, untimed and left out of allocations.
// prep, if not nil, runs untimed before each operation of op.
func latency(b *testing.B, e *env, op, prep opFunc, refs []ref, refOp func(contender) opFunc) {
	ctx := context.Background()
	m := startMeter(b, e, true)
	refSamples := make([][]time.Duration, len(refs))
	for i := range refs {
		refSamples[i] = make([]time.Duration, 0, b.N)
	}
	refOps := make([]opFunc, len(refs))
	for i, r := range refs {
		refOps[i] = refOp(r.c)
	}
	for i := 0; i < b.N; i += block {
		n := min(block, b.N-i)
		for j := i; j < i+n; j++ {
			if prep != nil {
				m.pause()
				if err := prep(ctx, j); err != nil {
					b.Fatal(err)
				}
				m.resume()
			}
			t0 := time.Now()
			if err := op(ctx, j); err != nil {
				b.Fatal(err)
			}
			m.observe(time.Since(t0))
		}
		if len(refs) == 0 {
			continue
		}
		m.pause()
		for k, rop := range refOps {
			for j := i; j < i+n; j++ {
				t0 := time.Now()
				if err := rop(ctx, j+(k+1)*refStride); err != nil {
					b.Fatalf("%s %s: %v", refs[k].name, refs[k].c.name, err)
				}
				refSamples[k] = append(refSamples[k], time.Since(t0))
			}
		}
		m.resume()
	}
	m.done(b.N)
	for k, r := range refs {
		slices.Sort(refSamples[k])
		b.ReportMetric(percentile(refSamples[k], 50), r.name+"-p50-us")
	}
}

// byID adapts a per-key operation to an opFunc, cycling through ids.
func byID(f func(ctx context.Context, id int64) error, ids []int64) opFunc {
	return func(ctx context.Context, i int) error { return f(ctx, ids[i%len(ids)]) }
}

// BenchmarkHit reads one cached row by key.
func BenchmarkHit(b *testing.B) {
	e := getEnv(b)
	cs := mustContenders(b, e)
	for _, c := range cs {
		if c.read == nil {
			continue
		}
		b.Run(c.name, func(b *testing.B) {
			ids := randomIDs(e.rows, 4096, 1)
			reads := func(c contender) opFunc { return byID(c.read, ids) }
			latency(b, e, reads(c), nil, refsFor(cs, "Hit", c), reads)
		})
	}
}

// BenchmarkMiss reads one row whose key was just evicted, so the read goes
// to the database and fills the cache. The eviction is not timed. The
// paired floor is a hit.
func BenchmarkMiss(b *testing.B) {
	e := getEnv(b)
	cs := mustContenders(b, e)
	for _, c := range cs {
		if c.evict == nil || c.read == nil {
			continue
		}
		b.Run(c.name, func(b *testing.B) {
			ids := randomIDs(e.rows, 4096, 2)
			reads := func(c contender) opFunc { return byID(c.read, ids) }
			latency(b, e, reads(c), byID(c.evict, ids), refsFor(cs, "Miss", c), reads)
		})
	}
}

// BenchmarkBatch10 reads 10 cached rows by key.
func BenchmarkBatch10(b *testing.B) { benchBatch(b, "Batch10", 10) }

// BenchmarkBatch100 reads 100 cached rows by key.
func BenchmarkBatch100(b *testing.B) { benchBatch(b, "Batch100", 100) }

func benchBatch(b *testing.B, w string, size int) {
	e := getEnv(b)
	cs := mustContenders(b, e)
	for _, c := range cs {
		if c.batch == nil {
			continue
		}
		b.Run(c.name, func(b *testing.B) {
			batches := randomBatches(e.rows, 64, size)
			reads := func(c contender) opFunc {
				return func(ctx context.Context, i int) error { return c.batch(ctx, batches[i%len(batches)]) }
			}
			latency(b, e, reads(c), nil, refsFor(cs, w, c), reads)
		})
	}
}

// BenchmarkUpdate adds one to a row's balance by key. GORM contenders run
// it in GORM's implicit transaction. The paired floor is a SET.
func BenchmarkUpdate(b *testing.B) {
	e := getEnv(b)
	cs := mustContenders(b, e)
	for _, c := range cs {
		if c.update == nil || c.alias == "-" {
			continue
		}
		name := c.name
		if c.alias != "" {
			name = c.alias
		}
		b.Run(name, func(b *testing.B) {
			ids := randomIDs(e.rows, 4096, 3)
			updates := func(c contender) opFunc { return byID(c.update, ids) }
			latency(b, e, updates(c), nil, refsFor(cs, "Update", c), updates)
		})
	}
}

// BenchmarkThroughput runs 8 and 64 goroutines over uniform and Zipf keys,
// with 100/0, 95/5 and 50/50 read/write mixes.
func BenchmarkThroughput(b *testing.B) {
	e := getEnv(b)
	cs := mustContenders(b, e)
	mixes := []struct {
		name   string
		writes int // percent
	}{{"r100", 0}, {"r95", 5}, {"r50", 50}}
	for _, mix := range mixes {
		for _, zipf := range []bool{false, true} {
			for _, g := range []int{8, 64} {
				dist := "uniform"
				if zipf {
					dist = "zipf"
				}
				for _, c := range cs {
					if !c.mixed {
						continue
					}
					refs := refsFor(cs, "Throughput/"+mix.name, c)
					name := fmt.Sprintf("%s-%s-g%d/%s", mix.name, dist, g, c.name)
					b.Run(name, func(b *testing.B) {
						benchMix(b, e, c, refs, g, mix.writes, zipf)
					})
				}
			}
		}
	}
}

// zipfS is the Zipf exponent of the skewed workloads (math/rand/v2 needs
// s > 1): over 100,000 keys the hottest takes 13% of the operations and
// the ten hottest 36%.
const zipfS = 1.1

// benchMix runs the mix on c with goroutines goroutines. With references,
// time is cut in phases that rotate between c and each reference running
// the same mix; ops/s (and floor-ops/s, base-ops/s) count each party's
// operations over its own phases, and the other per-operation figures mix
// all parties.
func benchMix(b *testing.B, e *env, c contender, refs []ref, goroutines, writePct int, zipf bool) {
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((goroutines + procs - 1) / procs)
	parties := []contender{c}
	for _, r := range refs {
		parties = append(parties, r.c)
	}
	ph := newPhaser(len(parties), phase)
	var seed atomic.Uint64
	var hits0, misses0, pending0 uint64
	if c.hits != nil {
		hits0, misses0, pending0 = c.hits()
	}
	m := startMeter(b, e, false)
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 0x5eed))
		var z *rand.Zipf
		if zipf {
			z = rand.NewZipf(r, zipfS, 1, uint64(e.rows-1))
		}
		ctx := context.Background()
		for pb.Next() {
			var id int64
			if z != nil {
				id = int64(z.Uint64()) + 1
			} else {
				id = r.Int64N(e.rows) + 1
			}
			write := writePct > 0 && r.IntN(100) < writePct
			who := ph.enter()
			var err error
			if write {
				err = parties[who].update(ctx, id)
			} else {
				err = parties[who].read(ctx, id)
			}
			ph.exit(who)
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	m.done(b.N)
	if c.hits != nil {
		h, ms, pd := c.hits()
		if h, ms, pd = h-hits0, ms-misses0, pd-pending0; h+ms > 0 {
			b.ReportMetric(100*float64(h)/float64(h+ms), "hit-%")
			// Reads that found a write in flight: the misses the write
			// protocol costs (the others are fills after a deleted entry).
			b.ReportMetric(100*float64(pd)/float64(h+ms), "pending-%")
		}
	}
	if len(refs) == 0 {
		return
	}
	rates := ph.rates()
	b.ReportMetric(rates[0], "ops/s")
	for i, r := range refs {
		if rates[i+1] > 0 {
			b.ReportMetric(rates[i+1], r.name+"-ops/s")
		}
	}
}

// phaser rotates goroutines between parties in phases of fixed length.
// A phase ends by draining: no operation starts until those of the ending
// phase have finished, so that each party's time holds its own operations
// only.
type phaser struct {
	length time.Duration

	mu       sync.Mutex // protects the fields below
	cond     *sync.Cond // signalled when a phase drains or switches
	cur      int        // phases so far; the party is cur % len(ops)
	since    time.Time  // when the current phase began
	draining bool       // the current phase is over: wait for inflight == 0
	inflight int
	ops      []int64         // operations per party
	spent    []time.Duration // phase time per party
}

func newPhaser(parties int, length time.Duration) *phaser {
	p := &phaser{length: length, since: time.Now(), ops: make([]int64, parties), spent: make([]time.Duration, parties)}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// enter waits until an operation may start and returns its party.
func (p *phaser) enter() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ops) == 1 {
		p.inflight++
		return 0
	}
	for p.draining || time.Since(p.since) >= p.length {
		p.draining = true
		if p.inflight == 0 {
			now := time.Now()
			p.spent[p.cur%len(p.ops)] += now.Sub(p.since)
			p.cur, p.since, p.draining = p.cur+1, now, false
			p.cond.Broadcast()
			break
		}
		p.cond.Wait()
	}
	p.inflight++
	return p.cur % len(p.ops)
}

// exit records the end of an operation of party.
func (p *phaser) exit(party int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inflight--
	p.ops[party]++
	if p.draining && p.inflight == 0 {
		p.cond.Broadcast()
	}
}

// rates returns each party's operations per second of its own phases.
func (p *phaser) rates() []float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	spent := slices.Clone(p.spent)
	spent[p.cur%len(p.ops)] += time.Since(p.since)
	rates := make([]float64, len(p.ops))
	for i, n := range p.ops {
		if spent[i] > 0 {
			rates[i] = float64(n) / spent[i].Seconds()
		}
	}
	return rates
}

// BenchmarkMemory measures what one cached row costs Redis (MEMORY USAGE,
// key and overhead included) against the row's plain msgpack encoding.
// Its ns/op means nothing; see the B/row metrics.
func BenchmarkMemory(b *testing.B) {
	e := getEnv(b)
	for _, c := range mustContenders(b, e) {
		if c.key == nil || c.alias == "-" {
			continue
		}
		name := c.name
		if c.alias != "" {
			name = c.alias
		}
		b.Run(name, func(b *testing.B) {
			mem, err := e.memory(c)
			if err != nil {
				b.Fatal(err)
			}
			for range b.N {
			}
			b.ReportMetric(mem.redis, "redis-B/row")
			b.ReportMetric(mem.value, "value-B/row")
			b.ReportMetric(mem.payload, "payload-B/row")
		})
	}
}

type rowMemory struct{ redis, value, payload float64 }

var memoryCache = map[string]rowMemory{}

func (e *env) memory(c contender) (rowMemory, error) {
	if m, ok := memoryCache[c.name]; ok {
		return m, nil
	}
	ctx := context.Background()
	var sum rowMemory
	ids := randomIDs(e.rows, 200, 4)
	for _, id := range ids {
		var u bench.User
		if err := e.pool.QueryRow(ctx, pgxSelect, id).Scan(scanDest(&u)...); err != nil {
			return sum, err
		}
		payload, err := msgpack.Marshal(&u)
		if err != nil {
			return sum, err
		}
		// Make sure the key holds this very row: a write workload may
		// have replaced it, or the floor's writes a made-up row.
		if c.evict != nil {
			if err := c.evict(ctx, id); err != nil {
				return sum, err
			}
		} else if err := e.rdb.Set(ctx, c.key(id), payload, rowTTL).Err(); err != nil {
			return sum, err
		}
		if err := c.read(ctx, id); err != nil {
			return sum, err
		}
		usage, err := e.rdb.MemoryUsage(ctx, c.key(id), 0).Result()
		if err != nil {
			return sum, fmt.Errorf("MEMORY USAGE %s: %w", c.key(id), err)
		}
		value, err := e.rdb.StrLen(ctx, c.key(id)).Result()
		if err != nil {
			return sum, err
		}
		sum.redis += float64(usage)
		sum.value += float64(value)
		sum.payload += float64(len(payload))
	}
	n := float64(len(ids))
	m := rowMemory{sum.redis / n, sum.value / n, sum.payload / n}
	memoryCache[c.name] = m
	return m, nil
}

func mustContenders(b *testing.B, e *env) []contender {
	b.Helper()
	cs, err := e.contenders()
	if err != nil {
		b.Fatal(err)
	}
	return cs
}

// randomIDs returns n ids drawn uniformly from 1..rows, the same for every
// contender.
func randomIDs(rows int64, n int, seed uint64) []int64 {
	r := rand.New(rand.NewPCG(seed, 0x1d5))
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = r.Int64N(rows) + 1
	}
	return ids
}

// randomBatches returns n batches of size distinct ids from 1..rows.
func randomBatches(rows int64, n, size int) [][]int64 {
	r := rand.New(rand.NewPCG(uint64(size), 0xba7c4))
	batches := make([][]int64, n)
	for i := range batches {
		seen := make(map[int64]bool, size)
		for len(batches[i]) < size {
			id := r.Int64N(rows) + 1
			if !seen[id] {
				seen[id] = true
				batches[i] = append(batches[i], id)
			}
		}
	}
	return batches
}

// meter measures what testing.B does not: latency percentiles, CPU time
// and round trips per operation, leaving out the paused stretches.
type meter struct {
	b       *testing.B
	e       *env
	samples []time.Duration // per-operation latency, when sampled
	start   time.Time

	cpu, paused     time.Duration // process CPU at start; CPU spent paused
	redis, sql      int64         // counters at start
	pRedis, pSQL    int64         // round trips made while paused
	pauseCPU        time.Duration // CPU at the last pause
	pauseR, pauseS  int64         // counters at the last pause
	pausedWallClock time.Duration
	pauseAt         time.Time
}

func startMeter(b *testing.B, e *env, sample bool) *meter {
	b.ReportAllocs()
	m := &meter{b: b, e: e}
	if sample {
		m.samples = make([]time.Duration, 0, b.N)
	}
	b.ResetTimer()
	m.cpu, m.redis, m.sql = cpuTime(), e.redisCalls.Load(), e.sqlCalls.Load()
	m.start = time.Now()
	return m
}

func (m *meter) observe(d time.Duration) { m.samples = append(m.samples, d) }

func (m *meter) pause() {
	m.b.StopTimer()
	m.pauseAt = time.Now()
	m.pauseCPU, m.pauseR, m.pauseS = cpuTime(), m.e.redisCalls.Load(), m.e.sqlCalls.Load()
}

func (m *meter) resume() {
	m.paused += cpuTime() - m.pauseCPU
	m.pRedis += m.e.redisCalls.Load() - m.pauseR
	m.pSQL += m.e.sqlCalls.Load() - m.pauseS
	m.pausedWallClock += time.Since(m.pauseAt)
	m.b.StartTimer()
}

func (m *meter) done(ops int) {
	wall := time.Since(m.start) - m.pausedWallClock
	cpu := cpuTime() - m.cpu - m.paused
	redis := m.e.redisCalls.Load() - m.redis - m.pRedis
	sql := m.e.sqlCalls.Load() - m.sql - m.pSQL
	m.b.StopTimer()
	n := float64(ops)
	m.b.ReportMetric(float64(cpu.Nanoseconds())/1e3/n, "cpu-us/op")
	m.b.ReportMetric(float64(redis)/n, "redis/op")
	m.b.ReportMetric(float64(sql)/n, "sql/op")
	if m.samples == nil {
		m.b.ReportMetric(n/wall.Seconds(), "ops/s")
		return
	}
	slices.Sort(m.samples)
	m.b.ReportMetric(percentile(m.samples, 50), "p50-us")
	m.b.ReportMetric(percentile(m.samples, 99), "p99-us")
}

// percentile returns the p-th percentile of sorted samples, in µs.
func percentile(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(len(sorted)*p/100, len(sorted)-1)
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// cpuTime returns the CPU time, user and system, the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
