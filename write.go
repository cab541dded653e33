package writethrough

import (
	"context"
	"fmt"
	"reflect"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// The write protocol (docs/design.md, "Writes"):
//
//  1. The statement runs; in a transaction, its row locks are now held.
//  2. The plugin learns the keys it touched (the model, or RETURNING for bulk
//     statements) and re-reads their rows as the database now has them.
//  3. Prepare: each key becomes pending(token, row) in Redis.
//  4. After COMMIT, finalize installs the row; after ROLLBACK, or a COMMIT of
//     unknown outcome, it releases and deletes.
//
// Without a transaction the key is made pending before the statement where
// the key is known then, and finalize installs the row re-read afterwards.

type writeKind int

const (
	kindCreate writeKind = iota
	kindUpdate
	kindDelete
)

func (k writeKind) String() string {
	return [...]string{"create", "update", "delete"}[k]
}

const stateKey = "writethrough:write"

// writeState carries one statement's bookkeeping from the before to the
// after callback.
type writeState struct {
	spec  *modelSpec     // the cached model whose table the statement writes (nil: none)
	ret   *returningPool // the statement's RETURNING capture (nil: none)
	bulk  bool           // ret names rows the statement's values do not: it must have run
	ahead *ahead         // in GORM's own transaction: keys made pending while the statement runs
	// implicit: the statement runs in the transaction GORM began for it
	// alone (not one of the caller's); see "When keys become pending".
	implicit bool
	canon    []target        // canonical keys: other spellings of the rows named (loose keys)
	token    string          // writer token without a transaction
	early    map[string]bool // keys made pending before the statement (no transaction)
	failed   []string        // keys whose early prepare failed (Soft): outbox after the write

	moved   []target // keys the rows had before an update that assigns their primary key
	renamed []target // keys those rows have after it (keychange.go)

	shared         []*modelSpec // other cached models on the same table: their keys of the rows written are invalidated
	invalidateOnly bool         // written by table name on a shared table: install no row

	cascaded       []string // keys of rows a foreign-key action changes, pending under token (no transaction)
	cascadeFailed  []string // of those, keys Redis missed (Soft): outbox after the write
	cascadeParents int      // parent rows locked to find them; -1 when nothing cascades (cascade.go)
}

func (p *Plugin) beforeWrite(kind writeKind) func(*gorm.DB) {
	return func(db *gorm.DB) {
		defer recoverInto(db, kind)
		if db.Error != nil || db.DryRun {
			return
		}
		own, err := p.specOf(db.Statement.Schema)
		if err != nil {
			_ = db.AddError(err)
			return
		}
		if own != nil {
			p.ensureDrainer()
		}
		// The table the statement writes, which may be a cached model's
		// even when the statement's model is not (tables.go).
		spec, shared, err := p.writtenSpec(db, own)
		if err != nil {
			_ = db.AddError(err)
			return
		}
		// Rows that foreign-key actions will change (cascade.go), whether
		// or not the statement's own model is cached.
		cascaded, parents, err := p.cascadeTargets(db, kind)
		if err != nil {
			_ = db.AddError(err)
			return
		}
		if spec == nil && parents < 0 {
			return
		}
		ws := &writeState{spec: spec, shared: shared, cascadeParents: parents}
		// Written by table name while other cached models share the table:
		// no model's row is installed, every model's key is invalidated.
		ws.invalidateOnly = len(shared) > 0 && spec != own
		db.InstanceSet(stateKey, ws)
		if err := p.stageCascade(db, ws, cascaded); err != nil {
			_ = db.AddError(err)
			return
		}
		if spec == nil {
			return
		}
		p.resolveKeys(db, spec)
		targets := writtenRows(db, spec, kind)
		switch kind {
		case kindUpdate:
			// A primary-key change: name the keys before and after.
			renamed, err := movedTargets(db, spec, targets)
			if err != nil {
				_ = db.AddError(err)
				return
			}
			if len(renamed) > 0 {
				for _, t := range targets {
					t.moved = true
					ws.moved = append(ws.moved, t)
				}
				ws.renamed = renamed
				targets = append(targets, renamed...)
			}
		case kindCreate:
			if err := upsertMovesKey(db.Statement, spec); err != nil {
				_ = db.AddError(err)
				return
			}
			if !createNamesRows(db.Statement, targets) {
				// Maps without their primary key: the new rows' keys come
				// back through RETURNING, or the statement must not run.
				ws.bulk = true
			}
		}
		// canonical keys (canon.go): a loose key may name its row under
		// another spelling; learn the row's own key before the statement.
		if kind != kindCreate {
			if ws.canon, err = canonicalTargets(db, spec, targets); err != nil {
				_ = db.AddError(fmt.Errorf("writethrough: %s %s: read the keys' spellings: %w", kind, spec.name, err))
				return
			}
		}
		if len(targets) == 0 && kind != kindCreate {
			// A bulk statement: its keys come back through RETURNING, or
			// the statement must not run (its rows would stay stale).
			ws.bulk = true
		}
		tx, inTx := txhook.Of(db.Statement.ConnPool) // before a returningPool hides it
		// The rows themselves come back through RETURNING where it shows
		// them as stored; otherwise they are re-read after the statement.
		if full := !ws.invalidateOnly && p.returnsRows(db, spec, kind); full || ws.bulk {
			r, err := installReturning(db, spec, kind, full)
			if err != nil {
				_ = db.AddError(err)
				return
			}
			ws.ret = r
		}
		if tx != nil {
			// GORM's own one-statement transaction commits right after the
			// statement: its keys known now become pending while the
			// statement runs (nothing is visible before COMMIT, which waits
			// for them). A transaction of the caller's makes its keys
			// pending just before its COMMIT instead (stageTx, PreCommit).
			_, ws.implicit = db.InstanceGet("gorm:started_transaction")
			if ws.implicit && len(targets) > 0 {
				p.prepareAhead(db, spec, tx, ws, dedupe(append(append([]target(nil), targets...), ws.canon...)))
			}
			return
		}
		if inTx || len(targets) == 0 {
			return
		}
		// No transaction: make the keys pending before the statement, so that
		// no reader fills them while it runs.
		if ws.token == "" {
			ws.token = entry.NewToken()
		}
		ws.early = make(map[string]bool, len(targets))
		calls := make([]*entry.Call, len(targets))
		for i, t := range targets {
			calls[i] = p.prepareCall(spec, ws.token, t.key, 0, nil)
		}
		ctx, cancel := p.opCtx(db.Statement.Context)
		defer cancel()
		p.run(ctx, calls)
		var strictErr error
		for i, c := range calls {
			p.stats.prepares.Add(1)
			p.flights.Forget(targets[i].key)
			if err := prepareErr(c); err != nil {
				p.stats.prepareErrors.Add(1)
				if spec.mode == Strict {
					// The statement will not run, and every key is
					// released after it (releaseEarly): this one too,
					// since its prepare may have run (on a master whose
					// replicas did not acknowledge it), and the keys after
					// it, which other masters made pending.
					ws.early[targets[i].key] = true
					if strictErr == nil {
						strictErr = unavailable("prepare "+kind.String(), err)
					}
					continue
				}
				p.logf("writethrough: prepare failed; the key goes to the outbox", "key", c.Key, "err", err)
				ws.failed = append(ws.failed, c.Key)
				continue
			}
			ws.early[targets[i].key] = true
		}
		if strictErr != nil {
			_ = db.AddError(strictErr)
		}
	}
}

func (p *Plugin) afterWrite(kind writeKind) func(*gorm.DB) {
	return func(db *gorm.DB) {
		defer recoverInto(db, kind)
		var ws *writeState
		if v, ok := db.InstanceGet(stateKey); ok {
			ws, _ = v.(*writeState)
		}
		if ws == nil {
			return
		}
		restoreReturning(db)
		p.awaitAhead(ws)
		if db.DryRun {
			return
		}
		tx, inTx := txhook.Of(db.Statement.ConnPool)
		p.endCascade(db, ws, tx, inTx)
		spec := ws.spec
		if spec == nil {
			return
		}
		if db.Error != nil {
			if !inTx && len(ws.early) > 0 {
				p.releaseEarly(db.Statement.Context, spec, ws)
			}
			if r := ws.ret; !inTx && r != nil && len(r.rows) > 0 {
				// The statement ran and committed, then failed (GORM could
				// not scan its RETURNING into the caller's value): the rows
				// it wrote are invalidated.
				var keys []string
				for _, t := range targetsIn(db.Statement.Context, spec, r.captured()) {
					keys = append(keys, t.key)
				}
				if err := p.invalidateKeys(db.Statement.Context, keys); err != nil {
					p.logf("writethrough: invalidate after a failed statement; the keys go to the outbox", "err", err)
					p.recordAfterCommit(db.Statement.Context, keys)
				}
			}
			return
		}
		targets := writtenRows(db, spec, kind)
		affected := db.RowsAffected
		if r := ws.ret; r != nil && (r.ran || ws.bulk) {
			if !r.ran && db.RowsAffected > 0 {
				// The statement reached the database some other way: its
				// rows cannot be named.
				_ = db.AddError(fmt.Errorf("%w: bulk %s of cached model %s did not run through the plugin's RETURNING",
					ErrUnsupported, kind, spec.name))
				return
			}
			targets = append(targets, targetsIn(db.Statement.Context, spec, r.captured())...)
			// GORM counts one row for RETURNING into a struct; the captured
			// keys are every row the statement wrote.
			affected = int64(len(r.rows))
		}
		if kind == kindCreate {
			// canonical keys: an upsert (ON CONFLICT, Save) may have
			// written a row spelled otherwise; it exists only now.
			more, err := canonicalTargets(db, spec, targets)
			if err != nil {
				_ = db.AddError(fmt.Errorf("writethrough: create %s: read the keys' spellings: %w", spec.name, err))
				return
			}
			ws.canon = more
		}
		// A primary-key change: the new keys, then the old ones (moved), so
		// that a key named both ways counts as the row's.
		targets = append(targets, ws.renamed...)
		targets = append(targets, ws.moved...)
		targets = append(targets, ws.canon...) // canonical keys
		targets = dedupe(targets)
		switch {
		case tx != nil:
			p.stageTx(db, spec, kind, tx, ws, targets, affected)
		case inTx:
			p.stageForeign(db, spec, kind, targets)
		default:
			p.stageAutocommit(db, spec, kind, ws, targets)
		}
		p.invalidateShared(db, ws, tx, inTx, targets)
	}
}

// invalidateShared invalidates the rows a write named under the keys of
// the other cached models on the same table (tables.go): their key
// templates may differ from the written model's, and an entry one of them
// filled would otherwise stay. A key string the written model staged
// itself is left to it.
func (p *Plugin) invalidateShared(db *gorm.DB, ws *writeState, tx *txhook.Tx, inTx bool, targets []target) {
	if len(ws.shared) == 0 || len(targets) == 0 {
		return
	}
	mine := make(map[string]bool, len(targets))
	for _, t := range targets {
		mine[t.key] = true
	}
	ctx := db.Statement.Context
	var keys []specKey
	for _, s := range ws.shared {
		for _, t := range targets {
			k, ok := s.keys.Lookup(ctx, t.pk...)
			if !ok || mine[k] {
				continue
			}
			mine[k] = true
			keys = append(keys, specKey{spec: s, key: k})
		}
	}
	if len(keys) == 0 {
		return
	}
	switch {
	case tx != nil:
		if err := p.stageInvalidations(db, tx, keys, "invalidate shared table"); err != nil {
			_ = db.AddError(err)
			tx.Fail(err)
		}
	case inTx:
		if err := p.pendForeign(ctx, keys, "invalidate shared table"); err != nil {
			_ = db.AddError(err)
		}
	default:
		list := make([]string, len(keys))
		for i, k := range keys {
			list[i] = k.key
		}
		if err := p.invalidateKeys(ctx, list); err != nil {
			p.logf("writethrough: invalidate a shared table's keys failed; the keys go to the outbox", "err", err)
			p.recordAfterCommit(ctx, list)
		}
	}
}

// endCascade finishes what a statement's foreign-key actions staged: a
// statement that wrote more parent rows than were locked fails (their
// children were not named); without a transaction the pending child keys
// are deleted now.
func (p *Plugin) endCascade(db *gorm.DB, ws *writeState, tx *txhook.Tx, inTx bool) {
	if ws.cascadeParents >= 0 && db.Error == nil && db.RowsAffected > int64(ws.cascadeParents) {
		err := fmt.Errorf("%w: the statement wrote %d rows of %s but locked %d to find the rows its foreign keys cascade to (rows began to match meanwhile); retry",
			ErrUnsupported, db.RowsAffected, db.Statement.Table, ws.cascadeParents)
		if inTx {
			_ = db.AddError(err)
			if tx != nil {
				tx.Fail(err)
			}
		} else {
			p.logf("writethrough: cascaded rows may stay cached until their TTL", "err", err)
		}
	}
	if inTx {
		return
	}
	if len(ws.cascaded) > 0 {
		ctx, cancel := p.opCtx(db.Statement.Context)
		p.releaseKeys(ctx, ws.token, ws.cascaded)
		cancel()
	}
	if db.Error == nil {
		p.recordAfterCommit(db.Statement.Context, ws.cascadeFailed)
	}
}

// sameValue reports whether a and b are the same value without comparing
// interfaces that hold slices, maps or funcs (which panics): pointers and
// other comparable values by ==, slices by their first element's address
// and length, anything else as different.
func sameValue(a, b any) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb {
		return false
	}
	if ta.Comparable() {
		va := reflect.ValueOf(a)
		if va.Kind() == reflect.Interface || va.Kind() == reflect.Struct || va.Kind() == reflect.Array {
			// May hold uncomparable values at run time.
			return false
		}
		return a == b
	}
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() == reflect.Slice {
		return va.Len() == vb.Len() && (va.Len() == 0 || va.Pointer() == vb.Pointer())
	}
	return false
}

