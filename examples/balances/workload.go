package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
)

// config is the workload, the same for every strategy.
type config struct {
	Duration          time.Duration // per strategy
	Accounts          int
	InitialBalance    int64
	Writers           int
	Readers           int
	InvalidationDelay time.Duration // strategy 1's delay between commit and delete
	RollbackRatio     float64       // share of transfers rolled back on purpose
	SumInterval       time.Duration // pause between two sum scans
	Bucket            time.Duration // width of one point of the stale-reads series
	Strategies        []string      // names, in strategies order; empty means all
	Seed              uint64
	Progress          io.Writer    // nil: no progress line
	ProgressLines     bool         // one line per second instead of overwriting one
	Logger            *slog.Logger // the plugin's reports of cache trouble; nil is silent
}

func (c config) validate() error {
	switch {
	case c.Duration <= 0:
		return errors.New("-duration must be positive")
	case c.Accounts < 2:
		return errors.New("-accounts must be at least 2")
	case c.Writers < 1:
		return errors.New("-writers must be at least 1")
	case c.Readers < 0:
		return errors.New("-readers must not be negative")
	case c.InvalidationDelay < 0:
		return errors.New("-invalidation-delay must not be negative")
	case c.RollbackRatio < 0 || c.RollbackRatio > 1:
		return errors.New("-rollback-ratio must be between 0 and 1")
	case c.InitialBalance <= 0:
		return errors.New("initial balance must be positive")
	}
	for _, name := range c.Strategies {
		if findStrategy(name) == nil {
			return fmt.Errorf("-strategies: unknown strategy %q", name)
		}
	}
	return nil
}

func findStrategy(name string) *strategyInfo {
	for i := range strategies {
		if strategies[i].name == name {
			return &strategies[i]
		}
	}
	return nil
}

// result is one strategy's row in the output.
type result struct {
	info strategyInfo
	verdict
	reads         int
	readErrors    int
	sumScans      int
	sumViolations int
	commits       int
	rollbacks     int
	writeErrors   int
	readP50       time.Duration
	readP99       time.Duration
	writeP50      time.Duration
	writeP99      time.Duration
	firstError    error
	bucket        time.Duration // width of one point of staleSeries
	hits, lookups uint64        // reads Redis answered, of reads made
	trouble       string        // what the strategy saw go wrong with Redis
	wrongAtRest   int           // accounts read wrong through the cache once everything stopped
	accounts      int
}

// wrongAtRest lets s finish its background work, then counts the accounts
// whose balance read through the cache differs from the database's.
func wrongAtRest(ctx context.Context, db *gorm.DB, s strategy, accounts int) (int, error) {
	s.settle()
	ids := make([]uint, accounts)
	for i := range ids {
		ids[i] = uint(i + 1)
	}
	cached, err := s.readAll(ctx, ids)
	if err != nil {
		return 0, err
	}
	var rows []Account
	if err := db.WithContext(ctx).Order("id").Find(&rows).Error; err != nil {
		return 0, err
	}
	stored, err := inOrder(rows, ids)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range ids {
		if cached[i] != stored[i] {
			n++
		}
	}
	return n, nil
}

