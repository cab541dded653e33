package writethrough

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/rowcodec"
)

// modelSpec is everything the plugin knows about one cached model, built
// once from its schema and its cache tag.
type modelSpec struct {
	sch       *schema.Schema
	name      string          // Go type name, for errors
	pks       []*schema.Field // primary-key fields, in schema order
	ttl       time.Duration
	jitter    int // percent of ttl
	mode      Mode
	aside     bool          // writes only invalidate
	static    string        // key prefix when the template is the default one
	tmpl      []tmplPart    // nil for the default template
	deletedAt *schema.Field // a gorm.DeletedAt column, if any
	codec     *rowcodec.Codec

	keys      atomic.Pointer[keyCanon] // how the key columns compare (canon.go)
	resolving atomic.Bool              // resolveKeys is asking the database
}

// tmplPart is a literal (field nil, pkAll false) or a placeholder.
type tmplPart struct {
	lit   string
	field *schema.Field // one primary-key column
	pkAll bool          // {pk}: every primary-key column, joined by ':'
}

// specEntry caches the outcome of building a spec: models without a cache
// tag have spec == nil and err == nil.
type specEntry struct {
	spec *modelSpec
	err  error
}

var typeOfDeletedAt = reflect.TypeOf(gorm.DeletedAt{})

var typeOfScanner = reflect.TypeOf((*sql.Scanner)(nil)).Elem()

// specFor returns the spec of model (a struct value or pointer), parsing its
// schema with db's naming strategy.
func (p *Plugin) specFor(db *gorm.DB, model any) (*modelSpec, error) {
	t := reflect.TypeOf(model)
	for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice) {
		t = t.Elem()
	}
	if t == nil {
		return nil, fmt.Errorf("%w: nil model", ErrUnsupported)
	}
	if e, ok := p.specs.Load(t); ok {
		return e.(*specEntry).spec, e.(*specEntry).err
	}
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse(reflect.New(t).Interface()); err != nil {
		return nil, fmt.Errorf("writethrough: parse model %s: %w", t, err)
	}
	return p.specOf(stmt.Schema)
}

// specOf returns the spec for a parsed schema; nil when the model is not
// cached.
func (p *Plugin) specOf(sch *schema.Schema) (*modelSpec, error) {
	if sch == nil {
		return nil, nil
	}
	if e, ok := p.specs.Load(sch.ModelType); ok {
		return e.(*specEntry).spec, e.(*specEntry).err
	}
	spec, err := p.buildSpec(sch)
	e, loaded := p.specs.LoadOrStore(sch.ModelType, &specEntry{spec: spec, err: err})
	if !loaded {
		// Writes that name the table rather than the model, and the
		// foreign keys that cascade from or to it (tables.go, cascade.go).
		if spec != nil {
			p.indexTable(spec)
		}
		for _, s := range p.noteSchema(sch) {
			if s != sch {
				_, _ = p.specOf(s) // index the cached models it reaches
			}
		}
	}
	return e.(*specEntry).spec, e.(*specEntry).err
}

