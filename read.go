package writethrough

import (
	"context"
	"errors"
	"reflect"
	"sort"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/rowcodec"
	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

const (
	cachedKey   = "writethrough:cached"
	uncachedKey = "writethrough:uncached"
	// ownKey marks the plugin's own statements (ownQuery): reads of rows,
	// keys and the catalog that write nothing.
	ownKey = "writethrough:own"
)

// Cached is a GORM scope that lets the plugin serve the statement from Redis:
//
//	db.Scopes(writethrough.Cached).First(&u, 42)
//	db.Scopes(writethrough.Cached).Find(&us, []int{1, 2, 3})
//
// A statement is served from Redis on a hit, and filled from the database on
// a miss, only when its complete condition is a primary-key lookup: First,
// Take, Last or Find with one key (or Find with many), in the forms GORM
// accepts, including the key GORM adds from a struct destination, with no
// other condition, column list, join, lock, offset or table override. Any
// other statement runs in SQL, untouched. Inside a transaction the read goes
// to the database and never fills the cache. The mark covers the statement
// only, not its Preload sub-queries; see [Config.CacheReads] and [CachedDB].
func Cached(db *gorm.DB) *gorm.DB {
	return db.Set(cachedKey, true)
}

// Uncached is a GORM scope that sends the statement, and its Preload
// sub-queries, to the database even when [Config.CacheReads] is on:
//
//	db.Scopes(writethrough.Uncached).First(&u, 42)
func Uncached(db *gorm.DB) *gorm.DB {
	return db.Set(uncachedKey, true)
}

// CachedDB returns a handle on db whose every statement carries [Cached]:
//
//	cdb := writethrough.CachedDB(db)
//	cdb.First(&u, 1)
//	cdb.Where("id = ?", 2).First(&v) // conditions do not pile up across calls
//
// The handle is a GORM session, safe to keep and reuse like db itself
// (db.Scopes(Cached) kept in a variable is one statement that every call
// adds its conditions to). The mark does not reach Preload sub-queries,
// Session(&gorm.Session{NewDB: true}) or gorm.G[T]; [Config.CacheReads] does.
func CachedDB(db *gorm.DB) *gorm.DB {
	return db.Session(&gorm.Session{}).Set(cachedKey, true).Session(&gorm.Session{})
}

// query replaces gorm:query. Statements not marked Cached (and every
// statement when Config.CacheReads is off) go straight to GORM's own query
// callback.
func (p *Plugin) query(orig func(*gorm.DB)) func(*gorm.DB) {
	return func(db *gorm.DB) {
		st := db.Statement
		mark, marked := st.Settings.Load(cachedKey)
		if marked {
			// Consume the mark, so that preload and nested statements that
			// copy the settings are not served because of it.
			st.Settings.Delete(cachedKey)
		}
		if !marked && !p.cfg.CacheReads {
			orig(db)
			return
		}
		if _, off := st.Settings.Load(uncachedKey); off || db.Error != nil || db.DryRun {
			orig(db)
			return
		}
		kn, _ := mark.(known)
		p.serve(db, orig, marked, kn)
	}
}

// known holds what Get or GetMany has just read from Redis for the keys of
// the statement it falls back to, carried in the statement's Cached mark so
// that serving it does not read them again. It never holds a hit or a
// tombstone: those were answered without a statement.
type known map[string]outcome

// cachedKnown is db.Scopes(Cached) for a statement whose keys' outcomes kn
// holds.
func cachedKnown(db *gorm.DB, kn known) *gorm.DB {
	if len(kn) == 0 {
		return db.Scopes(Cached)
	}
	return db.Set(cachedKey, kn)
}

// of returns the outcomes of keys, when kn holds every one of them.
func (kn known) of(keys []string) ([]outcome, bool) {
	if len(kn) == 0 {
		return nil, false
	}
	outs := make([]outcome, len(keys))
	for i, k := range keys {
		o, ok := kn[k]
		if !ok || o == outHit || o == outNotFound {
			return nil, false
		}
		outs[i] = o
	}
	return outs, true
}

// serve answers a statement that may be served from the cache. marked is
// true for a statement marked Cached, false for one that Config.CacheReads
// brings here; kn holds the outcomes of keys Get or GetMany has just looked
// up.
func (p *Plugin) serve(db *gorm.DB, orig func(*gorm.DB), marked bool, kn known) {
	if !p.gate.enter() {
		// Closed: the database answers, and nothing is filled.
		p.stats.bypasses.Add(1)
		orig(db)
		return
	}
	defer p.gate.leave()
	st := db.Statement
	spec, err := p.specOf(st.Schema)
	if spec != nil {
		p.ensureDrainer()
	}
	if err != nil {
		_ = db.AddError(err)
		return
	}
	if spec == nil {
		if marked {
			p.stats.bypasses.Add(1)
		}
		orig(db)
		return
	}
	p.resolveKeys(db, spec) // canonical keys (canon.go)
	plan, ok := p.planSafe(db, spec)
	if !ok {
		p.stats.bypasses.Add(1)
		orig(db)
		return
	}
	if len(plan.keys) == 1 && p.suspects.is(plan.keys[0]) {
		// Redis missed a write of this key that this process made; until the
		// outbox has deleted the old entry, the database answers.
		p.stats.misses.Add(1)
		p.toPrimary(db)
		orig(db)
		return
	}
	if _, inTx := txhook.Of(st.ConnPool); inTx {
		// A transaction may hold an old snapshot or its own uncommitted
		// writes: read the database, never fill.
		p.stats.misses.Add(1)
		orig(db)
		return
	}
	if plan.multi && len(plan.keys) > 1 {
		p.serveMany(db, plan, orig, kn)
		return
	}
	p.serveOne(db, plan, orig, kn)
}

// serveOne serves a statement for one key: from Redis on a hit; on a miss
// from one database read per process that every reader arriving meanwhile
// shares, filled into Redis if its leader leased the key. kn holds the
// key's outcome when Get has just looked it up.
func (p *Plugin) serveOne(db *gorm.DB, plan readPlan, orig func(*gorm.DB), kn known) {
	st := db.Statement
	spec, key := plan.spec, plan.keys[0]
	var res outcome
	var elem reflect.Value
	if outs, ok := kn.of(plan.keys); ok {
		res = outs[0]
	} else {
		elem = destElem(st, plan)
		res = p.lookup(st.Context, spec, key, elem)
	}
	switch res {
	case outHit:
		p.stats.hits.Add(1)
		deliver(db, plan, []reflect.Value{elem})
		return
	case outNotFound:
		p.stats.hits.Add(1)
		deliver(db, plan, nil)
		return
	}
	p.stats.misses.Add(1)
	switch res {
	case outFailed:
		orig(db) // Redis failed: read the database, nothing to share
		return
	case outPending:
		// A write is in flight and may commit at any moment, before it
		// forgets the key's flight (or in another process, which never
		// does): a load that began before the COMMIT must not answer a read
		// that began after it. Read the database alone.
		p.toPrimary(db)
		orig(db)
		return
	}
	// Empty or leased: one database read per process, shared by every
	// reader that arrives while it runs. Only an empty key is leased and
	// filled. A write forgets the flight before it returns, so a read that
	// starts after a write never joins a load that began before it.
	led := false
	arrived := p.readSeq.Add(1)
	p.at("read:flight", key)
	v, _, _ := p.flights.Do(key, func() (any, error) {
		led = true
		return p.load(db, spec, key, orig, res == outEmpty), nil
	})
	lr, _ := v.(*loadResult)
	if led {
		// load returns panics instead of raising them, for singleflight
		// would raise them in every reader waiting on the flight. The
		// leader's own statement raises a panic of GORM's query (user code
		// it ran: a Scan method) once, as GORM alone would have raised it;
		// a panic of the plugin's own before the query ran fails the
		// statement.
		switch {
		case lr == nil:
		case lr.queryPanic != nil:
			panic(lr.queryPanic)
		case lr.internal != nil:
			_ = db.AddError(lr.internal)
		}
		return
	}
	// A follower never raises its leader's panic: lr.failed sends it to
	// the database on its own.
	if lr != nil && !lr.failed && arrived < lr.readSeq {
		// This read began before the shared database read did, so that read
		// saw every write that committed before this one began.
		deliverLoaded(db, plan, lr, orig)
		return
	}
	// The shared read may have begun before a write (perhaps in another
	// process, which cannot forget this process's flights) that committed
	// before this read began: its rows are not ours to return. Look again;
	// the leader has usually just filled the key.
	elem = destElem(st, plan)
	switch p.lookup(st.Context, spec, key, elem) {
	case outHit:
		deliver(db, plan, []reflect.Value{elem})
	case outNotFound:
		deliver(db, plan, nil)
	case outPending:
		p.toPrimary(db)
		orig(db)
	default:
		orig(db)
	}
}

// deliverLoaded gives a follower the row its flight's leader read.
func deliverLoaded(db *gorm.DB, plan readPlan, lr *loadResult, orig func(*gorm.DB)) {
	if !lr.found {
		deliver(db, plan, nil)
		return
	}
	elem := destElem(db.Statement, plan)
	if err := plan.spec.codec.Decode(lr.row, elem); err != nil {
		orig(db)
		return
	}
	deliver(db, plan, []reflect.Value{elem})
}

// loadResult is what one database read shares with the readers that waited
// on it.
type loadResult struct {
	readSeq uint64 // p.readSeq when the database read began
	row     []byte
	found   bool
	failed  bool // the read failed or could not be shared: run your own

	queryPanic *PanicError // GORM's query panicked: the leader re-raises it
	internal   *PanicError // the plugin panicked before the query ran: the leader's statement fails
}

// load runs the leader's database read for one key under a lease, and fills
// the key if the lease survived. It never panics: it runs as a flight's
// shared function, and returns panics in its result (see serveOne).
func (p *Plugin) load(db *gorm.DB, spec *modelSpec, key string, orig func(*gorm.DB), tryLease bool) (lr *loadResult) {
	queried := false
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		pe := newPanicError("cached read", r)
		if !queried {
			lr = &loadResult{failed: true, internal: pe}
			return
		}
		// The statement has its answer; only the fill is lost (the plugin's
		// own work, or user code it runs on its own account: a key's Value
		// method).
		p.logf("writethrough: filling the cache panicked; the row is not cached", "key", key, "err", pe)
		lr = &loadResult{failed: true}
	}()
	st := db.Statement
	token := entry.NewToken()
	leased := false
	if tryLease {
		leased = p.lease(st.Context, spec, token, key)
	}
	p.at("read:after-lease", key)
	if leased {
		p.toPrimary(db)
	}
	readSeq := p.readSeq.Add(1)
	if pe := runQuery(db, orig); pe != nil {
		return &loadResult{failed: true, queryPanic: pe}
	}
	queried = true
	if db.Error != nil && !errors.Is(db.Error, gorm.ErrRecordNotFound) {
		return &loadResult{failed: true}
	}
	rows := rowsOf(st)
	lr = &loadResult{readSeq: readSeq}
	switch len(rows) {
	case 0:
	case 1:
		row, err := spec.codec.Append(nil, rows[0])
		if err != nil || len(row) > p.cfg.MaxRowSize {
			if err != nil && !errors.Is(err, rowcodec.ErrNoRoundTrip) {
				p.logf("writethrough: row not cached", "key", key, "err", err)
			}
			return &loadResult{failed: true}
		}
		lr.row, lr.found = row, true
	default:
		return &loadResult{failed: true}
	}
	p.at("read:after-db-before-fill", key)
	// canonical keys: fill only under the key of the row the database
	// returned, and a tombstone only where no other spelling can match.
	canonical := !spec.keys.Loose()
	if lr.found {
		canonical = spec.keys.Matches(st.Context, rows[0], key)
	}
	if leased && canonical {
		p.fill(st.Context, spec, key, token, lr.found, lr.row)
	}
	return lr
}

