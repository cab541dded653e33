package writethrough

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/rowbuf"
)

// A bulk Update or Delete (no primary key in its model) names its rows only
// in the database. The plugin learns them from RETURNING without changing
// what GORM and the application see: for the statement's duration its
// ConnPool is a returningPool, which recognizes the statement's own SQL and
// adds the key columns to it.
//
//   - GORM runs the statement with ExecContext (no RETURNING clause of the
//     caller's): the pool runs it with "RETURNING <keys>" as a query, keeps
//     the keys, and answers GORM with the rows-affected result the driver
//     gives for an UPDATE or DELETE (one returned row per affected row).
//   - GORM runs it with QueryContext (the caller's own RETURNING): the pool
//     appends the key columns under private aliases, reads every row, keeps
//     the keys and hands GORM a *sql.Rows over the caller's columns only,
//     with the driver's values and column types.
//
// GORM's Statement (ReflectValue, Dest, clauses), its RowsAffected, the
// caller's hooks and what a RETURNING caller receives are those of plain
// GORM. docs/design.md, "Bulk statements", says why this and not the others.

// returningPool is the statement's ConnPool while a statement whose rows
// the plugin reads back from RETURNING runs.
type returningPool struct {
	gorm.ConnPool
	db   *gorm.DB // the statement's session, for its configuration
	st   *gorm.Statement
	spec *modelSpec
	// full captures every column of the written rows (the row to cache),
	// not only their keys (returnsRows decides).
	full bool

	ran bool // the statement itself went through the pool
	// hidden says that, when the statement ran, something could change its
	// rows after it (the guard column): they are re-read.
	hidden bool
	// rows holds one model value per affected row: every column with full,
	// the keys only otherwise (or when fullErr is set).
	rows []reflect.Value
	// fullErr is why, with full, the rows could not be read into models
	// (a column's Scan method failed): their keys were kept, and the rows
	// are re-read as on a dialect without RETURNING.
	fullErr error
}

// keyAlias names the i-th key column appended to a caller's RETURNING list.
func keyAlias(i int) string { return fmt.Sprintf("__writethrough_key_%d", i) }

// rowMarker names the column that separates a caller's RETURNING columns
// from the row the plugin appends after them.
const rowMarker = "__writethrough_row"

// keyColumns renders the primary-key columns qualified by the statement's
// table (UPDATE ... FROM and DELETE ... USING may name other tables with
// the same column names), optionally under the private aliases.
func (r *returningPool) keyColumns(aliased bool) string {
	var b strings.Builder
	for i, f := range r.spec.pks {
		if i > 0 {
			b.WriteByte(',')
		}
		c := clause.Column{Table: clause.CurrentTable, Name: f.DBName}
		if r.st.Table == "" {
			// db.Table(`"t" a`): GORM finds no name to qualify with.
			c.Table = ""
		}
		if aliased {
			c.Alias = keyAlias(i)
		}
		r.st.QuoteTo(&b, c)
	}
	return b.String()
}

// star renders every column of the statement's table, qualified by it
// (its alias, when Table names one): "accounts".*.
func (r *returningPool) star() string {
	var b strings.Builder
	r.st.QuoteTo(&b, clause.Column{Table: clause.CurrentTable, Name: "x"})
	var x strings.Builder
	r.st.QuoteTo(&x, clause.Column{Name: "x"})
	return strings.TrimSuffix(b.String(), x.String()) + "*"
}

// rowColumns renders what the plugin appends to RETURNING for a written
// row: the table's columns and the guard, after a marker column when the
// caller's own columns come first. It is built once per model and table
// name.
func (r *returningPool) rowColumns(marked bool) string {
	key := r.st.Table
	if marked {
		key = "\x00" + key
	}
	if v, ok := r.spec.returningSQL.Load(key); ok {
		return v.(string)
	}
	var b strings.Builder
	if marked {
		b.WriteString("NULL AS ")
		r.st.QuoteTo(&b, rowMarker)
		b.WriteByte(',')
	}
	b.WriteString(r.star())
	b.WriteByte(',')
	b.WriteString(r.guard())
	sql := b.String()
	r.spec.returningSQL.Store(key, sql)
	return sql
}

// mine reports whether query is the statement's own (and not a statement a
// hook or an association runs on the same pool), once.
func (r *returningPool) mine(query string) bool {
	if r.ran || r.st.SQL.Len() == 0 || query != r.st.SQL.String() {
		return false
	}
	r.ran = true
	return true
}

