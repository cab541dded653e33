package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
)

// results holds every metric of every benchmark, per round.
type results struct {
	rounds int
	order  []string                        // benchmark names, in the order first seen
	vals   map[string]map[string][]float64 // name → unit → value per round (NaN: not run)
}

func newResults(rounds int) *results {
	return &results{rounds: rounds, vals: map[string]map[string][]float64{}}
}

// parse reads the output of one round of `go test -bench` and records each
// benchmark line under its name without the "Benchmark" prefix and the
// GOMAXPROCS suffix: "Hit/floor".
func (r *results) parse(round int, out io.Reader) error {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := trimProcs(strings.TrimPrefix(f[0], "Benchmark"))
		units, ok := r.vals[name]
		if !ok {
			units = map[string][]float64{}
			r.vals[name] = units
			r.order = append(r.order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("%s: %q is not a number", name, f[i])
			}
			unit := f[i+1]
			if units[unit] == nil {
				units[unit] = nanSlice(r.rounds)
			}
			units[unit][round] = v
		}
	}
	return sc.Err()
}

// trimProcs removes the "-N" GOMAXPROCS suffix go test appends.
func trimProcs(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}

func nanSlice(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return s
}

// split returns the workload and contender of a benchmark name.
func split(name string) (workload, contender string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return name, ""
	}
	return name[:i], name[i+1:]
}

// median returns the median of the values that are not NaN, or NaN.
func median(vs []float64) float64 {
	var s []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			s = append(s, v)
		}
	}
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// get returns the per-round values of one metric, or nil.
func (r *results) get(name, unit string) []float64 {
	return r.vals[name][unit]
}

// pairwise returns the median over rounds of f(a, b), where a is the
// metric of name and b of base in the same round.
func (r *results) pairwise(name, base, unit string, f func(a, b float64) float64) float64 {
	return median(r.perRound(name, base, unit, f))
}

// perRound returns f(a, b) for each round, NaN where either is missing: a
// is unit of name, b is the same unit of base or, if given, baseUnit.
func (r *results) perRound(name, base, unit string, f func(a, b float64) float64, baseUnit ...string) []float64 {
	bu := unit
	if len(baseUnit) > 0 {
		bu = baseUnit[0]
	}
	a, b := r.get(name, unit), r.get(base, bu)
	per := nanSlice(r.rounds)
	if a == nil || b == nil {
		return per
	}
	for i := range per {
		if !math.IsNaN(a[i]) && !math.IsNaN(b[i]) && b[i] != 0 {
			per[i] = f(a[i], b[i])
		}
	}
	return per
}

// spread returns the smallest and largest of the values that are not NaN.
func spread(vs []float64) (lo, hi float64) {
	lo, hi = math.NaN(), math.NaN()
	for _, v := range vs {
		if math.IsNaN(v) {
			continue
		}
		if math.IsNaN(lo) || v < lo {
			lo = v
		}
		if math.IsNaN(hi) || v > hi {
			hi = v
		}
	}
	return lo, hi
}

func div(a, b float64) float64 { return a / b }
func sub(a, b float64) float64 { return a - b }

// norm returns, per round, the row's unit ("p50-us" or "ops/s") divided by
// the floor it was paired with in the same benchmark (floor-p50-us,
// floor-ops/s). A floor row is 1; a row without a paired floor is taken
// against its workload's floor row in the same round.
func (r *results) norm(name, unit string) []float64 {
	w, c := split(name)
	if c == "floor" && r.get(name, unit) != nil {
		per := nanSlice(r.rounds)
		for i, v := range r.get(name, unit) {
			if !math.IsNaN(v) {
				per[i] = 1
			}
		}
		return per
	}
	if r.get(name, "floor-"+unit) != nil {
		return r.perRound(name, name, unit, div, "floor-"+unit)
	}
	return r.perRound(name, w+"/floor", unit, div)
}

// ratio is the row's headline ratio, per round: p50 against the paired
// floor's p50 for latency workloads, ops/s against the paired floor's for
// throughput, Redis memory against the msgpack payload for memory.
func (r *results) ratio(name string) []float64 {
	m := r.vals[name]
	switch {
	case m["redis-B/row"] != nil:
		return nanSlice(r.rounds)
	case m["ops/s"] != nil:
		return r.norm(name, "ops/s")
	case m["p50-us"] != nil:
		return r.norm(name, "p50-us")
	}
	return nanSlice(r.rounds)
}