// runQuery runs GORM's query for a flight's leader and returns a panic in
// it (user code GORM ran, such as a Scan method) instead of raising it.
func runQuery(db *gorm.DB, orig func(*gorm.DB)) (pe *PanicError) {
	defer func() {
		if r := recover(); r != nil {
			pe = newPanicError("the statement's query", r)
		}
	}()
	orig(db)
	return nil
}

// fill installs what a lease holder read, unless a write replaced the lease.
func (p *Plugin) fill(parent context.Context, spec *modelSpec, key, token string, found bool, row []byte) {
	ctx, cancel := p.opCtx(parent)
	defer cancel()
	c := p.fillCall(spec, key, token, found, row)
	p.run(ctx, []*entry.Call{c})
	p.countFill(c)
}

func (p *Plugin) fillCall(spec *modelSpec, key, token string, found bool, row []byte) *entry.Call {
	if found {
		return entry.Fill(key, token, entry.CommittedValue(token, spec.codec.Fingerprint(), row), entryTTL(spec))
	}
	return entry.Fill(key, token, entry.TombstoneValue(token, spec.codec.Fingerprint()), p.cfg.NegativeTTL)
}

func (p *Plugin) countFill(c *entry.Call) {
	switch {
	case c.Err != nil:
		p.stats.redisErrors.Add(1)
	case c.Filled() == entry.FillFilled:
		p.stats.fills.Add(1)
	default:
		p.stats.fillsLost.Add(1)
	}
}

