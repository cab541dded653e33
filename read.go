package writethrough

import (
	"context"
	"errors"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/rowcodec"
	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

const (
	cachedKey   = "writethrough:cached"
	uncachedKey = "writethrough:uncached"
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

// readPlan is a recognised primary-key lookup.
type readPlan struct {
	spec  *modelSpec
	keys  []string
	multi bool // destination is a slice
	desc  bool // several keys, ORDER BY the primary key DESC
}

// query replaces gorm:query. Statements not marked Cached (and every
// statement when Config.CacheReads is off) go straight to GORM's own query
// callback.
func (p *Plugin) query(orig func(*gorm.DB)) func(*gorm.DB) {
	return func(db *gorm.DB) {
		st := db.Statement
		_, marked := st.Settings.Load(cachedKey)
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
		p.serve(db, orig, marked)
	}
}

// serve answers a statement that may be served from the cache. marked is
// true for a statement marked Cached, false for one that Config.CacheReads
// brings here.
func (p *Plugin) serve(db *gorm.DB, orig func(*gorm.DB), marked bool) {
	if !p.gate.enter() {
		// Closed: the database answers, and nothing is filled.
		p.stats.bypasses.Add(1)
		orig(db)
		return
	}
	defer p.gate.leave()
	p.ensureDrainer()
	st := db.Statement
	spec, err := p.specOf(st.Schema)
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
		p.serveMany(db, plan, orig)
		return
	}
	p.serveOne(db, plan, orig)
}

// planSafe is plan, with a panic in user code it runs (a key type's Value
// or Scan method, while it builds the keys) taken as "not a lookup": GORM
// then runs the statement, and that code, itself.
func (p *Plugin) planSafe(db *gorm.DB, spec *modelSpec) (plan readPlan, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			p.logf("writethrough: recognising a cached read panicked; the statement runs in SQL",
				"model", spec.name, "err", newPanicError("recognise a cached read", r))
			plan, ok = readPlan{}, false
		}
	}()
	return p.plan(db, spec)
}

// lookup is the outcome of reading one key.
type lookup int

const (
	lookEmpty    lookup = iota // nothing there: take a lease and fill
	lookHit                    // a committed row, decoded
	lookNotFound               // a tombstone
	lookBusy                   // leased, or another build's entry: read SQL, do not fill
	lookPending                // a write in flight: read SQL alone, do not fill
)

// decodeInto classifies raw and, for a committed entry, decodes it into dst.
func (p *Plugin) decodeInto(ctx context.Context, spec *modelSpec, key string, raw []byte, dst reflect.Value) lookup {
	e, err := entry.Parse(raw)
	switch {
	case errors.Is(err, entry.ErrForeign):
		return lookBusy
	case err != nil:
		p.heal(ctx, key, err)
		return lookEmpty
	}
	switch e.State {
	case entry.Committed:
		if string(e.Fingerprint) != spec.codec.Fingerprint() {
			return lookBusy
		}
		if err := spec.codec.Decode(e.Row, dst); err != nil {
			p.heal(ctx, key, err)
			return lookBusy
		}
		// canonical keys: a loose key's entry is served only under the
		// row's own spelling.
		if spec.keys.Loose() && !spec.keys.Matches(ctx, dst, key) {
			return lookBusy
		}
		return lookHit
	case entry.Tombstone:
		return lookNotFound
	case entry.Pending:
		return lookPending
	}
	return lookBusy
}

// heal removes an entry that cannot be decoded (unless writers are in flight
// on it), the way go-redis/cache heals poisoned keys.
func (p *Plugin) heal(ctx context.Context, key string, cause error) {
	p.stats.decodeErrors.Add(1)
	p.logf("writethrough: undecodable cache entry deleted", "key", key, "err", cause)
	p.run(ctx, []*entry.Call{entry.Invalidate(key)})
}

