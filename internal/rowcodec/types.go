package rowcodec

import (
	"database/sql"
	"database/sql/driver"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
	"gorm.io/gorm/schema"
)

// encFunc writes one value; decFunc sets one value from what encFunc wrote.
type (
	encFunc = func(*msgpack.Encoder, reflect.Value) error
	decFunc = func(*msgpack.Decoder, reflect.Value) error
)

var (
	typeOfTime    = reflect.TypeOf(time.Time{})
	typeOfValuer  = reflect.TypeOf((*driver.Valuer)(nil)).Elem()
	typeOfScanner = reflect.TypeOf((*sql.Scanner)(nil)).Elem()
)

// codecFor picks the encoder and decoder of one Go type, once per model.
func codecFor(t reflect.Type) (encFunc, decFunc) {
	if t == typeOfTime {
		return encTime, decTime
	}
	if t.Kind() == reflect.Pointer {
		ee, de := codecFor(t.Elem())
		return func(e *msgpack.Encoder, v reflect.Value) error {
				if v.IsNil() {
					return e.EncodeNil()
				}
				return ee(e, v.Elem())
			}, func(d *msgpack.Decoder, v reflect.Value) error {
				if isNil(d) {
					v.SetZero()
					return d.DecodeNil()
				}
				if v.IsNil() {
					v.Set(reflect.New(t.Elem()))
				}
				return de(d, v.Elem())
			}
	}
	valuer := t.Implements(typeOfValuer) || reflect.PointerTo(t).Implements(typeOfValuer)
	if valuer && reflect.PointerTo(t).Implements(typeOfScanner) {
		return encDriver, decDriver
	}
	switch t.Kind() {
	case reflect.Bool:
		return func(e *msgpack.Encoder, v reflect.Value) error { return e.EncodeBool(v.Bool()) },
			func(d *msgpack.Decoder, v reflect.Value) error {
				b, err := d.DecodeBool()
				v.SetBool(b)
				return err
			}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(e *msgpack.Encoder, v reflect.Value) error { return e.EncodeInt(v.Int()) },
			func(d *msgpack.Decoder, v reflect.Value) error {
				n, err := d.DecodeInt64()
				if err == nil && v.OverflowInt(n) {
					return fmt.Errorf("%d overflows %s", n, v.Type())
				}
				v.SetInt(n)
				return err
			}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return func(e *msgpack.Encoder, v reflect.Value) error { return e.EncodeUint(v.Uint()) },
			func(d *msgpack.Decoder, v reflect.Value) error {
				n, err := d.DecodeUint64()
				if err == nil && v.OverflowUint(n) {
					return fmt.Errorf("%d overflows %s", n, v.Type())
				}
				v.SetUint(n)
				return err
			}
	case reflect.Float32:
		return func(e *msgpack.Encoder, v reflect.Value) error { return e.EncodeFloat32(float32(v.Float())) },
			func(d *msgpack.Decoder, v reflect.Value) error {
				f, err := d.DecodeFloat32()
				v.SetFloat(float64(f))
				return err
			}
	case reflect.Float64:
		return func(e *msgpack.Encoder, v reflect.Value) error { return e.EncodeFloat64(v.Float()) },
			func(d *msgpack.Decoder, v reflect.Value) error {
				f, err := d.DecodeFloat64()
				v.SetFloat(f)
				return err
			}
	case reflect.String:
		return func(e *msgpack.Encoder, v reflect.Value) error { return e.EncodeString(v.String()) },
			func(d *msgpack.Decoder, v reflect.Value) error {
				s, err := d.DecodeString()
				v.SetString(s)
				return err
			}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return encBytes, decBytes
		}
	}
	return encGeneric, decGeneric
}

// isNil reports whether the next value is msgpack nil.
func isNil(d *msgpack.Decoder) bool {
	c, err := d.PeekCode()
	return err == nil && c == msgpcode.Nil
}

// encBytes keeps nil and empty apart: nil is msgpack nil, empty is bin 0.
func encBytes(e *msgpack.Encoder, v reflect.Value) error {
	if v.IsNil() {
		return e.EncodeNil()
	}
	return e.EncodeBytes(v.Bytes())
}

func decBytes(d *msgpack.Decoder, v reflect.Value) error {
	if isNil(d) {
		v.SetZero()
		return d.DecodeNil()
	}
	b, err := d.DecodeBytes()
	if err != nil {
		return err
	}
	if b == nil {
		b = []byte{}
	}
	v.SetBytes(b)
	return nil
}

