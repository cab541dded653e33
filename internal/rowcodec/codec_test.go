package rowcodec

import (
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

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

var fuzzCodec = sync.OnceValues(func() (*Codec, error) {
	sch, err := schema.Parse(&fuzzRow{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		return nil, err
	}
	return New(sch)
})

func testCodec(tb testing.TB) *Codec {
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

func encodeSample(tb testing.TB, c *Codec, r fuzzRow) []byte {
	tb.Helper()
	b, err := c.Append(nil, reflect.ValueOf(&r).Elem())
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestSamplesRoundTrip: every sample decodes back to itself.
func TestSamplesRoundTrip(t *testing.T) {
	c := testCodec(t)
	for i, r := range fuzzSamples() {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			b := encodeSample(t, c, r)
			var got fuzzRow
			if err := c.Decode(b, reflect.ValueOf(&got).Elem()); err != nil {
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
		c, err := New(sch)
		if err != nil {
			t.Fatal(err)
		}
		return c.Fingerprint()
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

// pinnedRow has only types of the standard library and GORM, so that its
// fingerprint does not depend on the package that declares it.
type pinnedRow struct {
	ID    uint `gorm:"primaryKey"`
	I8    int8
	I64   int64
	U16   uint16
	F32   float32
	F64   float64
	Flag  bool
	Name  string
	Blob  []byte
	Empty []byte
	At    time.Time
	Zoned time.Time
	PI    *int64
	PNil  *string
	NS    sql.NullString
	NT    sql.NullTime
	NI    sql.Null[int32]
	Meta  map[string]any    `gorm:"serializer:json"`
	Gob   map[string]int    `gorm:"serializer:gob"`
	Unix  int64             `gorm:"serializer:unixtime"`
	Arr   []string          `gorm:"type:text[]"`
	Attrs map[string]string `gorm:"type:hstore"`
	gorm.DeletedAt
}

// TestWireFormatIsPinned: the fingerprint and the encoding of a known row
// are the bytes earlier builds wrote to Redis, and those bytes decode to the
// row. A change here is a wire-format change: a new revision and a
// CHANGELOG entry, never an edit of the expected bytes alone.
func TestWireFormatIsPinned(t *testing.T) {
	const (
		wantFP  = "b67397702984c44e"
		wantRow = "dc00172ad080d38000000000000000cdffffca3fc00000cbc002000000000000c3a3416e6ec4030001ffc40093ce65eda7f5" +
			"ce075bca000095ce65eda7f5ce075bca0002d1cfc7a358595afbc09205a178920693ce65eda7f5ce075bca00009201079205" +
			"b67b2261223a2262222c226b223a5b312c6e756c6c5d7d9204c4160d7f040102ff8000010c0104000007ff800001016102" +
			"920693ce6553f1000000c40492a161a0c40581a16ba176920693ce65eda7f5ce075bca0000"
	)
	sch, err := schema.Parse(&pinnedRow{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		t.Fatal(err)
	}
	sch.Table = "pinned"
	c, err := New(sch)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString([]byte(c.Fingerprint())); got != wantFP {
		t.Errorf("fingerprint %s, want %s", got, wantFP)
	}
	at := time.Date(2024, 3, 10, 12, 30, 45, 123456000, time.UTC)
	n := int64(-5)
	row := pinnedRow{
		ID: 42, I8: -128, I64: -1 << 63, U16: 65535, F32: 1.5, F64: -2.25, Flag: true, Name: "Ann",
		Blob: []byte{0, 1, 0xff}, Empty: []byte{}, At: at, Zoned: at.In(time.FixedZone("XYZ", -12345)), PI: &n,
		NS: sql.NullString{String: "x", Valid: true}, NT: sql.NullTime{Time: at, Valid: true},
		NI: sql.Null[int32]{V: 7, Valid: true}, Meta: map[string]any{"k": []any{1.0, nil}, "a": "b"},
		Gob: map[string]int{"a": 1}, Unix: 1700000000, Arr: []string{"a", ""}, Attrs: map[string]string{"k": "v"},
		DeletedAt: gorm.DeletedAt{Time: at, Valid: true},
	}
	b, err := c.Append([]byte("header"), reflect.ValueOf(&row).Elem())
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != hex.EncodeToString([]byte("header"))+wantRow {
		t.Errorf("encoding\n%s, want\nheader+%s", got, wantRow)
	}
	want, err := hex.DecodeString(wantRow)
	if err != nil {
		t.Fatal(err)
	}
	var got pinnedRow
	if err := c.Decode(want, reflect.ValueOf(&got).Elem()); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, row) {
		t.Fatalf("pinned bytes decode to\n%+v, want\n%+v", got, row)
	}
}
