package bench_test

// Benchmarks of the change-data-capture consumer (package cdc) on the
// users table:
//
//	go test -run XXX -bench CDC -benchtime 20000x -count 3 .
//
// BenchmarkCDCLag: commit-to-invalidation lag while four writers bypass
// GORM (pgx, autocommit UPDATE) at 100, 1,000 and as many writes/s as they
// reach. BenchmarkCDCHitRatio: the plugin's cache hit ratio under a 95/5
// GORM workload without a consumer, with one (Config.CDC marks the plugin's
// own writes), and with one but no marks. BenchmarkCDCConsumerCPU: the CPU
// the consumer spends per change, measured on the sidecar command in a
// process of its own.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/bench"
	"github.com/gorm-writethrough/writethrough/cdc"
)

// cdcPrefix is the key namespace of the plugin and consumers here, apart
// from the other contenders': a new slot purges it.
const cdcPrefix = bench.Prefix + ":cdc"

// cdcName names the slot and publication of the in-process consumers.
const cdcName = "wtbench_cdc"

// cdcWriters is how many connections write around the plugin at once.
const cdcWriters = 4

// requireLogical skips when the server cannot decode changes.
func requireLogical(b *testing.B, e *env) {
	b.Helper()
	var level string
	if err := e.pool.QueryRow(context.Background(), "SHOW wal_level").Scan(&level); err != nil {
		b.Fatal(err)
	}
	if level != "logical" {
		b.Skipf("wal_level is %s; the cdc benchmarks need logical (make services sets it)", level)
	}
}

// dropSlot removes a slot and publication named name, waiting for a
// stopped consumer's walsender to let go of the slot.
func dropSlot(b *testing.B, e *env, name string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		_, err := e.pool.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", name)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("drop slot %s: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := e.pool.Exec(ctx, "DROP PUBLICATION IF EXISTS "+name); err != nil {
		b.Fatal(err)
	}
}

// startConsumer runs an in-process consumer on a new slot until stop.
func startConsumer(b *testing.B, e *env, onApply func(cdc.Applied)) (c *cdc.Consumer, stop func()) {
	b.Helper()
	requireLogical(b, e)
	dropSlot(b, e, cdcName) // a slot an interrupted run left
	c, err := cdc.New(nil, cdc.Config{
		Redis: e.rdb, Prefix: cdcPrefix, Tables: []cdc.Table{{Name: "users", Schema: bench.Schema}},
		ConnString: bench.DatabaseURL(), Slot: cdcName, Publication: cdcName, OnApply: onApply,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for c.Stats().State != cdc.StateStreaming {
		if time.Now().After(deadline) {
			cancel()
			b.Fatalf("consumer not streaming: %+v", c.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c, func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
		dropSlot(b, e, cdcName)
	}
}

// syncConsumer waits until c applied every change committed so far.
func syncConsumer(b *testing.B, c *cdc.Consumer) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Sync(ctx); err != nil {
		b.Fatal(err)
	}
}

// rawWrites runs n autocommit UPDATEs of random rows from cdcWriters
// connections, at rate writes/s in all (0: as fast as they go), and
// returns the rate reached. rows > 1 updates that many rows per
// transaction.
func rawWrites(b *testing.B, e *env, n, rate, rows int) float64 {
	b.Helper()
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for w := range cdcWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 0xcdc))
			var tick <-chan time.Time
			if rate > 0 {
				t := time.NewTicker(time.Second * cdcWriters / time.Duration(rate))
				defer t.Stop()
				tick = t.C
			}
			ids := make([]int64, rows)
			for left.Add(-1) >= 0 {
				if tick != nil {
					<-tick
				}
				for i := range ids {
					ids[i] = r.Int64N(e.rows) + 1
				}
				if _, err := e.pool.Exec(context.Background(),
					"UPDATE users SET logins = logins + 1 WHERE id = ANY($1)", ids); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

func BenchmarkCDCLag(b *testing.B) {
	e := getEnv(b)
	for _, rate := range []int{100, 1000, 0} {
		name := fmt.Sprintf("writers=%d/rate=%d", cdcWriters, rate)
		if rate == 0 {
			name = fmt.Sprintf("writers=%d/rate=max", cdcWriters)
		}
		b.Run(name, func(b *testing.B) {
			var mu sync.Mutex
			var lags []time.Duration
			c, stop := startConsumer(b, e, func(a cdc.Applied) {
				mu.Lock()
				lags = append(lags, a.AppliedAt.Sub(a.CommitTime))
				mu.Unlock()
			})
			defer stop()
			syncConsumer(b, c)
			mu.Lock()
			lags = lags[:0]
			mu.Unlock()
			b.ResetTimer()
			reached := rawWrites(b, e, b.N, rate, 1)
			syncConsumer(b, c)
			b.StopTimer()
			mu.Lock()
			defer mu.Unlock()
			if len(lags) < b.N {
				b.Fatalf("%d transactions applied, %d written", len(lags), b.N)
			}
			slices.Sort(lags)
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(lags[len(lags)/2]), "p50-ms")
			b.ReportMetric(ms(lags[len(lags)*99/100]), "p99-ms")
			b.ReportMetric(ms(lags[len(lags)-1]), "max-ms")
			b.ReportMetric(reached, "writes/s")
		})
	}
}

// cdcHot is the number of rows the hit-ratio workload reads and writes:
// all of them cached before it starts, so that a miss is a write's doing.
const cdcHot = 10_000

func BenchmarkCDCHitRatio(b *testing.B) {
	e := getEnv(b)
	hot := min(e.rows, cdcHot)
	for _, mode := range []string{"consumer=none", "consumer=marked", "consumer=unmarked"} {
		b.Run(mode, func(b *testing.B) {
			db, err := gorm.Open(postgres.New(postgres.Config{Conn: e.sqlDB}), &gorm.Config{Logger: logger.Discard})
			if err != nil {
				b.Fatal(err)
			}
			p := writethrough.New(e.rdb, writethrough.Config{
				Prefix: cdcPrefix, Models: []any{&bench.User{}}, CDC: mode == "consumer=marked",
			})
			if err := db.Use(p); err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			var c *cdc.Consumer
			if mode != "consumer=none" {
				var stop func()
				c, stop = startConsumer(b, e, nil) // a new slot: purges cdcPrefix
				defer stop()
			}
			ctx := context.Background()
			keys := make([]any, 0, 500)
			for id := int64(1); id <= hot; id++ {
				keys = append(keys, id)
				if len(keys) == cap(keys) || id == hot {
					if _, err := writethrough.GetMany[bench.User](ctx, db, keys...); err != nil {
						b.Fatal(err)
					}
					keys = keys[:0]
				}
			}
			before := p.Stats()
			var cBefore cdc.Stats
			if c != nil {
				syncConsumer(b, c)
				cBefore = c.Stats()
			}
			var writes atomic.Int64
			var seed atomic.Uint64
			b.SetParallelism(4) // 8 goroutines on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(seed.Add(1), 0x95))
				for pb.Next() {
					id := r.Int64N(hot) + 1
					if r.IntN(100) < 5 {
						writes.Add(1)
						if err := db.Model(&bench.User{ID: id}).Update("balance", gorm.Expr("balance + 1")).Error; err != nil {
							b.Error(err)
							return
						}
						continue
					}
					var u bench.User
					if err := db.Scopes(writethrough.Cached).First(&u, id).Error; err != nil {
						b.Error(err)
						return
					}
				}
			})
			if c != nil {
				syncConsumer(b, c)
			}
			b.StopTimer()
			st := p.Stats()
			hits, misses := st.Hits-before.Hits, st.Misses-before.Misses
			if hits+misses == 0 {
				b.Fatal("no cached read")
			}
			b.ReportMetric(100*float64(hits)/float64(hits+misses), "hit-%")
			b.ReportMetric(float64(misses)/float64(max(writes.Load(), 1)), "misses/write")
			if c != nil {
				cs := c.Stats()
				skipped, applied := cs.KeysSkipped-cBefore.KeysSkipped, cs.KeysApplied-cBefore.KeysApplied
				b.ReportMetric(100*float64(skipped)/float64(max(skipped+applied, 1)), "skipped-%")
			}
		})
	}
}

