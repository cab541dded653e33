package main

import (
	"slices"
	"sync"
	"time"
)

// A state is one account's row as a read returned it or a transaction wrote it.
type state struct {
	balance int64
	version int64
	txID    int64
}

// history is the log the checker judges reads against: every committed
// state of every account, with the time its transaction's Commit returned,
// and the id of every transaction that did not commit.
type history struct {
	mu        sync.Mutex        // protects committed and aborted
	committed map[uint][]commit // by account, indexed by version
	aborted   map[int64]bool    // transaction ids that rolled back or failed
}

type commit struct {
	state
	at time.Time // when Commit returned
	ok bool      // false for a version never recorded
}

// A read is one balance read through a strategy's read path.
type read struct {
	account uint
	state
	start time.Time
	took  time.Duration
}

func newHistory() *history {
	return &history{committed: map[uint][]commit{}, aborted: map[int64]bool{}}
}

func (h *history) commit(account uint, s state, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	log := h.committed[account]
	for int64(len(log)) <= s.version {
		log = append(log, commit{})
	}
	log[s.version] = commit{state: s, at: at, ok: true}
	h.committed[account] = log
}

func (h *history) abort(txID int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.aborted[txID] = true
}

// verdict is the checker's judgement of a set of reads.
type verdict struct {
	stale         int
	maxStaleness  time.Duration
	phantom       int
	unexplained   int   // a state that no transaction wrote: a bug in a strategy
	staleSeries   []int // stale reads per bucket of the series
	phantomSeries []int // phantom reads per bucket of the series
}

// A series divides n*bucket from start into buckets.
type series struct {
	start  time.Time
	bucket time.Duration
	n      int
}

// index returns the bucket t falls in, if any.
func (s series) index(t time.Time) (int, bool) {
	d := t.Sub(s.start)
	if d < 0 || s.bucket <= 0 || int(d/s.bucket) >= s.n {
		return 0, false
	}
	return int(d / s.bucket), true
}

// judge classifies reads once the workload has stopped and every commit is
// in the log. A read that returned a state written only by a transaction
// that did not commit is a phantom. Otherwise it is stale when some newer
// version of the account had committed, its Commit returned, before the read
// began; its staleness is how long before the read began the first such
// commit returned. Stale reads are also counted per bucket of ser.
func (h *history) judge(reads []read, ser series) verdict {
	h.mu.Lock()
	defer h.mu.Unlock()
	// newerBy[a][v] is the earliest time a version above v committed.
	newerBy := make(map[uint][]time.Time, len(h.committed))
	for a, log := range h.committed {
		n := make([]time.Time, len(log))
		var earliest time.Time // zero: none yet
		for v := len(log) - 1; v >= 0; v-- {
			n[v] = earliest
			if log[v].ok && (earliest.IsZero() || log[v].at.Before(earliest)) {
				earliest = log[v].at
			}
		}
		newerBy[a] = n
	}
	v := verdict{staleSeries: make([]int, ser.n), phantomSeries: make([]int, ser.n)}
	for _, r := range reads {
		i, inSeries := ser.index(r.start)
		if h.aborted[r.txID] {
			v.phantom++
			if inSeries {
				v.phantomSeries[i]++
			}
			continue
		}
		log := h.committed[r.account]
		if r.version < 0 || r.version >= int64(len(log)) || !log[r.version].ok || log[r.version].state != r.state {
			v.unexplained++
			continue
		}
		first := newerBy[r.account][r.version]
		if first.IsZero() || !first.Before(r.start) {
			continue
		}
		v.stale++
		v.maxStaleness = max(v.maxStaleness, r.start.Sub(first))
		if inSeries {
			v.staleSeries[i]++
		}
	}
	return v
}

// percentile returns the p-th percentile (0 < p <= 100) of ds, sorting ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(float64(len(ds))*p/100+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}
