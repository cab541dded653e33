package keyspec

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"

	"gorm.io/gorm/schema"
)

// Spec builds the keys of one model's rows. It is safe for concurrent use.
type Spec struct {
	sch    *schema.Schema
	pks    []*schema.Field // primary-key fields, in schema order
	static string          // key prefix when the template is the default one
	tmpl   []part          // nil for the default template

	canon     atomic.Pointer[canon] // how the key columns compare (canon.go)
	resolving atomic.Bool           // Resolve is asking the database
}

// part is a literal (field nil, pkAll false) or a placeholder.
type part struct {
	lit   string
	field *schema.Field // one primary-key column
	pkAll bool          // {pk}: every primary-key column, joined by ':'
	brace bool          // lit is a brace written "{{" or "}}" (a hash tag's edge)
}

// New returns the key spec of the model sch describes. Every key starts
// with prefix and ':'. tag is the model's parsed tag; nil, or a tag without
// a template, gives the default key {prefix}:{table}:{pk}. A template that
// cannot be used is a *TagError naming the tag's key word: an unbalanced
// brace, an unknown placeholder, a primary-key column left out, or two
// placeholders not separated by ':'. With no template, New never fails.
func New(sch *schema.Schema, prefix string, tag *Tag) (*Spec, error) {
	s := &Spec{sch: sch, pks: sch.PrimaryFields}
	if tag == nil || tag.Template == "" {
		s.static = prefix + ":" + Escape(sch.Table) + ":"
		return s, nil
	}
	parts, err := parseTemplate(sch, tag.Template, prefix)
	if err != nil {
		return nil, &TagError{Model: sch.Name, Field: tag.FieldName, Word: "key:" + tag.Template, Reason: err.Error()}
	}
	s.tmpl = parts
	return s, nil
}

// Fields returns the primary-key fields, in schema order: the order of the
// values every method takes. The caller must not modify the slice.
func (s *Spec) Fields() []*schema.Field { return s.pks }

// parseTemplate parses a key template such as "user:{id}". Placeholders are
// {prefix}, {table}, {pk} and primary-key columns (by column or field name).
// Every primary-key column must appear, so that no two rows share a key.
// A template without {prefix} is placed under the prefix anyway.
func parseTemplate(sch *schema.Schema, tmpl, prefix string) ([]part, error) {
	var parts []part
	covered := map[*schema.Field]bool{}
	hasPrefix := false
	rest := tmpl
	for rest != "" {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			parts = append(parts, part{lit: rest})
			break
		}
		if i > 0 {
			parts = append(parts, part{lit: rest[:i]})
		}
		// "{{" and "}}" are a literal brace: how a template writes a
		// Redis Cluster hash tag.
		if i+1 < len(rest) && rest[i+1] == rest[i] {
			parts = append(parts, part{lit: rest[i : i+1], brace: true})
			rest = rest[i+2:]
			continue
		}
		if rest[i] == '}' {
			return nil, fmt.Errorf("unbalanced '}' in key template (write '}}' for a literal brace)")
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unclosed '{' in key template")
		}
		name := rest[i+1 : i+j]
		rest = rest[i+j+1:]
		switch name {
		case "prefix":
			hasPrefix = true
			parts = append(parts, part{lit: prefix})
		case "table":
			parts = append(parts, part{lit: Escape(sch.Table)})
		case "pk":
			parts = append(parts, part{pkAll: true})
			for _, f := range sch.PrimaryFields {
				covered[f] = true
			}
		default:
			var field *schema.Field
			for _, f := range sch.PrimaryFields {
				if f.DBName == name || f.Name == name {
					field = f
				}
			}
			if field == nil {
				return nil, fmt.Errorf("placeholder {%s} is not a primary-key column (use {prefix}, {table}, {pk} or a primary-key column)", name)
			}
			covered[field] = true
			parts = append(parts, part{field: field})
		}
	}
	for _, f := range sch.PrimaryFields {
		if !covered[f] {
			return nil, fmt.Errorf("key template leaves out primary-key column %s, so rows would share keys", f.DBName)
		}
	}
	if err := checkHashTag(parts); err != nil {
		return nil, err
	}
	if !hasPrefix {
		parts = append([]part{{lit: prefix + ":"}}, parts...)
	}
	if strings.ContainsAny(prefix, "{}") && hasHashTag(parts) {
		return nil, fmt.Errorf("the key prefix %q holds a brace, so Redis Cluster would hash by the prefix, not by the template's hash tag", prefix)
	}
	// Merge adjacent literals.
	out := parts[:0]
	for _, pt := range parts {
		if n := len(out); n > 0 && pt.field == nil && !pt.pkAll && out[n-1].field == nil && !out[n-1].pkAll {
			out[n-1].lit += pt.lit
			continue
		}
		out = append(out, pt)
	}
	// Escaped components never hold a raw ':', so a ':' between any two
	// placeholders tells where one ends; without it ("{a}{b}", "{a}-{b}"),
	// ("ab","c") and ("a","bc") would share a key.
	for i := 1; i < len(out); i++ {
		if out[i].field == nil && !out[i].pkAll {
			continue
		}
		for j := i - 1; j >= 0; j-- {
			if out[j].field != nil || out[j].pkAll {
				return nil, fmt.Errorf("placeholders %s and %s must be separated by ':', so that rows never share a key",
					placeholderName(out[j]), placeholderName(out[i]))
			}
			if strings.Contains(out[j].lit, ":") {
				break
			}
		}
	}
	return out, nil
}