func (p *Plugin) buildSpec(sch *schema.Schema) (*modelSpec, error) {
	if sch.ModelType.Name() == "" {
		// A join model GORM generated for a many2many field: it copies both
		// sides' key fields, cache tags included, but the user never wrote
		// it. It runs as plain GORM. A join model declared with
		// SetupJoinTable is a named type and follows its own tag.
		return nil, nil
	}
	tagField, tagName, tag, err := findTag(sch)
	if err != nil || tagField == nil {
		return nil, err
	}
	spec := &modelSpec{
		sch:    sch,
		name:   sch.Name,
		pks:    sch.PrimaryFields,
		ttl:    p.cfg.DefaultTTL,
		jitter: p.cfg.Jitter,
		mode:   p.cfg.Mode,
	}
	if len(spec.pks) == 0 {
		return nil, &TagError{Model: sch.Name, Field: tagName, Reason: "model has no primary key"}
	}
	tmpl := ""
	for _, word := range strings.Split(tag, ";") {
		word = strings.TrimSpace(word)
		if word == "" {
			continue
		}
		k, v, ok := strings.Cut(word, ":")
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		bad := func(reason string) error {
			return &TagError{Model: sch.Name, Field: tagName, Word: word, Reason: reason}
		}
		if !ok || v == "" {
			return nil, bad("want key:value (keys: ttl, key, mode, strategy, jitter)")
		}
		switch k {
		case "ttl":
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, bad("not a Go duration")
			}
			if d < time.Millisecond {
				return nil, bad("ttl must be at least 1ms")
			}
			spec.ttl = d
		case "key":
			tmpl = v
		case "mode":
			switch strings.ToLower(v) {
			case "strict":
				spec.mode = Strict
			case "soft":
				spec.mode = Soft
			default:
				return nil, bad("mode is strict or soft")
			}
		case "strategy":
			switch strings.ToLower(v) {
			case "through":
				spec.aside = false
			case "aside":
				spec.aside = true
			default:
				return nil, bad("strategy is through or aside")
			}
		case "jitter":
			n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
			if err != nil || n < 0 || n > 100 {
				return nil, bad("jitter is a percentage from 0 to 100")
			}
			spec.jitter = n
		default:
			return nil, bad("unknown key " + strconv.Quote(k) + " (keys: ttl, key, mode, strategy, jitter)")
		}
	}
	if tmpl == "" {
		spec.static = p.cfg.Prefix + ":" + escapeComponent(sch.Table) + ":"
	} else {
		parts, err := parseTemplate(sch, tmpl, p.cfg.Prefix)
		if err != nil {
			return nil, &TagError{Model: sch.Name, Field: tagName, Word: "key:" + tmpl, Reason: err.Error()}
		}
		spec.tmpl = parts
	}
	for _, f := range sch.Fields {
		if f.DBName != "" && f.FieldType == typeOfDeletedAt {
			spec.deletedAt = f
		}
	}
	codec, err := rowcodec.New(sch)
	if err != nil {
		return nil, &TagError{Model: sch.Name, Field: tagName, Reason: err.Error()}
	}
	spec.codec = codec
	return spec, nil
}

// findTag finds the model's cache tag: on a primary-key field, or on an
// embedded struct (gorm.Model) that holds the primary key, where it applies
// to that key. field is the primary-key field the tag applies to and name
// the struct field that carries it ("ID", "Model"); field is nil when the
// model has no tag. A tag the plugin cannot use is an error, never ignored:
// on a column that is not the key, on an embedded struct without the key, on
// a field GORM does not map (gorm:"-", unexported), on an association.
func findTag(sch *schema.Schema) (field *schema.Field, name, tag string, err error) {
	byPath := make(map[string]*schema.Field, len(sch.Fields))
	under := map[string][]*schema.Field{} // embedded struct path -> its columns
	for _, f := range sch.Fields {
		byPath[strings.Join(f.BindNames, ".")] = f
		for i := 1; i < len(f.BindNames); i++ {
			prefix := strings.Join(f.BindNames[:i], ".")
			under[prefix] = append(under[prefix], f)
		}
	}
	bad := func(path, reason string) error {
		return &TagError{Model: sch.Name, Field: path, Reason: reason}
	}
	take := func(f *schema.Field, path, v string) error {
		if field != nil && v != tag {
			return bad(path, fmt.Sprintf("cache tags on %s and %s differ; put one tag on the primary-key field", name, path))
		}
		if field == nil {
			field, name, tag = f, path, v
		}
		return nil
	}
	noKey := ""
	if len(sch.PrimaryFields) == 0 {
		noKey = "model has no primary key; "
	}
	var walk func(t reflect.Type, path []string, seen map[reflect.Type]bool) error
	walk = func(t reflect.Type, path []string, seen map[reflect.Type]bool) error {
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			p := strings.Join(append(path[:len(path):len(path)], sf.Name), ".")
			f := byPath[p]
			inner := under[p]
			v, tagged := sf.Tag.Lookup("cache")
			if tagged {
				switch {
				case f != nil && f.DBName != "" && f.PrimaryKey:
					if err := take(f, p, v); err != nil {
						return err
					}
				case f != nil && f.DBName != "":
					return bad(p, noKey+"the cache tag belongs on the primary-key field (or on an embedded gorm.Model)")
				case f != nil && sch.Relationships.Relations[f.Name] != nil:
					return bad(p, "an association is not cached by its field's tag; tag the primary-key field of "+
						f.FieldType.String()+" itself (and of this model)")
				case f != nil && hasSetting(f, "-"):
					return bad(p, `the field is ignored by GORM (gorm:"-"), so the cache tag applies to nothing; put it on the primary-key field`)
				case f != nil:
					return bad(p, "the field is not a column, so the cache tag applies to nothing; put it on the primary-key field")
				case len(inner) > 0:
					n := 0
					for _, c := range inner {
						if c.PrimaryKey {
							n++
							if err := take(c, p, v); err != nil {
								return err
							}
						}
					}
					if n == 0 {
						return bad(p, noKey+"a cache tag on an embedded struct applies to the primary key it holds, and "+
							sf.Type.String()+" holds none; put the tag on the primary-key field")
					}
				default:
					return bad(p, "GORM does not map this field (unexported or ignored), so the cache tag applies to nothing; put it on the primary-key field")
				}
			}
			ft := sf.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if f == nil && len(inner) > 0 && ft.Kind() == reflect.Struct && !seen[ft] {
				seen[ft] = true
				if err := walk(ft, append(path[:len(path):len(path)], sf.Name), seen); err != nil {
					return err
				}
				delete(seen, ft)
			}
		}
		return nil
	}
	if err := walk(sch.ModelType, nil, map[reflect.Type]bool{sch.ModelType: true}); err != nil {
		return nil, "", "", err
	}
	return field, name, tag, nil
}