// A target of the benchmark suite, as a bound on a ratio (or a difference)
// between a row and a base row of the same round. A target without a
// bound (max and min zero) only reports the value.
type target struct {
	row  string // path.Match pattern on the benchmark name
	base string // base row; "{w}" is the row's workload; "" for absolute
	unit string
	op   string // "ratio", "delta", "abs", "memory"
	max  float64
	min  float64
	text string // what the bound says, for the table
}

var targets = []target{
	{row: "Hit/wt-get", base: "{w}/floor", unit: "p50-us", op: "ratio", max: 1.1, text: "p50 ≤ 1.1× floor"},
	{row: "Hit/wt-get", base: "{w}/floor", unit: "allocs/op", op: "delta", max: 3, text: "allocs ≤ floor + 3"},
	{row: "Hit/wt-scope", base: "{w}/gorm-dryrun+floor", unit: "p50-us", op: "ratio", max: 1.0, text: "p50 ≤ 1.0× gorm-dryrun+floor"},
	{row: "Batch100/wt-*", base: "{w}/floor", unit: "p50-us", op: "ratio", max: 1.5, text: "p50 ≤ 1.5× MGET floor"},
	{row: "Batch100/wt-*", unit: "redis/op", op: "abs", max: 1, text: "one Redis round trip"},
	{row: "Update/wt", base: "{w}/naive-wt", unit: "p50-us", op: "ratio", max: 1.1, text: "p50 ≤ 1.1× naive-wt"},
	{row: "Throughput/r100-*/wt-get", base: "{w}/floor", unit: "ops/s", op: "ratio", min: 0.9, text: "ops/s ≥ 0.9× floor"},
	{row: "Throughput/r95-*/wt-*", base: "{w}/naive-wt", unit: "ops/s", op: "ratio", min: 1.0, text: "ops/s ≥ 1.0× naive-wt"},
	{row: "Memory/wt*", unit: "redis-B/row", op: "memory", max: 1.3, text: "≤ 1.3× payload"},
	// Redis Cluster (issue 13): the plugin on three masters against the
	// plugin on the single Redis, measured inside the same benchmark.
	{row: "Cluster/hit/wt-get-cluster", base: "{w}/wt-get", unit: "p50-us", op: "ratio", text: "p50 vs wt-get on one Redis"},
	{row: "Cluster/batch100/wt-get-cluster", base: "{w}/wt-get", unit: "p50-us", op: "ratio", text: "p50 vs wt-get on one Redis"},
	{row: "Cluster/batch100/*", unit: "trips/node", op: "abs", max: 1, text: "one round trip per node"},
	{row: "Cluster/r95-*/wt-get-cluster", base: "{w}/wt-get", unit: "ops/s", op: "ratio", text: "ops/s vs wt-get on one Redis"},
}

// verdicts returns the targets that apply to name, each with its measured
// value and whether it is met.
func (r *results) verdicts(name string) []string {
	w, _ := split(name)
	var out []string
	for _, t := range targets {
		if ok, _ := path.Match(t.row, name); !ok {
			continue
		}
		base := strings.ReplaceAll(t.base, "{w}", w)
		var v float64
		var shown string
		switch t.op {
		case "ratio":
			var per []float64
			switch {
			case r.get(name, "base-"+t.unit) != nil && !strings.HasSuffix(base, "/floor"):
				// The base was measured inside the row's benchmark.
				per = r.perRound(name, name, t.unit, div, "base-"+t.unit)
			default:
				// Each side against its own paired floor, then one
				// against the other.
				a, b := r.norm(name, t.unit), r.norm(base, t.unit)
				per = nanSlice(r.rounds)
				for i := range per {
					per[i] = a[i] / b[i]
				}
			}
			v = median(per)
			shown = fmt.Sprintf("%.2f×", v)
			if lo, hi := spread(per); hi > lo {
				shown += fmt.Sprintf(" [%.2f–%.2f]", lo, hi)
			}
		case "delta":
			v = r.pairwise(name, base, t.unit, sub)
			shown = fmt.Sprintf("%+.0f", v)
		case "abs":
			v = median(r.get(name, t.unit))
			shown = fmt.Sprintf("%.3g", v)
		case "memory":
			v = median(r.get(name, "redis-B/row")) / median(r.get(name, "payload-B/row"))
			shown = fmt.Sprintf("%.2f×", v)
		}
		var verdict string
		switch {
		case math.IsNaN(v):
			verdict, shown = "not measured", "–"
		case t.max == 0 && t.min == 0:
			out = append(out, fmt.Sprintf("%s (%s)", shown, t.text))
			continue
		case (t.max != 0 && v > t.max) || (t.min != 0 && v < t.min):
			verdict = "**missed**"
		default:
			verdict = "met"
		}
		out = append(out, fmt.Sprintf("%s %s (%s)", verdict, shown, t.text))
	}
	return out
}