func (p *Plugin) serveOne(db *gorm.DB, plan readPlan, orig func(*gorm.DB)) {
	st := db.Statement
	spec, key := plan.spec, plan.keys[0]
	ctx, cancel := p.readCtx(st.Context)
	defer cancel()
	var raw []byte
	err := errBreakerOpen
	if p.brk.allow() {
		raw, err = p.rdb.Get(ctx, key).Bytes()
		p.brk.record(ctx, err)
	}
	var res lookup
	var elem reflect.Value
	switch {
	case errors.Is(err, redis.Nil):
		res = lookEmpty
	case err != nil:
		p.stats.redisErrors.Add(1)
		p.logf("writethrough: cache read failed; reading the database", "key", key, "err", err)
		res = lookBusy
	default:
		elem = p.target(st, plan)
		res = p.decodeInto(ctx, spec, key, raw, elem)
	}
	switch res {
	case lookHit:
		p.stats.hits.Add(1)
		p.deliver(db, plan, []reflect.Value{elem})
		return
	case lookNotFound:
		p.stats.hits.Add(1)
		p.deliver(db, plan, nil)
		return
	}
	p.stats.misses.Add(1)
	if err != nil && !errors.Is(err, redis.Nil) {
		orig(db) // Redis failed: read the database, nothing to share
		return
	}
	if res == lookPending {
		// A write is in flight and may commit at any moment, before it
		// forgets the key's flight (or in another process, which never
		// does): a load that began before the COMMIT must not answer a read
		// that began after it. Read the database alone.
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
		return p.load(db, spec, key, orig, res == lookEmpty), nil
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
		p.deliverLoaded(db, plan, lr, orig)
		return
	}
	// The shared read may have begun before a write (perhaps in another
	// process, which cannot forget this process's flights) that committed
	// before this read began: its rows are not ours to return. Look again;
	// the leader has usually just filled the key.
	elem = p.target(st, plan)
	var raw2 []byte
	err = errBreakerOpen
	if p.brk.allow() {
		raw2, err = p.rdb.Get(ctx, key).Bytes()
		p.brk.record(ctx, err)
	}
	if err == nil {
		switch p.decodeInto(ctx, spec, key, raw2, elem) {
		case lookHit:
			p.deliver(db, plan, []reflect.Value{elem})
			return
		case lookNotFound:
			p.deliver(db, plan, nil)
			return
		}
	}
	orig(db)
}

// deliverLoaded gives a follower the row its flight's leader read.
func (p *Plugin) deliverLoaded(db *gorm.DB, plan readPlan, lr *loadResult, orig func(*gorm.DB)) {
	if !lr.found {
		p.deliver(db, plan, nil)
		return
	}
	elem := p.target(db.Statement, plan)
	if err := plan.spec.codec.Decode(lr.row, elem); err != nil {
		orig(db)
		return
	}
	p.deliver(db, plan, []reflect.Value{elem})
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
		ctx, cancel := p.opCtx(st.Context)
		lease := entry.LeaseValue(token, spec.codec.Fingerprint())
		var ok bool
		err := p.redisCall(ctx, func() (err error) {
			ok, err = p.rdb.SetNX(ctx, key, lease, p.cfg.LeaseTTL).Result()
			return err
		})
		cancel()
		if err != nil {
			p.stats.redisErrors.Add(1)
		}
		leased = ok && err == nil
	}
	p.at("read:after-lease", key)
	if leased {
		p.forceSource(db)
	}
	readSeq := p.readSeq.Add(1)
	if pe := runQuery(db, orig); pe != nil {
		return &loadResult{failed: true, queryPanic: pe}
	}
	queried = true
	if db.Error != nil && !errors.Is(db.Error, gorm.ErrRecordNotFound) {
		return &loadResult{failed: true}
	}
	rows := p.rowsOf(st)
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
		return entry.Fill(key, token, entry.CommittedValue(token, spec.codec.Fingerprint(), row), p.entryTTL(spec))
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