// upsertMayMatch reports whether a Create's ON CONFLICT may have updated a
// row that existed before the statement under a key the statement did not
// name beforehand (a conflict on a column other than the primary key). Such
// a row is not new, so without a lock its re-read cannot be installed.
func upsertMayMatch(st *gorm.Statement, spec *modelSpec) bool {
	c, ok := st.Clauses["ON CONFLICT"]
	if !ok {
		return false
	}
	oc, ok := c.Expression.(clause.OnConflict)
	if !ok {
		return true
	}
	if oc.DoNothing {
		return false // rows that conflicted return no key
	}
	if oc.OnConstraint != "" || len(oc.Columns) != len(spec.pks) {
		return true
	}
	for i, col := range oc.Columns {
		if col.Name != spec.pks[i].DBName {
			return true
		}
	}
	return false
}

// writtenRows is targetsOf for a statement of kind: the map of an update or a
// delete without a model (db.Table("t").Updates(map...)) is what it
// assigns, not a row.
func writtenRows(db *gorm.DB, spec *modelSpec, kind writeKind) []target {
	if kind != kindCreate && db.Statement.Schema == nil {
		return nil
	}
	return targetsOf(db, spec)
}

// targetsOf returns the rows named by the statement's model or destination:
// a struct, a slice of structs, or maps (Create with a map).
func targetsOf(db *gorm.DB, spec *modelSpec) []target {
	st := db.Statement
	var other *schema.Schema // a struct of another type written into spec's table
	if st.Schema != nil && st.Schema.ModelType != spec.sch.ModelType {
		other = st.Schema
	}
	ts := targetsInAs(st.Context, spec, other, st.ReflectValue)
	if len(ts) == 0 && st.Model != nil && !sameValue(st.Model, st.Dest) {
		ts = targetsInAs(st.Context, spec, other, reflect.ValueOf(st.Model))
	}
	return ts
}

