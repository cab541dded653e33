package writethrough

import (
	"context"
	"fmt"
	"reflect"

	"gorm.io/gorm"
)

// Invalidate removes the cached rows of model with the given primary keys,
// for writes GORM never saw (raw SQL, other services). With no keys, the key
// is taken from model itself (a struct with its primary key set). A key with
// a write in flight is marked so that it is deleted, not installed, when the
// write ends. The returned error wraps ErrCacheUnavailable when Redis fails.
//
// For a composite primary key pass model values with the key set, or one
// []any per row holding the key columns in schema order. Keys are values,
// never SQL; one that does not fit the primary key gives an error wrapping
// [ErrUnsupported]. For a key column that compares loosely (citext, char(n),
// a non-deterministic collation) Invalidate also reads, from the database,
// how the rows' keys are spelled there, and invalidates those keys too; a
// row deleted by raw SQL is no longer there to read, so pass its key as it
// was stored.
func Invalidate(db *gorm.DB, model any, keys ...any) error {
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
		targets = p.targetsIn(ctx, spec, reflect.ValueOf(model))
		if len(targets) == 0 {
			return fmt.Errorf("%w: no keys given and %T has no primary key set", ErrUnsupported, model)
		}
	}
	for _, k := range keys {
		if ts := p.targetsIn(ctx, spec, reflect.ValueOf(k)); len(ts) > 0 {
			targets = append(targets, ts...)
			continue
		}
		vals, err := spec.keyValues(ctx, k, spec.asModelValue)
		if err != nil {
			return err
		}
		targets = append(targets, target{key: spec.keyFromValues(vals), pk: vals})
	}
	// A loose key (citext, char(n)) may be spelled otherwise in the
	// database: invalidate the rows' own keys too.
	more, err := p.canonicalTargets(db.WithContext(ctx), spec, targets)
	if err != nil {
		return fmt.Errorf("writethrough: invalidate %s: read the keys' spellings: %w", spec.name, err)
	}
	rkeys := make([]string, 0, len(targets)+len(more))
	for _, t := range append(targets, more...) {
		rkeys = append(rkeys, t.key)
	}
	return p.invalidateKeys(ctx, rkeys)
}

func (p *Plugin) invalidateKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	for _, k := range keys {
		p.flights.Forget(k)
	}
	calls := make([]*call, len(keys))
	for i, k := range keys {
		calls[i] = &call{sc: p.scripts.invalidate, key: k}
	}
	c, cancel := p.opCtx(ctx)
	defer cancel()
	p.run(c, calls)
	for _, k := range keys {
		p.flights.Forget(k)
	}
	for _, c := range calls {
		p.stats.invalidations.Add(1)
		if c.err != nil {
			return unavailable("invalidate", c.err)
		}
	}
	return nil
}
