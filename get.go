package writethrough

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/keyspec"
)

// afterFinder is GORM's AfterFind hook.
type afterFinder interface {
	AfterFind(tx *gorm.DB) error
}

// Get reads one row of model T by primary key. A hit costs one Redis GET and
// no GORM statement; a miss, or any key the cache cannot answer, falls back to
// db.Scopes(Cached).Where(pk = key).First, with the same leases and promises,
// which does not read the key from Redis again. A row that does not exist gives an error satisfying
// errors.Is(err, gorm.ErrRecordNotFound). AfterFind hooks run on hits as they
// do on database reads.
//
// key is a value of the primary key (42, "42", a UUID) and never SQL; or a T
// or *T with its primary key set, or, for a composite key, a []any holding
// the key columns in schema order. A key that does not fit the primary key
// (nil, "", 0, "1=1" for an integer key, another type) gives an error
// wrapping [ErrUnsupported].
//
// Get answers exactly as db.Where(pk = key).First(&out) would. Redis serves
// it only when db carries nothing that could change the answer: conditions,
// scopes, Unscoped, Table, Select, Omit, Joins, Preload, settings, or an open
// transaction. Otherwise GORM's query runs with db's conditions.
func Get[T any](ctx context.Context, db *gorm.DB, key any) (T, error) {
	var out T
	p, spec, sch, err := fastSpec[T](db)
	if err != nil {
		return out, err
	}
	ks, err := keySpecOf(spec, sch)
	if err != nil {
		return out, err
	}
	var kn known
	if spec != nil && servable(db) {
		p.resolveKeys(db, spec)
		k, ok, err := fastKey[T](ctx, spec, key)
		if err != nil {
			return out, err
		}
		if !ok {
			return out, keyMisfit(ks, key)
		}
		res, looked := p.getFast(ctx, spec, k, &out)
		switch res {
		case outHit:
			return out, afterFind(db, &out)
		case outNotFound:
			return out, gorm.ErrRecordNotFound
		}
		if looked {
			kn = known{k: res} // the statement below does not read k again
		}
		out = *new(T)
	}
	vals, err := ks.keyValues(ctx, key, asModel[T])
	if err != nil {
		return out, err
	}
	q := db.WithContext(ctx)
	if spec != nil {
		q = cachedKnown(q, kn)
	}
	err = q.Where(pkEq(ks, vals)).First(&out).Error
	return out, err
}

// getFast looks k up in Redis for Get, decoding a hit into out; looked is
// false when it did not look (the key is suspect, or the plugin is closed)
// and the database must answer.
func (p *Plugin) getFast(ctx context.Context, spec *modelSpec, k string, out any) (res outcome, looked bool) {
	if p.suspects.is(k) || !p.gate.enter() {
		return outEmpty, false
	}
	defer p.gate.leave()
	res = p.lookup(ctx, spec, k, reflect.ValueOf(out).Elem())
	if res == outHit || res == outNotFound {
		p.stats.hits.Add(1)
	}
	return res, true
}

// GetMany reads the rows of model T with the given primary keys in one Redis
// round trip, falling back to one SQL query for the keys the cache cannot
// answer (with the leases and promises of [Cached], and no second Redis
// read). Rows come back in the order of keys; keys with no row are left out,
// and a row named twice comes back once. Keys are values, as for [Get]; a
// key that does not fit the primary key gives an error wrapping
// [ErrUnsupported]. As with Get, Redis serves only a db that carries no
// conditions; otherwise one query with db's conditions answers every key.
//
// A row that the database matched under another spelling of its key than
// any key given (a citext key in another case) comes after the others.
func GetMany[T any](ctx context.Context, db *gorm.DB, keys ...any) ([]T, error) {
	p, spec, sch, err := fastSpec[T](db)
	if err != nil {
		return nil, err
	}
	ks, err := keySpecOf(spec, sch)
	if err != nil {
		return nil, err
	}
	vals, rkeys, err := manyKeys[T](ctx, ks, keys)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return []T{}, nil
	}
	fast := spec != nil && servable(db)
	if fast && !p.gate.enter() {
		fast = false // closed: the database answers
	}
	if !fast {
		q := db.WithContext(ctx)
		if spec != nil {
			q = q.Scopes(Cached)
		}
		var rows []T
		if err := q.Where(pkIn(ks, vals)).Find(&rows).Error; err != nil {
			return nil, err
		}
		return inKeyOrder(ctx, ks, rkeys, rows), nil
	}
	out, state, missing, kn := getManyFast[T](ctx, p, db, spec, rkeys, vals)
	var rows []T
	if len(missing) > 0 {
		if err := cachedKnown(db.WithContext(ctx), kn).Where(pkIn(ks, missing)).Find(&rows).Error; err != nil {
			return nil, err
		}
	}
	for i := range out {
		if state[i] == outHit {
			if err := afterFind(db, &out[i]); err != nil {
				return nil, err
			}
		}
	}
	merged := make([]T, 0, len(rkeys)+len(rows))
	for i := range out {
		if state[i] == outHit {
			merged = append(merged, out[i])
		}
	}
	merged = append(merged, rows...)
	return inKeyOrder(ctx, ks, rkeys, merged), nil
}