// Time: a msgpack array [seconds, nanoseconds, location]: 0 UTC, 1
// time.Local; or [seconds, nanoseconds, 2, offset, name] for a named zone
// (the offset makes a zone unknown to the reader a fixed zone).
func encTime(e *msgpack.Encoder, v reflect.Value) error {
	var t time.Time
	if v.CanAddr() {
		t = *v.Addr().Interface().(*time.Time)
	} else {
		t = v.Interface().(time.Time)
	}
	loc := t.Location()
	n := 3
	if loc != time.UTC && loc != time.Local {
		n = 5
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	if err := e.EncodeInt(t.Unix()); err != nil {
		return err
	}
	if err := e.EncodeInt(int64(t.Nanosecond())); err != nil {
		return err
	}
	switch loc {
	case time.UTC:
		return e.EncodeInt(0)
	case time.Local:
		return e.EncodeInt(1)
	}
	_, off := t.Zone()
	if err := e.EncodeInt(2); err != nil {
		return err
	}
	if err := e.EncodeInt(int64(off)); err != nil {
		return err
	}
	return e.EncodeString(loc.String())
}

// locCache remembers time.LoadLocation by zone name. The names come from
// Redis, so names that do not load are remembered only up to a bound: bytes
// in Redis must not grow the process without limit.
var (
	locCache   sync.Map     // string -> *time.Location (nil when unknown here)
	locUnknown atomic.Int64 // names stored with a nil location
)

const maxUnknownLocs = 256

func decTime(d *msgpack.Decoder, v reflect.Value) error {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n != 3 && n != 5 {
		return fmt.Errorf("bad time value")
	}
	sec, err := d.DecodeInt64()
	if err != nil {
		return err
	}
	nsec, err := d.DecodeInt64()
	if err != nil {
		return err
	}
	kind, err := d.DecodeInt()
	if err != nil {
		return err
	}
	if nsec < 0 || nsec >= 1e9 {
		return fmt.Errorf("bad nanoseconds %d", nsec)
	}
	t := time.Unix(sec, nsec)
	switch {
	case kind == 0 && n == 3:
		t = t.UTC()
	case kind == 1 && n == 3:
		// time.Unix already returns local time.
	case kind == 2 && n == 5:
		off, err := d.DecodeInt()
		if err != nil {
			return err
		}
		name, err := d.DecodeString()
		if err != nil {
			return err
		}
		var loc *time.Location
		if l, ok := locCache.Load(name); ok {
			loc, _ = l.(*time.Location)
		} else {
			if l, err := time.LoadLocation(name); err == nil && name != "" {
				loc = l
			}
			if loc != nil || locUnknown.Add(1) <= maxUnknownLocs {
				locCache.Store(name, loc)
			}
		}
		if loc != nil {
			if _, o := t.In(loc).Zone(); o == off {
				t = t.In(loc)
				break
			}
		}
		t = t.In(time.FixedZone(name, off))
	default:
		return fmt.Errorf("unknown time location kind %d", kind)
	}
	if v.CanAddr() {
		*v.Addr().Interface().(*time.Time) = t
		return nil
	}
	v.Set(reflect.ValueOf(t))
	return nil
}

// Types with Value and Scan methods (sql.Null*, gorm.DeletedAt, JSON columns,
// custom scanners) are stored as the driver value they produce and restored
// with their own Scan, the same path a database read takes. A nil driver
// value is msgpack nil; any other is [tag, value] with one of these tags
// (0 is never written).
const (
	dvInt = iota + 1
	dvFloat
	dvBool
	dvBytes
	dvString
	dvTime
)

func encDriver(e *msgpack.Encoder, v reflect.Value) error {
	var valuer driver.Valuer
	if vv, ok := v.Interface().(driver.Valuer); ok {
		valuer = vv
	} else if v.CanAddr() {
		valuer, _ = v.Addr().Interface().(driver.Valuer)
	}
	if valuer == nil {
		return fmt.Errorf("%s has no Value method", v.Type())
	}
	dv, err := valuer.Value()
	if err != nil {
		return err
	}
	return encDriverValue(e, dv, v.Type())
}

// encDriverValue stores one driver value with a tag that says its type.
func encDriverValue(e *msgpack.Encoder, dv driver.Value, from reflect.Type) error {
	switch x := dv.(type) {
	case nil:
		return e.EncodeNil()
	case int64:
		return encTagged(e, dvInt, func() error { return e.EncodeInt(x) })
	case float64:
		return encTagged(e, dvFloat, func() error { return e.EncodeFloat64(x) })
	case bool:
		return encTagged(e, dvBool, func() error { return e.EncodeBool(x) })
	case []byte:
		return encTagged(e, dvBytes, func() error { return encBytes(e, reflect.ValueOf(x)) })
	case string:
		return encTagged(e, dvString, func() error { return e.EncodeString(x) })
	case time.Time:
		return encTagged(e, dvTime, func() error { return encTime(e, reflect.ValueOf(x)) })
	}
	// Valuers may return any type the driver accepts; convert the common
	// ones the way database/sql would before storing.
	rv := reflect.ValueOf(dv)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return encTagged(e, dvInt, func() error { return e.EncodeInt(rv.Int()) })
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return encTagged(e, dvInt, func() error { return e.EncodeInt(int64(rv.Uint())) })
	case reflect.Float32, reflect.Float64:
		return encTagged(e, dvFloat, func() error { return e.EncodeFloat64(rv.Float()) })
	case reflect.String:
		return encTagged(e, dvString, func() error { return e.EncodeString(rv.String()) })
	}
	return fmt.Errorf("%s.Value returned unsupported %T", from, dv)
}

