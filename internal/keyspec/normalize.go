package keyspec

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gorm.io/gorm/schema"
)

var typeOfScanner = reflect.TypeOf((*sql.Scanner)(nil)).Elem()

// Normalize converts a key value as a caller gave it ("42", 42, a *uint, a
// driver.Valuer) to the primary-key field f's own type, exactly as GORM
// would assign it; an integer for a plain integer field (one without
// methods) comes back as an int64 or a uint64 after the same range check,
// which gives the same key. ok is false when the value does not fit: nil,
// zero, a value GORM cannot assign, or text that would lose something on
// the way ("1x" for an integer key). Integer text is read as PostgreSQL
// reads integer input: " +042 " is 42.
func (s *Spec) Normalize(ctx context.Context, f *schema.Field, v any) (any, bool) {
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

// NormalizeAll normalizes one value per primary-key column, in
// [Spec.Fields] order, to the fields' types and canonical spellings: what
// [Spec.Key] takes. ok is false when a value does not fit, or when the
// number of values is not the number of key columns.
func (s *Spec) NormalizeAll(ctx context.Context, vals []any) ([]any, bool) {
	if len(vals) != len(s.pks) {
		return nil, false
	}
	c := s.classes()
	norm := make([]any, len(vals))
	for i, f := range s.pks {
		v, ok := s.Normalize(ctx, f, vals[i])
		if !ok {
			return nil, false
		}
		if v, ok = c.value(i, v); !ok {
			return nil, false
		}
		norm[i] = v
	}
	return norm, true
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
