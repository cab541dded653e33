package writethrough

import (
	"bytes"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// fuzzMoney is a custom Scanner/Valuer column.
type fuzzMoney struct{ cents int64 }

func (m fuzzMoney) Value() (driver.Value, error) { return m.cents, nil }

func (m *fuzzMoney) Scan(v any) error {
	switch x := v.(type) {
	case int64:
		m.cents = x
		return nil
	case nil:
		m.cents = 0
		return nil
	}
	return fmt.Errorf("fuzzMoney: cannot scan %T", v)
}

type FuzzAudit struct {
	Who  string
	When *time.Time
}

type fuzzMeta struct {
	At   time.Time      `json:"at"`
	Tags []string       `json:"tags"`
	Any  map[string]any `json:"any"`
}

// fuzzRow has a column of every kind the codec encodes differently.
type fuzzRow struct {
	ID    uint `gorm:"primaryKey" cache:"ttl:1m"`
	I8    int8
	I64   int64
	U16   uint16
	U64   uint64
	F32   float32
	F64   float64
	Flag  bool
	Name  string
	Blob  []byte
	At    time.Time
	PI    *int64
	PS    *string
	PT    *time.Time
	NS    sql.NullString
	NT    sql.NullTime
	NI    sql.Null[int32]
	Money fuzzMoney
	PM    *fuzzMoney
	Meta  fuzzMeta          `gorm:"serializer:json"`
	Gob   map[string]int    `gorm:"serializer:gob"`
	Unix  int64             `gorm:"serializer:unixtime"`
	Arr   []string          `gorm:"type:text[]"`
	Attrs map[string]string `gorm:"type:hstore"`
	FuzzAudit
	Ship *FuzzAudit `gorm:"embedded;embeddedPrefix:ship_"`
	gorm.DeletedAt
}

var fuzzCodec = sync.OnceValues(func() (*rowCodec, error) {
	sch, err := schema.Parse(&fuzzRow{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		return nil, err
	}
	return newRowCodec(sch)
})

func testCodec(tb testing.TB) *rowCodec {
	tb.Helper()
	c, err := fuzzCodec()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// fuzzSamples are rows whose encodings seed the corpus.
func fuzzSamples() []fuzzRow {
	at := time.Date(2024, 3, 10, 12, 30, 45, 123456000, time.UTC)
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		kolkata = time.FixedZone("IST", 19800)
	}
	zoned := at.In(kolkata)
	s, n := "", int64(-5)
	// Samples are rows as a database read gives them: a gob column never
	// scans to a nil map.
	return []fuzzRow{
		{Gob: map[string]int{}},
		{
			ID: 42, I8: -128, I64: -1 << 63, U16: 65535, U64: 1<<64 - 1, F32: 1.5, F64: -2.25,
			Flag: true, Name: "Ann", Blob: []byte{0, 1, 0xff}, At: at, PI: &n, PS: &s, PT: &zoned,
			NS: sql.NullString{String: "x", Valid: true}, NT: sql.NullTime{Time: zoned, Valid: true},
			NI: sql.Null[int32]{V: 7, Valid: true}, Money: fuzzMoney{123}, PM: &fuzzMoney{-1},
			Meta: fuzzMeta{At: at.In(time.FixedZone("", 3600)), Tags: []string{"a", ""}, Any: map[string]any{"k": []any{1.0, nil}}},
			Gob:  map[string]int{"a": 1}, Unix: 1700000000, Arr: []string{"a", "b"},
			Attrs:     map[string]string{"k": "v"},
			FuzzAudit: FuzzAudit{Who: "me", When: &at}, Ship: &FuzzAudit{Who: "ship"},
			DeletedAt: gorm.DeletedAt{Time: time.Date(2020, 1, 1, 0, 0, 0, 0, time.Local), Valid: true},
		},
		{ID: 1, Blob: []byte{}, Arr: []string{}, Gob: map[string]int{}, At: time.Date(2024, 1, 1, 0, 0, 0, 0, time.FixedZone("XYZ", -12345))},
	}
}

func encodeSample(tb testing.TB, c *rowCodec, r fuzzRow) []byte {
	tb.Helper()
	b, err := c.appendRow(nil, reflect.ValueOf(&r).Elem())
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzDecodeRow decodes arbitrary bytes into fuzzRow. It must never panic
// (not even one the decoder recovers from), and whatever decodes must
// re-encode to a fixed point.
func FuzzDecodeRow(f *testing.F) {
	c := testCodec(f)
	for _, r := range fuzzSamples() {
		f.Add(encodeSample(f, c, r))
	}
	f.Add([]byte{})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var row fuzzRow
		err := c.decodeRow(b, reflect.ValueOf(&row).Elem())
		if errors.Is(err, errDecodePanic) {
			t.Fatalf("decodeRow recovered a panic: %v", err)
		}
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("decode error does not wrap errCorrupt: %v", err)
			}
			return
		}
		b2, err := c.encodeRow(nil, reflect.ValueOf(&row).Elem())
		if err != nil {
			return // a decoded value its own Valuer refuses (not a decoder fault)
		}
		var row2 fuzzRow
		if err := c.decodeRow(b2, reflect.ValueOf(&row2).Elem()); err != nil {
			t.Fatalf("the re-encoded row does not decode: %v\n%x", err, b2)
		}
		b3, err := c.encodeRow(nil, reflect.ValueOf(&row2).Elem())
		if err != nil {
			t.Fatalf("the re-decoded row does not encode: %v", err)
		}
		if !bytes.Equal(b2, b3) {
			t.Fatalf("encode(decode(x)) is not a fixed point:\n%x\n%x", b2, b3)
		}
	})
}