func encTagged(e *msgpack.Encoder, tag int, val func() error) error {
	if err := e.EncodeArrayLen(2); err != nil {
		return err
	}
	if err := e.EncodeInt(int64(tag)); err != nil {
		return err
	}
	return val()
}

// decDriverValue reads what encDriverValue wrote.
func decDriverValue(d *msgpack.Decoder) (driver.Value, error) {
	if isNil(d) {
		return nil, d.DecodeNil()
	}
	n, err := d.DecodeArrayLen()
	if err != nil || n != 2 {
		return nil, fmt.Errorf("bad driver value")
	}
	tag, err := d.DecodeInt()
	if err != nil {
		return nil, err
	}
	var dv driver.Value
	switch tag {
	case dvInt:
		dv, err = d.DecodeInt64()
	case dvFloat:
		dv, err = d.DecodeFloat64()
	case dvBool:
		dv, err = d.DecodeBool()
	case dvBytes:
		var b []byte
		err = decBytes(d, reflect.ValueOf(&b).Elem())
		dv = b
	case dvString:
		dv, err = d.DecodeString()
	case dvTime:
		var t time.Time
		err = decTime(d, reflect.ValueOf(&t).Elem())
		dv = t
	default:
		return nil, fmt.Errorf("unknown driver value tag %d", tag)
	}
	return dv, err
}

func decDriver(d *msgpack.Decoder, v reflect.Value) error {
	dv, err := decDriverValue(d)
	if err != nil {
		return err
	}
	if dv == nil {
		// GORM never calls Scan(nil): database/sql stores a NULL in the
		// pointer GORM scans into, and GORM then leaves the field as it
		// was, the zero value in a fresh row. A Scan that accepts nil
		// (marking itself null) must not make a hit differ from that.
		v.SetZero()
		return nil
	}
	fresh := reflect.New(v.Type())
	if err := fresh.Interface().(sql.Scanner).Scan(dv); err != nil {
		return err
	}
	v.Set(fresh.Elem())
	return nil
}

// serializerCodec stores a field with a GORM serializer (serializer:json,
// gob, unixtime, or a type implementing schema.SerializerInterface) as the
// value the serializer gives the database, and restores it through GORM's own
// scan path for that field: a fresh serializer scans the value, then the
// field's setter runs the serializer's Scan. Both take the whole row.
func serializerCodec(f *schema.Field) (encFunc, decFunc) {
	return func(e *msgpack.Encoder, row reflect.Value) error {
			fv, _ := f.ValueOf(nilCtx, row)
			valuer, ok := fv.(driver.Valuer)
			if !ok {
				return fmt.Errorf("serializer of %s gives no driver.Valuer", f.Name)
			}
			dv, err := valuer.Value()
			if err != nil {
				return err
			}
			return encDriverValue(e, dv, f.FieldType)
		}, func(d *msgpack.Decoder, row reflect.Value) error {
			dv, err := decDriverValue(d)
			if err != nil {
				return err
			}
			sv := f.NewValuePool.Get()
			scanner, ok := sv.(sql.Scanner)
			if !ok {
				return fmt.Errorf("serializer of %s scans nothing", f.Name)
			}
			if err := scanner.Scan(dv); err != nil {
				return err
			}
			return f.Set(nilCtx, row, sv)
		}
}

// Anything else (structs, maps, slices without a serializer) goes through msgpack's
// reflection, nested as one bin so that its length is checked.
func encGeneric(e *msgpack.Encoder, v reflect.Value) error {
	b, err := msgpack.Marshal(v.Interface())
	if err != nil {
		return err
	}
	return e.EncodeBytes(b)
}

func decGeneric(d *msgpack.Decoder, v reflect.Value) error {
	b, err := d.DecodeBytes()
	if err != nil {
		return err
	}
	if err := validMsgpack(b, -1); err != nil {
		return err
	}
	fresh := reflect.New(v.Type())
	if err := msgpack.Unmarshal(b, fresh.Interface()); err != nil {
		return err
	}
	v.Set(fresh.Elem())
	return nil
}