func dedupe(ts []target) []target {
	if len(ts) < 2 {
		return ts
	}
	seen := make(map[string]bool, len(ts))
	out := ts[:0]
	for _, t := range ts {
		if !seen[t.key] {
			seen[t.key] = true
			out = append(out, t)
		}
	}
	return out
}

// rowsOf fills in each target's intent and row, as the database has the
// rows now: from the rows the statement's RETURNING gave, or re-read.
func (p *Plugin) rowsOf(db *gorm.DB, spec *modelSpec, ws *writeState, targets []target) error {
	r := ws.ret
	if r == nil || !r.full || !r.ran {
		return p.reread(db, spec, targets)
	}
	switch {
	case r.fullErr != nil:
		// The returned rows do not scan into the model (a Scan method
		// refused a value): a re-read would fail the same way, and no
		// entry can hold them. Invalidate, as plain GORM's write succeeds.
		p.logf("writethrough: written rows not cached", "model", spec.name, "err", r.fullErr)
		for i := range targets {
			targets[i].intent, targets[i].row = 0, nil
		}
		return nil
	case r.hidden:
		// A trigger, rule or partition appeared since the catalog was
		// read: these rows may not be the stored ones. Re-read them, and
		// read the catalog again at the next write.
		spec.returning.forget()
		return p.reread(db, spec, targets)
	}
	// A target the statement did not return was not written by it (a
	// condition that did not match, ON CONFLICT DO NOTHING, the old key of
	// a moved row): invalidated, since nothing here says what the database
	// holds there.
	p.fillTargets(db.Statement.Context, spec, targets, r.rows, 0)
	return nil
}

