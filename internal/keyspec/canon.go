package keyspec

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/gorm/schema"
)

// Canonical keys. The database may treat two spellings of a key as one
// row: a UUID in upper case, a citext key, a char(n) key with or without its
// padding, a non-deterministic collation. A row is cached only under the key
// built from the row the database returned (its canonical key), and a
// lookup is mapped to that key only when it is known how the column
// compares its values.

// class says how the database compares a primary-key column's values.
type class uint8

const (
	// classLoose: equal values may be spelled differently, or it is not
	// known. Lookups by such a key are served only when the entry holds a
	// row of exactly that spelling, and such keys never hold a tombstone.
	classLoose class = iota
	// classExact: the database finds a row only by the value the row holds
	// (integers, bytes, text under a deterministic collation).
	classExact
	// classUUID: a uuid column held in a Go string; the canonical spelling
	// is lower case with hyphens, as PostgreSQL returns it.
	classUUID
)

// canon is what is known of a model's key columns.
type canon struct {
	classes  []class   // one per primary-key column, in Spec.pks order
	loose    bool      // some column is classLoose
	resolved bool      // nothing more to learn from the database
	retryAt  time.Time // when resolving failed: not before this
}

// retryAfter is how long Resolve waits before asking the database again
// after it could not learn the column types.
const retryAfter = time.Minute

// classes returns what is known of s's key columns, from the Go types and
// tags until Resolve has asked the database.
func (s *Spec) classes() *canon {
	if c := s.canon.Load(); c != nil {
		return c
	}
	c := &canon{classes: make([]class, len(s.pks)), resolved: true}
	for i, f := range s.pks {
		cl, known := staticClass(f)
		c.classes[i] = cl
		if !known {
			c.resolved = false
		}
	}
	c.loose = anyLoose(c.classes)
	s.canon.CompareAndSwap(nil, c)
	return s.canon.Load()
}

// Loose reports whether some key column may compare loosely (citext,
// char(n), a non-deterministic collation, or a string column whose type
// [Spec.Resolve] has not learned): then an entry may be served only when
// the row it holds matches the key ([Spec.Matches]), and the key must never
// hold a tombstone, since a row inserted later under another spelling
// would not replace it.
func (s *Spec) Loose() bool { return s.classes().loose }

func anyLoose(cs []class) bool {
	for _, c := range cs {
		if c == classLoose {
			return true
		}
	}
	return false
}

// staticClass classifies a key column from its Go type and tag; known is
// false when the database could tell more (a string column).
func staticClass(f *schema.Field) (cl class, known bool) {
	t := f.FieldType
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return classExact, true
	case reflect.Array, reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return classExact, true // bytes, such as a [16]byte UUID: one value, one key
		}
	case reflect.String:
		if strings.EqualFold(string(f.DataType), "uuid") {
			return classUUID, true
		}
		return classLoose, false
	}
	return classLoose, true
}

// WantsResolve reports whether [Spec.Resolve] has something to learn now:
// a caller can skip building its statement when it does not.
func (s *Spec) WantsResolve() bool {
	c := s.classes()
	return !c.resolved && !time.Now().Before(c.retryAt)
}

