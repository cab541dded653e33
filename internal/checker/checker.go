// Package checker decides whether a recorded history of reads and writes of
// database rows could have happened on a linearizable register per row, and
// measures how stale the reads that could not were.
//
// A history is a list of [Op]s, each with a call and a return time taken
// from one monotonic clock. Writes carry the row as the database had it when
// the write committed (read back inside the transaction, under the row lock);
// a write whose commit had an unknown outcome is a [MaybeWrite]. Reads carry
// what the reader got. Histories are checked in windows: the caller stops
// every client between windows and hands the checker the database's state at
// that point as the initial state of the next window, so that each window's
// per-row partition is short and can be checked on its own, however long the
// run.
//
// Two verdicts come out of a window:
//
//   - linearizability, with github.com/anishathalye/porcupine, partitioned
//     per row, with a register model over the row's whole value; a
//     MaybeWrite may or may not take effect (a nondeterministic step);
//   - staleness: a read is stale when it returned a value older, in the
//     row's commit order, than one known to exist before the read began
//     (written by a write that had returned, or returned by a read that had
//     returned); a read of a value that no write produced is a phantom.
//
// Staleness needs the row's commit order: [Value.Version] must increase with
// every committed write of the row, across deletes and re-inserts.
package checker

import (
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Value is one state of a row.
type Value struct {
	// Present is false when the row does not exist.
	Present bool
	// Version orders the row's committed states. For a present row it is the
	// row's version column. For an absent row written by a delete it is the
	// version the delete removed; for an absent row read, or absent since
	// before the history, it is zero.
	Version int64
	// Row renders the row's other columns canonically; two states are the
	// same only if every column is.
	Row string
}

// Absent is the value of a row that does not exist.
var Absent = Value{}

func (v Value) String() string {
	if !v.Present {
		if v.Version != 0 {
			return fmt.Sprintf("absent(deleted v%d)", v.Version)
		}
		return "absent"
	}
	return fmt.Sprintf("v%d{%s}", v.Version, v.Row)
}

// norm forgets the deleted version of an absent value: all absent rows are
// the same state of the register.
func (v Value) norm() Value {
	if !v.Present {
		return Absent
	}
	return v
}

// order is v's position in the row's commit order: a present row at its
// version, a deleted row just after the version it removed.
func (v Value) order() int64 {
	if v.Present {
		return 2 * v.Version
	}
	return 2*v.Version + 1
}

// Kind is what an operation did.
type Kind uint8

const (
	// Read returned Value.
	Read Kind = iota
	// Write committed Value.
	Write
	// MaybeWrite may have committed Value: its COMMIT failed in a way that
	// does not tell (a lost connection).
	MaybeWrite
)

func (k Kind) String() string {
	switch k {
	case Read:
		return "read"
	case Write:
		return "write"
	case MaybeWrite:
		return "maybe-write"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Op is one completed operation on one row.
type Op struct {
	Key    int64
	Kind   Kind
	Value  Value
	Call   int64 // nanoseconds on the history's clock
	Return int64
	Client int
	// Source says how the operation ran ("cached", "db", "update", ...),
	// for reports.
	Source string
	// Bypass marks a write made around the cache (raw SQL on another
	// connection, another program): until something invalidates the row's
	// key, readers may still be served the older row. See [BypassStale].
	Bypass bool
}

func (o Op) String() string {
	return fmt.Sprintf("[%d,%d] c%d %s %s %s", o.Call, o.Return, o.Client, o.Source, o.Kind, o.Value)
}

// Violation is one row's window that porcupine could not linearize.
type Violation struct {
	Window int
	Key    int64
	Init   Value
	Ops    []Op // the row's operations in the window that were checked, by call time
	// All holds every operation of the row's window, reads stale behind
	// bypassing writes included, when some were left out of Ops.
	All []Op
}

func (v Violation) String() string { return v.Format(40) }

// Format lists the violation's operations, at most max of them (all when
// max is negative).
func (v Violation) Format(max int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "window %d, key %d, initial %s, %d ops:", v.Window, v.Key, v.Init, len(v.Ops))
	for i, o := range v.Ops {
		if i == max {
			fmt.Fprintf(&b, "\n  ... %d more", len(v.Ops)-i)
			break
		}
		fmt.Fprintf(&b, "\n  %s", o)
	}
	return b.String()
}

// StaleRead is a read that returned a value older than one known to exist
// before it began.
type StaleRead struct {
	Op        Op
	Staleness time.Duration // from the moment the newer value was known to the read's call
	// History is the row's window, for the first stale reads kept.
	History *Violation
}

// Totals sums everything a Checker has seen.
type Totals struct {
	Windows     int
	Ops         int // operations checked
	Reads       int
	Writes      int
	MaybeWrites int
	Partitions  int // (window, row) histories checked
	Violations  int // partitions porcupine found not linearizable
	Unknown     int // partitions porcupine gave up on (timeout)
	StaleReads  int
	Phantoms    int // reads of a value no write produced
	// MaxStaleness is the longest staleness among StaleReads.
	MaxStaleness time.Duration
	// BypassWrites counts the writes marked Bypass, BypassStale the reads
	// that only such writes made stale (see [Checker.BypassStale]), and
	// MaxBypassStaleness is the longest of those.
	BypassWrites       int
	BypassStale        int
	MaxBypassStaleness time.Duration
}

func (t Totals) String() string {
	s := fmt.Sprintf("%d ops checked (%d reads, %d writes, %d maybe) in %d windows / %d partitions: "+
		"%d linearizability violations, %d unknown, %d stale reads (longest %s), %d phantom reads",
		t.Ops, t.Reads, t.Writes, t.MaybeWrites, t.Windows, t.Partitions,
		t.Violations, t.Unknown, t.StaleReads, t.MaxStaleness, t.Phantoms)
	if t.BypassWrites > 0 {
		s += fmt.Sprintf("; %d writes bypassed the cache, %d reads stale behind them only (longest %s)",
			t.BypassWrites, t.BypassStale, t.MaxBypassStaleness)
	}
	return s
}

// Checker checks consecutive windows of one run. It is not safe for
// concurrent use.
//
// Writes marked [Op.Bypass] went around the cache, so a cache may serve
// the older row for a while after they commit: as long as its invalidation
// (by change-data-capture, say) is on its way. A read that is stale only
// because of such writes (every newer state known before the read began
// was written by one) is not held against linearizability: it is left out
// of porcupine's history, counted in BypassStale with its staleness, and
// the caller compares that with the bound it expects. A read stale behind
// any other write is a stale read as usual.
type Checker struct {
	// Timeout bounds porcupine's search on one partition; zero means 10s.
	Timeout time.Duration
	// KeepExamples is how many violations, stale reads and phantoms to keep
	// for the report; zero means 5.
	KeepExamples int

	Totals     Totals
	Violations []Violation
	Stale      []StaleRead
	PhantomOps []Op
	// BypassStale keeps the stalest reads behind bypassing writes only, at
	// most KeepExamples of them, stalest first.
	BypassStale []StaleRead

	rows map[int64]*rowLog
}

// rowLog is what the staleness analysis remembers of one row across
// windows: every state it was known to have, in commit order.
type rowLog struct {
	states []*state         // by order
	byVal  map[Value]*state // present states by value; absent states by (deleted) version
}

type state struct {
	val     Value
	order   int64
	call    int64 // call time of the write that produced it
	knownAt int64 // earliest time it was known to exist (a write returned, a read returned)
	sufMin  int64 // min knownAt over this state and every later one
	bypass  bool  // a bypassing write produced it
	sufOwn  int64 // min knownAt over this state and every later one no bypassing write produced
}

const never = math.MaxInt64

// WindowResult is what one window added to the totals.
type WindowResult struct {
	Ops, Violations, Unknown, StaleReads, Phantoms, BypassStale int
}

// CheckWindow checks one window: init holds every row's state when the
// window began (rows missing from init were absent), ops every operation
// that ran in it, all of which returned before the next window began.
func (c *Checker) CheckWindow(init map[int64]Value, start int64, ops []Op) WindowResult {
	if c.rows == nil {
		c.rows = make(map[int64]*rowLog)
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.KeepExamples == 0 {
		c.KeepExamples = 5
	}
	window := c.Totals.Windows
	c.Totals.Windows++
	byKey := make(map[int64][]Op)
	for _, o := range ops {
		byKey[o.Key] = append(byKey[o.Key], o)
	}
	for k := range init {
		if _, ok := byKey[k]; !ok {
			byKey[k] = nil
		}
	}
	keys := make([]int64, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })

	var res WindowResult
	for _, k := range keys {
		kops := byKey[k]
		sort.SliceStable(kops, func(i, j int) bool { return kops[i].Call < kops[j].Call })
		for _, o := range kops {
			switch o.Kind {
			case Read:
				c.Totals.Reads++
			case Write:
				c.Totals.Writes++
			case MaybeWrite:
				c.Totals.MaybeWrites++
			}
			if o.Bypass && o.Kind != Read {
				c.Totals.BypassWrites++
			}
		}
		res.Ops += len(kops)
		if len(kops) == 0 {
			c.row(k).seed(init[k], start)
			continue
		}
		c.Totals.Partitions++
		c.row(k).seed(init[k], start)
		stale, behindBypass, ambiguous, phantoms := c.row(k).analyse(kops, false)
		// Reads stale behind bypassing writes only are measured, not
		// linearized.
		check := without(kops, behindBypass)
		verdict := c.linearizable(init[k], check)
		if verdict == porcupine.Illegal && bypassed(kops) {
			// Absent reads say little: the analysis takes each for the
			// latest absence it could have seen, and proving nothing about
			// when that was known. Try them the other ways: as an older
			// absence behind a bypassing insert, or as proof that the
			// latest absence, a bypassing delete's, was known when they
			// returned.
			if alt := without(check, ambiguous); len(ambiguous) > 0 && c.linearizable(init[k], alt) != porcupine.Illegal {
				behindBypass = append(behindBypass, ambiguous...)
				check, verdict = alt, porcupine.Ok
			} else {
				stale2, behind2, _, phantoms2 := c.row(k).analyse(kops, true)
				if alt := without(kops, behind2); c.linearizable(init[k], alt) != porcupine.Illegal {
					stale, behindBypass, phantoms = stale2, behind2, phantoms2
					check, verdict = alt, porcupine.Ok
				}
			}
		}
		res.StaleReads += len(stale)
		res.BypassStale += len(behindBypass)
		res.Phantoms += len(phantoms)
		switch verdict {
		case porcupine.Illegal:
			res.Violations++
			if len(c.Violations) < c.KeepExamples {
				v := Violation{Window: window, Key: k, Init: init[k], Ops: check}
				if len(check) != len(kops) {
					v.All = kops
				}
				c.Violations = append(c.Violations, v)
			}
		case porcupine.Unknown:
			res.Unknown++
		}
		for _, s := range stale {
			if s.Staleness > c.Totals.MaxStaleness {
				c.Totals.MaxStaleness = s.Staleness
			}
			if len(c.Stale) < c.KeepExamples {
				if len(c.Stale) == 0 || c.Stale[len(c.Stale)-1].History == nil || c.Stale[len(c.Stale)-1].History.Key != k {
					s.History = &Violation{Window: window, Key: k, Init: init[k], Ops: kops}
				}
				c.Stale = append(c.Stale, s)
			}
		}
		for _, s := range behindBypass {
			c.Totals.MaxBypassStaleness = max(c.Totals.MaxBypassStaleness, s.Staleness)
			c.keepBypassStale(s)
		}
		for _, p := range phantoms {
			if len(c.PhantomOps) < c.KeepExamples {
				c.PhantomOps = append(c.PhantomOps, p)
			}
		}
	}
	c.Totals.Ops += res.Ops
	c.Totals.Violations += res.Violations
	c.Totals.Unknown += res.Unknown
	c.Totals.StaleReads += res.StaleReads
	c.Totals.Phantoms += res.Phantoms
	c.Totals.BypassStale += res.BypassStale
	return res
}

// linearizable runs porcupine on one row's operations.
func (c *Checker) linearizable(init Value, ops []Op) porcupine.CheckResult {
	maybe := false
	for _, o := range ops {
		maybe = maybe || o.Kind == MaybeWrite
	}
	return porcupine.CheckOperationsTimeout(rowModel(init, maybe), toPorcupine(init, ops), c.Timeout)
}

// bypassed reports whether a bypassing write is among ops.
func bypassed(ops []Op) bool {
	for _, o := range ops {
		if o.Bypass && o.Kind != Read {
			return true
		}
	}
	return false
}

// without returns ops but the reads of reads.
func without(ops []Op, reads []StaleRead) []Op {
	if len(reads) == 0 {
		return ops
	}
	skip := make(map[Op]bool, len(reads))
	for _, s := range reads {
		skip[s.Op] = true
	}
	out := make([]Op, 0, len(ops))
	for _, o := range ops {
		if !skip[o] {
			out = append(out, o)
		}
	}
	return out
}

// keepBypassStale keeps s if it is among the KeepExamples stalest.
func (c *Checker) keepBypassStale(s StaleRead) {
	i := sort.Search(len(c.BypassStale), func(i int) bool { return c.BypassStale[i].Staleness < s.Staleness })
	if i == c.KeepExamples {
		return
	}
	c.BypassStale = slices.Insert(c.BypassStale, i, s)
	if len(c.BypassStale) > c.KeepExamples {
		c.BypassStale = c.BypassStale[:c.KeepExamples]
	}
}

func (c *Checker) row(k int64) *rowLog {
	r := c.rows[k]
	if r == nil {
		r = &rowLog{byVal: make(map[Value]*state)}
		c.rows[k] = r
	}
	return r
}

// regState is the register's state: the row's value, the commit-order
// position of the write that left it, and that of the last definite write
// applied.
type regState struct {
	val     Value // normalized: every absent row is Absent
	order   int64
	lastDef int64
}

// input is what porcupine steps the model with: an operation, and for a
// write the order of the definite write that committed just before it.
type input struct {
	op      Op
	prevDef int64
}

// rowModel is a register holding one row, starting at init. Reads must
// return the register's value; writes set it; maybe-writes may.
//
// Writes must also take effect in their commit order (Value.order): the
// database serializes the writes of a row, and their versions say in which
// order. So a definite write applies only right after the definite write
// that precedes it in that order (maybe-writes in between may or may not
// apply). This rules out no execution that could have happened, and it
// keeps porcupine from trying every order of the writers queued on a row
// lock.
func rowModel(init Value, maybe bool) porcupine.Model {
	start := regState{val: init.norm(), order: initOrder(init)}
	start.lastDef = start.order
	step := func(st, in any) []any {
		cur := st.(regState)
		x := in.(input)
		next := regState{val: x.op.Value.norm(), order: x.op.Value.order(), lastDef: cur.lastDef}
		switch x.op.Kind {
		case Read:
			if next.val == cur.val {
				return []any{cur}
			}
			return nil
		case Write:
			if cur.lastDef != x.prevDef || next.order <= cur.order {
				return nil
			}
			next.lastDef = next.order
			return []any{next}
		default:
			if cur.lastDef != x.prevDef || next.order <= cur.order {
				return []any{cur}
			}
			return []any{cur, next}
		}
	}
	hash := func(st any) uint64 {
		v := st.(regState)
		h := fnv.New64a()
		fmt.Fprintf(h, "%t|%d|%s|%d|%d", v.val.Present, v.val.Version, v.val.Row, v.order, v.lastDef)
		return h.Sum64()
	}
	describe := func(in, _ any) string {
		op := in.(input).op
		return fmt.Sprintf("%s %s %s", op.Source, op.Kind, op.Value)
	}
	if !maybe {
		// Every step has at most one outcome: a plain model is cheaper
		// than the power-set construction.
		return porcupine.Model{
			Init: func() any { return start },
			Step: func(st, in, _ any) (bool, any) {
				next := step(st, in)
				if len(next) == 0 {
					return false, nil
				}
				return true, next[0]
			},
			Hash:              hash,
			DescribeOperation: describe,
			DescribeState:     func(st any) string { return st.(regState).val.String() },
		}
	}
	nm := porcupine.NondeterministicModel{
		Init:              func() []any { return []any{start} },
		Step:              func(st, in, _ any) []any { return step(st, in) },
		Hash:              hash,
		DescribeOperation: describe,
		DescribeState:     func(st any) string { return st.(regState).val.String() },
	}
	return nm.ToModel()
}

// initOrder is the commit-order position of a window's initial state. An
// absent row's deleted version is unknown (the snapshot cannot say it), but
// every write that can follow it is an insert, which starts a new epoch:
// lower than any will do.
func initOrder(init Value) int64 {
	if !init.Present {
		return -1
	}
	return init.order()
}

// toPorcupine turns one row's operations into porcupine's, with each
// write's preceding definite write.
func toPorcupine(init Value, ops []Op) []porcupine.Operation {
	var defs []int64
	for _, o := range ops {
		if o.Kind == Write {
			defs = append(defs, o.Value.order())
		}
	}
	sort.Slice(defs, func(i, j int) bool { return defs[i] < defs[j] })
	start := initOrder(init)
	out := make([]porcupine.Operation, len(ops))
	for i, o := range ops {
		in := input{op: o, prevDef: start}
		if o.Kind != Read {
			k := sort.Search(len(defs), func(j int) bool { return defs[j] >= o.Value.order() })
			if k > 0 {
				in.prevDef = defs[k-1]
			}
		}
		out[i] = porcupine.Operation{ClientId: o.Client, Input: in, Call: o.Call, Output: o.Value, Return: o.Return}
	}
	return out
}

// seed makes sure the window's initial state is known to the analysis.
func (r *rowLog) seed(init Value, start int64) *state {
	id := init
	if !init.Present {
		// Absent at the window's start: the last delete known, or absent
		// since before the history.
		if n := len(r.states); n > 0 && !r.states[n-1].val.Present {
			id = r.states[n-1].val
		} else {
			id = Value{Version: -1}
		}
	}
	if s := r.byVal[id]; s != nil {
		if s.knownAt > start {
			r.lower(s, start)
		}
		return s
	}
	s := &state{val: id, order: id.order(), call: start, knownAt: start}
	r.insert(s)
	return s
}

func (r *rowLog) insert(s *state) {
	r.byVal[s.val] = s
	i := sort.Search(len(r.states), func(i int) bool { return r.states[i].order > s.order })
	r.states = append(r.states, nil)
	copy(r.states[i+1:], r.states[i:])
	r.states[i] = s
	r.propagate(i)
}

// lower records that s was known to exist at t.
func (r *rowLog) lower(s *state, t int64) {
	if t >= s.knownAt {
		return
	}
	s.knownAt = t
	i := sort.Search(len(r.states), func(i int) bool { return r.states[i].order >= s.order })
	for i < len(r.states) && r.states[i] != s {
		i++
	}
	r.propagate(i)
}

// propagate recomputes the suffix minimum from index i backwards, as far as
// it changes.
func (r *rowLog) propagate(i int) {
	for j := i; j >= 0; j-- {
		s := r.states[j]
		m, own := s.knownAt, s.knownAt
		if s.bypass {
			own = never
		}
		if j+1 < len(r.states) {
			m = min(m, r.states[j+1].sufMin)
			own = min(own, r.states[j+1].sufOwn)
		}
		if m == s.sufMin && own == s.sufOwn && j != i {
			return
		}
		s.sufMin, s.sufOwn = m, own
	}
}

// newerKnown is the earliest time a state later than order was known, and
// the earliest time one no bypassing write produced was.
func (r *rowLog) newerKnown(order int64) (any, own int64) {
	i := sort.Search(len(r.states), func(i int) bool { return r.states[i].order > order })
	if i == len(r.states) {
		return never, never
	}
	return r.states[i].sufMin, r.states[i].sufOwn
}

// analyse registers a window's writes, then classifies its reads: stale
// (behind a write of the plugin's, or a read of one), stale behind
// bypassing writes only, and phantoms. ambiguous holds absent reads that
// are not stale as find takes them, but would be stale behind bypassing
// writes only if they saw an older absence: the row deleted, re-inserted
// around the cache, then deleted again while the read ran. absentProves
// makes an absent read prove that the absence find takes it for existed by
// the time it returned, when a bypassing delete made that absence.
//
// The window's initial state must be seeded first; analyse may run twice on
// one window (seeding again after the first would take the window's last
// absence for its first).
func (r *rowLog) analyse(ops []Op, absentProves bool) (stale, behindBypass, ambiguous []StaleRead, phantoms []Op) {
	var writes []Op
	for _, o := range ops {
		if o.Kind != Read {
			writes = append(writes, o)
		}
	}
	sort.Slice(writes, func(i, j int) bool { return writes[i].Value.order() < writes[j].Value.order() })
	for _, w := range writes {
		known := int64(never)
		if w.Kind == Write {
			known = w.Return
		}
		if s := r.byVal[w.Value]; s != nil {
			if w.Call < s.call {
				s.call = w.Call
			}
			r.lower(s, known)
			continue
		}
		r.insert(&state{val: w.Value, order: w.Value.order(), call: w.Call, knownAt: known, bypass: w.Bypass})
	}
	// Every read of a row proves that row existed by the time it returned.
	found := make([]*state, len(ops))
	for i, o := range ops {
		if o.Kind != Read {
			continue
		}
		s := r.find(o)
		if s == nil {
			phantoms = append(phantoms, o)
			continue
		}
		found[i] = s
		if o.Value.Present || absentProves && s.bypass {
			// An absent read does not say which absent state it saw (before
			// an insert, or after a delete): it proves nothing about time.
			r.lower(s, o.Return)
		}
	}
	for i, o := range ops {
		s := found[i]
		if s == nil {
			continue
		}
		k, own := r.newerKnown(s.order)
		switch {
		case own < o.Call:
			stale = append(stale, StaleRead{Op: o, Staleness: time.Duration(o.Call - k)})
		case k < o.Call:
			behindBypass = append(behindBypass, StaleRead{Op: o, Staleness: time.Duration(o.Call - k)})
		case !o.Value.Present:
			if k, ok := r.olderAbsence(s, o); ok {
				ambiguous = append(ambiguous, StaleRead{Op: o, Staleness: time.Duration(o.Call - k)})
			}
		}
	}
	return stale, behindBypass, ambiguous, phantoms
}

// olderAbsence looks, below the absent state s, for the latest absent
// state an absent read o would be stale behind bypassing writes only
// against, and returns when the state after it was first known.
func (r *rowLog) olderAbsence(s *state, o Op) (known int64, ok bool) {
	for i := len(r.states) - 1; i >= 0; i-- {
		old := r.states[i]
		if old.order >= s.order || old.val.Present {
			continue
		}
		k, own := r.newerKnown(old.order)
		return k, k < o.Call && own >= o.Call
	}
	return 0, false
}

// find returns the state a read returned: a present value by identity; an
// absent one as the latest absent state that could have been current, that
// is, whose delete had been called by the time the read returned.
func (r *rowLog) find(o Op) *state {
	if o.Value.Present {
		return r.byVal[o.Value]
	}
	for i := len(r.states) - 1; i >= 0; i-- {
		s := r.states[i]
		if !s.val.Present && s.call <= o.Return {
			return s
		}
	}
	return nil
}

// Culprit narrows a violation down: it returns the shortest prefix of the
// row's operations (by call time) that is already not linearizable, and
// the operations of that prefix that overlap its last one or end within
// the given slack before it.
func (v Violation) Culprit(slack time.Duration) (prefix int, around []Op) {
	ops := v.Ops
	legal := func(n int) bool {
		maybe := false
		for _, o := range ops[:n] {
			maybe = maybe || o.Kind == MaybeWrite
		}
		return porcupine.CheckOperationsTimeout(rowModel(v.Init, maybe), toPorcupine(v.Init, ops[:n]), 10*time.Second) != porcupine.Illegal
	}
	lo, hi := 0, len(ops) // legal(lo), !legal(hi)
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if legal(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	last := ops[hi-1]
	for _, o := range ops[:hi] {
		if o.Return >= last.Call-int64(slack) {
			around = append(around, o)
		}
	}
	return hi, around
}