// reread loads the rows of targets as the database has them now, on the
// statement's own connection (inside its transaction, when there is one),
// and fills in each target's intent and row.
//
// The re-read runs the model's Scan methods where GORM alone would not; a
// panic in one is returned as a *PanicError, a failed re-read like any other.
func (p *Plugin) reread(db *gorm.DB, spec *modelSpec, targets []target) (err error) {
	if spec.aside {
		return nil // aside: writes only invalidate
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("writethrough: re-read %s after write: %w", spec.name, newPanicError("re-read after write", r))
		}
	}()
	rows, err := rowsByKey(db, spec, targets, false)
	if err != nil {
		return fmt.Errorf("writethrough: re-read %s after write: %w", spec.name, err)
	}
	list := rows.Elem()
	vals := make([]reflect.Value, list.Len())
	for i := range vals {
		vals[i] = list.Index(i)
	}
	p.fillTargets(db.Statement.Context, spec, targets, vals, entry.FlagDelete)
	return nil
}

// fillTargets sets each target's intent and row from rows, the rows as the
// database has them after the write: a soft-deleted row becomes "not
// found", a target with no row gets missing.
func (p *Plugin) fillTargets(ctx context.Context, spec *modelSpec, targets []target, rows []reflect.Value, missing entry.Flags) {
	byKey := make(map[string]int, len(targets))
	for i := range targets {
		targets[i].intent, targets[i].row = missing, nil
		byKey[targets[i].key] = i
	}
	for _, rv := range rows {
		key, ok := spec.keys.RowKey(ctx, rv)
		if !ok {
			continue
		}
		j, ok := byKey[key]
		if !ok {
			continue
		}
		t := &targets[j]
		if spec.deletedAt != nil {
			if v, _ := spec.deletedAt.ValueOf(ctx, rv); v != nil {
				if d, ok := v.(gorm.DeletedAt); ok && d.Valid {
					t.intent = entry.FlagDelete // soft-deleted: scoped reads do not find it
					continue
				}
			}
		}
		row, err := spec.codec.Append(nil, rv)
		if err != nil || len(row) > p.cfg.MaxRowSize {
			t.intent = 0 // cannot or will not cache it: invalidate only
			if err != nil {
				p.logf("writethrough: row not cached", "key", key, "err", err)
			}
			continue
		}
		t.intent, t.row = entry.FlagHasRow, row
	}
}