// Resolve learns, once per model, how the database compares the model's
// string key columns (PostgreSQL only; under other dialects they stay
// loose). It runs on db's connection, inside its transaction if it has one
// (its queries cannot fail on a server that answers), as statements of
// db's: pass a new statement (Session with NewDB), whose settings it keeps.
// It returns nil when
// there was nothing to learn, when another call is learning it, or once
// it has learned it. On an error (the table may not exist yet) the columns
// stay loose, which is safe, and Resolve asks again after a minute.
func (s *Spec) Resolve(db *gorm.DB) error {
	if !s.WantsResolve() || !s.resolving.CompareAndSwap(false, true) {
		return nil
	}
	c := s.classes()
	defer s.resolving.Store(false)
	next := &canon{classes: append([]class(nil), c.classes...), resolved: true}
	if db.Dialector == nil || db.Dialector.Name() != "postgres" {
		next.loose = anyLoose(next.classes)
		s.canon.Store(next)
		return nil
	}
	types, err := pgKeyTypes(db, s.sch.Table)
	if err == nil && len(types) == 0 {
		err = errors.New("no such table")
	}
	if err != nil {
		retry := *c
		retry.retryAt = time.Now().Add(retryAfter)
		s.canon.Store(&retry)
		return fmt.Errorf("keyspec: column types of %s: %w", s.sch.Table, err)
	}
	for i, f := range s.pks {
		if cl, known := staticClass(f); known {
			next.classes[i] = cl
			continue
		}
		ct, ok := types[f.DBName]
		switch {
		case !ok:
			next.classes[i] = classLoose
		case ct.typ == "uuid":
			next.classes[i] = classUUID
		case (ct.typ == "text" || ct.typ == "varchar") && ct.deterministic:
			next.classes[i] = classExact
		default: // citext, char(n), non-deterministic collations, anything else
			next.classes[i] = classLoose
		}
	}
	next.loose = anyLoose(next.classes)
	s.canon.Store(next)
	return nil
}

type colType struct {
	typ           string // pg_type.typname, of the base type for a domain
	deterministic bool   // the column's collation compares bytes
}

// pgKeyTypes reads the type and collation of table's columns from
// pg_catalog; table may be schema-qualified ("audit.events").
func pgKeyTypes(db *gorm.DB, table string) (map[string]colType, error) {
	parts := strings.Split(table, ".")
	for i, part := range parts {
		parts[i] = `"` + strings.ReplaceAll(strings.Trim(part, `"`), `"`, `""`) + `"`
	}
	// db is a fresh statement of the caller's (its settings say whose
	// statement this is): keep them.
	q := db.Session(&gorm.Session{SkipHooks: true, Logger: logger.Discard})
	// Collations became non-deterministic in PostgreSQL 12; reading
	// collisdeterministic before would fail (and abort a transaction).
	var version int
	if err := q.Raw(`SELECT current_setting('server_version_num')::int`).Scan(&version).Error; err != nil {
		return nil, err
	}
	deterministic := "true"
	if version >= 120000 {
		deterministic = "COALESCE(co.collisdeterministic, true)"
	}
	rows, err := q.Raw(`SELECT a.attname, COALESCE(bt.typname, t.typname), `+deterministic+`
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped`, strings.Join(parts, ".")).Rows()
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := map[string]colType{}
	for rows.Next() {
		var name string
		var ct colType
		if err := rows.Scan(&name, &ct.typ, &ct.deterministic); err != nil {
			return nil, err
		}
		out[name] = ct
	}
	return out, rows.Err()
}

// canonUUID returns the canonical spelling of a UUID in any form PostgreSQL
// accepts (any case, braces, hyphens after any group of four digits), and
// false when s is not a UUID.
func canonUUID(s string) (string, bool) {
	if strings.HasPrefix(s, "{") {
		if !strings.HasSuffix(s, "}") {
			return "", false
		}
		s = s[1 : len(s)-1]
	}
	var hex [32]byte
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			c += 'a' - 'A'
		case c == '-' && n > 0 && n%4 == 0 && i+1 < len(s) && s[i+1] != '-':
			continue
		default:
			return "", false
		}
		if n == 32 {
			return "", false
		}
		hex[n] = c
		n++
	}
	if n != 32 {
		return "", false
	}
	h := string(hex[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], true
}

// value maps a key value of column i, already of the field's type, to its
// canonical spelling; ok is false when the value cannot be one of the
// column's values (a string that is not a UUID, for a uuid column).
func (c *canon) value(i int, v any) (any, bool) {
	if c.classes[i] != classUUID {
		return v, true
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.String {
		return v, true
	}
	str, ok := canonUUID(rv.String())
	if !ok {
		return v, false
	}
	if rv.Type() == reflect.TypeOf("") {
		return str, true
	}
	return reflect.ValueOf(str).Convert(rv.Type()).Interface(), true
}
