package writethrough_test

// The long version of consistency_test.go: `make soak DURATION=10m
// CLIENTS=32`. It runs the same harness, phase after phase, for a share of
// the duration each, and prints what every phase checked and found. The
// plugin's phases must show no violation; each broken strategy must be
// caught.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

var (
	soakDuration = flag.Duration("soak.duration", 0, "TestSoak: run for this long in all (0 skips it)")
	soakClients  = flag.Int("soak.clients", 32, "TestSoak: concurrent clients")
	soakDump     = flag.String("soak.dump", "", "TestSoak: write every violation kept, with all its row's operations, as JSON files in this directory")
	soakOnly     = flag.String("soak.only", "", "TestSoak: run only the phases whose name contains this (the whole duration is shared among them)")
)

// soakPhase is one configuration the soak runs.
type soakPhase struct {
	name  string
	share float64 // of the soak's duration
	// broken phases must be caught; the others must be clean, except where
	// bound says what is measured instead.
	broken bool
	bound  bool
	// around: writes bypass the plugin and a consumer follows them; the
	// phase must be bounded by the consumer's lag.
	around bool
	start  func(t *testing.T, cfg runConfig) *harness
}

func soakPhases() []soakPhase {
	healthy := writethrough.Config{Timeout: 5 * time.Second, DrainInterval: -1}
	return []soakPhase{
		{name: "writethrough (transactions; commits killed at random)", share: 0.60,
			start: func(t *testing.T, cfg runConfig) *harness {
				cfg.plugin, cfg.killCommits = healthy, 5
				return newPluginRun(t, nil, cfg)
			}},
		{name: "writethrough + cdc consumer, a tenth of the steps write around the plugin", share: 0.10, around: true,
			start: func(t *testing.T, cfg runConfig) *harness {
				b := bypassRun(cfg.duration, true)
				cfg.plugin, cfg.bypass, cfg.consumer, cfg.killCommits = b.plugin, b.bypass, b.consumer, 5
				return newPluginRun(t, nil, cfg)
			}},
		{name: "writethrough, AsyncFinalize", share: 0.06,
			start: func(t *testing.T, cfg runConfig) *harness {
				cfg.plugin = healthy
				cfg.plugin.AsyncFinalize = true
				return newPluginRun(t, nil, cfg)
			}},
		{name: "writethrough, no transactions (SkipDefaultTransaction)", share: 0.06, bound: true,
			start: func(t *testing.T, cfg runConfig) *harness {
				cfg.plugin = healthy
				return newPluginRun(t, &gorm.Config{SkipDefaultTransaction: true}, cfg)
			}},
		{name: "writethrough, Soft, Redis faults (resets, 100ms stalls, refusals)", share: 0.06, bound: true,
			start: func(t *testing.T, cfg runConfig) *harness {
				return newSoftFaultRun(t, cfg)
			}},
		{name: "broken: naive write-through (SET inside the transaction)", share: 0.06, broken: true,
			start: func(t *testing.T, cfg runConfig) *harness { return newBrokenRun(t, "naive", cfg) }},
		{name: "broken: cache-aside (DEL 20ms after commit, fill without lease)", share: 0.06, broken: true,
			start: func(t *testing.T, cfg runConfig) *harness { return newBrokenRun(t, "aside", cfg) }},
	}
}

