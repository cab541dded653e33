package main

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestStrategiesSideBySide runs a short workload on every backend available
// and checks what the demo exists to show: the library serves neither stale
// nor phantom balances, cache-aside with a delayed delete serves stale ones,
// and a naive write-through serves balances from rolled-back transfers. The
// probe at the start of every run forces both windows open (a read right
// after a commit, a read right after a rollback), so the last two hold on
// any machine; nothing here depends on how fast it is.
func TestStrategiesSideBySide(t *testing.T) {
	for _, backend := range []string{backendReal, backendEmbedded} {
		t.Run(backend, func(t *testing.T) {
			if backend == backendReal && os.Getenv("DATABASE_URL") == "" && os.Getenv("REDIS_URL") == "" {
				if why := probeDefaults(); why != "" {
					t.Skip(why)
				}
			}
			ctx := context.Background()
			e, err := openEnv(ctx, backend)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := e.close(); err != nil {
					t.Error(err)
				}
			})
			t.Log(e.desc)
			cfg := config{
				Duration:          2 * time.Second,
				Accounts:          6,
				InitialBalance:    1000,
				Writers:           2,
				Readers:           3,
				InvalidationDelay: 300 * time.Millisecond,
				RollbackRatio:     0.2,
				SumInterval:       50 * time.Millisecond,
				Strategies:        strategyNames(),
				Seed:              1,
			}
			results, err := run(ctx, e, cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]result{}
			for _, r := range results {
				t.Logf("%-30s reads %6d  stale %5d (max %v)  phantom %5d  sum≠total %d/%d  wrong at rest %d  transfers %d+%d",
					r.info.title, r.reads, r.stale, r.maxStaleness.Round(time.Millisecond), r.phantom,
					r.sumViolations, r.sumScans, r.wrongAtRest, r.commits, r.rollbacks)
				if r.unexplained > 0 {
					t.Errorf("%s: %d reads returned a row no transfer wrote", r.info.name, r.unexplained)
				}
				if r.readErrors > 0 || r.writeErrors > 0 {
					t.Errorf("%s: %d reads and %d transfers failed, first: %v", r.info.name, r.readErrors, r.writeErrors, r.firstError)
				}
				got[r.info.name] = r
			}
			if r := got["aside"]; r.stale == 0 {
				t.Errorf("cache-aside with a %v delete delay served no stale read", cfg.InvalidationDelay)
			}
			if r := got["naive"]; r.phantom == 0 {
				t.Errorf("naive write-through served no balance from a rolled-back transfer")
			}
			if r := got["writethrough"]; r.stale != 0 || r.phantom != 0 || r.sumViolations != 0 || r.wrongAtRest != 0 {
				t.Errorf("writethrough: %d stale reads (longest %v), %d phantom reads, %d of %d sum scans off, %d accounts wrong at rest; %s",
					r.stale, r.maxStaleness, r.phantom, r.sumViolations, r.sumScans, r.wrongAtRest, r.trouble)
			}
		})
	}
}

// TestJudge pins the checker's definitions on hand-made histories.
func TestJudge(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	v0 := state{balance: 100}
	v1 := state{balance: 90, version: 1, txID: 7}
	rolledBack := state{balance: 50, version: 2, txID: 8}
	h := newHistory()
	h.commit(1, v0, t0)
	h.commit(1, v1, at(10)) // transfer 7 committed; Commit returned at 10ms
	h.abort(8)

	tests := []struct {
		name                        string
		r                           read
		stale, phantom, unexplained int
		maxStaleness                time.Duration
	}{
		{name: "old version read before the commit returned is fresh", r: read{account: 1, state: v0, start: at(9)}},
		{name: "old version read after the commit returned is stale", r: read{account: 1, state: v0, start: at(25)}, stale: 1, maxStaleness: 15 * time.Millisecond},
		{name: "new version read before its commit returned is fresh", r: read{account: 1, state: v1, start: at(5)}},
		{name: "new version read after its commit is fresh", r: read{account: 1, state: v1, start: at(30)}},
		{name: "row of a rolled-back transfer is a phantom", r: read{account: 1, state: rolledBack, start: at(30)}, phantom: 1},
		{name: "row no transfer wrote is unexplained", r: read{account: 1, state: state{balance: 1, version: 1, txID: 7}, start: at(30)}, unexplained: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := h.judge([]read{tc.r}, series{start: t0, bucket: time.Second, n: 1})
			if v.stale != tc.stale || v.phantom != tc.phantom || v.unexplained != tc.unexplained || v.maxStaleness != tc.maxStaleness {
				t.Errorf("got stale %d (max %v), phantom %d, unexplained %d; want %d (max %v), %d, %d",
					v.stale, v.maxStaleness, v.phantom, v.unexplained, tc.stale, tc.maxStaleness, tc.phantom, tc.unexplained)
			}
		})
	}
}
