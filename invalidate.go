package writethrough

import (
	"context"
	"fmt"
	"reflect"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// Invalidate removes the cached rows of model with the given primary keys,
// for writes GORM never saw (raw SQL, other services). With no keys, the key
// is taken from model itself (a struct with its primary key set). A key with
// a write in flight is marked so that it is deleted, not installed, when the
// write ends. The returned error wraps ErrCacheUnavailable when Redis fails.
//
// Called with a transaction (the tx of db.Transaction or db.Begin), it
// invalidates at the transaction's end rather than at once: the keys stay
// pending until then, so that no reader fills them with the rows the
// transaction is replacing, and are deleted after COMMIT (and after
// ROLLBACK). When Redis fails, a Strict model's Invalidate returns the error
// and the transaction's Commit rolls back instead; a Soft model's keys are
// recorded in the outbox in the same transaction and Invalidate returns nil
// (an error when the outbox is disabled).
//
// For a composite primary key pass model values with the key set, or one
// []any per row holding the key columns in schema order. Keys are values,
// never SQL; one that does not fit the primary key gives an error wrapping
// [ErrUnsupported]. For a key column that compares loosely (citext, char(n),
// a non-deterministic collation) Invalidate also reads, from the database,
// how the rows' keys are spelled there, and invalidates those keys too; a
// row deleted by raw SQL is no longer there to read, so pass its key as it
// was stored.
func Invalidate(db *gorm.DB, model any, keys ...any) (err error) {
	defer recoverErr(&err, "invalidate")
	p, err := pluginOf(db)
	if err != nil {
		return err
	}
	spec, err := p.specFor(db, model)
	if err != nil {
		return err
	}
	if spec == nil {
		return fmt.Errorf("%w: %T has no cache tag", ErrUnsupported, model)
	}
	ctx := db.Statement.Context
	if ctx == nil {
		ctx = context.Background()
	}
	p.resolveKeys(db, spec)
	var targets []target
	if len(keys) == 0 {
		targets = targetsIn(ctx, spec, reflect.ValueOf(model))
		if len(targets) == 0 {
			return fmt.Errorf("%w: no keys given and %T has no primary key set", ErrUnsupported, model)
		}
	}
	for _, k := range keys {
		if ts := targetsIn(ctx, spec, reflect.ValueOf(k)); len(ts) > 0 {
			targets = append(targets, ts...)
			continue
		}
		vals, err := spec.keyValues(ctx, k, spec.keys.ModelValue)
		if err != nil {
			return err
		}
		targets = append(targets, target{key: spec.keys.Key(vals), pk: vals})
	}
	// A loose key (citext, char(n)) may be spelled otherwise in the
	// database: invalidate the rows' own keys too.
	more, err := canonicalTargets(db.WithContext(ctx), spec, targets)
	if err != nil {
		return fmt.Errorf("writethrough: invalidate %s: read the keys' spellings: %w", spec.name, err)
	}
	rkeys := make([]string, 0, len(targets)+len(more))
	for _, t := range append(targets, more...) {
		rkeys = append(rkeys, t.key)
	}
	if tx, inTx := txhook.Of(db.Statement.ConnPool); inTx {
		keys := make([]specKey, len(rkeys))
		for i, k := range rkeys {
			keys[i] = specKey{spec: spec, key: k}
		}
		if tx == nil {
			return p.pendForeign(ctx, keys, "invalidate")
		}
		return p.stageInvalidations(db, tx, keys, "invalidate")
	}
	return p.invalidateKeys(ctx, rkeys)
}

// stageInvalidations makes keys pending in tx with no row: they are deleted
// when tx ends, committed or rolled back, and no reader fills them before.
// A key Redis refused fails the call and the transaction (Strict), or is
// recorded in the outbox in the same transaction (Soft).
func (p *Plugin) stageInvalidations(db *gorm.DB, tx *txhook.Tx, keys []specKey, what string) error {
	if len(keys) == 0 {
		return nil
	}
	calls := make([]*entry.Call, len(keys))
	for i, k := range keys {
		tx.Stage(k.spec, k.key)
		calls[i] = p.prepareCall(k.spec, tx.Token(), k.key, 0, nil)
	}
	ctx, cancel := p.opCtx(db.Statement.Context)
	defer cancel()
	p.run(ctx, calls)
	var failed []string
	var strictErr error
	for i, c := range calls {
		p.stats.prepares.Add(1)
		p.stats.invalidations.Add(1)
		p.flights.Forget(c.Key)
		err := prepareErr(c)
		if err == nil {
			continue
		}
		p.stats.prepareErrors.Add(1)
		err = unavailable(what, err)
		strict := keys[i].spec.mode == Strict
		already := tx.MarkFailed(c.Key)
		switch {
		case strict:
			tx.Fail(err)
			if strictErr == nil {
				strictErr = err
			}
		case !already:
			p.logf("writethrough: prepare failed; the key goes to the outbox", "key", c.Key, "err", err)
			failed = append(failed, c.Key)
		}
	}
	if strictErr != nil {
		return strictErr
	}
	if len(failed) > 0 && (p.cfg.DisableOutbox || p.db == nil) {
		return unavailable(what, fmt.Errorf("%d keys not invalidated and no outbox", len(failed)))
	}
	return p.record(db, failed)
}

func (p *Plugin) invalidateKeys(ctx context.Context, keys []string) error {
	bad := p.invalidateEach(ctx, keys)
	for _, k := range keys {
		if err, ok := bad[k]; ok {
			return err
		}
	}
	return nil
}

// invalidateEach invalidates keys in one round trip and returns the error
// of each key Redis did not invalidate.
func (p *Plugin) invalidateEach(ctx context.Context, keys []string) map[string]error {
	if len(keys) == 0 {
		return nil
	}
	for _, k := range keys {
		p.flights.Forget(k)
	}
	calls := make([]*entry.Call, len(keys))
	for i, k := range keys {
		calls[i] = entry.Invalidate(k)
	}
	c, cancel := p.opCtx(ctx)
	defer cancel()
	p.run(c, calls)
	for _, k := range keys {
		p.flights.Forget(k)
	}
	var bad map[string]error
	for _, c := range calls {
		p.stats.invalidations.Add(1)
		if c.Err != nil {
			if bad == nil {
				bad = map[string]error{}
			}
			bad[c.Key] = unavailable("invalidate", c.Err)
		}
	}
	return bad
}