// ahead is a transaction's prepare of the keys a statement names before it
// runs, sent while the statement runs (prepareAhead).
type ahead struct {
	done   chan struct{} // closed when calls have run
	calls  []*entry.Call
	byKey  map[string]*entry.Call // built by awaitAhead
	waited bool
}

// call returns the prepare of key, or nil.
func (a *ahead) call(key string) *entry.Call { return a.byKey[key] }

// stagedRow is what a key a transaction staged installs at commit
// ([txhook.Staged.Final]): the row is kept here, not in Redis, and sent with
// the finalize.
type stagedRow struct {
	spec   *modelSpec // the model that encoded row
	intent entry.Flags
	row    []byte
	// deferred: the key is made pending just before COMMIT (PreCommit),
	// not yet; prepared says PreCommit did.
	deferred, prepared bool
}

// prepareAhead stages targets in tx and makes their keys pending (with
// nothing to install yet) in the background, while the statement runs;
// afterWrite waits for it (awaitAhead) before the transaction can commit,
// and hands each key its row then (stageTx).
func (p *Plugin) prepareAhead(db *gorm.DB, spec *modelSpec, tx *txhook.Tx, ws *writeState, targets []target) {
	a := &ahead{done: make(chan struct{}), calls: make([]*entry.Call, len(targets))}
	for i, t := range targets {
		tx.Stage(spec, t.key) // installs nothing unless stageTx gives it a row
		a.calls[i] = p.prepareCall(spec, tx.Token(), t.key, 0, nil)
	}
	ws.ahead = a
	parent := db.Statement.Context
	go func() {
		defer close(a.done)
		defer p.recoverLogged("prepare")
		ctx, cancel := p.opCtx(parent)
		defer cancel()
		p.run(ctx, a.calls)
	}()
}

// awaitAhead waits for the statement's prepare ahead, if it has one.
func (p *Plugin) awaitAhead(ws *writeState) {
	a := ws.ahead
	if a == nil || a.waited {
		return
	}
	<-a.done
	a.waited = true
	a.byKey = make(map[string]*entry.Call, len(a.calls))
	for _, c := range a.calls {
		a.byKey[c.Key] = c
		p.stats.prepares.Add(1)
		p.flights.Forget(c.Key)
	}
}

