package writethrough

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
)

// afterFinder is GORM's AfterFind hook.
type afterFinder interface {
	AfterFind(tx *gorm.DB) error
}

// Get reads one row of model T by primary key. A hit costs one Redis GET and
// no GORM statement; a miss, or any key the cache cannot answer, falls back to
// db.Scopes(Cached).First, with the same leases and promises. A row that does
// not exist gives an error satisfying errors.Is(err, gorm.ErrRecordNotFound).
// AfterFind hooks run on hits as they do on database reads.
//
// key is the primary-key value (42, "42", a UUID), or a T or *T with its
// primary key set (needed for composite keys).
func Get[T any](ctx context.Context, db *gorm.DB, key any) (T, error) {
	var out T
	p, spec, k, ok, err := fastKey[T](db, key)
	if err != nil {
		return out, err
	}
	if ok && !inTx(db) && !p.suspects.is(k) {
		c, cancel := p.readCtx(ctx)
		var raw []byte
		rerr := errBreakerOpen
		if p.brk.allow() {
			raw, rerr = p.rdb.Get(c, k).Bytes()
			p.brk.record(c, rerr)
		}
		cancel()
		if rerr == nil {
			switch p.decodeInto(ctx, spec, k, raw, reflect.ValueOf(&out).Elem()) {
			case lookHit:
				p.stats.hits.Add(1)
				return out, afterFind(db, &out)
			case lookNotFound:
				p.stats.hits.Add(1)
				return out, gorm.ErrRecordNotFound
			}
			out = *new(T)
		} else if !errors.Is(rerr, redis.Nil) {
			p.stats.redisErrors.Add(1)
		}
	}
	q := db.WithContext(ctx).Scopes(Cached)
	if m, isModel := asModel[T](key); isModel {
		out = m
		err = q.First(&out).Error
	} else {
		err = q.First(&out, key).Error
	}
	return out, err
}

// GetMany reads the rows of model T with the given primary keys in one Redis
// round trip, falling back to one SQL query for the keys the cache cannot
// answer. Rows come back in the order of keys; keys with no row are left out.
func GetMany[T any](ctx context.Context, db *gorm.DB, keys ...any) ([]T, error) {
	if len(keys) == 0 {
		return []T{}, nil
	}
	var zero T
	p, spec, err := fastSpec[T](db)
	if err != nil {
		return nil, err
	}
	if spec == nil || len(spec.pks) != 1 || inTx(db) {
		var out []T
		err := db.WithContext(ctx).Scopes(Cached).Find(&out, keys).Error
		return out, err
	}
	rkeys := make([]string, len(keys))
	for i, k := range keys {
		rk, ok := spec.lookupKey(ctx, k)
		if !ok {
			return nil, fmt.Errorf("%w: key %v does not fit %s's primary key", ErrUnsupported, k, spec.name)
		}
		rkeys[i] = rk
	}
	c, cancel := p.readCtx(ctx)
	var raws [][]byte
	rerr := p.redisCall(c, func() (err error) {
		raws, err = p.getMany(c, rkeys)
		return err
	})
	cancel()
	if rerr != nil {
		p.stats.redisErrors.Add(1)
		raws = make([][]byte, len(rkeys))
	}
	out := make([]T, len(keys))
	state := make([]lookup, len(keys))
	var missing []any
	for i, raw := range raws {
		state[i] = lookEmpty
		if raw != nil {
			state[i] = p.decodeInto(ctx, spec, rkeys[i], raw, reflect.ValueOf(&out[i]).Elem())
		}
		if (state[i] == lookHit || state[i] == lookNotFound) && p.suspects.is(rkeys[i]) {
			state[i] = lookBusy
		}
		if state[i] == lookHit || state[i] == lookNotFound {
			p.stats.hits.Add(1)
			continue
		}
		out[i] = zero
		missing = append(missing, keys[i])
	}
	found := map[string]T{}
	if len(missing) > 0 {
		var rows []T
		if err := db.WithContext(ctx).Scopes(Cached).Find(&rows, missing).Error; err != nil {
			return nil, err
		}
		for i := range rows {
			if k, ok := spec.keyOf(ctx, reflect.ValueOf(&rows[i]).Elem()); ok {
				found[k] = rows[i]
			}
		}
	}
	res := make([]T, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for i := range out {
		if seen[rkeys[i]] {
			continue
		}
		seen[rkeys[i]] = true
		switch state[i] {
		case lookHit:
			if err := afterFind(db, &out[i]); err != nil {
				return nil, err
			}
			res = append(res, out[i])
		case lookNotFound:
		default:
			if r, ok := found[rkeys[i]]; ok {
				res = append(res, r)
			}
		}
	}
	return res, nil
}

func fastSpec[T any](db *gorm.DB) (*Plugin, *modelSpec, error) {
	p, err := pluginOf(db)
	if err != nil {
		return nil, nil, err
	}
	t := reflect.TypeFor[T]()
	if t.Kind() != reflect.Struct {
		return nil, nil, fmt.Errorf("%w: Get needs a struct model type, not %s", ErrUnsupported, t)
	}
	spec, err := p.specFor(db, (*T)(nil))
	return p, spec, err
}

// fastKey resolves T's spec and the Redis key of key; ok is false when the
// fast path cannot answer (model not cached, key not understood).
func fastKey[T any](db *gorm.DB, key any) (*Plugin, *modelSpec, string, bool, error) {
	p, spec, err := fastSpec[T](db)
	if err != nil || spec == nil {
		return p, spec, "", false, err
	}
	if m, isModel := asModel[T](key); isModel {
		k, ok := spec.keyOf(context.Background(), reflect.ValueOf(&m).Elem())
		return p, spec, k, ok, nil
	}
	if len(spec.pks) != 1 {
		return p, spec, "", false, fmt.Errorf("%w: %s has a composite primary key; pass a %s with the key set", ErrUnsupported, spec.name, spec.name)
	}
	k, ok := spec.lookupKey1(key)
	return p, spec, k, ok, nil
}

func asModel[T any](key any) (T, bool) {
	switch m := key.(type) {
	case T:
		return m, true
	case *T:
		if m != nil {
			return *m, true
		}
	}
	var zero T
	return zero, false
}

func inTx(db *gorm.DB) bool {
	_, in := txOf(db.Statement.ConnPool)
	return in
}

func afterFind[T any](db *gorm.DB, v *T) error {
	if h, ok := any(v).(afterFinder); ok && !db.Statement.SkipHooks {
		return h.AfterFind(db.Session(&gorm.Session{NewDB: true}))
	}
	return nil
}
