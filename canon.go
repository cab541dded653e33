package writethrough

import (
	"context"
	"reflect"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// Canonical keys (docs/design.md, "Canonical keys"). The database may treat
// two spellings of a key as one row: a UUID in upper case, a citext key, a
// char(n) key with or without its padding, a non-deterministic collation. A
// row is cached only under the key built from the row the database returned
// (its canonical key), and a lookup is mapped to that key only when the
// plugin knows how the column compares its values.

// keyClass says how the database compares a primary-key column's values.
type keyClass uint8

const (
	// keyLoose: equal values may be spelled differently, or the plugin
	// does not know. Lookups by such a key are served only when the entry
	// holds a row of exactly that spelling, and such keys never hold a
	// tombstone.
	keyLoose keyClass = iota
	// keyExact: the database finds a row only by the value the row holds
	// (integers, bytes, text under a deterministic collation).
	keyExact
	// keyUUID: a uuid column held in a Go string; the canonical spelling is
	// lower case with hyphens, as PostgreSQL returns it.
	keyUUID
)

// keyCanon is what the plugin knows of a model's key columns.
type keyCanon struct {
	classes  []keyClass // one per primary-key column, in spec.pks order
	loose    bool       // some column is keyLoose
	resolved bool       // nothing more to learn from the database
	retryAt  time.Time  // when resolving failed: not before this
}

// canon returns what the plugin knows of s's key columns, from the Go types
// and tags until resolveKeys has asked the database.
func (s *modelSpec) canon() *keyCanon {
	if c := s.keys.Load(); c != nil {
		return c
	}
	c := &keyCanon{classes: make([]keyClass, len(s.pks)), resolved: true}
	for i, f := range s.pks {
		cl, known := staticClass(f)
		c.classes[i] = cl
		if !known {
			c.resolved = false
		}
	}
	c.loose = anyLoose(c.classes)
	s.keys.CompareAndSwap(nil, c)
	return s.keys.Load()
}

// looseKeys reports whether some key column compares loosely: no
// tombstones, and lookups are served only under the row's own spelling.
func (s *modelSpec) looseKeys() bool { return s.canon().loose }

func anyLoose(cs []keyClass) bool {
	for _, c := range cs {
		if c == keyLoose {
			return true
		}
	}
	return false
}

// staticClass classifies a key column from its Go type and tag; known is
// false when the database could tell more (a string column).
func staticClass(f *schema.Field) (cl keyClass, known bool) {
	t := f.FieldType
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return keyExact, true
	case reflect.Array, reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return keyExact, true // bytes, such as a [16]byte UUID: one value, one key
		}
	case reflect.String:
		if strings.EqualFold(string(f.DataType), "uuid") {
			return keyUUID, true
		}
		return keyLoose, false
	}
	return keyLoose, true
}

// resolveKeys learns, once per model, how the database compares the model's
// string key columns (PostgreSQL only; other dialects keep them loose). It
// runs on db's connection, inside its transaction if it has one (its queries
// cannot fail on a server that answers), and never fails the caller: until
// it succeeds the columns stay loose, which is safe.
func (p *Plugin) resolveKeys(db *gorm.DB, s *modelSpec) {
	c := s.canon()
	if c.resolved || time.Now().Before(c.retryAt) || !s.resolving.CompareAndSwap(false, true) {
		return
	}
	defer s.resolving.Store(false)
	next := &keyCanon{classes: append([]keyClass(nil), c.classes...), resolved: true}
	if db.Dialector == nil || db.Dialector.Name() != "postgres" {
		next.loose = anyLoose(next.classes)
		s.keys.Store(next)
		return
	}
	types, err := pgKeyTypes(db, s)
	if err != nil || len(types) == 0 {
		// The table may not exist yet: stay loose, ask again later.
		p.logf("writethrough: key column types unknown; string keys stay loose", "model", s.name, "err", err)
		retry := *c
		retry.retryAt = time.Now().Add(time.Minute)
		s.keys.Store(&retry)
		return
	}
	for i, f := range s.pks {
		if cl, known := staticClass(f); known {
			next.classes[i] = cl
			continue
		}
		ct, ok := types[f.DBName]
		switch {
		case !ok:
			next.classes[i] = keyLoose
		case ct.typ == "uuid":
			next.classes[i] = keyUUID
		case (ct.typ == "text" || ct.typ == "varchar") && ct.deterministic:
			next.classes[i] = keyExact
		default: // citext, char(n), non-deterministic collations, anything else
			next.classes[i] = keyLoose
		}
	}
	next.loose = anyLoose(next.classes)
	s.keys.Store(next)
}

type colType struct {
	typ           string // pg_type.typname, of the base type for a domain
	deterministic bool   // the column's collation compares bytes
}

// pgKeyTypes reads the type and collation of s's columns from pg_catalog.
func pgKeyTypes(db *gorm.DB, s *modelSpec) (map[string]colType, error) {
	parts := strings.Split(s.sch.Table, ".")
	for i, part := range parts {
		parts[i] = `"` + strings.ReplaceAll(strings.Trim(part, `"`), `"`, `""`) + `"`
	}
	q := db.Session(&gorm.Session{NewDB: true, SkipHooks: true, Logger: logger.Discard})
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

// canonValue maps a key value of field i, already of the field's type, to
// its canonical spelling; ok is false when the value cannot be one of the
// column's values (a string that is not a UUID, for a uuid column).
func (s *modelSpec) canonValue(c *keyCanon, i int, v any) (any, bool) {
	if c.classes[i] != keyUUID {
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

// canonicalTargets returns the keys, as the database spells them now, of
// the rows that targets name, for a write to a model with loose keys: the
// write must invalidate those keys, whatever spelling it was given. It reads
// on the statement's connection (inside its transaction), before the
// statement runs, so that a delete still finds its rows.
func (p *Plugin) canonicalTargets(db *gorm.DB, s *modelSpec, targets []target) ([]target, error) {
	if len(targets) == 0 || !s.looseKeys() {
		return nil, nil
	}
	rows, err := rowsByKey(db, s, targets, true)
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(targets))
	for _, t := range targets {
		have[t.key] = true
	}
	var out []target
	ctx := db.Statement.Context
	for i := 0; i < rows.Elem().Len(); i++ {
		rv := rows.Elem().Index(i)
		pk := make([]any, len(s.pks))
		for j, f := range s.pks {
			pk[j], _ = f.ValueOf(ctx, rv)
		}
		k := s.keyFromValues(pk)
		if !have[k] {
			have[k] = true
			out = append(out, target{key: k, pk: pk})
		}
	}
	return out, nil
}

// keyMatches reports whether the row in rv is the row of key, spelled as
// the database spells it: what a loose key's entry must hold to be served.
func (s *modelSpec) keyMatches(ctx context.Context, rv reflect.Value, key string) bool {
	k, ok := s.keyOf(ctx, rv)
	return ok && k == key
}

// looseIntent turns a tombstone into an invalidation for a model with loose
// keys: a row inserted later under another spelling would not replace it.
func looseIntent(s *modelSpec, intent entry.Flags) entry.Flags {
	if intent&entry.FlagDelete != 0 && s.looseKeys() {
		return 0
	}
	return intent
}
