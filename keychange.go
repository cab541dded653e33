package writethrough

import (
	"fmt"
	"reflect"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// A write that assigns a primary-key column moves a row from one key to
// another: Model(&p).Update("sku", "NEW"), Updates(map{"id": 9}), Updates
// with a struct of another value, UpdateColumn(s), clause.Set. The old key
// must stop serving the row and the new key (which may hold a tombstone)
// must get it. So the plugin names both: the keys the statement's rows
// have before it runs and the keys they have after. Both are locked by the
// statement (the old key's index entry and the new one's), so the re-read
// may install the row under the new key and a tombstone under the old.
//
// A primary key assigned by an expression (gorm.Expr, a subquery, another
// column), or in a bulk statement whose rows are named only by RETURNING
// (which sees the new keys only), cannot name the old or the new keys: such
// writes are refused with ErrUnsupported. So is an upsert whose ON CONFLICT
// DO UPDATE assigns a primary-key column of the conflicting row.
//
// Save of a struct whose key was changed in memory moves nothing: GORM
// updates (or inserts) the row under the new key and leaves the old row as
// it was.

// keyAssignments returns the values an Update assigns to spec's primary-key
// columns, by index into spec.pks, following GORM's ConvertToAssignments
// (Select and Omit included). opaque is set when one of them is not a plain
// value.
func keyAssignments(st *gorm.Statement, spec *modelSpec) (vals map[int]any, opaque bool) {
	cols := make([]string, len(spec.pks))
	for i, f := range spec.pks {
		cols[i] = f.DBName
	}
	return assignments(st, cols)
}

// assignments returns the values an Update assigns to the given columns, by
// index into columns; opaque is set when one of them is not a plain value.
func assignments(st *gorm.Statement, columns []string) (vals map[int]any, opaque bool) {
	pkIndex := func(column string) int {
		for i, c := range columns {
			if c == column {
				return i
			}
		}
		return -1
	}
	add := func(i int, v any) {
		if vals == nil {
			vals = make(map[int]any, len(columns))
		}
		vals[i] = v
		if !plainValue(v) {
			opaque = true
		}
	}
	if c, ok := st.Clauses["SET"]; ok {
		set, ok := c.Expression.(clause.Set)
		if !ok {
			return nil, true // a SET the plugin cannot read
		}
		for _, a := range set {
			if i := pkIndex(a.Column.Name); i >= 0 {
				add(i, a.Value)
			}
		}
		return vals, opaque
	}
	selected, restricted := st.SelectAndOmitColumns(false, true)
	updating := reflect.ValueOf(st.Dest)
	for updating.Kind() == reflect.Pointer {
		updating = updating.Elem()
	}
	if !updating.IsValid() {
		return nil, false
	}
	switch m := updating.Interface().(type) {
	case map[string]any:
		for k, v := range m {
			column := k
			if st.Schema != nil {
				if f := st.Schema.LookUpField(k); f != nil {
					column = f.DBName
				}
			}
			i := pkIndex(column)
			if i < 0 {
				continue
			}
			if s, ok := selected[column]; (ok && s) || (!ok && !restricted) {
				add(i, v)
			}
		}
		return vals, opaque
	}
	if updating.Kind() != reflect.Struct || st.Schema == nil || (updating.CanAddr() && sameValue(st.Dest, st.Model)) {
		return nil, false // Save, Updates(&model): the key is the WHERE, not the SET
	}
	sch := st.Schema
	other := &gorm.Statement{DB: st.DB}
	if err := other.Parse(st.Dest); err == nil {
		sch = other.Schema
	}
	for i, column := range columns {
		if _, ok := st.Schema.FieldsByDBName[column]; !ok {
			continue
		}
		f := sch.LookUpField(column)
		if f == nil || !f.Updatable {
			continue
		}
		s, ok := selected[f.DBName]
		if !((ok && s) || (!ok && !restricted)) {
			continue
		}
		v, zero := f.ValueOf(st.Context, updating)
		if ok || !zero {
			add(i, v)
		}
	}
	return vals, opaque
}

// plainValue reports whether v is a value rather than SQL.
func plainValue(v any) bool {
	switch v.(type) {
	case clause.Expression, *gorm.DB, clause.Column, *clause.Column:
		return false
	}
	return true
}

// movedTargets returns, for each row an Update names before it runs, the
// key the row will have after it, when the Update assigns a primary-key
// column; and an error wrapping ErrUnsupported when those keys cannot be
// named. The targets passed in are the keys before the statement.
func movedTargets(db *gorm.DB, spec *modelSpec, before []target) ([]target, error) {
	st := db.Statement
	vals, opaque := keyAssignments(st, spec)
	if len(vals) == 0 {
		return nil, nil
	}
	if opaque {
		return nil, fmt.Errorf("%w: update of cached model %s assigns its primary key an SQL expression, so the row's new key cannot be named; assign a value",
			ErrUnsupported, spec.name)
	}
	if len(before) == 0 {
		return nil, fmt.Errorf("%w: bulk update of cached model %s assigns its primary key, so the rows' old keys cannot be named; update the rows by primary key (Model(&row).Update)",
			ErrUnsupported, spec.name)
	}
	out := make([]target, 0, len(before))
	for _, b := range before {
		pk := append([]any(nil), b.pk...)
		for i, v := range vals {
			n, ok := spec.keys.Normalize(st.Context, spec.pks[i], v)
			if !ok {
				return nil, fmt.Errorf("%w: update of cached model %s assigns %s the value %v, which is not a key",
					ErrUnsupported, spec.name, spec.pks[i].Name, v)
			}
			pk[i] = n
		}
		out = append(out, target{key: spec.keys.Key(pk), pk: pk})
	}
	return out, nil
}

// upsertMovesKey reports an ON CONFLICT DO UPDATE that assigns a primary-key
// column of the conflicting row a new value.
func upsertMovesKey(st *gorm.Statement, spec *modelSpec) error {
	c, ok := st.Clauses["ON CONFLICT"]
	if !ok {
		return nil
	}
	oc, _ := c.Expression.(clause.OnConflict)
	onKey := len(oc.Columns) == 0 || len(oc.Columns) == len(spec.pks)
	for _, col := range oc.Columns {
		found := false
		for _, f := range spec.pks {
			found = found || f.DBName == col.Name
		}
		onKey = onKey && found
	}
	for _, a := range oc.DoUpdates {
		for _, f := range spec.pks {
			if a.Column.Name != f.DBName {
				continue
			}
			if ex, ok := a.Value.(clause.Column); ok && onKey && ex.Table == "excluded" && ex.Name == f.DBName {
				continue // the conflict is on the key: it keeps its value
			}
			return fmt.Errorf("%w: upsert of cached model %s assigns its primary key %s on conflict, so the conflicting row's old key cannot be named",
				ErrUnsupported, spec.name, f.DBName)
		}
	}
	return nil
}

// namedRows counts the targets that name a row (not the key a moved row
// had before the statement).
func namedRows(ts []target) int {
	n := 0
	for _, t := range ts {
		if !t.moved {
			n++
		}
	}
	return n
}