// ExecContext implements gorm.ConnPool.
func (r *returningPool) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if !r.mine(query) {
		return r.ConnPool.ExecContext(ctx, query, args...)
	}
	ret := r.keyColumns(false)
	if r.full {
		ret = r.rowColumns(false)
	}
	rows, err := r.ConnPool.QueryContext(ctx, query+" RETURNING "+ret, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var n int
	if r.full {
		n, err = r.scanModels(ctx, rows)
	} else {
		n, err = r.scanKeys(ctx, rows)
	}
	if err != nil {
		return nil, err
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	// What the PostgreSQL drivers answer for an UPDATE, a DELETE or an
	// INSERT: one returned row per affected row.
	return driver.RowsAffected(n), nil
}

// QueryContext implements gorm.ConnPool.
func (r *returningPool) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if !r.mine(query) {
		return r.ConnPool.QueryContext(ctx, query, args...)
	}
	extra := r.keyColumns(true)
	if r.full {
		extra = r.rowColumns(true)
	}
	rows, err := r.ConnPool.QueryContext(ctx, query+","+extra, args...)
	if err != nil {
		return nil, err
	}
	buf, err := readAll(rows)
	if err != nil {
		return nil, err
	}
	// The caller's columns come first, then the plugin's.
	user := len(buf.Columns) - len(r.spec.pks)
	if r.full {
		user = -1
		for i := len(buf.Columns) - 1; i >= 0; i-- {
			if buf.Columns[i].Name == rowMarker {
				user = i
				break
			}
		}
	}
	if user < 0 {
		return nil, fmt.Errorf("writethrough: RETURNING gave %d columns without the %d the plugin added", len(buf.Columns), len(r.spec.pks))
	}
	skip := user
	if r.full {
		skip++ // the marker
	}
	mine := &rowbuf.Buffer{Columns: buf.Columns[skip:], Values: make([][]driver.Value, len(buf.Values))}
	theirs := &rowbuf.Buffer{Columns: buf.Columns[:user], Values: make([][]driver.Value, len(buf.Values))}
	for i, row := range buf.Values {
		theirs.Values[i], mine.Values[i] = row[:user], row[skip:]
	}
	rows, err = mine.Rows(ctx)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	if r.full {
		_, err = r.scanModels(ctx, rows)
	} else {
		_, err = r.scanKeys(ctx, rows)
	}
	if err != nil {
		return nil, err
	}
	return theirs.Rows(ctx)
}

// readAll reads every row of rows as the driver gave it, and closes rows.
func readAll(rows *sql.Rows) (*rowbuf.Buffer, error) {
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, err
	}
	buf := &rowbuf.Buffer{Columns: rowbuf.ColumnsOf(types)}
	n := len(types)
	for rows.Next() {
		vals := make([]any, n)
		dest := make([]any, n)
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		row := make([]driver.Value, n)
		for i, v := range vals {
			row[i] = v
		}
		buf.Values = append(buf.Values, row)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return buf, rows.Close()
}

// scanModels reads every row of rows into a model value the way GORM's
// own Find scans a SELECT * (columns matched to fields by name, serializers
// and Scan methods applied), without running hooks, and returns how many
// rows there were. A row GORM cannot scan (a Scan method's error) still
// gives its keys; fullErr says why its rows are re-read. A panic in a Scan
// method is an error: the statement's rows cannot be named.
func (r *returningPool) scanModels(ctx context.Context, rows *sql.Rows) (n int, err error) {
	defer func() {
		if p := recover(); p != nil {
			n, err = 0, fmt.Errorf("writethrough: read the rows the statement returned: %w", newPanicError("scan a returned row", p))
		}
	}()
	list := reflect.New(reflect.SliceOf(r.spec.sch.ModelType))
	sdb := &gorm.DB{Config: r.db.Config}
	sdb.Statement = &gorm.Statement{DB: sdb, Context: ctx, Schema: r.spec.sch, Dest: list.Interface(), ReflectValue: list.Elem()}
	g := &guardRows{Rows: rows}
	gorm.Scan(g, sdb, 0)
	if g.err != nil {
		return 0, g.err
	}
	r.hidden = r.hidden || g.hidden
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if sdb.Error != nil {
		r.fullErr = sdb.Error
	}
	l := list.Elem()
	for i := 0; i < l.Len(); i++ {
		r.rows = append(r.rows, l.Index(i))
	}
	return l.Len(), nil
}

// guardRows hides the last column of rows (the guard) from GORM's scan and
// reads it on the side.
type guardRows struct {
	*sql.Rows
	hidden bool
	err    error // the columns could not be listed
}