// stageTx prepares every target inside the transaction. Strict: a failure
// fails the statement and the transaction cannot commit. Soft: the key is
// only invalidated after the transaction.
func (p *Plugin) stageTx(db *gorm.DB, spec *modelSpec, kind writeKind, tx *txhook.Tx, ws *writeState, targets []target, affected int64) {
	if len(targets) == 0 {
		return
	}
	if kind == kindDelete && !spec.aside && affected == int64(len(targets)) {
		// Every named row was deleted (or soft-deleted) under this
		// transaction's lock: tombstones, no re-read needed.
		for i := range targets {
			targets[i].intent, targets[i].row = entry.FlagDelete, nil
		}
	} else if err := p.rowsOf(db, spec, ws, targets); err != nil {
		// The transaction is still ours to fail; a Soft write keeps going
		// with invalidation only.
		if spec.mode == Strict {
			_ = db.AddError(err)
			return
		}
		p.logf("writethrough: re-read failed; keys invalidated", "model", spec.name, "err", err)
		for i := range targets {
			targets[i].intent, targets[i].row = 0, nil
		}
	}
	if affected < int64(namedRows(targets)) || ws.invalidateOnly {
		// The statement missed some rows, so it holds no lock on them: what
		// the re-read saw there may be overtaken before this prepares (a
		// concurrent insert). Invalidate, never install.
		for i := range targets {
			targets[i].intent, targets[i].row = 0, nil
		}
	}
	p.at("write:after-reread", targets[0].key)
	if !ws.implicit {
		// A transaction of the caller's: nothing in Redis changes until
		// just before its COMMIT, when PreCommit makes every key it staged
		// pending in one round trip. Until then readers are served the
		// committed rows, which are the newest committed ones.
		for _, t := range targets {
			tx.StageFinal(spec, t.key, &stagedRow{spec: spec, intent: looseIntent(spec, t.intent), row: t.row, deferred: true})
		}
		tx.NeedPreCommit()
		return
	}
	var calls []*entry.Call
	var failed []string
	fail := func(key string, err error) {
		p.stats.prepareErrors.Add(1)
		err = unavailable("prepare "+kind.String(), err)
		already := tx.MarkFailed(key)
		if spec.mode == Strict {
			tx.Fail(err)
			_ = db.AddError(err)
		} else if !already {
			p.logf("writethrough: prepare failed; the key goes to the outbox", "key", key, "err", err)
			failed = append(failed, key)
		}
	}
	for _, t := range targets {
		if ws.ahead != nil {
			if c := ws.ahead.call(t.key); c != nil {
				// Pending since before the statement: the row travels
				// with the finalize.
				if err := prepareErr(c); err != nil {
					fail(t.key, err)
					continue
				}
				tx.StageFinal(spec, t.key, &stagedRow{spec: spec, intent: looseIntent(spec, t.intent), row: t.row})
				p.at("write:after-prepare", t.key)
				continue
			}
		}
		tx.Stage(spec, t.key)
		calls = append(calls, p.prepareCall(spec, tx.Token(), t.key, t.intent, t.row))
	}
	if len(calls) > 0 {
		ctx, cancel := p.opCtx(db.Statement.Context)
		p.run(ctx, calls)
		cancel()
	}
	for _, c := range calls {
		p.stats.prepares.Add(1)
		p.flights.Forget(c.Key)
		if err := prepareErr(c); err != nil {
			fail(c.Key, err)
			continue
		}
		p.at("write:after-prepare", c.Key)
	}
	// Soft: the keys Redis missed are recorded in the same transaction, so
	// the record commits exactly when the write does.
	if err := p.record(db, failed); err != nil {
		_ = db.AddError(err)
	}
}

// stageForeign handles a write inside a transaction the plugin did not begin
// (db.Connection, a pool wrapped before this plugin): it cannot see the
// commit, so the keys are made pending and left to expire.
func (p *Plugin) stageForeign(db *gorm.DB, spec *modelSpec, kind writeKind, targets []target) {
	if len(targets) == 0 {
		return
	}
	p.logf("writethrough: write in a transaction the plugin cannot see; keys stay uncached until PendingTTL",
		"model", spec.name)
	calls := make([]*entry.Call, len(targets))
	token := entry.NewToken()
	for i, t := range targets {
		calls[i] = p.prepareCall(spec, token, t.key, 0, nil)
	}
	ctx, cancel := p.opCtx(db.Statement.Context)
	defer cancel()
	p.run(ctx, calls)
	for _, c := range calls {
		p.flights.Forget(c.Key)
		if err := prepareErr(c); err != nil && spec.mode == Strict {
			_ = db.AddError(unavailable("prepare "+kind.String(), err))
			return
		}
	}
}

// stageAutocommit finalizes a write that ran without a transaction: it has
// already committed.
func (p *Plugin) stageAutocommit(db *gorm.DB, spec *modelSpec, kind writeKind, ws *writeState, targets []target) {
	if len(targets) == 0 {
		return
	}
	if p.gate.enter() { // Close waits for this finalize
		defer p.gate.leave()
	}
	token := ws.token
	if token == "" {
		token = entry.NewToken()
	}
	if err := p.rowsOf(db, spec, ws, targets); err != nil {
		p.logf("writethrough: re-read failed; keys invalidated", "model", spec.name, "err", err)
		for i := range targets {
			targets[i].intent, targets[i].row = 0, nil
		}
	}
	var calls []*entry.Call                  // the prepares, then the finalizes
	pre := make([]*entry.Call, len(targets)) // targets[i]'s prepare made here, or nil
	for i, t := range targets {
		if !ws.early[t.key] {
			if kind != kindCreate || upsertMayMatch(db.Statement, spec) || ws.invalidateOnly {
				// Made pending only now, after the statement committed and
				// with no lock held: a writer that finalized since the
				// re-read goes unseen. Invalidate, never install. (A created
				// row's database-made key was unknown to everyone else
				// until the INSERT committed.)
				targets[i].intent, targets[i].row = 0, nil
			}
			pre[i] = p.prepareCall(spec, token, t.key, 0, nil)
			calls = append(calls, pre[i])
		}
	}
	fin := make([]*entry.Call, len(targets))
	for i, t := range targets {
		fin[i] = entry.FinalizeRow(t.key, entry.FinalizeRowArgs{
			Token: token, Intent: looseIntent(spec, t.intent), Fingerprint: spec.codec.Fingerprint(), Row: t.row,
			TTL: entryTTL(spec), NegativeTTL: p.cfg.NegativeTTL,
		})
		p.flights.Forget(t.key)
	}
	calls = append(calls, fin...)
	p.at("write:before-finalize", targets[0].key)
	ctx, cancel := p.opCtx(db.Statement.Context)
	defer cancel()
	p.run(ctx, calls)
	missed := ws.failed
	for i, c := range fin {
		p.stats.finalizes.Add(1)
		if c.Err != nil {
			p.stats.finalizeErrors.Add(1)
			p.logf("writethrough: finalize failed; the key goes to the outbox", "key", c.Key, "err", c.Err)
			missed = append(missed, c.Key)
			continue
		}
		// A prepare made here and its finalize are, together, the key's
		// invalidation (or install) after the commit. With
		// Config.WaitReplicas the prepare alone is durable: when too few
		// replicas acknowledged it, they hold neither, and a failover
		// would bring back the entry from before the write.
		if pre[i] == nil || contains(ws.failed, c.Key) {
			continue
		}
		if err := prepareErr(pre[i]); err != nil {
			p.logf("writethrough: prepare after commit failed; the key goes to the outbox", "key", c.Key, "err", err)
			missed = append(missed, c.Key)
		}
	}
	p.recordAfterCommit(db.Statement.Context, missed)
	for _, t := range targets {
		p.flights.Forget(t.key)
	}
	p.at("write:after-finalize", targets[0].key)
}