// run runs the workload against each selected strategy in turn, with the
// same parameters, each on freshly reset tables and its own key prefix.
func run(ctx context.Context, e *env, cfg config) ([]result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.SumInterval <= 0 {
		cfg.SumInterval = 100 * time.Millisecond
	}
	if cfg.Bucket <= 0 {
		cfg.Bucket = max(100*time.Millisecond, cfg.Duration/100)
	}
	var selected []strategyInfo
	for _, s := range strategies {
		if len(cfg.Strategies) == 0 || contains(cfg.Strategies, s.name) {
			selected = append(selected, s)
		}
	}
	var results []result
	for i, s := range selected {
		r, err := runOne(ctx, e, cfg, s, fmt.Sprintf("%d/%d", i+1, len(selected)))
		if err != nil {
			return results, fmt.Errorf("%s: %w", s.name, err)
		}
		results = append(results, r)
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
	}
	return results, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// resetAccounts recreates the accounts table with every balance at initial.
func resetAccounts(ctx context.Context, e *env, cfg config) error {
	db, err := e.open(2)
	if err != nil {
		return err
	}
	defer closeGorm(db)
	db = db.WithContext(ctx)
	if err := db.Migrator().DropTable(&Account{}); err != nil {
		return err
	}
	if err := db.AutoMigrate(&Account{}); err != nil {
		return err
	}
	accounts := make([]Account, cfg.Accounts)
	for i := range accounts {
		accounts[i] = Account{ID: uint(i + 1), Balance: cfg.InitialBalance}
	}
	return db.CreateInBatches(accounts, 500).Error
}

// stats are the live counters behind the progress line.
type stats struct {
	reads, commits, rollbacks, errors, sumScans atomic.Int64
}

func runOne(ctx context.Context, e *env, cfg config, info strategyInfo, step string) (result, error) {
	res := result{info: info, accounts: cfg.Accounts}
	if err := resetAccounts(ctx, e, cfg); err != nil {
		return res, err
	}
	db, err := e.open(cfg.Writers + cfg.Readers + 4)
	if err != nil {
		return res, err
	}
	defer closeGorm(db)
	prefix := keyPrefix(e.runID) + info.name
	s, err := info.open(db, e.rdb, prefix, cfg)
	if err != nil {
		return res, err
	}
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	h := newHistory()
	created := time.Now()
	for id := 1; id <= cfg.Accounts; id++ {
		h.commit(uint(id), state{balance: cfg.InitialBalance}, created)
	}
	total := cfg.InitialBalance * int64(cfg.Accounts)
	var st stats
	var txIDs atomic.Int64

	// gate lets a sum scan pause the writers: each transfer holds it for
	// reading, a scan for writing.
	var gate sync.RWMutex

	// doTransfer runs one transfer and logs its outcome.
	doTransfer := func(t transfer) (time.Duration, error) {
		gate.RLock()
		defer gate.RUnlock()
		begin := time.Now()
		rows, err := s.transfer(ctx, t)
		end := time.Now()
		switch {
		case err == nil:
			for _, a := range rows {
				h.commit(a.ID, a.state(), end)
			}
			st.commits.Add(1)
		case errors.Is(err, errRollback):
			h.abort(t.id)
			st.rollbacks.Add(1)
			err = nil
		default:
			// A failed commit may have committed; a read of its state
			// would then count as a phantom. None is expected.
			h.abort(t.id)
			st.errors.Add(1)
		}
		return end.Sub(begin), err
	}
	var readErrs atomic.Int64
	var firstErr error
	var errOnce sync.Once
	noteErr := func(err error) {
		if err != nil && ctx.Err() == nil {
			errOnce.Do(func() { firstErr = err })
		}
	}
	doRead := func(id uint, into *[]read, lat *[]time.Duration) (Account, bool) {
		begin := time.Now()
		a, err := s.read(ctx, id)
		took := time.Since(begin)
		st.reads.Add(1)
		if err != nil {
			readErrs.Add(1)
			noteErr(err)
			return a, false
		}
		*into = append(*into, read{account: id, state: a.state(), start: begin, took: took})
		*lat = append(*lat, took)
		return a, true
	}

	// The probe forces the windows open before the random workload starts:
	// a read right after a commit, and a read right after a rollback, of an
	// account the cache already holds.
	var probeReads []read
	var probeLat, writeLatProbe []time.Duration
	probe := []transfer{
		{id: txIDs.Add(1), from: 1, to: 2, amount: 1},
		{id: txIDs.Add(1), from: 2, to: 1, amount: 1, rollback: true},
	}
	for _, t := range probe {
		doRead(t.from, &probeReads, &probeLat)
		took, err := doTransfer(t)
		noteErr(err)
		writeLatProbe = append(writeLatProbe, took)
		doRead(t.from, &probeReads, &probeLat)
	}

	ser := series{start: time.Now(), bucket: cfg.Bucket, n: int((cfg.Duration + cfg.Bucket - 1) / cfg.Bucket)}
	deadline := ser.start.Add(cfg.Duration)
	running := func() bool { return ctx.Err() == nil && time.Now().Before(deadline) }
	var wg sync.WaitGroup

	writeLat := make([][]time.Duration, cfg.Writers)
	for w := range cfg.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
			for running() {
				from := uint(rng.IntN(cfg.Accounts) + 1)
				to := uint(rng.IntN(cfg.Accounts-1) + 1)
				if to >= from {
					to++
				}
				t := transfer{
					id:       txIDs.Add(1),
					from:     from,
					to:       to,
					amount:   int64(rng.IntN(100) + 1),
					rollback: rng.Float64() < cfg.RollbackRatio,
				}
				took, err := doTransfer(t)
				noteErr(err)
				writeLat[w] = append(writeLat[w], took)
			}
		}()
	}

	reads := make([][]read, cfg.Readers+1) // the last one is the sum scanner's
	readLat := make([][]time.Duration, cfg.Readers)
	for r := range cfg.Readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(1000+r)))
			for running() {
				doRead(uint(rng.IntN(cfg.Accounts)+1), &reads[r], &readLat[r])
			}
		}()
	}

	// The sum scanner: pause the writers, wait for the transfers in flight
	// to return, read every account through the cache in one batch, add up.
	// Its reads are judged like the others; a batch's latency is not a
	// read's, so it stays out of the percentiles.
	var sumScans, sumViolations int
	wg.Add(1)
	go func() {
		defer wg.Done()
		sr := &reads[cfg.Readers]
		ids := make([]uint, cfg.Accounts)
		for i := range ids {
			ids[i] = uint(i + 1)
		}
		t := time.NewTicker(cfg.SumInterval)
		defer t.Stop()
		for running() {
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
			gate.Lock()
			begin := time.Now()
			as, err := s.readAll(ctx, ids)
			took := time.Since(begin)
			gate.Unlock()
			st.reads.Add(int64(len(ids)))
			complete := err == nil
			if err != nil {
				readErrs.Add(1)
				noteErr(err)
			}
			var sum int64
			for _, a := range as {
				*sr = append(*sr, read{account: a.ID, state: a.state(), start: begin, took: took})
				sum += a.Balance
			}
			if complete {
				sumScans++
				st.sumScans.Add(1)
				if sum != total {
					sumViolations++
				}
			}
		}
	}()

	stopProgress := progress(cfg, info, step, deadline, &st)
	wg.Wait()
	stopProgress()
	res.wrongAtRest, err = wrongAtRest(ctx, db, s, cfg.Accounts)
	noteErr(err)
	res.hits, res.lookups = s.hits()
	if t, ok := s.(interface{ trouble() string }); ok {
		res.trouble = t.trouble()
	}
	if err := s.close(); err != nil {
		noteErr(err)
	}
	s = nil

	var all []read
	all = append(all, probeReads...)
	var rl []time.Duration
	rl = append(rl, probeLat...)
	for i := range reads {
		all = append(all, reads[i]...)
	}
	for i := range readLat {
		rl = append(rl, readLat[i]...)
	}
	wl := writeLatProbe
	for i := range writeLat {
		wl = append(wl, writeLat[i]...)
	}
	res.verdict = h.judge(all, ser)
	res.bucket = ser.bucket
	res.reads = len(all)
	res.readErrors = int(readErrs.Load())
	res.sumScans, res.sumViolations = sumScans, sumViolations
	res.commits, res.rollbacks, res.writeErrors = int(st.commits.Load()), int(st.rollbacks.Load()), int(st.errors.Load())
	res.readP50, res.readP99 = percentile(rl, 50), percentile(rl, 99)
	res.writeP50, res.writeP99 = percentile(wl, 50), percentile(wl, 99)
	res.firstError = firstErr
	return res, ctx.Err()
}

// progress prints a status line every second until the returned function is
// called.
func progress(cfg config, info strategyInfo, step string, deadline time.Time, st *stats) (stop func()) {
	if cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	line := func() string {
		return fmt.Sprintf("[%s %s] %3.0fs/%.0fs  reads %d  transfers %d committed, %d rolled back, %d failed  sum scans %d",
			step, info.name, time.Since(start).Seconds(), deadline.Sub(start).Seconds(),
			st.reads.Load(), st.commits.Load(), st.rollbacks.Load(), st.errors.Load(), st.sumScans.Load())
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if cfg.ProgressLines {
					fmt.Fprintln(cfg.Progress, line())
				} else {
					fmt.Fprintf(cfg.Progress, "\r%s\x1b[K", line())
				}
			case <-done:
				if !cfg.ProgressLines {
					fmt.Fprintf(cfg.Progress, "\r%s\x1b[K\n", line())
				}
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