// toPrimary moves a read that the plugin sends to the database off a read
// replica, to the source dbresolver sends writes to: a read that will fill
// the cache (a lease cannot detect replication lag, and the row it reads
// would be served to every reader until a write or the TTL replaces it),
// and a read of a key that a write is in flight on (pending) or that Redis
// missed a write of (suspect), which the database answers precisely
// because the writer's COMMIT may have returned already. Other reads that
// miss go where dbresolver sends them and fill nothing. It is a no-op
// without dbresolver.
func (p *Plugin) toPrimary(db *gorm.DB) {
	if p.anyReplica {
		return
	}
	if r := db.Callback().Query().Get("gorm:db_resolver"); r != nil {
		db.Statement.Settings.Store("gorm:db_resolver:write", struct{}{})
		r(db)
	}
}

// rowsOf lists the rows GORM scanned into the statement's destination.
func rowsOf(st *gorm.Statement) []reflect.Value {
	rv := st.ReflectValue
	if st.DB.RowsAffected == 0 {
		return nil
	}
	switch rv.Kind() {
	case reflect.Struct:
		return []reflect.Value{rv}
	case reflect.Slice:
		out := make([]reflect.Value, 0, rv.Len())
		for i := 0; i < rv.Len(); i++ {
			e := rv.Index(i)
			for e.Kind() == reflect.Pointer {
				if e.IsNil() {
					break
				}
				e = e.Elem()
			}
			if e.Kind() == reflect.Struct {
				out = append(out, e)
			}
		}
		return out
	}
	return nil
}

