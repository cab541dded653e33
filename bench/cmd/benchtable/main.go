// Command benchtable runs the benchmarks of the bench module several times
// and prints one markdown table: medians over the rounds, each contender
// as a ratio of the floor measured in the same round, and the targets of
// the benchmark suite, met or missed.
//
// Run it from the bench directory (make bench does):
//
//	go run ./cmd/benchtable                                  # 5 rounds, 5 to 8 minutes
//	go run ./cmd/benchtable -count 3 -tput=false             # latency only, 2 minutes
//	go run ./cmd/benchtable -count 10 -benchtime 300ms -tput-benchtime 1s
//
// Each round runs every benchmark once, in a fresh process. Inside each
// benchmark the contender is paired with the floor, interleaved (blocks
// of operations for latency, 50ms phases for throughput), so that a
// ratio compares two measurements made under the same load; the table
// shows the median over the rounds of each round's ratio, and its range.
// At the end the PostgreSQL schema and the Redis keys are removed, unless
// -keep.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gorm-writethrough/writethrough/bench"
)

func main() {
	var (
		count     = flag.Int("count", 5, "rounds; each runs every benchmark once (at least 5 for published numbers)")
		benchtime = flag.String("benchtime", "150ms", "-test.benchtime of the latency, batch, update and memory workloads")
		tputtime  = flag.String("tput-benchtime", "250ms", "-test.benchtime of each throughput workload (its phases last 50ms)")
		tput      = flag.Bool("tput", true, "run the throughput workloads")
		only      = flag.String("bench", "", "run only benchmarks matching this -test.bench regexp, with -benchtime")
		tags      = flag.String("tags", "", "build tags for the benchmark binary")
		rows      = flag.Int("rows", bench.DefaultRows, "rows in the users table")
		keep      = flag.Bool("keep", false, "keep the schema and Redis keys afterwards")
		verbose   = flag.Bool("v", false, "echo the benchmark output")
		raw       = flag.String("raw", "", "also write every round's go test output to this file (benchstat reads it)")
		from      = flag.String("from", "", "print the table of a file written by -raw instead of running")
	)
	flag.Parse()
	if *from != "" {
		if err := render(*from); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*count, *benchtime, *tputtime, *tput, *only, *tags, *rows, *keep, *verbose, *raw); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(count int, benchtime, tputtime string, tput bool, only, tags string, rows int, keep, verbose bool, raw string) (err error) {
	if count < 1 {
		return fmt.Errorf("-count %d: need at least one round", count)
	}
	tmp, err := os.MkdirTemp("", "benchtable")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "bench.test")
	build := exec.Command("go", "test", "-c", "-o", bin, "-tags", tags, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the benchmarks (run from the bench directory): %w", err)
	}
	if !keep {
		defer func() {
			if cerr := bench.Cleanup(context.Background()); cerr != nil && err == nil {
				err = cerr
			}
		}()
	}

	type group struct{ pattern, benchtime string }
	groups := []group{{"^Benchmark(Hit|Miss|Batch10|Batch100|Update|Memory)$", benchtime}}
	if tput {
		groups = append(groups, group{"^BenchmarkThroughput$", tputtime})
	}
	if only != "" {
		groups = []group{{only, benchtime}}
	}
	var rawOut io.Writer = io.Discard
	if raw != "" {
		f, err := os.Create(raw)
		if err != nil {
			return err
		}
		defer f.Close()
		rawOut = f
	}
	res := newResults(count)
	start := time.Now()
	loadStart := loadAverage()
	for round := range count {
		for _, g := range groups {
			fmt.Fprintf(os.Stderr, "round %d/%d %s (%s elapsed)\n", round+1, count, g.pattern, time.Since(start).Round(time.Second))
			cmd := exec.Command(bin, "-test.run", "^$", "-test.bench", g.pattern,
				"-test.benchtime", g.benchtime, "-test.count", "1", "-test.timeout", "60m",
				"-wt.keep", fmt.Sprintf("-wt.rows=%d", rows))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, os.Stderr
			if verbose {
				cmd.Stdout = io.MultiWriter(&out, os.Stderr)
			}
			runErr := cmd.Run()
			fmt.Fprintf(rawOut, "%s%d\n", roundMark, round+1)
			rawOut.Write(out.Bytes())
			if err := res.parse(round, &out); err != nil {
				return err
			}
			if runErr != nil {
				os.Stderr.Write(out.Bytes())
				return fmt.Errorf("round %d: %w", round+1, runErr)
			}
		}
	}
	if len(res.order) == 0 {
		return fmt.Errorf("no benchmark results: are PostgreSQL and Redis up? (DATABASE_URL, REDIS_URL)")
	}
	fmt.Fprintf(os.Stderr, "done in %s\n", time.Since(start).Round(time.Second))
	fmt.Print(header(count, benchtime, tputtime, tput, only, tags, rows))
	fmt.Printf("- run time: %s; load average (1 min) %s at the start, %s at the end\n\n",
		time.Since(start).Round(time.Second), loadStart, loadAverage())
	fmt.Print(res.table())
	return nil
}