// releaseEarly undoes the pending entries of a statement that failed.
func (p *Plugin) releaseEarly(ctx context.Context, spec *modelSpec, ws *writeState) {
	keys := make([]string, 0, len(ws.early))
	for k := range ws.early {
		keys = append(keys, k)
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	p.releaseKeys(ctx, ws.token, keys)
}

func (p *Plugin) releaseKeys(ctx context.Context, token string, keys []string) {
	calls := make([]*entry.Call, len(keys))
	for i, k := range keys {
		calls[i] = entry.Finalize(k, token, entry.NeverInstall, 0, 0)
	}
	p.run(ctx, calls)
}

// txOwner is the plugin as the transaction wrapper (internal/txhook) sees
// it: a transaction the plugin's pool began reports here how it ended.
type txOwner struct{ p *Plugin }

// Mark implements txhook.Marker: with Config.CDC, the logical message that
// tells the change-data-capture consumer which writer made the transaction.
func (o txOwner) Mark(t *txhook.Tx) (string, []any) {
	if !o.p.cfg.CDC || t.Tainted() {
		return "", nil
	}
	return cdcMark, []any{[]byte(t.Token())}
}

// PreCommit implements txhook.PreCommitter: just before the COMMIT of a
// transaction of the caller's, every key it staged becomes pending, in one
// pipelined round trip.
// Until then the write could not be visible and readers were served the
// committed rows; from COMMIT on it may be. When Redis misses a key, Strict
// rolls the transaction back; Soft records the key in the outbox in the
// same transaction.
func (o txOwner) PreCommit(ctx context.Context, t *txhook.Tx, staged []txhook.Staged) error {
	p := o.p
	var calls []*entry.Call
	var rows []*stagedRow
	for _, s := range staged {
		// Keys undone by a rollback to a savepoint are prepared too: an
		// earlier statement of the transaction may have written them;
		// their finalize deletes them.
		f, ok := s.Final.(*stagedRow)
		if !ok || !f.deferred || f.prepared {
			continue
		}
		calls = append(calls, p.prepareCall(f.spec, t.Token(), s.Key, 0, nil))
		rows = append(rows, f)
	}
	if len(calls) == 0 {
		return nil
	}
	cctx, cancel := p.opCtx(ctx)
	p.run(cctx, calls)
	cancel()
	// Every key that became pending is marked first, so that the finalize
	// releases it even when a failure below rolls the transaction back.
	var failed []string
	var err error
	strict := false
	for i, c := range calls {
		p.stats.prepares.Add(1)
		p.flights.Forget(c.Key)
		perr := prepareErr(c)
		if perr == nil {
			rows[i].prepared = true
			p.at("write:after-prepare", c.Key)
			continue
		}
		p.stats.prepareErrors.Add(1)
		err = unavailable("prepare before commit", perr)
		strict = strict || rows[i].spec.mode == Strict
		// Marked failed, the key is released by its finalize (its prepare
		// may have reached Redis before the error).
		if already := t.MarkFailed(c.Key); !already {
			failed = append(failed, c.Key) // an earlier failure recorded it already
		}
	}
	if strict {
		return err
	}
	if len(failed) == 0 {
		return nil
	}
	p.logf("writethrough: prepare before commit failed; the keys go to the outbox", "keys", len(failed), "err", err)
	if p.db == nil {
		return nil
	}
	db := p.db.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true, SkipHooks: true, Context: ctx})
	db.Statement.ConnPool = t
	return p.record(db, failed)
}