// TestDecodeRowRejectsLengthBombs: a value that claims more elements or
// bytes than it holds is refused before anything is allocated for it.
func TestDecodeRowRejectsLengthBombs(t *testing.T) {
	c := testCodec(t)
	valid := encodeSample(t, c, fuzzSamples()[1])
	n := len(c.fields)
	bombs := map[string][]byte{
		"array32 of 4G":          {0xdd, 0xff, 0xff, 0xff, 0xff},
		"bin32 of 4G in field 0": append([]byte{0xdc, 0, byte(n), 0xc6, 0xff, 0xff, 0xff, 0xff}, make([]byte, 64)...),
		"str32 of 4G in field 0": append([]byte{0xdc, 0, byte(n), 0xdb, 0xff, 0xff, 0xff, 0xff}, make([]byte, 64)...),
		"map32 of 4G in field 0": append([]byte{0xdc, 0, byte(n), 0xdf, 0xff, 0xff, 0xff, 0xff}, make([]byte, 64)...),
		"nested 64 deep":         append(append([]byte{0xdc, 0, byte(n)}, bytes.Repeat([]byte{0x91}, 64)...), 0xc0),
		"truncated valid row":    valid[:len(valid)-1],
		"valid row plus a byte":  append(bytes.Clone(valid), 0xc0),
	}
	for name, b := range bombs {
		t.Run(name, func(t *testing.T) {
			var row fuzzRow
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := c.decodeRow(b, reflect.ValueOf(&row).Elem())
			runtime.ReadMemStats(&after)
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("want errCorrupt, got %v", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Fatalf("decoding %d bytes allocated %d bytes", len(b), grew)
			}
		})
	}
}

// TestRowCodecRoundTrip: every sample decodes back to itself.
func TestRowCodecRoundTrip(t *testing.T) {
	c := testCodec(t)
	for i, r := range fuzzSamples() {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			b := encodeSample(t, c, r)
			var got fuzzRow
			if err := c.decodeRow(b, reflect.ValueOf(&got).Elem()); err != nil {
				t.Fatal(err)
			}
			// The codec allocates embedded pointers, as GORM's scan does.
			if r.Ship == nil {
				r.Ship = &FuzzAudit{}
			}
			// GORM's gob serializer reads a nil map back as an empty one,
			// from the database as well.
			if r.Gob == nil {
				r.Gob = map[string]int{}
			}
			if reflect.DeepEqual(r, got) {
				return
			}
			want, have := reflect.ValueOf(r), reflect.ValueOf(got)
			for i := 0; i < want.NumField(); i++ {
				w, h := want.Field(i), have.Field(i)
				if w.CanInterface() && !reflect.DeepEqual(w.Interface(), h.Interface()) {
					t.Errorf("field %s: want %#v, got %#v", want.Type().Field(i).Name, w.Interface(), h.Interface())
				}
			}
			t.Fatalf("round trip differs:\nwant %+v\ngot  %+v", r, got)
		})
	}
}

// TestFingerprintNamesColumnsTypesAndSerializers: changing a column's name,
// its Go type or its serializer changes the fingerprint, so that two builds
// never decode each other's rows.
func TestFingerprintNamesColumnsTypesAndSerializers(t *testing.T) {
	type base struct {
		ID   uint `gorm:"primaryKey"`
		Name string
		Meta map[string]any `gorm:"serializer:json"`
	}
	type renamed struct {
		ID    uint `gorm:"primaryKey"`
		Title string
		Meta  map[string]any `gorm:"serializer:json"`
	}
	type retyped struct {
		ID   uint `gorm:"primaryKey"`
		Name []byte
		Meta map[string]any `gorm:"serializer:json"`
	}
	type reserialized struct {
		ID   uint `gorm:"primaryKey"`
		Name string
		Meta map[string]any `gorm:"serializer:gob"`
	}
	fp := func(model any) string {
		sch, err := schema.Parse(model, &sync.Map{}, schema.NamingStrategy{})
		if err != nil {
			t.Fatal(err)
		}
		sch.Table = "same" // the table name takes part too; hold it still
		c, err := newRowCodec(sch)
		if err != nil {
			t.Fatal(err)
		}
		return c.fp
	}
	b := fp(&base{})
	if b != fp(&base{}) {
		t.Fatal("fingerprint is not stable")
	}
	for name, m := range map[string]any{"renamed": &renamed{}, "retyped": &retyped{}, "reserialized": &reserialized{}} {
		if fp(m) == b {
			t.Errorf("%s model has the same fingerprint", name)
		}
	}
}

// TestUnknownZoneNamesDoNotGrowTheCache: zone names read from Redis that do
// not load are remembered only up to a bound, and still decode to a fixed
// zone of that name and offset.
func TestUnknownZoneNamesDoNotGrowTheCache(t *testing.T) {
	const prefix = "Nowhere/TestUnknownZoneNames-"
	for i := 0; i < 4*maxUnknownLocs; i++ {
		name := fmt.Sprint(prefix, i)
		in := time.Date(2024, 1, 1, 0, 0, 0, 0, time.FixedZone(name, 3600))
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		if err := encTime(enc, reflect.ValueOf(in)); err != nil {
			t.Fatal(err)
		}
		var out time.Time
		if err := decTime(msgpack.NewDecoder(&buf), reflect.ValueOf(&out).Elem()); err != nil {
			t.Fatal(err)
		}
		if got, off := out.Zone(); got != name || off != 3600 || !out.Equal(in) {
			t.Fatalf("decoded %v, want %v", out, in)
		}
	}
	n := 0
	locCache.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			n++
		}
		return true
	})
	if n > maxUnknownLocs {
		t.Fatalf("%d unknown zone names cached, bound %d", n, maxUnknownLocs)
	}
}
