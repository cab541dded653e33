package cdc_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gorm-writethrough/writethrough/cdc"
)

// BenchmarkLag measures commit-to-invalidation lag: one writer bypasses
// GORM (pgx, autocommit UPDATE) at a fixed rate while a consumer runs; the
// lag of each transaction is AppliedAt - CommitTime (Config.OnApply).
//
//	go test -run XXX -bench Lag -benchtime 2000x ./cdc
func BenchmarkLag(b *testing.B) {
	for _, rate := range []int{100, 1000, 0} { // 0: as fast as one writer goes
		name := fmt.Sprintf("rate=%d", rate)
		if rate == 0 {
			name = "rate=max"
		}
		b.Run(name, func(b *testing.B) {
			r := newRig(b, &Account{})
			var mu sync.Mutex
			var lags []time.Duration
			r.cfg.OnApply = func(a cdc.Applied) {
				mu.Lock()
				lags = append(lags, a.AppliedAt.Sub(a.CommitTime))
				mu.Unlock()
			}
			const rows = 1000
			r.exec("INSERT INTO accounts (id, owner, balance) SELECT g, 'o', 0 FROM generate_series(1, $1) g", rows)
			r.start()
			r.caughtUp()
			mu.Lock()
			lags = lags[:0]
			mu.Unlock()
			pool, err := pgxpool.New(context.Background(), r.dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			var tick <-chan time.Time
			if rate > 0 {
				t := time.NewTicker(time.Second / time.Duration(rate))
				defer t.Stop()
				tick = t.C
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				if tick != nil {
					<-tick
				}
				if _, err := pool.Exec(context.Background(), "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1+i%rows); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			r.caughtUp()
			b.StopTimer()
			mu.Lock()
			defer mu.Unlock()
			if len(lags) == 0 {
				b.Fatal("no transaction applied")
			}
			slices.Sort(lags)
			pct := func(p float64) float64 { return float64(lags[int(p*float64(len(lags)-1))].Microseconds()) / 1000 }
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(lags[len(lags)-1].Microseconds())/1000, "max-ms")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "writes/s")
		})
	}
}
