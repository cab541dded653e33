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
// []any per row holding the key columns in schema order.
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
	var rkeys []string
	if len(keys) == 0 {
		ts := p.targetsIn(ctx, spec, reflect.ValueOf(model))
		if len(ts) == 0 {
			return fmt.Errorf("%w: no keys given and %T has no primary key set", ErrUnsupported, model)
		}
		for _, t := range ts {
			rkeys = append(rkeys, t.key)
		}
	}
	for _, k := range keys {
		var vals []any
		switch x := k.(type) {
		case []any:
			vals = x
		default:
			if ts := p.targetsIn(ctx, spec, reflect.ValueOf(k)); len(ts) > 0 {
				for _, t := range ts {
					rkeys = append(rkeys, t.key)
				}
				continue
			}
			vals = []any{k}
		}
		rk, ok := spec.lookupKey(ctx, vals...)
		if !ok {
			return fmt.Errorf("%w: key %v does not fit %s's primary key", ErrUnsupported, k, spec.name)
		}
		rkeys = append(rkeys, rk)
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
