package main

import (
	"math"
	"strings"
	"testing"
)

const round0 = `goos: linux
BenchmarkHit/floor-2          	   10000	     30000 ns/op	        30.00 p50-us	        60.00 p99-us	        1.000 redis/op	         0 sql/op	    1816 B/op	      21 allocs/op
BenchmarkHit/gorm-dryrun+floor-2	   10000	     40000 ns/op	        40.00 p50-us	        80.00 p99-us	        32.00 floor-p50-us	        1.000 redis/op	         0 sql/op	    1816 B/op	      60 allocs/op
BenchmarkHit/wt-get-2         	   10000	     32000 ns/op	        32.00 p50-us	        70.00 p99-us	        30.00 floor-p50-us	        1.000 redis/op	         0 sql/op	    1900 B/op	      25 allocs/op
BenchmarkHit/wt-scope-2       	   10000	     45000 ns/op	        45.00 p50-us	        70.00 p99-us	        30.00 floor-p50-us	        50.00 base-p50-us	        1.000 redis/op	         0 sql/op	    1900 B/op	      25 allocs/op
BenchmarkMiss/wt-get-2        	    1000	    300000 ns/op	       300.0 p50-us	       600.0 p99-us	        30.00 floor-p50-us	        3.000 redis/op	         1 sql/op	    9000 B/op	     150 allocs/op
BenchmarkUpdate/floor-2 1000 20000 ns/op 20.00 p50-us
BenchmarkUpdate/naive-wt-2 1000 200000 ns/op 200.0 p50-us 20.00 floor-p50-us
BenchmarkUpdate/wt-2 1000 330000 ns/op 330.0 p50-us 30.00 floor-p50-us
BenchmarkThroughput/r100-zipf-g64/floor-2	 100000	     10000 ns/op	    100000 ops/s	        1.000 redis/op	         0 sql/op	      21 allocs/op
BenchmarkThroughput/r100-zipf-g64/wt-get-2	 100000	     12500 ns/op	     80000 ops/s	    100000 floor-ops/s	        1.000 redis/op	         0 sql/op	      24 allocs/op
BenchmarkMemory/wt-2          	1000000000	         0.1 ns/op	       390.0 payload-B/row	       520.0 redis-B/row	       420.0 value-B/row
--- FAIL: something unrelated
PASS
`

func TestTableComputesRatiosAndTargets(t *testing.T) {
	r := newResults(1)
	if err := r.parse(0, strings.NewReader(round0)); err != nil {
		t.Fatal(err)
	}
	if got, want := len(r.order), 11; got != want {
		t.Fatalf("parsed %d benchmarks, want %d: %v", got, want, r.order)
	}
	tests := []struct {
		name, want string
	}{
		{"ratio against the paired floor", "| hit | wt-get | 32.0 | 70.0 |  | 1.07× |  | 25 |"},
		{"fast path target", "met 1.07× (p50 ≤ 1.1× floor)"},
		{"allocs delta", "**missed** +4 (allocs ≤ floor + 3)"},
		{"scope against dry run measured beside it", "met 0.90× (p50 ≤ 1.0× gorm-dryrun+floor)"},
		{"miss against its paired hit floor", "| miss + fill | wt-get | 300.0 | 600.0 |  | 10.00× |"},
		{"throughput ratio, mixed figures hidden", "| 100/0 zipf, 64 goroutines | wt-get |  |  | 80000 | 0.80× |  |  |  |  |  |"},
		{"base without a paired measurement: each against its floor", "met 1.10× (p50 ≤ 1.1× naive-wt)"},
		{"throughput target", "**missed** 0.80× (ops/s ≥ 0.9× floor)"},
		{"memory", "| Redis memory per row | wt (520 B in Redis, value 420 B, payload 390 B) |"},
		{"memory ratio", "| 1.33× payload |"},
		{"memory target", "**missed** 1.33× (≤ 1.3× payload)"},
	}
	table := r.table()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(table, tc.want) {
				t.Errorf("table lacks %q:\n%s", tc.want, table)
			}
		})
	}
}

const clusterRound = `BenchmarkCluster/hit/floor-cluster-2 100 1 ns/op 44.00 p50-us 40.00 floor-p50-us 1 redis/op 0 sql/op
BenchmarkCluster/hit/wt-get-cluster-2 100 1 ns/op 48.00 p50-us 40.00 floor-p50-us 42.00 base-p50-us 1 redis/op 0 sql/op
BenchmarkCluster/batch100/wt-get-cluster-2 100 1 ns/op 600.0 p50-us 400.0 floor-p50-us 500.0 base-p50-us 3.000 node-trips/op 1.000 trips/node 1 redis/op 0 sql/op
BenchmarkCluster/batch100/floor-cluster-2 100 1 ns/op 450.0 p50-us 400.0 floor-p50-us 3.000 node-trips/op 1.500 trips/node 1 redis/op 0 sql/op
BenchmarkCluster/r95-zipf-g64/wt-get-cluster-2 100 1 ns/op 9000 ops/s 20000 floor-ops/s 10000 base-ops/s
`

func TestClusterRowsReportAgainstTheSingleRedis(t *testing.T) {
	r := newResults(1)
	if err := r.parse(0, strings.NewReader(clusterRound)); err != nil {
		t.Fatal(err)
	}
	table := r.table()
	for _, want := range []string{
		"| cluster: hit | floor-cluster | 44.0 |  |  | 1.10× |",
		"1.14× (p50 vs wt-get on one Redis)",
		"| cluster: batch of 100 | wt-get-cluster | 600.0 |",
		"1.20× (p50 vs wt-get on one Redis); met 1 (one round trip per node)",
		"**missed** 1.5 (one round trip per node)",
		"| cluster: 95/5 zipf, 64 goroutines | wt-get-cluster |",
		"0.90× (ops/s vs wt-get on one Redis)",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

func TestUnpairedRatioIsMedianOfPerRoundRatios(t *testing.T) {
	r := newResults(3)
	rounds := []string{
		"BenchmarkHit/floor-2 100 1 ns/op 10 p50-us\nBenchmarkHit/x-2 100 1 ns/op 30 p50-us\n",
		"BenchmarkHit/floor-2 100 1 ns/op 40 p50-us\nBenchmarkHit/x-2 100 1 ns/op 44 p50-us\n",
		"BenchmarkHit/floor-2 100 1 ns/op 20 p50-us\nBenchmarkHit/x-2 100 1 ns/op 25 p50-us\n",
	}
	for i, s := range rounds {
		if err := r.parse(i, strings.NewReader(s)); err != nil {
			t.Fatal(err)
		}
	}
	// Per-round ratios 3.0, 1.1, 1.25: median 1.25, where the ratio of the
	// medians would be 30/20 = 1.5.
	per := r.ratio("Hit/x")
	if got := median(per); math.Abs(got-1.25) > 1e-9 {
		t.Errorf("ratio = %v, want 1.25", got)
	}
	if got := median(r.get("Hit/x", "p50-us")); got != 30 {
		t.Errorf("median p50 = %v, want 30", got)
	}
	if !strings.Contains(r.table(), "| 1.25× | 1.10–3.00 |") {
		t.Errorf("table lacks the ratio's range:\n%s", r.table())
	}
}

func TestTrimProcs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Hit/floor-2", "Hit/floor"},
		{"Hit/gorm-dryrun+floor-16", "Hit/gorm-dryrun+floor"},
		{"Hit/naive-wt", "Hit/naive-wt"},
	}
	for _, tc := range tests {
		if got := trimProcs(tc.in); got != tc.want {
			t.Errorf("trimProcs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