// checkHashTag checks the template's literal braces: none, or one "{"
// followed later by one "}" with something between them. Redis Cluster
// hashes only the text between the first "{" and the "}" after it, so
// that text (the hash tag) decides which node holds the key; components
// never hold a raw brace, so a key value cannot move or end the tag.
func checkHashTag(parts []part) error {
	var braces []string
	empty := true
	for _, pt := range parts {
		switch {
		case pt.brace:
			braces = append(braces, pt.lit)
		case len(braces) == 1 && (pt.field != nil || pt.pkAll || pt.lit != ""):
			empty = false
		}
	}
	switch {
	case len(braces) == 0:
		return nil
	case len(braces) != 2 || braces[0] != "{" || braces[1] != "}":
		return fmt.Errorf("a key template holds at most one hash tag, written '{{' ... '}}'")
	case empty:
		return fmt.Errorf("the hash tag '{{}}' is empty; Redis Cluster would hash the whole key")
	}
	return nil
}

// hasHashTag reports a template with a literal brace.
func hasHashTag(parts []part) bool {
	for _, pt := range parts {
		if pt.brace {
			return true
		}
	}
	return false
}

func placeholderName(pt part) string {
	if pt.pkAll {
		return "{pk}"
	}
	return "{" + pt.field.DBName + "}"
}

// RowKey returns the key of the row held in rv (a struct of the model
// type), and false when a primary-key column is zero.
func (s *Spec) RowKey(ctx context.Context, rv reflect.Value) (string, bool) {
	vals := make([]any, len(s.pks))
	for i, f := range s.pks {
		v, zero := f.ValueOf(ctx, rv)
		if zero {
			return "", false
		}
		vals[i] = v
	}
	return s.Key(vals), true
}

// Matches reports whether the row in rv is the row of key, spelled as the
// database spells it: what the entry of a loose key must hold to be
// served.
func (s *Spec) Matches(ctx context.Context, rv reflect.Value, key string) bool {
	k, ok := s.RowKey(ctx, rv)
	return ok && k == key
}

// Key builds the key from primary-key values already of the fields' types
// (as [Spec.Normalize] gives them, or as read from a row), in [Spec.Fields]
// order. UUIDs held in strings are written in their canonical spelling, in
// place in vals, so that every spelling the database accepts gives the key
// of the row it finds.
func (s *Spec) Key(vals []any) string {
	if c := s.classes(); c.classes != nil {
		for i, cl := range c.classes {
			if cl == classUUID && i < len(vals) {
				vals[i], _ = c.value(i, vals[i])
			}
		}
	}
	var b []byte
	if s.tmpl == nil {
		b = make([]byte, 0, len(s.static)+24)
		b = append(b, s.static...)
		for i, v := range vals {
			if i > 0 {
				b = append(b, ':')
			}
			b = appendComponent(b, v)
		}
		return string(b)
	}
	for _, pt := range s.tmpl {
		switch {
		case pt.pkAll:
			for i, v := range vals {
				if i > 0 {
					b = append(b, ':')
				}
				b = appendComponent(b, v)
			}
		case pt.field != nil:
			for i, f := range s.pks {
				if f == pt.field {
					b = appendComponent(b, vals[i])
				}
			}
		default:
			b = append(b, pt.lit...)
		}
	}
	return string(b)
}

// Lookup returns the key for primary-key values as a caller gives them
// (see [Spec.Normalize]), one per key column in [Spec.Fields] order, and
// false when they do not fit.
func (s *Spec) Lookup(ctx context.Context, vals ...any) (string, bool) {
	if len(vals) != len(s.pks) {
		return "", false
	}
	if len(vals) == 1 {
		if key, ok, done := s.intKey(vals[0]); done {
			return key, ok
		}
	}
	norm, ok := s.NormalizeAll(ctx, vals)
	if !ok {
		return "", false
	}
	return s.Key(norm), true
}

