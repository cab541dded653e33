package keyspec

import (
	"database/sql/driver"
	"encoding/hex"
	"fmt"
	"reflect"
	"strconv"
)

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

// Escape returns s as a key component: '%', ':', '{', '}', bytes below
// 0x20 and 0x7f percent-escaped in upper-case hex ("a:b" is "a%3Ab"), every
// other byte as it is.
func Escape(s string) string { return string(appendEscaped(nil, s)) }

// appendEscaped appends s to b, escaped as Escape does.
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