func TestSoak(t *testing.T) {
	if *soakDuration <= 0 {
		t.Skip("set -soak.duration (make soak DURATION=10m CLIENTS=32)")
	}
	seed := uint64(time.Now().UnixNano())
	fmt.Printf("soak: %s, %d clients, 32 hot rows, seed %d, %s, GOMAXPROCS %d\n",
		*soakDuration, *soakClients, seed, hostNoteSoak(), runtime.GOMAXPROCS(0))
	var reports []runReport
	var phases []soakPhase
	share := 0.0
	for _, ph := range soakPhases() {
		if strings.Contains(ph.name, *soakOnly) {
			phases = append(phases, ph)
			share += ph.share
		}
	}
	require.NotEmpty(t, phases, "no phase name contains %q", *soakOnly)
	for i := range phases {
		phases[i].share /= share
	}
	for i, ph := range phases {
		ok := t.Run(fmt.Sprintf("phase%d", i+1), func(t *testing.T) {
			cfg := runConfig{
				clients:    *soakClients,
				rows:       32,
				duration:   time.Duration(float64(*soakDuration) * ph.share),
				window:     2 * time.Second,
				seed:       seed + uint64(i),
				rollbacks:  4,
				extraReads: 40,
				log: func(format string, args ...any) {
					fmt.Printf("  "+format+"\n", args...)
				},
			}
			fmt.Printf("phase %d: %s, %s\n", i+1, ph.name, cfg.duration.Round(time.Second))
			h := ph.start(t, cfg)
			rep, err := h.run(context.Background())
			require.NoError(t, err)
			rep.strategy = ph.name
			reports = append(reports, rep)
			dumpViolations(t, i+1, rep)
			fmt.Printf("  %s\n", rep)
			if rep.Violations+rep.StaleReads+rep.Phantoms+rep.diverged > 0 {
				fmt.Print(indent(rep.details(), "    "))
			}
			if ph.around {
				fmt.Print(indent(bypassDetails(rep), "    "))
			}
			switch {
			case ph.broken:
				require.Positive(t, rep.Violations, "the checker must catch %s", ph.name)
			case ph.bound:
				require.Zero(t, rep.Phantoms, rep.details())
				require.Zero(t, rep.diverged, rep.details())
			case ph.around:
				requireBoundedByTheConsumer(t, h, rep)
			default:
				requireLinearizable(t, rep)
			}
		})
		if !ok {
			fmt.Printf("phase %d failed\n", i+1)
		}
	}
	printSoakTable(os.Stdout, reports)
}

// dumpViolations writes the violations of phase n to -soak.dump, for a
// second look at a history the checker refused.
func dumpViolations(t *testing.T, n int, rep runReport) {
	if *soakDump == "" {
		return
	}
	for i, v := range rep.violations {
		b, err := json.MarshalIndent(v, "", " ")
		require.NoError(t, err)
		name := filepath.Join(*soakDump, fmt.Sprintf("phase%d-violation%d.json", n, i+1))
		require.NoError(t, os.WriteFile(name, b, 0o644))
		fmt.Printf("  violation written to %s\n", name)
	}
}

func printSoakTable(out *os.File, reports []runReport) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "phase\tops checked\treads\twrites\tmaybe\tops/s\tviolations\tstale reads\tlongest staleness\tphantoms\tP3 diverged\tleft pending\twrites around\tstale behind them\tlongest\t")
	var total, plugin int
	for _, r := range reports {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%.0f\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t\n",
			r.strategy, r.Ops, r.Reads, r.Writes, r.MaybeWrites, r.opsPerSec, r.Violations, r.StaleReads,
			r.MaxStaleness.Round(time.Microsecond), r.Phantoms, r.diverged, r.leftPending,
			r.BypassWrites, r.BypassStale, r.MaxBypassStaleness.Round(time.Microsecond))
		total += r.Ops
		if strings.HasPrefix(r.strategy, "writethrough") {
			plugin += r.Ops
		}
	}
	w.Flush()
	fmt.Fprintf(out, "soak: %d operations checked, %d of them through the plugin\n", total, plugin)
	for _, r := range reports {
		if r.stats != "" {
			fmt.Fprintf(out, "  %s%s\n", r.strategy, r.stats)
		}
	}
}

func indent(s, prefix string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix) + "\n"
}

// hostNoteSoak describes the machine, for the record.
func hostNoteSoak() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				cpu = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:])
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%s, %d CPUs%s", cpu, runtime.NumCPU(), load)
}
