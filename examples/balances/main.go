// Command balances shows the stale-balance scenario on three cache
// strategies side by side: concurrent transfers between accounts, some of
// them rolled back, concurrent readers of balances through the cache, and a
// checker that judges every read against the log of commits.
//
//	cd examples && go run ./balances -duration 10s -plot stale.svg
//
// It uses PostgreSQL and Redis when DATABASE_URL and REDIS_URL are set or
// the defaults on 127.0.0.1 answer, and SQLite with an in-process Redis
// otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "balances:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	cfg := config{InitialBalance: 1000}
	var plot, names, backend string
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long the workload runs `per strategy`")
	flag.IntVar(&cfg.Accounts, "accounts", 10, "number of accounts")
	flag.IntVar(&cfg.Writers, "writers", 4, "concurrent transfer loops")
	flag.IntVar(&cfg.Readers, "readers", 8, "concurrent balance readers")
	flag.DurationVar(&cfg.InvalidationDelay, "invalidation-delay", 200*time.Millisecond, "strategy 1: delay between a commit and the delete of its keys")
	flag.Float64Var(&cfg.RollbackRatio, "rollback-ratio", 0.1, "share of transfers rolled back on purpose")
	flag.DurationVar(&cfg.SumInterval, "sum-interval", 100*time.Millisecond, "pause between two sum scans")
	flag.StringVar(&names, "strategies", strings.Join(strategyNames(), ","), "comma-separated `list` of strategies to run")
	flag.StringVar(&plot, "plot", "", "also write a chart of stale and phantom reads over time to `FILE.svg`")
	flag.StringVar(&backend, "backend", backendAuto, "auto, real (PostgreSQL and Redis) or embedded (SQLite and miniredis)")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the transfer and read choices")
	verbose := flag.Bool("v", false, "log the plugin's reports of cache trouble to stderr")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	for _, n := range strings.Split(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			cfg.Strategies = append(cfg.Strategies, n)
		}
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg.Progress = os.Stderr
	if fi, err := os.Stderr.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		cfg.ProgressLines = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e, err := openEnv(ctx, backend)
	if err != nil {
		return err
	}
	defer func() {
		if err := e.close(); err != nil {
			fmt.Fprintln(os.Stderr, "balances: cleanup:", err)
		}
	}()
	fmt.Printf("backend: %s\n", e.desc)
	fmt.Printf("workload: %s per strategy, %d accounts, %d writers, %d readers, %.0f%% of transfers rolled back, invalidation delay %s\n\n",
		cfg.Duration, cfg.Accounts, cfg.Writers, cfg.Readers, cfg.RollbackRatio*100, cfg.InvalidationDelay)

	results, err := run(ctx, e, cfg)
	if ctx.Err() != nil {
		err = errors.New("interrupted")
	}
	if len(results) > 0 {
		printResults(os.Stdout, results)
		printLegend(os.Stdout)
	}
	if plot != "" && len(results) > 0 {
		if perr := writePlot(plot, results, cfg); perr != nil {
			return perr
		}
		fmt.Printf("\nwrote %s\n", plot)
	}
	return err
}

func printResults(w io.Writer, results []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	width := 0
	for _, r := range results {
		width = max(width, len(r.info.title))
	}
	// tabwriter aligns every column right; padding the names aligns them left.
	fmt.Fprintf(tw, "%-*s\t", width, "strategy")
	fmt.Fprintln(tw, "reads\thits\tstale\tmax stale\tphantom\tsum≠total\tread p50\tread p99\twrite p50\twrite p99\ttransfers\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%-*s\t%d\t%s\t%d\t%s\t%d\t%d/%d\t%s\t%s\t%s\t%s\t%d+%d\t\n",
			width, r.info.title, r.reads, pct(r.hits, r.lookups), r.stale, ms(r.maxStaleness), r.phantom,
			r.sumViolations, r.sumScans,
			ms(r.readP50), ms(r.readP99), ms(r.writeP50), ms(r.writeP99),
			r.commits, r.rollbacks)
	}
	tw.Flush()
	for _, r := range results {
		if r.unexplained > 0 {
			fmt.Fprintf(w, "%s: %d reads returned a row no transfer wrote\n", r.info.title, r.unexplained)
		}
		if r.wrongAtRest > 0 {
			fmt.Fprintf(w, "%s: %d of %d accounts still read wrong at rest, after every transfer returned and every delete ran; they stay so until their TTL\n",
				r.info.title, r.wrongAtRest, r.accounts)
		}
		if r.trouble != "" {
			fmt.Fprintf(w, "%s: %s\n", r.info.title, r.trouble)
		}
		if r.readErrors > 0 || r.writeErrors > 0 {
			fmt.Fprintf(w, "%s: %d reads and %d transfers failed; first error: %v\n", r.info.title, r.readErrors, r.writeErrors, r.firstError)
		}
	}
}

const legend = `
reads      balance reads through the strategy's read path: the readers', the sum
           scans', and four by a probe that runs before the workload (read,
           commit a transfer, read; read, roll a transfer back, read)
hits       share of those reads Redis answered without the database
stale      reads that returned a version of the account older than one whose
           commit had returned before the read began
max stale  the longest time from such a newer commit returning to the stale read
           beginning, in milliseconds
phantom    reads that returned a row only a rolled-back transfer ever wrote
sum≠total  failed sum scans / sum scans. A scan pauses new transfers, waits for
           those in flight to return, reads every account through the cache in
           one batch (MGET and one SELECT for the misses; GetMany or Cached
           Find for the library), and compares the sum with the initial total.
           Writers are paused because a batch is no snapshot (Redis answers
           some keys, the database the rest, and a transfer can commit in
           between), so sums taken while transfers commit can't add up even
           when every read is fresh; with none in flight, a cache that serves
           only committed, current rows always adds up, so a failed scan means
           stale or phantom balances were served at rest.
latency    p50 and p99 per single read (scans left out), and per transfer
           from BEGIN to the return of COMMIT or ROLLBACK, including the
           strategy's own cache writes
transfers  committed + rolled back on purpose
`

func printLegend(w io.Writer) { fmt.Fprint(w, legend) }

func pct(n, of uint64) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", float64(n)*100/float64(of))
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}