// destElem is where one decoded row goes: the destination struct itself, or a
// fresh element for a slice.
func destElem(st *gorm.Statement, plan readPlan) reflect.Value {
	if !plan.multi {
		return st.ReflectValue
	}
	return reflect.New(plan.spec.sch.ModelType).Elem()
}

// deliver sets the destination and the result the way GORM's scan does.
func deliver(db *gorm.DB, plan readPlan, rows []reflect.Value) {
	st := db.Statement
	if plan.multi {
		rv := st.ReflectValue
		// As GORM's scan: reuse the caller's backing array when it has one.
		var list reflect.Value
		if rv.Cap() > 0 {
			list = rv.Slice(0, 0)
		} else {
			list = reflect.MakeSlice(rv.Type(), 0, max(len(rows), 1))
		}
		ptr := rv.Type().Elem().Kind() == reflect.Pointer
		for _, r := range rows {
			if ptr {
				list = reflect.Append(list, r.Addr())
			} else {
				list = reflect.Append(list, r)
			}
		}
		rv.Set(list)
	}
	n := int64(len(rows))
	db.RowsAffected = n
	if st.Result != nil {
		st.Result.RowsAffected = n
	}
	if n == 0 && st.RaiseErrorOnNotFound {
		_ = db.AddError(gorm.ErrRecordNotFound)
	}
}