// manyKeys turns GetMany's keys into values and Redis keys, once per row
// however often it is named. A panic in user code it runs (a key type's
// Value or Scan method) is returned as a *PanicError.
func manyKeys[T any](ctx context.Context, ks *modelSpec, keys []any) (vals [][]any, rkeys []string, err error) {
	defer recoverErr(&err, "build cache keys")
	vals = make([][]any, len(keys))
	for i, k := range keys {
		if vals[i], err = ks.keyValues(ctx, k, asModel[T]); err != nil {
			return nil, nil, err
		}
	}
	rkeys = make([]string, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	uniq := vals[:0]
	for _, v := range vals {
		if k := ks.keys.Key(v); !seen[k] {
			seen[k] = true
			rkeys = append(rkeys, k)
			uniq = append(uniq, v)
		}
	}
	return uniq, rkeys, nil
}

// getManyFast reads rkeys from Redis in one round trip, inside the gate
// GetMany entered (it leaves it), and decodes the hits into out. missing
// holds the values of the keys the database must answer, and kn what Redis
// held for them.
func getManyFast[T any](ctx context.Context, p *Plugin, db *gorm.DB, spec *modelSpec, rkeys []string, vals [][]any) (out []T, state []outcome, missing [][]any, kn known) {
	defer p.gate.leave()
	p.resolveKeys(db, spec)
	out = make([]T, len(rkeys))
	state = p.lookupMany(ctx, spec, rkeys, func(i int) reflect.Value { return reflect.ValueOf(&out[i]).Elem() })
	for i := range state {
		if (state[i] == outHit || state[i] == outNotFound) && p.suspects.is(rkeys[i]) {
			state[i] = outBusy
		}
		if state[i] == outHit || state[i] == outNotFound {
			p.stats.hits.Add(1)
			continue
		}
		out[i] = *new(T)
		missing = append(missing, vals[i])
		if kn == nil {
			kn = make(known, len(rkeys)-i)
		}
		kn[rkeys[i]] = state[i]
	}
	return out, state, missing, kn
}

// inKeyOrder orders rows as keys are, once each; rows whose key is none of
// keys (another spelling of a loose key) come last, in the order given.
func inKeyOrder[T any](ctx context.Context, ks *modelSpec, keys []string, rows []T) []T {
	byKey := make(map[string]int, len(rows))
	for i := range rows {
		k, ok := ks.keys.RowKey(ctx, reflect.ValueOf(&rows[i]).Elem())
		if !ok {
			continue
		}
		if _, dup := byKey[k]; !dup {
			byKey[k] = i
		}
	}
	out := make([]T, 0, len(rows))
	used := make(map[int]bool, len(rows))
	for _, k := range keys {
		if i, ok := byKey[k]; ok && !used[i] {
			used[i] = true
			out = append(out, rows[i])
		}
	}
	for i := range rows {
		if used[i] {
			continue
		}
		if k, ok := ks.keys.RowKey(ctx, reflect.ValueOf(&rows[i]).Elem()); ok && byKey[k] != i {
			continue // a second copy of a row already placed
		}
		out = append(out, rows[i])
	}
	return out
}

func fastSpec[T any](db *gorm.DB) (*Plugin, *modelSpec, *schema.Schema, error) {
	p, err := pluginOf(db)
	if err != nil {
		return nil, nil, nil, err
	}
	t := reflect.TypeFor[T]()
	if t.Kind() != reflect.Struct {
		return nil, nil, nil, fmt.Errorf("%w: Get needs a struct model type, not %s", ErrUnsupported, t)
	}
	spec, err := p.specFor(db, (*T)(nil))
	if err != nil {
		return nil, nil, nil, err
	}
	if spec != nil {
		return p, spec, spec.sch, nil
	}
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse((*T)(nil)); err != nil {
		return nil, nil, nil, fmt.Errorf("writethrough: parse model %s: %w", t, err)
	}
	if len(stmt.Schema.PrimaryFields) == 0 {
		return nil, nil, nil, fmt.Errorf("%w: %s has no primary key", ErrUnsupported, stmt.Schema.Name)
	}
	return p, nil, stmt.Schema, nil
}

// keySpecOf is the spec that turns keys into values and keys: the model's,
// or, for a model without the cache tag, one that knows only its key.
func keySpecOf(spec *modelSpec, sch *schema.Schema) (*modelSpec, error) {
	if spec != nil {
		return spec, nil
	}
	keys, err := keyspec.New(sch, "", nil)
	if err != nil {
		return nil, fmt.Errorf("writethrough: keys of %s: %w", sch.Name, err)
	}
	return &modelSpec{sch: sch, name: sch.Name, pks: sch.PrimaryFields, keys: keys}, nil
}

// fastKey is the Redis key of key, without allocating for integer keys; ok
// is false when key does not fit. A panic in user code it runs (a key
// type's Value or Scan method) is returned as a *PanicError.
func fastKey[T any](ctx context.Context, spec *modelSpec, key any) (k string, ok bool, err error) {
	defer recoverErr(&err, "build a cache key")
	if len(spec.pks) == 1 {
		if _, isModel := asModel[T](key); !isModel {
			k, ok = spec.keys.Lookup1(key)
			return k, ok, nil
		}
	}
	vals, verr := spec.keyValues(ctx, key, asModel[T])
	if verr != nil {
		return "", false, nil
	}
	return spec.keys.Key(vals), true, nil
}

// keyValues turns a key as a caller gives it to Get, GetMany, Invalidate or
// Inspect into one value per primary-key column (keyspec.Spec.Values); a
// key that does not fit gives an error wrapping [ErrUnsupported]. A panic in
// user code it runs (a key type's Scan method, through GORM's setter) is
// returned as a *PanicError.
func (s *modelSpec) keyValues(ctx context.Context, key any, model func(any) (reflect.Value, bool)) (_ []any, err error) {
	defer recoverErr(&err, "read a key")
	vals, err := s.keys.Values(ctx, key, model)
	if err == nil {
		return vals, nil
	}
	var ke *keyspec.KeyError // escapes through errors.As: only on errors
	switch {
	case !errors.As(err, &ke):
		return nil, err
	case ke.Tuple:
		return nil, fmt.Errorf("%w: %s has a composite primary key; pass a %s with the key set, or a []any of its %d key columns",
			ErrUnsupported, s.name, s.name, len(s.pks))
	}
	return nil, keyMisfit(s, key)
}

// keyMisfit is the error every entry point gives for a key that does not fit
// the model's primary key.
func keyMisfit(s *modelSpec, key any) error {
	return fmt.Errorf("%w: key %v (%T) does not fit %s's primary key", ErrUnsupported, key, key, s.name)
}

// asModel reports whether key is a T or a non-nil *T, and gives its value.
func asModel[T any](key any) (reflect.Value, bool) {
	switch m := key.(type) {
	case T:
		return reflect.ValueOf(&m).Elem(), true
	case *T:
		if m != nil {
			return reflect.ValueOf(m).Elem(), true
		}
	}
	return reflect.Value{}, false
}

// afterFind runs v's AfterFind hook, v a pointer to a model value.
func afterFind(db *gorm.DB, v any) error {
	if h, ok := v.(afterFinder); ok && !db.Statement.SkipHooks {
		return h.AfterFind(db.Session(&gorm.Session{NewDB: true}))
	}
	return nil
}
