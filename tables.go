package writethrough

import (
	"database/sql"
	"fmt"
	"reflect"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// Writes name a table, not always a model: db.Table("accounts") with a map,
// Model(&Account{}).Table("public.accounts"), Table("accounts AS a"), a
// struct of another type whose table is a cached model's. The plugin keeps
// an index from relation names to the cached models it has built a spec
// for (Config.Models, and every model a statement or Get used), and maps
// the table a write names onto that index. A write to a table whose model
// this process has never seen cannot be mapped: list such models in
// Config.Models.

// tableRef is a table as a statement or a model names it.
type tableRef struct {
	schema, rel string
}

func (r tableRef) String() string {
	if r.schema == "" {
		return r.rel
	}
	return r.schema + "." + r.rel
}

// quoted spells r for SQL, each part quoted.
func (r tableRef) quoted() string {
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	if r.schema == "" {
		return q(r.rel)
	}
	return q(r.schema) + "." + q(r.rel)
}

// parseTableName parses a table name as SQL text: "rel", "schema.rel",
// either part quoted ("..." or `...`), optionally followed by an alias
// ("x AS a", "x a"). Unquoted parts are folded to lower case when fold is
// set (PostgreSQL's rule for SQL text); GORM quotes the names it takes from
// a model or from Table("name") without spaces, so those keep their case.
func parseTableName(s string, fold bool) (tableRef, bool) {
	s = strings.TrimSpace(s)
	var parts []string
	i := 0
	for {
		if i >= len(s) {
			return tableRef{}, false
		}
		var part string
		switch c := s[i]; c {
		case '"', '`':
			j := i + 1
			var b strings.Builder
			for {
				k := strings.IndexByte(s[j:], c)
				if k < 0 {
					return tableRef{}, false
				}
				b.WriteString(s[j : j+k])
				j += k + 1
				if j < len(s) && s[j] == c { // doubled quote
					b.WriteByte(c)
					j++
					continue
				}
				break
			}
			part, i = b.String(), j
		default:
			j := i
			for j < len(s) && s[j] != '.' && s[j] != ' ' && s[j] != '\t' && s[j] != '\n' {
				j++
			}
			part, i = s[i:j], j
			if fold {
				part = strings.ToLower(part)
			}
		}
		if part == "" {
			return tableRef{}, false
		}
		parts = append(parts, part)
		if i < len(s) && s[i] == '.' {
			i++
			continue
		}
		break
	}
	rest := strings.Fields(s[i:])
	switch {
	case len(rest) == 0:
	case len(rest) == 1 && isIdent(rest[0]):
	case len(rest) == 2 && strings.EqualFold(rest[0], "AS") && isIdent(rest[1]):
	default:
		return tableRef{}, false // a join, a subquery, a list of tables
	}
	switch len(parts) {
	case 1:
		return tableRef{rel: parts[0]}, true
	case 2:
		return tableRef{schema: parts[0], rel: parts[1]}, true
	}
	return tableRef{}, false
}

func isIdent(s string) bool {
	for i, c := range s {
		if c != '_' && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && !(i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// indexTable records a cached model's table, so that writes naming the
// table can be mapped to the model.
func (p *Plugin) indexTable(spec *modelSpec) {
	ref, ok := parseTableName(spec.sch.Table, false)
	if !ok {
		ref = tableRef{rel: spec.sch.Table}
	}
	p.tablesMu.Lock()
	defer p.tablesMu.Unlock()
	if p.tables == nil {
		p.tables = make(map[string][]*modelSpec)
	}
	for _, s := range p.tables[ref.rel] {
		if s == spec {
			return
		}
	}
	p.tables[ref.rel] = append(p.tables[ref.rel], spec)
}

func (p *Plugin) specsOfRel(rel string) []*modelSpec {
	p.tablesMu.Lock()
	defer p.tablesMu.Unlock()
	return append([]*modelSpec(nil), p.tables[rel]...)
}

// writtenTable returns the table a write statement names.
func writtenTable(st *gorm.Statement) (tableRef, bool) {
	switch {
	case st.TableExpr != nil:
		if len(st.TableExpr.Vars) > 0 {
			return tableRef{}, false
		}
		return parseTableName(st.TableExpr.SQL, true)
	case st.Table != "":
		return parseTableName(st.Table, false)
	case st.Schema != nil:
		return parseTableName(st.Schema.Table, false)
	}
	return tableRef{}, false
}

// writtenSpec returns the cached model whose table the write names: the
// statement's own model (own is its spec) in the usual case, another cached
// model when the statement names that model's table (db.Table("accounts")
// with a map, a struct of another type), nil when the table is not a cached
// model's. shared lists the other cached models on the same table (two
// structs on one table): the rows the write names are invalidated under
// their keys too. It fails with ErrUnsupported when it cannot tell.
func (p *Plugin) writtenSpec(db *gorm.DB, own *modelSpec) (spec *modelSpec, shared []*modelSpec, err error) {
	st := db.Statement
	if own != nil && st.TableExpr == nil && (st.Table == "" || st.Table == own.sch.Table) {
		ref, ok := parseTableName(own.sch.Table, false)
		if !ok {
			return own, nil, nil
		}
		shared, err := p.sharers(db, ref, own)
		return own, shared, err
	}
	if st.SQL.Len() > 0 {
		return nil, nil, nil // Raw and Exec SQL: out of scope (Invalidate, CDC)
	}
	ref, ok := writtenTable(st)
	if !ok {
		if st.TableExpr == nil {
			return own, nil, nil
		}
		if own != nil || p.anyTableIn(st.TableExpr.SQL) {
			return nil, nil, fmt.Errorf("%w: write to table expression %q, which may be cached model's table; write to the model's table by name",
				ErrUnsupported, st.TableExpr.SQL)
		}
		return nil, nil, nil
	}
	all, err := p.sharers(db, ref, nil)
	if err != nil || len(all) == 0 {
		return nil, nil, err
	}
	for i, c := range all {
		if c == own {
			// The statement's own model, on a table spelled otherwise.
			all[0], all[i] = all[i], all[0]
		}
	}
	return all[0], all[1:], nil
}

// sharers returns the cached models whose table ref names, except but.
func (p *Plugin) sharers(db *gorm.DB, ref tableRef, but *modelSpec) ([]*modelSpec, error) {
	var out []*modelSpec
	for _, c := range p.specsOfRel(ref.rel) {
		if c == but {
			continue
		}
		same, err := sameTableRef(db, ref, c)
		if err != nil {
			return nil, err
		}
		if same {
			out = append(out, c)
		}
	}
	return out, nil
}

// anyTableIn reports whether expr mentions the relation name of a cached
// model (a crude test, to refuse only table expressions that might write one).
func (p *Plugin) anyTableIn(expr string) bool {
	p.tablesMu.Lock()
	defer p.tablesMu.Unlock()
	low := strings.ToLower(expr)
	for rel := range p.tables {
		if strings.Contains(low, strings.ToLower(rel)) {
			return true
		}
	}
	return false
}

// sameTableRef tells whether ref names spec's table. Two unqualified names,
// or two names qualified by the same schema, are compared as text. Otherwise
// PostgreSQL resolves both on the statement's own connection, under its
// search_path; other dialects cannot tell, and the write is refused.
func sameTableRef(db *gorm.DB, ref tableRef, spec *modelSpec) (bool, error) {
	mref, ok := parseTableName(spec.sch.Table, false)
	if !ok {
		mref = tableRef{rel: spec.sch.Table}
	}
	if ref.rel != mref.rel {
		return false, nil
	}
	if ref.schema == mref.schema {
		return true, nil
	}
	if db.Dialector.Name() != "postgres" {
		return false, fmt.Errorf("%w: cannot tell whether table %s is the table %s of cached model %s on %s; write through the model",
			ErrUnsupported, ref, mref, spec.name, db.Dialector.Name())
	}
	var same sql.NullBool
	err := ownQuery(db).
		Raw("SELECT to_regclass(?)::oid = to_regclass(?)::oid", ref.quoted(), mref.quoted()).
		Scan(&same).Error
	if err != nil {
		return false, fmt.Errorf("writethrough: resolve table %s: %w", ref, err)
	}
	return same.Valid && same.Bool, nil
}

// fieldsByColumn maps spec's primary-key columns onto the fields of another
// struct type's schema (a struct written into the cached model's table).
func fieldsByColumn(spec *modelSpec, sch *schema.Schema) []*schema.Field {
	out := make([]*schema.Field, len(spec.pks))
	for i, f := range spec.pks {
		g := sch.LookUpField(f.DBName)
		if g == nil || g.DBName != f.DBName {
			return nil
		}
		out[i] = g
	}
	return out
}

// foreignType reports whether the statement's rows are not spec's model
// type: a map, or a struct of another type.
func foreignType(st *gorm.Statement, spec *modelSpec) bool {
	return st.Schema == nil || st.Schema.ModelType != spec.sch.ModelType
}

// createNamesRows tells whether a Create of maps (db.Table("accounts").Create(map...),
// Model(&Account{}).Create([]map...)) leaves out the primary key of some
// row: GORM returns no generated key into such maps (or, for a slice of
// maps, none at all), so the new rows' keys, which may hold a "not found"
// entry, are learnt from RETURNING (returning.go) instead.
func createNamesRows(st *gorm.Statement, targets []target) bool {
	rv := st.ReflectValue
	for rv.IsValid() && (rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface) && !rv.IsNil() {
		rv = rv.Elem()
	}
	if !rv.IsValid() {
		return true
	}
	rows := 1
	elem := rv.Type()
	if rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array {
		rows = rv.Len()
		elem = elem.Elem()
	}
	for elem.Kind() == reflect.Pointer || elem.Kind() == reflect.Interface {
		if elem.Kind() == reflect.Interface {
			return len(targets) >= rows // cannot tell: count what was named
		}
		elem = elem.Elem()
	}
	if elem.Kind() != reflect.Map {
		return true // structs: GORM returns the generated keys into them
	}
	return len(targets) >= rows
}