// serveMany serves Find with several keys in one round trip; on any miss it
// runs the statement in SQL and fills the keys it leased. kn holds the keys'
// outcomes when GetMany has just looked them up.
func (p *Plugin) serveMany(db *gorm.DB, plan readPlan, orig func(*gorm.DB), kn known) {
	st := db.Statement
	spec := plan.spec
	for _, k := range plan.keys {
		if p.suspects.is(k) {
			p.stats.misses.Add(uint64(len(plan.keys)))
			p.toPrimary(db)
			orig(db)
			return
		}
	}
	elems := make([]reflect.Value, len(plan.keys))
	outs, ok := kn.of(plan.keys)
	if !ok {
		outs = p.lookupMany(st.Context, spec, plan.keys, func(i int) reflect.Value {
			elems[i] = reflect.New(spec.sch.ModelType).Elem()
			return elems[i]
		})
	}
	rows := make([]reflect.Value, 0, len(plan.keys))
	var empty []string
	complete, pending := true, false
	for i, o := range outs {
		switch o {
		case outFailed:
			p.stats.misses.Add(uint64(len(plan.keys)))
			orig(db) // Redis failed: read the database
			return
		case outHit:
			rows = append(rows, elems[i])
		case outNotFound:
		case outEmpty:
			empty = append(empty, plan.keys[i])
			complete = false
		case outPending:
			pending = true
			complete = false
		default:
			complete = false
		}
	}
	if complete {
		p.stats.hits.Add(uint64(len(plan.keys)))
		sortByKey(st.Context, spec, rows, plan.desc)
		deliver(db, plan, rows)
		return
	}
	// Every key is read from the database: each counts as a miss.
	p.stats.misses.Add(uint64(len(plan.keys)))
	// Lease the empty keys, read everything in SQL, fill what we leased.
	token := entry.NewToken()
	leased := map[string]bool{}
	if len(empty) > 0 {
		for i, ok := range p.leases(st.Context, spec, token, empty) {
			if ok {
				leased[empty[i]] = true
			}
		}
	}
	if len(leased) > 0 || pending {
		p.toPrimary(db)
	}
	if len(leased) > 0 {
		p.at("read:after-lease", empty[0])
	}
	orig(db) // a panic here is GORM's (a Scan method) and propagates; the leases expire
	if db.Error != nil || len(leased) == 0 {
		return
	}
	p.fillMany(db, spec, token, leased)
}

// fillMany fills the keys a read of several keys leased with the rows its
// query returned. A panic in it (the plugin's, or user code it runs on its
// own account, such as a key's Value method) costs the fill only.
func (p *Plugin) fillMany(db *gorm.DB, spec *modelSpec, token string, leased map[string]bool) {
	defer p.recoverLogged("fill after a read of several keys")
	st := db.Statement
	var calls []*entry.Call
	for _, rv := range rowsOf(st) {
		key, ok := spec.keys.RowKey(st.Context, rv)
		if !ok || !leased[key] {
			continue
		}
		delete(leased, key)
		row, err := spec.codec.Append(nil, rv)
		if err != nil || len(row) > p.cfg.MaxRowSize {
			if err != nil && !errors.Is(err, rowcodec.ErrNoRoundTrip) {
				p.logf("writethrough: row not cached", "key", key, "err", err)
			}
			continue
		}
		calls = append(calls, p.fillCall(spec, key, token, true, row))
	}
	for key := range leased {
		// canonical keys: a loose key's row may have come back under
		// another spelling; no tombstone.
		if st.Schema != nil && !st.Unscoped && !spec.keys.Loose() {
			calls = append(calls, p.fillCall(spec, key, token, false, nil))
		}
	}
	if len(calls) == 0 {
		return
	}
	p.at("read:after-db-before-fill", calls[0].Key)
	fctx, fcancel := p.opCtx(st.Context)
	defer fcancel()
	p.run(fctx, calls)
	for _, c := range calls {
		p.countFill(c)
	}
}

// sortByKey orders rows served for several integer keys by key, ascending
// unless desc: the order of ORDER BY the key, and, without an ORDER BY, the
// order in which PostgreSQL usually returns "id IN (...)" (by index, or by
// insertion for rows never updated), which the given order of the keys is
// not. Other keys keep the order in which they were given.
func sortByKey(ctx context.Context, spec *modelSpec, rows []reflect.Value, desc bool) {
	if len(rows) < 2 || !integerKey1(spec) {
		return
	}
	f := spec.pks[0]
	less := func(a, b reflect.Value) bool {
		a, b = f.ReflectValueOf(ctx, a), f.ReflectValueOf(ctx, b)
		if a.CanInt() {
			return a.Int() < b.Int()
		}
		return a.Uint() < b.Uint()
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if desc {
			return less(rows[j], rows[i])
		}
		return less(rows[i], rows[j])
	})
}