var workloadNames = map[string]string{
	"Hit":      "hit",
	"Miss":     "miss + fill",
	"Batch10":  "batch of 10",
	"Batch100": "batch of 100",
	"Update":   "update by key",
	"Memory":   "Redis memory per row",
}

// label turns "Throughput/r95-zipf-g64" into "95/5 zipf, 64 goroutines".
func label(workload string) string {
	if s, ok := workloadNames[workload]; ok {
		return s
	}
	if rest, ok := strings.CutPrefix(workload, "Cluster/"); ok {
		// BenchmarkCluster: "Cluster/hit", "Cluster/batch100",
		// "Cluster/r95-zipf-g64".
		switch rest {
		case "hit":
			return "cluster: hit"
		case "batch100":
			return "cluster: batch of 100"
		}
		return "cluster: " + label("Throughput/"+rest)
	}
	if rest, ok := strings.CutPrefix(workload, "Throughput/"); ok {
		f := strings.Split(rest, "-")
		if len(f) == 3 {
			mix := map[string]string{"r100": "100/0", "r95": "95/5", "r50": "50/50"}[f[0]]
			return fmt.Sprintf("%s %s, %s goroutines", mix, f[1], strings.TrimPrefix(f[2], "g"))
		}
	}
	return workload
}

// table renders the medians as one markdown table.
func (r *results) table() string {
	var b strings.Builder
	b.WriteString("| workload | contender | p50 µs | p99 µs | ops/s | ratio | range | allocs/op | B/op | CPU µs/op | Redis + SQL per op | target |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, name := range r.order {
		w, c := split(name)
		m := func(unit string) float64 { return median(r.get(name, unit)) }
		per := r.ratio(name)
		ratioText := num(median(per), "%.2f×")
		if w == "Memory" {
			ratioText = num(m("redis-B/row")/m("payload-B/row"), "%.2f× payload")
		}
		rangeText := ""
		if lo, hi := spread(per); hi > lo {
			rangeText = fmt.Sprintf("%.2f–%.2f", lo, hi)
		}
		if w == "Memory" {
			c = fmt.Sprintf("%s (%.0f B in Redis, value %.0f B, payload %.0f B)",
				c, m("redis-B/row"), m("value-B/row"), m("payload-B/row"))
		}
		trips := ""
		if !math.IsNaN(m("redis/op")) {
			trips = fmt.Sprintf("%.3g + %.3g", m("redis/op"), m("sql/op"))
		}
		allocs, bytes, cpu := m("allocs/op"), m("B/op"), m("cpu-us/op")
		if r.get(name, "floor-ops/s") != nil {
			// Phases of the contender and of its floor: mixed figures.
			trips, allocs, bytes, cpu = "", math.NaN(), math.NaN(), math.NaN()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			label(w), c, num(m("p50-us"), "%.1f"), num(m("p99-us"), "%.1f"), num(m("ops/s"), "%.0f"),
			ratioText, rangeText, num(allocs, "%.0f"), num(bytes, "%.0f"), num(cpu, "%.1f"),
			trips, strings.Join(r.verdicts(name), "; "))
	}
	return b.String()
}

func num(v float64, format string) string {
	if math.IsNaN(v) {
		return ""
	}
	return fmt.Sprintf(format, v)
}