func (g *guardRows) Columns() ([]string, error) {
	cols, err := g.Rows.Columns()
	if err != nil || len(cols) == 0 {
		g.err = fmt.Errorf("writethrough: RETURNING gave no guard column: %w", err)
		return nil, g.err
	}
	return cols[:len(cols)-1], nil
}

func (g *guardRows) ColumnTypes() ([]*sql.ColumnType, error) {
	types, err := g.Rows.ColumnTypes()
	if err != nil || len(types) == 0 {
		return nil, err
	}
	return types[:len(types)-1], nil
}

func (g *guardRows) Scan(dest ...any) error {
	var h sql.NullBool
	err := g.Rows.Scan(append(dest, &h)...)
	if h.Bool {
		g.hidden = true
	}
	return err
}

// guard renders the column the plugin appends after a written row: true
// when, at the statement's own snapshot (taken after it locked the table,
// so no trigger can be created until it ends), something may change the
// table's rows after the statement writes them.
func (r *returningPool) guard() string {
	var b strings.Builder
	r.st.QuoteTo(&b, r.spec.sch.Table)
	lit := "'" + strings.ReplaceAll(b.String(), "'", "''") + "'"
	var out strings.Builder
	out.WriteString("(")
	out.WriteString(strings.Replace(hiddenWritersSQL, "$1", lit, 1))
	out.WriteString(") AS ")
	r.st.QuoteTo(&out, guardColumn)
	return out.String()
}

// guardColumn names the guard column (guard).
const guardColumn = "__writethrough_hidden"

// scanKeys reads the key columns (the only columns of rows) of every row
// into model values and returns how many rows there were.
func (r *returningPool) scanKeys(ctx context.Context, rows *sql.Rows) (int, error) {
	n := 0
	k := len(r.spec.pks)
	for rows.Next() {
		elem := reflect.New(r.spec.sch.ModelType).Elem()
		dest := make([]any, k)
		for i, f := range r.spec.pks {
			dest[i] = f.ReflectValueOf(ctx, elem).Addr().Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return 0, err
		}
		r.rows = append(r.rows, elem)
		n++
	}
	return n, rows.Err()
}

// captured lists the pool's captured rows as a reflect slice of models.
func (r *returningPool) captured() reflect.Value {
	out := reflect.MakeSlice(reflect.SliceOf(r.spec.sch.ModelType), 0, len(r.rows))
	for _, e := range r.rows {
		out = reflect.Append(out, e)
	}
	return out
}

// installReturning puts a returningPool in the statement's place, or
// refuses the statement when the dialect cannot return its rows.
func installReturning(db *gorm.DB, spec *modelSpec, kind writeKind, full bool) (*returningPool, error) {
	var clauses []string
	switch kind {
	case kindCreate:
		clauses = db.Callback().Create().Clauses
	case kindUpdate:
		clauses = db.Callback().Update().Clauses
	default:
		clauses = db.Callback().Delete().Clauses
	}
	if !containsString(clauses, "RETURNING") {
		if kind == kindCreate {
			return nil, fmt.Errorf("%w: create into table %s of cached model %s without its primary key %s needs RETURNING, which the %s dialect lacks; set the key or create through the model",
				ErrUnsupported, spec.sch.Table, spec.name, spec.pks[0].DBName, db.Dialector.Name())
		}
		return nil, fmt.Errorf("%w: bulk %s of cached model %s needs RETURNING, which the %s dialect lacks; name the rows by primary key",
			ErrUnsupported, kind, spec.name, db.Dialector.Name())
	}
	r := &returningPool{ConnPool: db.Statement.ConnPool, db: db, st: db.Statement, spec: spec, full: full}
	db.Statement.ConnPool = r
	return r, nil
}