// sidecar builds cmd/writethrough-cdc once per run.
var sidecar = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "wtbench-cdc-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "writethrough-cdc")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/gorm-writethrough/writethrough/cmd/writethrough-cdc").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// procCPU is the CPU time, user and system, that process pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which ends with ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/pid/stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

// slotCaughtUp waits until slot has confirmed every change written so far.
func slotCaughtUp(b *testing.B, e *env, slot string) {
	b.Helper()
	ctx := context.Background()
	var now string
	if err := e.pool.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&now); err != nil {
		b.Fatal(err)
	}
	want, _ := pglogrepl.ParseLSN(now)
	deadline := time.Now().Add(time.Minute)
	for {
		var got string
		if err := e.pool.QueryRow(ctx, "SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&got); err != nil {
			b.Fatal(err)
		}
		if l, _ := pglogrepl.ParseLSN(got); l >= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("slot %s confirmed %s, want %s", slot, got, now)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func BenchmarkCDCConsumerCPU(b *testing.B) {
	e := getEnv(b)
	requireLogical(b, e)
	bin, err := sidecar()
	if err != nil {
		b.Fatal(err)
	}
	const name = "wtbench_cdcside"
	for _, rows := range []int{1, 10} {
		b.Run(fmt.Sprintf("rows/txn=%d", rows), func(b *testing.B) {
			dropSlot(b, e, name)
			defer dropSlot(b, e, name)
			cmd := exec.Command(bin, "-database", bench.DatabaseURL(), "-redis", bench.RedisURL(),
				"-schema", bench.Schema, "-tables", "users", "-prefix", cdcPrefix,
				"-slot", name, "-publication", name, "-stats", "0")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() {
				_ = cmd.Process.Signal(syscall.SIGINT)
				_ = cmd.Wait()
			}()
			streaming := make(chan struct{})
			go func() {
				sc := bufio.NewScanner(stderr)
				once := sync.OnceFunc(func() { close(streaming) })
				for sc.Scan() {
					if strings.Contains(sc.Text(), `"cdc: streaming"`) {
						once()
					}
				}
			}()
			select {
			case <-streaming:
			case <-time.After(30 * time.Second):
				b.Fatal("the sidecar is not streaming")
			}
			slotCaughtUp(b, e, name)
			cpu0, err := procCPU(cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			rawWrites(b, e, b.N, 0, rows)
			slotCaughtUp(b, e, name)
			b.StopTimer()
			cpu1, err := procCPU(cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N*rows), "cpu-us/change")
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "cpu-us/txn")
		})
	}
}
