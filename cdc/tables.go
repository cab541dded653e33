package cdc

import (
	"context"
	"encoding/hex"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/keyspec"
)

// Table names a cached table without its Go model, for a consumer that runs
// apart from the application (cmd/writethrough-cdc). Its keys must be the
// ones the application's model gives.
type Table struct {
	// Name is the table exactly as the model names it ("users", or
	// "app.users" for a model whose TableName says so): it is part of the
	// default key, so it must be spelled as the model spells it. An
	// unqualified name is found with the connection's search_path, or in
	// Schema.
	Name string
	// Schema, when set, is where the consumer finds an unqualified Name
	// (the application's search_path). It is not part of the key.
	Schema string
	// Key is the model's key template (the tag's key word), "" for the
	// default {prefix}:{table}:{pk}.
	Key string
}

// lookup is the name to find t by in the catalog.
func (t Table) lookup() string {
	if t.Schema != "" && !strings.Contains(t.Name, ".") {
		return t.Schema + "." + t.Name
	}
	return t.Name
}

// tableModel builds the model of a Table from the database's catalog: its
// primary-key columns in column order (the order of the struct fields that
// AutoMigrate created them from), typed as the keys are written.
func (c *Consumer) tableModel(ctx context.Context, conn *pgconn.PgConn, t Table) (*model, error) {
	rows, err := query(ctx, conn, fmt.Sprintf(`
SELECT a.attname, format_type(a.atttypid, NULL)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
ORDER BY a.attnum`, literal(quoteTable(t.lookup()))))
	if err != nil {
		return nil, fmt.Errorf("primary key of %s: %w", t.Name, err)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("cdc: table %s does not exist or has no primary key", t.Name)
	}
	fields := make([]reflect.StructField, len(rows))
	for i, r := range rows {
		var typ reflect.Type
		switch r[1] {
		case "smallint", "integer", "bigint":
			typ = reflect.TypeFor[int64]()
		case "bytea":
			typ = reflect.TypeFor[[]byte]()
		default: // text, varchar, uuid, citext, ...: keys are their text
			typ = reflect.TypeFor[string]()
		}
		fields[i] = reflect.StructField{
			Name: fmt.Sprintf("K%d", i),
			Type: typ,
			Tag:  reflect.StructTag(fmt.Sprintf(`gorm:"primaryKey;column:%s"`, r[0])),
		}
	}
	sch, err := schema.Parse(reflect.New(reflect.StructOf(fields)).Interface(), &sync.Map{}, fixedTable(t.Name))
	if err != nil {
		return nil, fmt.Errorf("cdc: table %s: %w", t.Name, err)
	}
	spec, err := keyspec.New(sch, c.cfg.Prefix, &keyspec.Tag{Template: t.Key, FieldName: "K0"})
	if err != nil {
		// A template naming no key column: retrying cannot fix it.
		return nil, fmt.Errorf("%w: Tables: key template %q of table %s (primary key %s): %v",
			ErrInvalidConfig, t.Key, t.Name, strings.Join(cols(rows), ", "), err)
	}
	m := &model{name: t.Name, spec: spec, pattern: spec.Pattern()}
	for _, f := range spec.Fields() {
		m.pkCols = append(m.pkCols, f.DBName)
		m.bytes = append(m.bytes, f.FieldType == reflect.TypeFor[[]byte]())
	}
	return m, nil
}

// cols returns the first column of rows.
func cols(rows [][]string) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r[0]
	}
	return out
}

// fixedTable is a naming strategy whose table name is the one given.
type fixedTable string

func (n fixedTable) TableName(string) string { return string(n) }
func (n fixedTable) SchemaName(string) string {
	return ""
}
func (n fixedTable) ColumnName(_, column string) string { return column }
func (n fixedTable) JoinTableName(s string) string      { return s }
func (n fixedTable) RelationshipFKName(schema.Relationship) string {
	return ""
}
func (n fixedTable) CheckerName(_, column string) string { return column }
func (n fixedTable) IndexName(_, column string) string   { return column }
func (n fixedTable) UniqueName(_, column string) string  { return column }

// byteaText decodes PostgreSQL's text form of a bytea ("\x0a1b").
func byteaText(s string) ([]byte, bool) {
	if !strings.HasPrefix(s, `\x`) {
		return nil, false
	}
	b, err := hex.DecodeString(s[2:])
	return b, err == nil
}
