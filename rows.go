package writethrough

import (
	"context"
	"reflect"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// The rows the plugin names and reads on its own account: the keys of the
// rows a value holds (targets), the conditions it puts on primary keys, and
// its own SQL, which reads rows by key on the statement's connection
// (ownQuery, rowsByKey). Writes, Invalidate, canonical keys, cascades and
// Get share them.

// target is one row a statement wrote, or that Invalidate was given.
type target struct {
	key    string
	pk     []any
	intent entry.Flags // entry.FlagHasRow, entry.FlagDelete, or 0 (invalidate only)
	row    []byte      // encoded row for entry.FlagHasRow
	moved  bool        // the key the row had before its primary key was assigned
}

// targetsIn returns the rows in rv (a model struct, a map of columns, or a
// slice or array of them) whose primary key is set, with their keys.
func targetsIn(ctx context.Context, spec *modelSpec, rv reflect.Value) []target {
	return targetsInAs(ctx, spec, nil, rv)
}

// targetsInAs is targetsIn for rows that may be structs of other's type.
func targetsInAs(ctx context.Context, spec *modelSpec, other *schema.Schema, rv reflect.Value) []target {
	for rv.IsValid() && (rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface) {
		if rv.IsNil() {
			return nil
		}
		rv = rv.Elem()
	}
	if !rv.IsValid() {
		return nil
	}
	var out []target
	add := func(v reflect.Value) {
		for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
			if v.IsNil() {
				return
			}
			v = v.Elem()
		}
		switch {
		case v.Kind() == reflect.Struct && v.Type() == spec.sch.ModelType:
			pk := make([]any, len(spec.pks))
			for i, f := range spec.pks {
				val, zero := f.ValueOf(ctx, v)
				if zero {
					return
				}
				pk[i] = val
			}
			out = append(out, target{key: spec.keys.Key(pk), pk: pk})
		case v.Kind() == reflect.Struct && other != nil && v.Type() == other.ModelType:
			// A struct of another type written into the model's table:
			// its key columns, converted as GORM converts them.
			fields := fieldsByColumn(spec, other)
			if fields == nil {
				return
			}
			pk := make([]any, len(spec.pks))
			for i, f := range fields {
				val, zero := f.ValueOf(ctx, v)
				if zero {
					return
				}
				n, ok := spec.keys.Normalize(ctx, spec.pks[i], val)
				if !ok {
					return
				}
				pk[i] = n
			}
			out = append(out, target{key: spec.keys.Key(pk), pk: pk})
		case v.Kind() == reflect.Map && v.Type().Key().Kind() == reflect.String:
			pk := make([]any, len(spec.pks))
			for i, f := range spec.pks {
				mv := v.MapIndex(reflect.ValueOf(f.DBName).Convert(v.Type().Key()))
				if !mv.IsValid() {
					mv = v.MapIndex(reflect.ValueOf(f.Name).Convert(v.Type().Key()))
				}
				if !mv.IsValid() {
					return
				}
				n, ok := spec.keys.Normalize(ctx, f, mv.Interface())
				if !ok {
					return
				}
				pk[i] = n
			}
			out = append(out, target{key: spec.keys.Key(pk), pk: pk})
		}
	}
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		for i := 0; i < rv.Len(); i++ {
			add(rv.Index(i))
		}
	default:
		add(rv)
	}
	return out
}

// ownQuery starts one of the plugin's own statements on db's connection
// (inside its transaction, when there is one): hooks skipped, never sent to
// a read replica, never served from the cache.
func ownQuery(db *gorm.DB) *gorm.DB {
	return db.Session(&gorm.Session{NewDB: true, SkipHooks: true}).
		Set("gorm:db_resolver:write", struct{}{}).Set(uncachedKey, true).Set(ownKey, true)
}

// rowsByKey reads the rows that targets name, soft-deleted ones included,
// into a new *[]Model: every column, or only the key columns when keysOnly.
func rowsByKey(db *gorm.DB, spec *modelSpec, targets []target, keysOnly bool) (reflect.Value, error) {
	pks := make([][]any, len(targets))
	for i, t := range targets {
		pks[i] = t.pk
	}
	names := make([]string, len(spec.pks))
	for i, f := range spec.pks {
		names[i] = f.DBName
	}
	col, vals := schemaToQueryValues(spec.sch.Table, names, pks)
	rows := reflect.New(reflect.SliceOf(spec.sch.ModelType))
	q := ownQuery(db).Unscoped()
	if keysOnly {
		q = q.Select(names)
	}
	return rows, q.Where(clause.IN{Column: col, Values: vals}).Find(rows.Interface()).Error
}

// schemaToQueryValues is schema.ToQueryValues with the column tied to the
// current table.
func schemaToQueryValues(table string, names []string, pks [][]any) (any, []any) {
	vals := make([]any, len(pks))
	if len(names) == 1 {
		for i, r := range pks {
			vals[i] = r[0]
		}
		return clause.Column{Table: table, Name: names[0]}, vals
	}
	cols := make([]clause.Column, len(names))
	for i, n := range names {
		cols[i] = clause.Column{Table: table, Name: n}
	}
	for i, r := range pks {
		vals[i] = r
	}
	return cols, vals
}

// pkEq is the condition "primary key = vals", bound as parameters.
func pkEq(s *modelSpec, vals []any) clause.Expression {
	exprs := make([]clause.Expression, len(s.pks))
	for i, f := range s.pks {
		exprs[i] = clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: f.DBName}, Value: vals[i]}
	}
	return clause.And(exprs...)
}

// pkIn is the condition "primary key IN rows", bound as parameters.
func pkIn(s *modelSpec, rows [][]any) clause.Expression {
	if len(s.pks) == 1 {
		vals := make([]any, len(rows))
		for i, r := range rows {
			vals[i] = r[0]
		}
		return clause.IN{Column: clause.Column{Table: clause.CurrentTable, Name: s.pks[0].DBName}, Values: vals}
	}
	ors := make([]clause.Expression, len(rows))
	for i, r := range rows {
		ors[i] = pkEq(s, r)
	}
	return clause.Or(ors...)
}
