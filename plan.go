package writethrough

import (
	"reflect"
	"regexp"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// Statement recognition: which reads the cache may answer. A statement is
// served (or filled) only when its complete condition says "the row whose
// key is K" (or "the rows whose keys are K1..Kn") and nothing else (planRead);
// Get and GetMany use Redis only for a db that carries nothing at all
// (servable).

// readPlan is a recognised primary-key lookup.
type readPlan struct {
	spec  *modelSpec
	keys  []string
	multi bool // destination is a slice
	desc  bool // several keys, ORDER BY the primary key DESC
}

// planSafe is planRead, with a panic in user code it runs (a key type's Value
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
	return planRead(db, spec)
}

// allowedClauses are the clauses a served statement may carry.
var allowedClauses = map[string]bool{"WHERE": true, "LIMIT": true, "ORDER BY": true}

// planRead recognises a lookup by primary key, before GORM builds any SQL. The
// rule: the statement is served (or filled) only when the complete condition
// GORM will send — its WHERE clause, the key GORM adds from a struct
// destination, and the model's soft-delete clause — says "the row whose key
// is K" (or, for a slice destination, "the rows whose keys are K1..Kn") and
// nothing else. Anything else runs as plain GORM and never fills.
func planRead(db *gorm.DB, spec *modelSpec) (readPlan, bool) {
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
	keys, ok := condKeys(st, spec, conds)
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
				if pkColumn(st, spec, m[1]) == nil {
					return readPlan{}, false
				}
				desc = strings.EqualFold(m[2], "desc")
			} else if c.Name != clause.PrimaryKey && pkColumn(st, spec, c) == nil {
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
func condKeys(st *gorm.Statement, spec *modelSpec, conds []clause.Expression) ([]string, bool) {
	if len(conds) == 0 {
		return nil, false
	}
	ctx := st.Context
	if len(spec.pks) > 1 {
		// Composite keys: one value per primary-key column, from equalities.
		vals := make([][]any, len(spec.pks))
		for _, e := range conds {
			f, vs, ok := pkCond(st, spec, e)
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
		_, vs, ok := pkCond(st, spec, e)
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
func pkCond(st *gorm.Statement, spec *modelSpec, e clause.Expression) (*schemaField, []any, bool) {
	var f *schemaField
	var vals []any
	switch x := e.(type) {
	case clause.IN:
		if f = pkColumn(st, spec, x.Column); f == nil {
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
		if f = pkColumn(st, spec, x.Column); f == nil {
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

// flattenAnd lists the conditions that exprs, ANDed, consist of.
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

// isList reports a slice or array value other than bytes: GORM binds it as
// a list.
func isList(v any) bool {
	rv := reflect.ValueOf(v)
	return rv.IsValid() && (rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array) &&
		rv.Type().Elem().Kind() != reflect.Uint8
}

// appendValues appends v, or the elements of a list v, to out.
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
func pkColumn(st *gorm.Statement, spec *modelSpec, col any) *schemaField {
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

// sameTable reports whether the statement writes the model's own table (not
// db.Table("other")).
func sameTable(db *gorm.DB, spec *modelSpec) bool {
	st := db.Statement
	return st.TableExpr == nil && (st.Table == "" || st.Table == spec.sch.Table)
}

// servable reports whether Get and GetMany may answer from Redis: db carries
// nothing that could change which row GORM returns or how it reads it, and
// no transaction. When in doubt (a GORM whose Statement has changed shape),
// it says no, and GORM's query answers.
func servable(db *gorm.DB) bool {
	st := db.Statement
	if db.Error != nil || db.DryRun || st == nil || inTx(db) {
		return false
	}
	if len(st.Clauses) != 0 || st.TableExpr != nil || st.Table != "" || st.Model != nil || st.Dest != nil ||
		st.Unscoped || st.Distinct || len(st.Selects) != 0 || len(st.Omits) != 0 || len(st.Joins) != 0 ||
		len(st.Preloads) != 0 || len(st.ColumnMapping) != 0 || st.SQL.Len() != 0 || len(st.Vars) != 0 {
		return false
	}
	settings := false
	st.Settings.Range(func(any, any) bool {
		settings = true
		return false
	})
	if settings {
		return false
	}
	// Scopes (db.Scopes(tenant)) and FirstOrInit's attributes are held in
	// unexported fields; their lengths are readable.
	if hiddenFields == nil {
		return false
	}
	rv := reflect.ValueOf(st).Elem()
	for _, i := range hiddenFields {
		if rv.Field(i).Len() != 0 {
			return false
		}
	}
	return true
}

// hiddenFields are the indexes of gorm.Statement's unexported slices that
// carry conditions; nil when this GORM lacks one of them (then no db is
// servable, and GORM's query answers).
var hiddenFields = func() []int {
	t := reflect.TypeFor[gorm.Statement]()
	var out []int
	for _, name := range [...]string{"scopes", "attrs", "assigns"} {
		f, ok := t.FieldByName(name)
		if !ok || f.Type.Kind() != reflect.Slice || len(f.Index) != 1 {
			return nil
		}
		out = append(out, f.Index[0])
	}
	return out
}()

// inTx reports whether db's statement runs in a transaction.
func inTx(db *gorm.DB) bool {
	_, in := txhook.Of(db.Statement.ConnPool)
	return in
}
