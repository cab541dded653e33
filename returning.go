package writethrough

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"reflect"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

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

// returningPool is the statement's ConnPool while a bulk statement runs.
type returningPool struct {
	gorm.ConnPool
	st   *gorm.Statement
	spec *modelSpec

	ran  bool            // the statement itself went through the pool
	rows []reflect.Value // one model value per affected row, keys set
}

// keyAlias names the i-th key column appended to a caller's RETURNING list.
func keyAlias(i int) string { return fmt.Sprintf("__writethrough_key_%d", i) }

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
	rows, err := r.ConnPool.QueryContext(ctx, query+" RETURNING "+r.keyColumns(false), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	n := len(r.spec.pks)
	for rows.Next() {
		elem := reflect.New(r.spec.sch.ModelType).Elem()
		dest := make([]any, n)
		for i, f := range r.spec.pks {
			dest[i] = f.ReflectValueOf(ctx, elem).Addr().Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		r.rows = append(r.rows, elem)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	// What the PostgreSQL drivers answer for an UPDATE or DELETE.
	return driver.RowsAffected(len(r.rows)), nil
}

// QueryContext implements gorm.ConnPool.
func (r *returningPool) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if !r.mine(query) {
		return r.ConnPool.QueryContext(ctx, query, args...)
	}
	rows, err := r.ConnPool.QueryContext(ctx, query+","+r.keyColumns(true), args...)
	if err != nil {
		return nil, err
	}
	buf, err := r.buffer(ctx, rows)
	if err != nil {
		return nil, err
	}
	return buf.Rows(ctx)
}

// buffer reads every row, keeps the appended key columns as model values
// and the caller's columns as the driver gave them.
func (r *returningPool) buffer(ctx context.Context, rows *sql.Rows) (*rowbuf.Buffer, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, err
	}
	n := len(r.spec.pks)
	user := len(cols) - n
	if user < 0 {
		return nil, fmt.Errorf("writethrough: RETURNING gave %d columns, fewer than the %d keys", len(cols), n)
	}
	buf := &rowbuf.Buffer{Columns: rowbuf.ColumnsOf(types[:user])}
	for rows.Next() {
		vals := make([]any, user)
		dest := make([]any, len(cols))
		for i := range vals {
			dest[i] = &vals[i]
		}
		elem := reflect.New(r.spec.sch.ModelType).Elem()
		for i, f := range r.spec.pks {
			dest[user+i] = f.ReflectValueOf(ctx, elem).Addr().Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		r.rows = append(r.rows, elem)
		row := make([]driver.Value, user)
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
func installReturning(db *gorm.DB, spec *modelSpec, kind writeKind) (*returningPool, error) {
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
	r := &returningPool{ConnPool: db.Statement.ConnPool, st: db.Statement, spec: spec}
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
