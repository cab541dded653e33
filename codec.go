package writethrough

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
	"gorm.io/gorm/schema"
)

// nilCtx is what GORM field accessors get from the codec; they ignore it.
var nilCtx = context.Background()

// rowCodec encodes the column fields of one model as a msgpack array, in
// schema order, so that decoding gives back exactly what the database read
// gave: times keep their location, nil stays nil, empty stays empty.
type rowCodec struct {
	fields []fieldCodec
	fp     string // 8-byte schema fingerprint
	typ    reflect.Type
}

// codecRevision is part of every schema fingerprint. It changes when the
// encoding of some Go type changes, or when rows an older build cached may
// not decode to what the database holds, so that those entries are misses.
// Revision 2: rows are checked to round-trip before they are stored; a
// revision 1 entry may hold a row that decodes to another value.
const codecRevision = 2

type fieldCodec struct {
	f   *schema.Field
	enc func(e *msgpack.Encoder, v reflect.Value) error
	dec func(d *msgpack.Decoder, v reflect.Value) error
	row bool // enc and dec take the whole row, not the field (serializer fields)
}

func newRowCodec(sch *schema.Schema) (*rowCodec, error) {
	c := &rowCodec{typ: sch.ModelType}
	h := fnv.New64a()
	fmt.Fprintf(h, "wt-row-%d.%d|%s|", formatVersion, codecRevision, sch.Table)
	for _, f := range sch.Fields {
		if f.DBName == "" {
			continue
		}
		if f.Serializer != nil {
			// Stored as the serializer's database value and restored with the
			// serializer's Scan, as a database read restores it: a generic
			// encoding would lose what the serializer keeps (a time's zone
			// inside a JSON document).
			enc, dec := serializerCodec(f)
			c.fields = append(c.fields, fieldCodec{f: f, enc: enc, dec: dec, row: true})
			fmt.Fprintf(h, "%s:%s:%s:ser=%T;", f.DBName, f.FieldType.PkgPath(), f.FieldType.String(), f.Serializer)
			continue
		}
		enc, dec := codecFor(f.FieldType)
		c.fields = append(c.fields, fieldCodec{f: f, enc: enc, dec: dec})
		fmt.Fprintf(h, "%s:%s:%s;", f.DBName, f.FieldType.PkgPath(), f.FieldType.String())
	}
	if len(c.fields) == 0 {
		return nil, fmt.Errorf("model has no columns")
	}
	var fp [8]byte
	binary.BigEndian.PutUint64(fp[:], h.Sum64())
	c.fp = string(fp[:])
	return c, nil
}

type encState struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

var encPool = sync.Pool{New: func() any {
	s := &encState{}
	s.enc = msgpack.NewEncoder(&s.buf)
	return s
}}

type decState struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var decPool = sync.Pool{New: func() any {
	s := &decState{}
	s.dec = msgpack.NewDecoder(&s.r)
	return s
}}

// appendRow encodes the row held in rv (an addressable struct of the model
// type, as GORM scanned it from the database) and appends it to dst. It
// then decodes what it encoded and returns an error wrapping errNoRoundTrip
// unless every column comes back deeply equal to rv's: a cache hit must give
// exactly what a database read gives. Types with Value and Scan methods are
// stored as their Value and restored with Scan, and nothing else promises
// that Scan(Value()) is the value scanned from the database (a Scan that
// accepts nil while Value never returns nil, a Value of a type Scan
// refuses, state outside exported fields).
func (c *rowCodec) appendRow(dst []byte, rv reflect.Value) ([]byte, error) {
	start := len(dst)
	out, err := c.encodeRow(dst, rv)
	if err != nil {
		return nil, err
	}
	back := reflect.New(c.typ).Elem()
	if err := c.decodeRow(out[start:], back); err != nil {
		return nil, c.noRoundTrip(rv, "", err)
	}
	for i := range c.fields {
		f := c.fields[i].f
		a, b := f.ReflectValueOf(nilCtx, rv), f.ReflectValueOf(nilCtx, back)
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			return nil, c.noRoundTrip(rv, f.Name, nil)
		}
	}
	return out, nil
}

func (c *rowCodec) noRoundTrip(rv reflect.Value, field string, cause error) error {
	model := c.typ.Name()
	if len(c.fields) > 0 {
		model = c.fields[0].f.Schema.Name
	}
	if cause != nil {
		return fmt.Errorf("%w: model %s: decoding the encoded row fails (%v); the row is read from the database",
			errNoRoundTrip, model, cause)
	}
	return fmt.Errorf("%w: model %s, field %s: decoding gives another value than the database read "+
		"(does its Scan accept what its Value returns?); the row is read from the database", errNoRoundTrip, model, field)
}

func (c *rowCodec) encodeRow(dst []byte, rv reflect.Value) (out []byte, err error) {
	s := encPool.Get().(*encState)
	defer encPool.Put(s)
	s.buf.Reset()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("writethrough: encode row of %s: panic: %v\n\n%s", c.typ, r, debug.Stack())
		}
	}()
	if err := s.enc.EncodeArrayLen(len(c.fields)); err != nil {
		return nil, err
	}
	for i := range c.fields {
		fc := &c.fields[i]
		v := rv
		if !fc.row {
			v = fc.f.ReflectValueOf(nilCtx, rv)
		}
		if err := fc.enc(s.enc, v); err != nil {
			return nil, fmt.Errorf("writethrough: encode %s.%s: %w", fc.f.Schema.Name, fc.f.Name, err)
		}
	}
	return append(dst, s.buf.Bytes()...), nil
}