// cdcMark is the statement of Mark; package cdc reads the message's prefix.
const cdcMark = "SELECT pg_logical_emit_message(true, 'writethrough', $1::bytea)"

// Committing implements txhook.Owner.
func (o txOwner) Committing(firstKey string) { o.p.at("tx:before-commit", firstKey) }

// End implements txhook.Owner: it settles the suspect marks of the keys
// whose outbox records the transaction wrote, then finalizes every key it
// staged, in the background with Config.AsyncFinalize.
func (o txOwner) End(ctx context.Context, token string, staged []txhook.Staged, outcome txhook.Outcome) {
	p := o.p
	switch outcome {
	case txhook.CommitFailed:
		// The outbox records may or may not have committed: keep reading
		// those keys from the database for a while, not forever.
		p.suspects.expire(failedKeys(staged), p.cfg.PendingTTL)
	case txhook.RolledBack:
		// The records rolled back with the transaction.
		p.suspects.unmark(failedKeys(staged))
	}
	// An error from COMMIT may hide a commit that happened: the keys are
	// released and deleted, never installed (finalize).
	// Close waits for the finalizes it counts; once it has begun, a
	// finalize runs here, uncounted, before Commit returns.
	counted := p.gate.enter()
	if counted && p.cfg.AsyncFinalize {
		// Readers of a pending key already go to the database, so the
		// caller need not wait for the install. Forget the flights now, so
		// that reads starting after Commit returns never join older loads.
		for _, s := range staged {
			p.flights.Forget(s.Key)
		}
		go func() {
			defer p.gate.leave()
			defer p.recoverLogged("asynchronous finalize")
			p.finalize(ctx, token, staged, outcome)
		}()
		return
	}
	if counted {
		defer p.gate.leave()
	}
	p.finalize(ctx, token, staged, outcome)
}

// failedKeys lists the staged keys whose prepare failed (Soft: in the
// outbox).
func failedKeys(staged []txhook.Staged) []string {
	var keys []string
	for _, s := range staged {
		if s.Failed {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// finalize ends a transaction's part in each key it staged; only a COMMIT
// that returned success (txhook.Committed) installs.
func (p *Plugin) finalize(parent context.Context, token string, staged []txhook.Staged, outcome txhook.Outcome) {
	committed := outcome == txhook.Committed
	for _, s := range staged {
		p.flights.Forget(s.Key)
	}
	p.at("write:before-finalize", staged[0].Key)
	ctx, cancel := p.opCtx(parent)
	defer cancel()
	calls := make([]*entry.Call, 0, len(staged))
	idx := make([]int, 0, len(staged)) // calls[i] is staged[idx[i]]'s
	for i, s := range staged {
		spec := s.Model.(*modelSpec)
		install := committed && s.Valid && !s.Failed
		f, ok := s.Final.(*stagedRow)
		if ok && f.deferred && !f.prepared && !s.Failed {
			// Never made pending (the transaction rolled back before its
			// COMMIT): Redis was never touched.
			continue
		}
		idx = append(idx, i)
		if ok && install {
			// The row is given here, with the fingerprint of the model
			// that built it.
			calls = append(calls, entry.FinalizeRow(s.Key, entry.FinalizeRowArgs{
				Token: token, Intent: f.intent, Fingerprint: f.spec.codec.Fingerprint(), Row: f.row,
				TTL: entryTTL(f.spec), NegativeTTL: p.cfg.NegativeTTL,
			}))
			continue
		}
		mode := entry.NeverInstall
		if install {
			mode = entry.InstallStaged
		}
		calls = append(calls, entry.Finalize(s.Key, token, mode, entryTTL(spec), p.cfg.NegativeTTL))
	}
	if len(calls) > 0 {
		p.run(ctx, calls)
	}
	var missed []string
	for i, c := range calls {
		p.stats.finalizes.Add(1)
		if c.Err != nil {
			p.stats.finalizeErrors.Add(1)
			p.logf("writethrough: finalize failed", "key", c.Key, "err", c.Err)
			if !staged[idx[i]].Failed {
				missed = append(missed, c.Key) // failed ones are in the outbox already
			}
		}
	}
	if committed {
		// A committed write whose finalize failed: the pending entry would
		// expire on its own, but the outbox deletes it as soon as Redis answers.
		p.recordAfterCommit(parent, missed)
	}
	p.at("write:after-finalize", staged[0].Key)
}

// recoverInto, deferred in a write callback, turns a panic in it (the
// plugin's own code, or user code it runs on its own account: a key's Value
// method while it reads keys) into a *PanicError on the statement, so that
// GORM's implicit transaction is still rolled back.
func recoverInto(db *gorm.DB, kind writeKind) {
	if r := recover(); r != nil {
		_ = db.AddError(newPanicError(kind.String()+" callback", r))
	}
}
