// Package rowcodec encodes the column fields of one GORM model as a msgpack
// array, in schema order, so that decoding gives back exactly what the
// database read gave: times keep their location, nil stays nil, empty stays
// empty. A row is stored only if it survives the round trip, and decoding
// bytes read from Redis never panics nor allocates more than their size.
//
// The encoding and the fingerprint are part of the wire format: a change to
// either is a new revision and a CHANGELOG entry.
package rowcodec

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"runtime/debug"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/gorm/schema"
)

var (
	// ErrCorrupt is wrapped by every error of [Codec.Decode]: the bytes are
	// not a row of this codec's model.
	ErrCorrupt = errors.New("writethrough: corrupt cached row")
	// ErrDecodePanic is wrapped, with ErrCorrupt, when decoding panicked and
	// the panic was recovered: always a decoder bug, which the fuzz tests
	// look for.
	ErrDecodePanic = errors.New("decoder panicked")
	// ErrNoRoundTrip is returned by [Codec.Append] for a row whose decoding
	// would not give back the row as the database read gave it (a Scan that
	// does not accept its own Value, a Scan(nil) whose Value is not nil,
	// state msgpack cannot see). Such a row is not cached.
	ErrNoRoundTrip = errors.New("writethrough: column does not survive the cache's encoding")
)

// revision is part of every fingerprint. It changes when the encoding of
// some Go type changes, or when rows an older build cached may not decode
// to what the database holds, so that those entries are misses.
// Revision 2: rows are checked to round-trip before they are stored; a
// revision 1 entry may hold a row that decodes to another value.
const revision = 2

// fingerprintFormat is the first thing hashed into a fingerprint. The 1 is
// the entry format version fingerprints were first computed under; it stays
// so that fingerprints do not change (an entry of another format version is
// told apart by its header alone).
const fingerprintFormat = "wt-row-1.%d|%s|"

// nilCtx is what GORM field accessors get from the codec; they ignore it.
var nilCtx = context.Background()

// Codec encodes and decodes the rows of one model. It is built once per
// model by [New] and is safe for concurrent use.
type Codec struct {
	fields []field
	fp     string // 8-byte schema fingerprint
	typ    reflect.Type
}

// field is the encoder and decoder of one column.
type field struct {
	f   *schema.Field
	enc encFunc
	dec decFunc
	row bool // enc and dec take the whole row, not the field (serializer fields)
}

// New builds the codec of the model sch describes: one encoder and decoder
// per column, chosen by Go type or serializer. It fails for a model with no
// columns.
func New(sch *schema.Schema) (*Codec, error) {
	c := &Codec{typ: sch.ModelType}
	h := fnv.New64a()
	fmt.Fprintf(h, fingerprintFormat, revision, sch.Table)
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
			c.fields = append(c.fields, field{f: f, enc: enc, dec: dec, row: true})
			fmt.Fprintf(h, "%s:%s:%s:ser=%T;", f.DBName, f.FieldType.PkgPath(), f.FieldType.String(), f.Serializer)
			continue
		}
		enc, dec := codecFor(f.FieldType)
		c.fields = append(c.fields, field{f: f, enc: enc, dec: dec})
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

// Fingerprint returns the model's 8-byte schema fingerprint: an FNV-64a
// hash of the codec revision, the table, and every column's name, Go type
// and serializer. Two builds of a model decode each other's rows only when
// their fingerprints are equal.
func (c *Codec) Fingerprint() string { return c.fp }

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

// Append encodes the row held in row (an addressable struct of the model
// type, as GORM scanned it from the database) and appends it to dst. It
// then decodes what it encoded and returns an error wrapping
// [ErrNoRoundTrip] unless every column comes back deeply equal to row's: a
// cache hit must give exactly what a database read gives. Types with Value
// and Scan methods are stored as their Value and restored with Scan, and
// nothing else promises that Scan(Value()) is the value scanned from the
// database (a Scan that accepts nil while Value never returns nil, a Value
// of a type Scan refuses, state outside exported fields).
func (c *Codec) Append(dst []byte, row reflect.Value) ([]byte, error) {
	start := len(dst)
	out, err := c.encode(dst, row)
	if err != nil {
		return nil, err
	}
	back := reflect.New(c.typ).Elem()
	if err := c.Decode(out[start:], back); err != nil {
		return nil, c.noRoundTrip(row, "", err)
	}
	for i := range c.fields {
		f := c.fields[i].f
		a, b := f.ReflectValueOf(nilCtx, row), f.ReflectValueOf(nilCtx, back)
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			return nil, c.noRoundTrip(row, f.Name, nil)
		}
	}
	return out, nil
}

func (c *Codec) noRoundTrip(row reflect.Value, field string, cause error) error {
	model := c.typ.Name()
	if len(c.fields) > 0 {
		model = c.fields[0].f.Schema.Name
	}
	if cause != nil {
		return fmt.Errorf("%w: model %s: decoding the encoded row fails (%v); the row is read from the database",
			ErrNoRoundTrip, model, cause)
	}
	return fmt.Errorf("%w: model %s, field %s: decoding gives another value than the database read "+
		"(does its Scan accept what its Value returns?); the row is read from the database", ErrNoRoundTrip, model, field)
}

// encode appends the encoding of row to dst, without the round-trip check.
// A panic in user code (a Value method) is returned as an error with its
// stack.
func (c *Codec) encode(dst []byte, row reflect.Value) (out []byte, err error) {
	s := encPool.Get().(*encState)
	defer encPool.Put(s)
	s.buf.Reset()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("writethrough: encode row of %s: %v\n%s", c.typ, r, debug.Stack())
		}
	}()
	if err := s.enc.EncodeArrayLen(len(c.fields)); err != nil {
		return nil, err
	}
	for i := range c.fields {
		fc := &c.fields[i]
		v := row
		if !fc.row {
			v = fc.f.ReflectValueOf(nilCtx, row)
		}
		if err := fc.enc(s.enc, v); err != nil {
			return nil, fmt.Errorf("writethrough: encode %s.%s: %w", fc.f.Schema.Name, fc.f.Name, err)
		}
	}
	return append(dst, s.buf.Bytes()...), nil
}

// Decode sets the column fields of row (an addressable struct of the model
// type) from b. Fields that are not columns are left as they are, as GORM's
// own scan leaves them. It never panics: every error wraps [ErrCorrupt], and
// a recovered panic (in the decoder or in a Scan method) also wraps
// [ErrDecodePanic] and carries its stack.
func (c *Codec) Decode(b []byte, row reflect.Value) (err error) {
	if err := validMsgpack(b, len(c.fields)); err != nil {
		return err
	}
	s := decPool.Get().(*decState)
	defer decPool.Put(s)
	s.r.Reset(b)
	s.dec.Reset(&s.r)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %w: %v\n%s", ErrCorrupt, ErrDecodePanic, r, debug.Stack())
		}
	}()
	n, err := s.dec.DecodeArrayLen()
	if err != nil || n != len(c.fields) {
		return ErrCorrupt
	}
	for i := range c.fields {
		fc := &c.fields[i]
		v := row
		if !fc.row {
			v = fc.f.ReflectValueOf(nilCtx, row)
		}
		if err := fc.dec(s.dec, v); err != nil {
			return fmt.Errorf("%w: field %s: %v", ErrCorrupt, fc.f.Name, err)
		}
	}
	if s.r.Len() != 0 {
		return ErrCorrupt
	}
	return nil
}