// decodeRow sets the column fields of rv (an addressable struct of the model
// type) from b. Fields that are not columns are left as they are, as GORM's
// own scan leaves them. It never panics.
func (c *rowCodec) decodeRow(b []byte, rv reflect.Value) (err error) {
	if err := validMsgpack(b, len(c.fields)); err != nil {
		return err
	}
	s := decPool.Get().(*decState)
	defer decPool.Put(s)
	s.r.Reset(b)
	s.dec.Reset(&s.r)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %w: %v\n\n%s", errCorrupt, errDecodePanic, r, debug.Stack())
		}
	}()
	n, err := s.dec.DecodeArrayLen()
	if err != nil || n != len(c.fields) {
		return errCorrupt
	}
	for i := range c.fields {
		fc := &c.fields[i]
		v := rv
		if !fc.row {
			v = fc.f.ReflectValueOf(nilCtx, rv)
		}
		if err := fc.dec(s.dec, v); err != nil {
			return fmt.Errorf("%w: field %s: %v", errCorrupt, fc.f.Name, err)
		}
	}
	if s.r.Len() != 0 {
		return errCorrupt
	}
	return nil
}

type encFunc = func(*msgpack.Encoder, reflect.Value) error
type decFunc = func(*msgpack.Decoder, reflect.Value) error

var (
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
// with their own Scan, the same path a database read takes.
const (
	dvNil = iota
	dvInt
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

// validMsgpack walks b and checks that it is exactly one msgpack value whose
// every length fits in the bytes that remain (so decoding cannot be made to
// allocate more than len(b)), nested at most 32 deep. When arrayLen >= 0 the
// value must be an array of that length.
func validMsgpack(b []byte, arrayLen int) error {
	if arrayLen >= 0 {
		n, hdr, ok := arrayHeader(b)
		if !ok || n != arrayLen {
			return errCorrupt
		}
		rest, ok := skipN(b[hdr:], n, 0)
		if !ok || len(rest) != 0 {
			return errCorrupt
		}
		return nil
	}
	rest, ok := skipValue(b, 0)
	if !ok || len(rest) != 0 {
		return errCorrupt
	}
	return nil
}

func arrayHeader(b []byte) (n, hdr int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	switch c := b[0]; {
	case c >= 0x90 && c <= 0x9f:
		return int(c & 0x0f), 1, true
	case c == 0xdc && len(b) >= 3:
		return int(binary.BigEndian.Uint16(b[1:])), 3, true
	case c == 0xdd && len(b) >= 5:
		return int(binary.BigEndian.Uint32(b[1:])), 5, true
	}
	return 0, 0, false
}

func skipN(b []byte, n, depth int) ([]byte, bool) {
	if n > len(b) {
		return nil, false
	}
	for i := 0; i < n; i++ {
		var ok bool
		if b, ok = skipValue(b, depth); !ok {
			return nil, false
		}
	}
	return b, true
}

func skipValue(b []byte, depth int) ([]byte, bool) {
	if len(b) == 0 || depth > 32 {
		return nil, false
	}
	c := b[0]
	body := func(hdr, n int) ([]byte, bool) {
		if n < 0 || len(b) < hdr || len(b)-hdr < n {
			return nil, false
		}
		return b[hdr+n:], true
	}
	u8 := func() int {
		if len(b) < 2 {
			return -1
		}
		return int(b[1])
	}
	u16 := func() int {
		if len(b) < 3 {
			return -1
		}
		return int(binary.BigEndian.Uint16(b[1:]))
	}
	u32 := func() int {
		if len(b) < 5 {
			return -1
		}
		return int(binary.BigEndian.Uint32(b[1:]))
	}
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return b[1:], true
	case c >= 0x80 && c <= 0x8f:
		return skipN(b[1:], 2*int(c&0x0f), depth+1)
	case c >= 0x90 && c <= 0x9f:
		return skipN(b[1:], int(c&0x0f), depth+1)
	case c >= 0xa0 && c <= 0xbf:
		return body(1, int(c&0x1f))
	}
	switch c {
	case 0xc4, 0xd9: // bin8, str8
		return body(2, u8())
	case 0xc5, 0xda: // bin16, str16
		return body(3, u16())
	case 0xc6, 0xdb: // bin32, str32
		return body(5, u32())
	case 0xc7: // ext8
		return body(3, u8())
	case 0xc8: // ext16
		if n := u16(); n >= 0 {
			return body(4, n)
		}
	case 0xc9: // ext32
		if n := u32(); n >= 0 {
			return body(6, n)
		}
	case 0xca:
		return body(1, 4)
	case 0xcb:
		return body(1, 8)
	case 0xcc, 0xd0:
		return body(1, 1)
	case 0xcd, 0xd1:
		return body(1, 2)
	case 0xce, 0xd2:
		return body(1, 4)
	case 0xcf, 0xd3:
		return body(1, 8)
	case 0xd4:
		return body(2, 1)
	case 0xd5:
		return body(2, 2)
	case 0xd6:
		return body(2, 4)
	case 0xd7:
		return body(2, 8)
	case 0xd8:
		return body(2, 16)
	case 0xdc:
		if n := u16(); n >= 0 {
			return skipN(b[3:], n, depth+1)
		}
	case 0xdd:
		if n := u32(); n >= 0 {
			return skipN(b[5:], n, depth+1)
		}
	case 0xde:
		if n := u16(); n >= 0 {
			return skipN(b[3:], 2*n, depth+1)
		}
	case 0xdf:
		if n := u32(); n >= 0 {
			return skipN(b[5:], 2*n, depth+1)
		}
	}
	return nil, false
}
