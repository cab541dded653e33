// Package rowbuf hands a result set that was read ahead back out as a
// *sql.Rows.
//
// database/sql builds a *sql.Rows only from a driver, so a private driver
// serves the buffer: a caller's Scan converts the same driver values, and
// sees the same columns and column types, as it would have on the rows the
// real driver returned. The plugin uses it for a bulk statement whose
// RETURNING it extended: it keeps the key columns and hands GORM the
// caller's columns only.
package rowbuf

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"sync"
)

// Column is one column as the real driver described it (see
// [sql.ColumnType]).
type Column struct {
	Name         string
	ScanType     reflect.Type // nil means any
	DatabaseType string       // DatabaseTypeName
	Length       int64
	HasLength    bool
	Nullable     bool
	HasNullable  bool
	Precision    int64
	Scale        int64
	HasDecimal   bool
}

// ColumnsOf copies what types say about their columns.
func ColumnsOf(types []*sql.ColumnType) []Column {
	cols := make([]Column, len(types))
	for i, t := range types {
		c := Column{Name: t.Name(), ScanType: t.ScanType(), DatabaseType: t.DatabaseTypeName()}
		c.Length, c.HasLength = t.Length()
		c.Nullable, c.HasNullable = t.Nullable()
		c.Precision, c.Scale, c.HasDecimal = t.DecimalSize()
		cols[i] = c
	}
	return cols
}

// Buffer is a result set read ahead: its columns, and each row's values as
// the real driver produced them (one value per column).
type Buffer struct {
	Columns []Column
	Values  [][]driver.Value // one slice per row
}

// Rows returns the buffer as a *sql.Rows, which the caller must close. The
// buffer must not change until it is closed. Several may be open at once.
func (b *Buffer) Rows(ctx context.Context) (*sql.Rows, error) {
	return bufDB().QueryContext(ctx, "", b)
}

var bufDB = sync.OnceValue(func() *sql.DB {
	db := sql.OpenDB(connector{})
	db.SetMaxIdleConns(4)
	return db
})

var errBufOnly = errors.New("writethrough: internal row buffer only serves buffered rows")

type connector struct{}

func (connector) Connect(context.Context) (driver.Conn, error) { return conn{}, nil }
func (connector) Driver() driver.Driver                        { return drv{} }

type drv struct{}

func (drv) Open(string) (driver.Conn, error) { return conn{}, nil }

// conn serves a *Buffer passed as the query's only argument.
type conn struct{}

func (conn) Prepare(string) (driver.Stmt, error) { return nil, errBufOnly }
func (conn) Close() error                        { return nil }
func (conn) Begin() (driver.Tx, error)           { return nil, errBufOnly }

// CheckNamedValue lets the *Buffer through database/sql unconverted.
func (conn) CheckNamedValue(*driver.NamedValue) error { return nil }

func (conn) QueryContext(_ context.Context, _ string, args []driver.NamedValue) (driver.Rows, error) {
	if len(args) != 1 {
		return nil, errBufOnly
	}
	b, ok := args[0].Value.(*Buffer)
	if !ok || b == nil {
		return nil, errBufOnly
	}
	return &rows{b: b}, nil
}

// rows implements driver.Rows and the column-type interfaces over a
// Buffer, answering what the real driver answered.
type rows struct {
	b    *Buffer
	next int
}

func (r *rows) Columns() []string {
	names := make([]string, len(r.b.Columns))
	for i, c := range r.b.Columns {
		names[i] = c.Name
	}
	return names
}

func (r *rows) Close() error { return nil }

func (r *rows) Next(dest []driver.Value) error {
	if r.next >= len(r.b.Values) {
		return io.EOF
	}
	row := r.b.Values[r.next]
	if len(row) != len(dest) {
		return errors.New("writethrough: internal row buffer: a row's length differs from its columns'")
	}
	copy(dest, row)
	r.next++
	return nil
}

var anyType = reflect.TypeOf((*any)(nil)).Elem()

func (r *rows) ColumnTypeScanType(i int) reflect.Type {
	if t := r.b.Columns[i].ScanType; t != nil {
		return t
	}
	return anyType
}

func (r *rows) ColumnTypeDatabaseTypeName(i int) string { return r.b.Columns[i].DatabaseType }

func (r *rows) ColumnTypeLength(i int) (int64, bool) {
	c := r.b.Columns[i]
	return c.Length, c.HasLength
}

func (r *rows) ColumnTypeNullable(i int) (bool, bool) {
	c := r.b.Columns[i]
	return c.Nullable, c.HasNullable
}

func (r *rows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	c := r.b.Columns[i]
	return c.Precision, c.Scale, c.HasDecimal
}