// restoreReturning gives the statement its own ConnPool back as soon as
// the statement has run, before associations, hooks and commit look at it.
func restoreReturning(db *gorm.DB) {
	if r, ok := db.Statement.ConnPool.(*returningPool); ok && r.st == db.Statement {
		db.Statement.ConnPool = r.ConnPool
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A row that RETURNING gives is the row as the statement wrote it: BEFORE
// triggers included, but not what runs after it (AFTER triggers, deferred
// constraint triggers, rules, foreign-key actions of the table on itself)
// nor what a partition's own triggers do. The plugin takes the row from
// RETURNING only where the catalog shows none of those (read at most once
// per returnCheckAge per model), and every such statement also returns the
// same check at its own snapshot (the guard column), so that a trigger
// created since is caught by the first write it affects (docs/design.md,
// "The row a write caches").

// returnCheckAge is how long a table's catalog check is trusted.
const returnCheckAge = time.Minute

// returnCheck caches, per model, whether its table's RETURNING rows are
// the stored rows. Writes read it without a lock; mu serialises the
// catalog reads.
type returnCheck struct {
	ok atomic.Bool
	at atomic.Int64 // UnixNano of the last catalog read; 0: never, or forgotten
	mu sync.Mutex
}

// fresh reports the cached answer if it is younger than returnCheckAge.
func (c *returnCheck) fresh() (ok, fresh bool) {
	at := c.at.Load()
	if at == 0 || time.Since(time.Unix(0, at)) >= returnCheckAge {
		return false, false
	}
	return c.ok.Load(), true
}

// forget makes the next write read the catalog again.
func (c *returnCheck) forget() { c.at.Store(0) }

// hiddenWritersSQL is true when something may change a row of table $1
// after an UPDATE or INSERT wrote it, or when the table cannot be found.
const hiddenWritersSQL = `SELECT c.oid IS NULL
 OR EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = c.oid AND (r.relkind <> 'r' OR r.relhassubclass))
 OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgtype & 2 = 0)
 OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN')
 OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.conrelid = c.oid AND f.confrelid = c.oid
   AND (f.confupdtype NOT IN ('a', 'r') OR f.confdeltype NOT IN ('a', 'r')))
FROM (SELECT to_regclass($1) AS oid) c`

// returnsRows reports whether a write of kind to spec's table takes its
// rows from RETURNING instead of re-reading them.
func (p *Plugin) returnsRows(db *gorm.DB, spec *modelSpec, kind writeKind) bool {
	if kind == kindDelete || spec.aside || p.cfg.RereadWrites || db.Statement.Table == "" ||
		db.Dialector.Name() != "postgres" {
		return false
	}
	// What runs after the statement and before the plugin's after
	// callback may change the rows again in ways RETURNING cannot show (a
	// child's trigger that updates its parent's total, a hook's raw SQL):
	// the old re-read, placed after it, sees them.
	if sch := db.Statement.Schema; sch != nil && sch == spec.sch {
		if sch.AfterSave || (kind == kindCreate && sch.AfterCreate) || (kind == kindUpdate && sch.AfterUpdate) {
			return false
		}
		if savesAfter(db.Statement) {
			return false
		}
	}
	clauses := db.Callback().Update().Clauses
	if kind == kindCreate {
		clauses = db.Callback().Create().Clauses
	}
	if !containsString(clauses, "RETURNING") {
		return false
	}
	c := &spec.returning
	if ok, fresh := c.fresh(); fresh {
		return ok
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok, fresh := c.fresh(); fresh {
		return ok // another write read the catalog meanwhile
	}
	var hidden bool
	err := ownQuery(db).Raw(hiddenWritersSQL, db.Statement.Quote(spec.sch.Table)).Row().Scan(&hidden)
	if err != nil {
		p.logf("writethrough: reading the table's triggers failed; its writes re-read their rows", "table", spec.sch.Table, "err", err)
		return false
	}
	c.ok.Store(!hidden)
	c.at.Store(time.Now().UnixNano())
	return !hidden
}

// savesAfter reports whether GORM may save has-one, has-many or
// many-to-many associations of the statement's value after the statement:
// one of those fields holds something in a row it writes.
func savesAfter(st *gorm.Statement) bool {
	rels := &st.Schema.Relationships
	if len(rels.HasOne)+len(rels.HasMany)+len(rels.Many2Many) == 0 {
		return false
	}
	rv := reflect.Indirect(st.ReflectValue)
	if !rv.IsValid() || rv.Kind() == reflect.Map {
		return false
	}
	check := func(row reflect.Value) bool {
		row = reflect.Indirect(row)
		if row.Kind() != reflect.Struct || row.Type() != st.Schema.ModelType {
			return false
		}
		for _, group := range [][]*schema.Relationship{rels.HasOne, rels.HasMany, rels.Many2Many} {
			for _, rel := range group {
				v := rel.Field.ReflectValueOf(st.Context, row)
				switch v.Kind() {
				case reflect.Slice, reflect.Array:
					if v.Len() > 0 {
						return true
					}
				default:
					if !v.IsZero() {
						return true
					}
				}
			}
		}
		return false
	}
	if rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array {
		for i := 0; i < rv.Len(); i++ {
			if check(rv.Index(i)) {
				return true
			}
		}
		return false
	}
	return check(rv)
}