// Lookup1 is [Spec.Lookup] for one value, without a variadic slice: an
// integer key under the default template costs one allocation, the key.
func (s *Spec) Lookup1(v any) (string, bool) {
	if key, ok, done := s.intKey(v); done {
		return key, ok
	}
	return s.Lookup(context.Background(), v)
}

// intKey builds the key of an integer value for a model whose one primary
// key is a plain integer under the default template, without boxing or a
// scratch model. done is false when the general path must decide.
func (s *Spec) intKey(v any) (key string, ok, done bool) {
	if len(s.pks) != 1 || s.tmpl != nil {
		return "", false, false
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() {
		rv = rv.Elem()
	}
	neg, mag, ok, done := integerKey(s.pks[0].FieldType, rv)
	if !done || !ok {
		return "", false, done
	}
	var buf [96]byte
	b := append(buf[:0], s.static...)
	if neg {
		b = append(b, '-')
	}
	return string(strconv.AppendUint(b, mag, 10)), true, true
}

// KeyError reports a key, as a caller gave it, that does not fit a model's
// primary key.
type KeyError struct {
	Model   string // the model's Go type name
	Key     any    // the key as given
	Columns int    // how many columns the primary key has
	// Tuple is true when the primary key is composite and Key was neither
	// a model value nor a []any of the key columns.
	Tuple bool
}

func (e *KeyError) Error() string {
	if e.Tuple {
		return fmt.Sprintf("keyspec: %s has a composite primary key; pass a %s with the key set, or a []any of its %d key columns",
			e.Model, e.Model, e.Columns)
	}
	return fmt.Sprintf("keyspec: key %#v does not fit %s's primary key", e.Key, e.Model)
}

// Values turns a key as a caller gives it (to Get, GetMany, Invalidate or
// Inspect) into one value per primary-key column, of the fields' types and
// in canonical spelling: a value for a one-column key, a model value with
// its key set (model says whether key is one, and gives its struct value),
// or a []any per composite key. A key that does not fit is a *KeyError.
func (s *Spec) Values(ctx context.Context, key any, model func(any) (reflect.Value, bool)) ([]any, error) {
	misfit := func() error { return &KeyError{Model: s.sch.Name, Key: key, Columns: len(s.pks)} }
	if m, ok := model(key); ok {
		vals := make([]any, len(s.pks))
		for i, f := range s.pks {
			v, zero := f.ValueOf(ctx, m)
			if zero {
				return nil, misfit()
			}
			vals[i] = v
		}
		if c := s.classes(); c.classes != nil {
			for i := range vals {
				var ok bool
				if vals[i], ok = c.value(i, vals[i]); !ok {
					return nil, misfit()
				}
			}
		}
		return vals, nil
	}
	parts := []any{key}
	if tuple, ok := key.([]any); ok && len(tuple) == 1 && len(s.pks) == 1 {
		parts = tuple
	}
	if len(s.pks) > 1 {
		tuple, ok := key.([]any)
		if !ok {
			return nil, &KeyError{Model: s.sch.Name, Key: key, Columns: len(s.pks), Tuple: true}
		}
		parts = tuple
	}
	vals, ok := s.NormalizeAll(ctx, parts)
	if !ok {
		return nil, misfit()
	}
	return vals, nil
}

// ModelValue reports whether key is a value of the model, or a non-nil
// pointer to one, and gives its struct value (a copy for a value): the
// model argument of [Spec.Values] when the model type is known only at run
// time.
func (s *Spec) ModelValue(key any) (reflect.Value, bool) {
	rv := reflect.ValueOf(key)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() || rv.Type().Elem() != s.sch.ModelType {
			return reflect.Value{}, false
		}
		return rv.Elem(), true
	}
	if !rv.IsValid() || rv.Type() != s.sch.ModelType {
		return reflect.Value{}, false
	}
	cp := reflect.New(rv.Type()).Elem()
	cp.Set(rv)
	return cp, true
}

// Pattern returns a Redis SCAN MATCH pattern that every key of the model
// matches: the template's literal text, glob-escaped, with '*' for each
// placeholder. It may match keys of other models too (a template such as
// "{id}" matches every key under the prefix): a purge that uses it removes
// more than it must, never less.
func (s *Spec) Pattern() string {
	if s.tmpl == nil {
		return globEscape(s.static) + "*"
	}
	var b strings.Builder
	star := false
	for _, pt := range s.tmpl {
		if pt.field != nil || pt.pkAll {
			if !star {
				b.WriteByte('*')
			}
			star = true
			continue
		}
		b.WriteString(globEscape(pt.lit))
		star = false
	}
	return b.String()
}

// globEscape escapes the bytes Redis glob patterns give a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\', '^':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