func hasSetting(f *schema.Field, name string) bool {
	_, ok := f.TagSettings[name]
	return ok
}

// parseTemplate parses a key template such as "user:{id}". Placeholders are
// {prefix}, {table}, {pk} and primary-key columns (by column or field name).
// Every primary-key column must appear, so that no two rows share a key.
// A template without {prefix} is placed under the prefix anyway.
func parseTemplate(sch *schema.Schema, tmpl, prefix string) ([]tmplPart, error) {
	var parts []tmplPart
	covered := map[*schema.Field]bool{}
	hasPrefix := false
	rest := tmpl
	for rest != "" {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			parts = append(parts, tmplPart{lit: rest})
			break
		}
		if rest[i] == '}' {
			return nil, fmt.Errorf("unbalanced '}' in key template")
		}
		if i > 0 {
			parts = append(parts, tmplPart{lit: rest[:i]})
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
			parts = append(parts, tmplPart{lit: prefix})
		case "table":
			parts = append(parts, tmplPart{lit: escapeComponent(sch.Table)})
		case "pk":
			parts = append(parts, tmplPart{pkAll: true})
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
			parts = append(parts, tmplPart{field: field})
		}
	}
	for _, f := range sch.PrimaryFields {
		if !covered[f] {
			return nil, fmt.Errorf("key template leaves out primary-key column %s, so rows would share keys", f.DBName)
		}
	}
	if !hasPrefix {
		parts = append([]tmplPart{{lit: prefix + ":"}}, parts...)
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

func placeholderName(pt tmplPart) string {
	if pt.pkAll {
		return "{pk}"
	}
	return "{" + pt.field.DBName + "}"
}

// keyOf returns the key of the row held in rv (a struct of the model type),
// and false when a primary-key column is zero.
func (s *modelSpec) keyOf(ctx context.Context, rv reflect.Value) (string, bool) {
	vals := make([]any, len(s.pks))
	for i, f := range s.pks {
		v, zero := f.ValueOf(ctx, rv)
		if zero {
			return "", false
		}
		vals[i] = v
	}
	return s.keyFromValues(vals), true
}

// keyFromValues builds the key from primary-key values already of the
// fields' types, in s.pks order. UUIDs held in strings are written in their
// canonical spelling, so that every spelling the database accepts gives the
// key of the row it finds.
func (s *modelSpec) keyFromValues(vals []any) string {
	if c := s.canon(); c.classes != nil {
		for i, cl := range c.classes {
			if cl == keyUUID && i < len(vals) {
				vals[i], _ = s.canonValue(c, i, vals[i])
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

// normalize converts a key value as a caller gave it ("42", 42, a *uint, a
// driver.Valuer) to the primary-key field's own type, exactly as GORM would
// assign it. ok is false when the value does not fit.
func (s *modelSpec) normalize(ctx context.Context, f *schema.Field, v any) (any, bool) {
	rv := reflect.ValueOf(v)
	for rv.IsValid() && rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil, false
		}
		rv = rv.Elem()
	}
	if !rv.IsValid() {
		return nil, false
	}
	if rv.Type() == f.FieldType {
		out := rv.Interface()
		if rv.IsZero() {
			return nil, false
		}
		return out, true
	}
	if n, ok, done := fastInteger(f.FieldType, rv); done {
		return n, ok
	}
	if rv.Kind() == reflect.String {
		// An integer key spelled as the database reads it ("42", "042",
		// " +42 "): the same row, so the same key.
		if n, ok := parseIntegerText(rv.String()); ok {
			if v, ok, done := fastInteger(f.FieldType, reflect.ValueOf(n)); done {
				return v, ok
			}
		}
	}
	scratch := reflect.New(s.sch.ModelType).Elem()
	if err := f.Set(ctx, scratch, rv.Interface()); err != nil {
		return nil, false
	}
	out, zero := f.ValueOf(ctx, scratch)
	if zero {
		return nil, false
	}
	// GORM's setters accept many conversions; make sure nothing was lost
	// (a string "1x" must not become 1). A type that scans itself (a UUID
	// type) parses the text its own way and is trusted to.
	if str, isStr := rv.Interface().(string); isStr && f.FieldType.Kind() != reflect.String &&
		!reflect.PointerTo(f.FieldType).Implements(typeOfScanner) {
		if fmt.Sprint(out) != str && !isTextual(out, str) {
			return nil, false
		}
	}
	return out, true
}

// parseIntegerText reads decimal integer text the way PostgreSQL's integer
// input does: surrounding white space, an optional sign, leading zeros.
func parseIntegerText(str string) (int64, bool) {
	str = strings.TrimSpace(str)
	if strings.HasPrefix(str, "+") {
		str = str[1:]
		if strings.HasPrefix(str, "-") || strings.HasPrefix(str, "+") {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(str, 10, 64)
	return n, err == nil
}

// fastInteger converts an integer to a plain integer key field without
// going through a scratch model: the key text is the same decimal either
// way. done is false when the slow path must decide.
func fastInteger(ft reflect.Type, rv reflect.Value) (v any, ok, done bool) {
	neg, mag, ok, done := integerKey(ft, rv)
	switch {
	case !done || !ok:
		return nil, ok, done
	case isSigned(ft.Kind()):
		if neg {
			return -int64(mag), true, true
		}
		return int64(mag), true, true
	}
	return mag, true, true
}

// integerKey checks that rv, an integer of any kind, fits the plain integer
// field type ft and is not zero, and returns its sign and magnitude.
func integerKey(ft reflect.Type, rv reflect.Value) (neg bool, mag uint64, ok, done bool) {
	if ft.NumMethod() != 0 {
		return false, 0, false, false
	}
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n := rv.Int()
		neg, mag = n < 0, uint64(n)
		if neg {
			mag = uint64(-n)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		mag = rv.Uint()
	default:
		return false, 0, false, false
	}
	if mag == 0 {
		return false, 0, false, true
	}
	bits := uint(0)
	switch ft.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		bits = uint(ft.Bits())
	default:
		return false, 0, false, false
	}
	if isSigned(ft.Kind()) {
		limit := uint64(1) << (bits - 1)
		if neg && mag > limit || !neg && mag >= limit {
			return false, 0, false, true
		}
		return neg, mag, true, true
	}
	if neg || bits < 64 && mag >= uint64(1)<<bits {
		return false, 0, false, true
	}
	return false, mag, true, true
}

func isSigned(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return true
	}
	return false
}

func isTextual(v any, s string) bool {
	if st, ok := v.(fmt.Stringer); ok {
		return strings.EqualFold(st.String(), s)
	}
	return false
}

// lookupKey1 is lookupKey for one value, without a variadic slice.
func (s *modelSpec) lookupKey1(v any) (string, bool) {
	if key, ok, done := s.intKey(v); done {
		return key, ok
	}
	return s.lookupKey(context.Background(), v)
}

// intKey builds the key of an integer value for a model whose one primary
// key is a plain integer under the default template, without boxing or a
// scratch model. done is false when the general path must decide.
func (s *modelSpec) intKey(v any) (key string, ok, done bool) {
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

// lookupKey returns the key for caller-given primary-key values.
func (s *modelSpec) lookupKey(ctx context.Context, vals ...any) (string, bool) {
	if len(vals) != len(s.pks) {
		return "", false
	}
	if len(vals) == 1 {
		if key, ok, done := s.intKey(vals[0]); done {
			return key, ok
		}
	}
	norm, ok := s.normalizeAll(ctx, vals)
	if !ok {
		return "", false
	}
	return s.keyFromValues(norm), true
}

// normalizeAll normalizes one value per primary-key column, in s.pks order,
// to the fields' types and canonical spellings.
func (s *modelSpec) normalizeAll(ctx context.Context, vals []any) ([]any, bool) {
	if len(vals) != len(s.pks) {
		return nil, false
	}
	c := s.canon()
	norm := make([]any, len(vals))
	for i, f := range s.pks {
		v, ok := s.normalize(ctx, f, vals[i])
		if !ok {
			return nil, false
		}
		if v, ok = s.canonValue(c, i, v); !ok {
			return nil, false
		}
		norm[i] = v
	}
	return norm, true
}

// appendComponent writes one primary-key value, escaped so that ':' and the
// escape byte itself never appear raw: distinct values give distinct keys.
func appendComponent(b []byte, v any) []byte {
	switch x := v.(type) {
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case int32:
		return strconv.AppendInt(b, int64(x), 10)
	case int16:
		return strconv.AppendInt(b, int64(x), 10)
	case int8:
		return strconv.AppendInt(b, int64(x), 10)
	case uint:
		return strconv.AppendUint(b, uint64(x), 10)
	case uint64:
		return strconv.AppendUint(b, x, 10)
	case uint32:
		return strconv.AppendUint(b, uint64(x), 10)
	case uint16:
		return strconv.AppendUint(b, uint64(x), 10)
	case uint8:
		return strconv.AppendUint(b, uint64(x), 10)
	case string:
		return appendEscaped(b, x)
	case []byte:
		return hex.AppendEncode(b, x)
	case fmt.Stringer:
		return appendEscaped(b, x.String())
	case driver.Valuer:
		dv, err := x.Value()
		if err == nil {
			return appendComponent(b, dv)
		}
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(b, rv.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.AppendUint(b, rv.Uint(), 10)
	case reflect.String:
		return appendEscaped(b, rv.String())
	case reflect.Array:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			raw := make([]byte, rv.Len())
			reflect.Copy(reflect.ValueOf(raw), rv)
			return hex.AppendEncode(b, raw)
		}
	}
	return appendEscaped(b, fmt.Sprint(v))
}

func escapeComponent(s string) string { return string(appendEscaped(nil, s)) }

// appendEscaped percent-escapes '%', ':', '{', '}' and control bytes.
func appendEscaped(b []byte, s string) []byte {
	const hexd = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%' || c == ':' || c == '{' || c == '}' || c < 0x20 || c == 0x7f:
			b = append(b, '%', hexd[c>>4], hexd[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

type schemaField = schema.Field