// forceSource moves a fill-intended read off a read replica: a lease cannot
// detect replication lag. It is a no-op without dbresolver.
func (p *Plugin) forceSource(db *gorm.DB) {
	if r := db.Callback().Query().Get("gorm:db_resolver"); r != nil {
		db.Statement.Settings.Store("gorm:db_resolver:write", struct{}{})
		r(db)
	}
}

// rowsOf lists the rows GORM scanned into the statement's destination.
func (p *Plugin) rowsOf(st *gorm.Statement) []reflect.Value {
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

// target is where one decoded row goes: the destination struct itself, or a
// fresh element for a slice.
func (p *Plugin) target(st *gorm.Statement, plan readPlan) reflect.Value {
	if !plan.multi {
		return st.ReflectValue
	}
	return reflect.New(plan.spec.sch.ModelType).Elem()
}

// deliver sets the destination and the result the way GORM's scan does.
func (p *Plugin) deliver(db *gorm.DB, plan readPlan, rows []reflect.Value) {
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
// runs the statement in SQL and fills the keys it leased.
func (p *Plugin) serveMany(db *gorm.DB, plan readPlan, orig func(*gorm.DB)) {
	st := db.Statement
	spec := plan.spec
	for _, k := range plan.keys {
		if p.suspects.is(k) {
			p.stats.misses.Add(1)
			orig(db)
			return
		}
	}
	ctx, cancel := p.opCtx(st.Context)
	defer cancel()
	var raws [][]byte
	err := p.redisCall(ctx, func() (err error) {
		raws, err = p.getMany(ctx, plan.keys)
		return err
	})
	if err != nil {
		p.stats.redisErrors.Add(1)
		p.logf("writethrough: cache read failed; reading the database", "err", err)
		p.stats.misses.Add(1)
		orig(db)
		return
	}
	rows := make([]reflect.Value, 0, len(plan.keys))
	var empty []int
	complete := true
	for i, raw := range raws {
		if raw == nil {
			empty = append(empty, i)
			complete = false
			continue
		}
		elem := reflect.New(spec.sch.ModelType).Elem()
		switch p.decodeInto(ctx, spec, plan.keys[i], raw, elem) {
		case lookHit:
			rows = append(rows, elem)
		case lookNotFound:
		case lookEmpty:
			empty = append(empty, i)
			complete = false
		default:
			complete = false
		}
	}
	if complete {
		p.stats.hits.Add(uint64(len(plan.keys)))
		sortByKey(st.Context, spec, rows, plan.desc)
		p.deliver(db, plan, rows)
		return
	}
	p.stats.misses.Add(1)
	// Lease the empty keys, read everything in SQL, fill what we leased.
	token := entry.NewToken()
	lease := entry.LeaseValue(token, spec.codec.Fingerprint())
	leased := map[string]bool{}
	if len(empty) > 0 {
		cmds := make([]*redis.BoolCmd, len(empty))
		perr := p.redisCall(ctx, func() error {
			_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for j, i := range empty {
					cmds[j] = pipe.SetNX(ctx, plan.keys[i], lease, p.cfg.LeaseTTL)
				}
				return nil
			})
			return err
		})
		for j, i := range empty {
			if cmds[j] == nil || perr != nil && connectionError(perr) {
				break
			}
			if ok, err := cmds[j].Result(); err == nil && ok {
				leased[plan.keys[i]] = true
			}
		}
	}
	if len(leased) > 0 {
		p.forceSource(db)
		p.at("read:after-lease", plan.keys[empty[0]])
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
	for _, rv := range p.rowsOf(st) {
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

// integerKey1 reports a model whose one primary key is an integer column.
func integerKey1(spec *modelSpec) bool {
	if len(spec.pks) != 1 {
		return false
	}
	switch spec.pks[0].FieldType.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
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

// getMany reads keys in one round trip: MGET on a single node, a pipeline of
// GETs on a cluster (whose keys live on different slots). Absent keys are nil.
func (p *Plugin) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if _, cluster := p.rdb.(*redis.ClusterClient); !cluster {
		vals, err := p.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, err
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				out[i] = []byte(s)
			}
		}
		return out, nil
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, c := range cmds {
		if b, err := c.Bytes(); err == nil {
			out[i] = b
		}
	}
	return out, nil
}

var allowedClauses = map[string]bool{"WHERE": true, "LIMIT": true, "ORDER BY": true}

// plan recognises a lookup by primary key, before GORM builds any SQL. The
// rule: the statement is served (or filled) only when the complete condition
// GORM will send — its WHERE clause, the key GORM adds from a struct
// destination, and the model's soft-delete clause — says "the row whose key
// is K" (or, for a slice destination, "the rows whose keys are K1..Kn") and
// nothing else. Anything else runs as plain GORM and never fills.
func (p *Plugin) plan(db *gorm.DB, spec *modelSpec) (readPlan, bool) {
	st := db.Statement
	sch := spec.sch
	if st.SQL.Len() != 0 || !sameTable(db, spec) || st.Unscoped || st.Distinct ||
		len(st.Joins) != 0 || len(st.Selects) != 0 || len(st.Omits) != 0 ||
		len(st.ColumnMapping) != 0 || !onlySoftDelete(sch) {
		return readPlan{}, false
	}
	for name := range st.Clauses {
		if !allowedClauses[name] {
			return readPlan{}, false
		}
	}
	plan := readPlan{spec: spec}
	rv := st.ReflectValue
	switch {
	case rv.Kind() == reflect.Struct && rv.Type() == sch.ModelType:
	case rv.Kind() == reflect.Slice && (rv.Type().Elem() == sch.ModelType ||
		(rv.Type().Elem().Kind() == reflect.Pointer && rv.Type().Elem().Elem() == sch.ModelType)):
		plan.multi = true
	default:
		return readPlan{}, false
	}
	if !rv.CanSet() {
		return readPlan{}, false
	}

	var conds []clause.Expression
	if c, ok := st.Clauses["WHERE"]; ok {
		w, ok := c.Expression.(clause.Where)
		if !ok {
			return readPlan{}, false
		}
		conds = flattenAnd(w.Exprs)
		if len(conds) == 0 {
			return readPlan{}, false
		}
	}
	if !plan.multi {
		// GORM's BuildQuerySQL adds a condition for every non-zero key field
		// of a struct destination: First(&a, 2) on an a that holds row 1
		// asks for "id = 2 AND id = 1".
		for _, f := range sch.PrimaryFields {
			if v, zero := f.ValueOf(st.Context, rv); !zero {
				conds = append(conds, clause.Eq{Column: clause.Column{Table: st.Table, Name: f.DBName}, Value: v})
			}
		}
	}
	keys, ok := p.condKeys(st, spec, conds)
	if !ok || len(keys) == 0 || !plan.multi && len(keys) != 1 {
		return readPlan{}, false
	}
	if c, ok := st.Clauses["LIMIT"]; ok {
		l, ok := c.Expression.(clause.Limit)
		if !ok || l.Offset != 0 || (l.Limit != nil && *l.Limit >= 0 && *l.Limit < len(keys)) {
			return readPlan{}, false
		}
	}
	if c, ok := st.Clauses["ORDER BY"]; ok {
		o, ok := c.Expression.(clause.OrderBy)
		if !ok || o.Expression != nil || len(keys) > 1 && !integerKey1(spec) {
			return readPlan{}, false
		}
		for i, col := range o.Columns {
			// One key: any order by the primary key (First's) is moot.
			// Several integer keys: hits are sorted by the first column.
			c, desc := col.Column, col.Desc
			if c.Raw {
				// Order("id"), Order("users.id DESC")
				m := orderRE.FindStringSubmatch(c.Name)
				if m == nil {
					return readPlan{}, false
				}
				if p.pkColumn(st, spec, m[1]) == nil {
					return readPlan{}, false
				}
				desc = strings.EqualFold(m[2], "desc")
			} else if c.Name != clause.PrimaryKey && p.pkColumn(st, spec, c) == nil {
				return readPlan{}, false
			}
			if i == 0 {
				plan.desc = desc
			}
		}
	}
	plan.keys = keys
	return plan, true
}

// onlySoftDelete reports whether the clauses GORM adds to every query on
// the model are at most gorm.DeletedAt's "deleted_at IS NULL", which the
// cache models (a soft-deleted row is a tombstone). Other query clauses
// (a zerovalue soft delete, plugins' own) run in SQL.
func onlySoftDelete(sch *schema.Schema) bool {
	for _, c := range sch.QueryClauses {
		sd, ok := c.(gorm.SoftDeleteQueryClause)
		if !ok || sd.ZeroValue.Valid {
			return false
		}
	}
	return true
}

// orderRE matches "id", "users.id desc", "\"id\" ASC".
var orderRE = regexp.MustCompile("^\\s*((?:[`\"]?\\w+[`\"]?\\.)?[`\"]?\\w+[`\"]?)(?:\\s+((?i)asc|desc))?\\s*$")

// exprRE matches "id = ?", "users.id IN ?", "\"id\" in (?)".
var exprRE = regexp.MustCompile("^\\s*(?:[`\"]?(\\w+)[`\"]?\\.)?[`\"]?(\\w+)[`\"]?\\s*(=|(?i:in))\\s*(\\(\\s*\\?\\s*\\)|\\?)\\s*$")

// condKeys turns the conditions of a statement, ANDed, into the keys they
// select. Every condition must pin primary-key columns to values, and the
// conditions must agree: "id = 2 AND id = 1" (GORM finds nothing) is not a
// lookup, "id = 2 AND id = 2" is. Anything else is not a lookup.
func (p *Plugin) condKeys(st *gorm.Statement, spec *modelSpec, conds []clause.Expression) ([]string, bool) {
	if len(conds) == 0 {
		return nil, false
	}
	ctx := st.Context
	if len(spec.pks) > 1 {
		// Composite keys: one value per primary-key column, from equalities.
		vals := make([][]any, len(spec.pks))
		for _, e := range conds {
			f, vs, ok := p.pkCond(st, spec, e)
			if !ok || len(vs) != 1 {
				return nil, false
			}
			for i, pk := range spec.pks {
				if pk == f {
					vals[i] = append(vals[i], vs[0])
				}
			}
		}
		tuple := make([]any, len(vals))
		for i, vs := range vals {
			if len(vs) == 0 {
				return nil, false
			}
			tuple[i] = vs[0]
		}
		key, ok := spec.keys.Lookup(ctx, tuple...)
		if !ok {
			return nil, false
		}
		for i, vs := range vals {
			for _, v := range vs[1:] {
				alt := append([]any(nil), tuple...)
				alt[i] = v
				if k, ok := spec.keys.Lookup(ctx, alt...); !ok || k != key {
					return nil, false
				}
			}
		}
		return []string{key}, true
	}
	var keys []string
	var first map[string]bool
	for _, e := range conds {
		_, vs, ok := p.pkCond(st, spec, e)
		if !ok || len(vs) == 0 {
			return nil, false
		}
		set := make(map[string]bool, len(vs))
		var ks []string
		for _, v := range vs {
			key, ok := spec.keys.Lookup(ctx, v)
			if !ok {
				return nil, false
			}
			if !set[key] {
				set[key] = true
				ks = append(ks, key)
			}
		}
		if first == nil {
			first, keys = set, ks
			continue
		}
		// Every further condition must name the same keys.
		if len(set) != len(first) {
			return nil, false
		}
		for k := range set {
			if !first[k] {
				return nil, false
			}
		}
	}
	return keys, true
}

// pkCond reads one condition of the form GORM builds as "pk = v" or
// "pk IN (v...)" and returns the primary-key field and the values. It
// refuses values that are not plain values (NULL, subqueries, expressions
// are refused later by the key conversion) and shapes whose SQL is not the
// plain comparison.
func (p *Plugin) pkCond(st *gorm.Statement, spec *modelSpec, e clause.Expression) (*schemaField, []any, bool) {
	var f *schemaField
	var vals []any
	switch x := e.(type) {
	case clause.IN:
		if f = p.pkColumn(st, spec, x.Column); f == nil {
			return nil, nil, false
		}
		if len(x.Values) == 1 {
			if l, ok := x.Values[0].([]any); ok {
				vals = l // built as IN (...)
				break
			}
		}
		vals = x.Values
	case clause.Eq:
		if f = p.pkColumn(st, spec, x.Column); f == nil {
			return nil, nil, false
		}
		switch x.Value.(type) {
		case []string, []int, []int32, []int64, []uint, []uint32, []uint64, []any:
			vals = appendValues(nil, x.Value) // built as IN (...)
		default:
			vals = []any{x.Value}
		}
	case clause.Expr:
		m := exprRE.FindStringSubmatch(x.SQL)
		if m == nil || len(x.Vars) != 1 || x.WithoutParentheses {
			return nil, nil, false
		}
		if m[1] != "" && m[1] != spec.sch.Table && m[1] != st.Table {
			return nil, nil, false
		}
		for _, pk := range spec.pks {
			if pk.DBName == m[2] {
				f = pk
			}
		}
		if f == nil {
			return nil, nil, false
		}
		// "= ?" and "IN (?)" take one value; "IN ?" a list. The other
		// spellings build SQL that fails or compares rows.
		list, parens := isList(x.Vars[0]), strings.HasPrefix(m[4], "(")
		in := m[3] != "="
		if list && (!in || parens) || !list && in && !parens {
			return nil, nil, false
		}
		vals = appendValues(nil, x.Vars[0])
	default:
		return nil, nil, false
	}
	for _, v := range vals {
		if isList(v) || isNullValue(v) {
			return nil, nil, false
		}
	}
	return f, vals, true
}

// isNullValue reports a value GORM sends as NULL.
func isNullValue(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		return rv.IsNil()
	}
	return false
}

func flattenAnd(exprs []clause.Expression) []clause.Expression {
	if len(exprs) == 1 {
		switch exprs[0].(type) {
		case clause.AndConditions, clause.Where:
		default:
			return exprs
		}
	}
	var out []clause.Expression
	for _, e := range exprs {
		switch x := e.(type) {
		case clause.AndConditions:
			out = append(out, flattenAnd(x.Exprs)...)
		case clause.Where:
			out = append(out, flattenAnd(x.Exprs)...)
		default:
			out = append(out, e)
		}
	}
	return out
}

func isList(v any) bool {
	rv := reflect.ValueOf(v)
	return rv.IsValid() && (rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array) &&
		rv.Type().Elem().Kind() != reflect.Uint8
}

func appendValues(out []any, v any) []any {
	if !isList(v) {
		return append(out, v)
	}
	rv := reflect.ValueOf(v)
	for i := 0; i < rv.Len(); i++ {
		out = append(out, rv.Index(i).Interface())
	}
	return out
}

// pkColumn returns the primary-key field a column names, or nil.
func (p *Plugin) pkColumn(st *gorm.Statement, spec *modelSpec, col any) *schemaField {
	var c clause.Column
	switch x := col.(type) {
	case clause.Column:
		c = x
	case string:
		c = clause.Column{Name: x}
		if i := strings.LastIndexByte(x, '.'); i >= 0 {
			c = clause.Column{Table: strings.Trim(x[:i], "`\""), Name: x[i+1:]}
		}
		c.Name = strings.Trim(c.Name, "`\"")
	default:
		return nil
	}
	if c.Raw || c.Alias != "" {
		return nil
	}
	switch c.Table {
	case "", clause.CurrentTable, spec.sch.Table, st.Table:
	default:
		return nil
	}
	if c.Name == clause.PrimaryKey {
		if len(spec.pks) == 1 {
			return spec.pks[0]
		}
		return nil
	}
	for _, f := range spec.pks {
		if f.DBName == c.Name {
			return f
		}
	}
	return nil
}