// roundMark starts each round in a -raw file; go test and benchstat
// ignore the line.
const roundMark = "# benchtable round "

// render prints the table of a file written by -raw.
func render(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	chunks := strings.Split(string(b), roundMark)[1:]
	if len(chunks) == 0 {
		return fmt.Errorf("%s: no %q lines: not written by -raw", path, strings.TrimSpace(roundMark))
	}
	rounds := 0
	for _, c := range chunks {
		n, _, _ := strings.Cut(c, "\n")
		if r, err := strconv.Atoi(n); err == nil && r > rounds {
			rounds = r
		}
	}
	res := newResults(rounds)
	for _, c := range chunks {
		n, body, _ := strings.Cut(c, "\n")
		r, err := strconv.Atoi(n)
		if err != nil || r < 1 {
			return fmt.Errorf("%s: bad round number %q", path, n)
		}
		if err := res.parse(r-1, strings.NewReader(body)); err != nil {
			return err
		}
	}
	fmt.Printf("- from %s (%d rounds)\n\n", path, rounds)
	fmt.Print(res.table())
	return nil
}

// header describes the run: machine, versions, command, date.
func header(count int, benchtime, tputtime string, tput bool, only, tags string, rows int) string {
	var b strings.Builder
	cmd := fmt.Sprintf("go run ./cmd/benchtable -count %d -benchtime %s", count, benchtime)
	if tput {
		cmd += " -tput-benchtime " + tputtime
	} else {
		cmd += " -tput=false"
	}
	if only != "" {
		cmd += fmt.Sprintf(" -bench '%s'", only)
	}
	if tags != "" {
		cmd += " -tags " + tags
	}
	if rows != bench.DefaultRows {
		cmd += fmt.Sprintf(" -rows %d", rows)
	}
	fmt.Fprintf(&b, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- command (in bench/): `%s`\n", cmd)
	for _, line := range machine() {
		fmt.Fprintf(&b, "- %s\n", line)
	}
	return b.String()
}

// loadAverage returns the one-minute load average, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func machine() []string {
	var lines []string
	if out, err := exec.Command("nproc").Output(); err == nil {
		lines = append(lines, "cores (nproc): "+strings.TrimSpace(string(out)))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				lines = append(lines, "CPU: "+strings.TrimSpace(v))
				break
			}
		}
		f.Close()
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		line := "writethrough: working tree at commit " + strings.TrimSpace(string(out))
		// The bench module builds the plugin from ../, committed or not.
		if st, err := exec.Command("git", "-C", "..", "status", "--porcelain", "--", ":(glob)*.go").Output(); err == nil {
			if n := strings.Count(string(st), "\n"); n > 0 {
				line += fmt.Sprintf(", with %d uncommitted root-package files", n)
			}
		}
		lines = append(lines, line)
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		lines = append(lines, strings.TrimSpace(string(out)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if v, err := bench.ServerVersions(ctx); err == nil {
		lines = append(lines, v...)
	} else {
		lines = append(lines, "server versions: "+err.Error())
	}
	return lines
}
