package writethrough_test

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// Promise P7: a cached read returns exactly what the same read from the
// database returns. Every case writes a row with GORM (Create, then an
// Update that goes through the write path), reads it with Cached (a hit: no
// SQL), reads it straight from the database, and compares the two with
// reflect.DeepEqual; then it invalidates the key and checks that a miss
// fills the key with the same row.

// Money is a custom Scanner/Valuer stored as bigint (cents).
type Money struct{ Cents int64 }

func (m Money) Value() (driver.Value, error) { return m.Cents, nil }

func (m *Money) Scan(v any) error {
	switch x := v.(type) {
	case int64:
		m.Cents = x
	case nil:
		m.Cents = 0
	default:
		return fmt.Errorf("money: cannot scan %T", v)
	}
	return nil
}

// Price is a custom Scanner/Valuer stored as text ("12.34 EUR").
type Price struct {
	Units, Cents int64
	Currency     string
}

func (p Price) Value() (driver.Value, error) {
	return fmt.Sprintf("%d.%02d %s", p.Units, p.Cents, p.Currency), nil
}

func (p *Price) Scan(v any) error {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	default:
		return fmt.Errorf("price: cannot scan %T", v)
	}
	num, cur, ok := strings.Cut(s, " ")
	whole, frac, ok2 := strings.Cut(num, ".")
	if !ok || !ok2 {
		return fmt.Errorf("price: bad text %q", s)
	}
	var err error
	if p.Units, err = strconv.ParseInt(whole, 10, 64); err != nil {
		return err
	}
	if p.Cents, err = strconv.ParseInt(frac, 10, 64); err != nil {
		return err
	}
	p.Currency = cur
	return nil
}

// JSONMap is a JSON column: a map with Value and Scan.
type JSONMap map[string]any

func (m JSONMap) Value() (driver.Value, error) {
	if m == nil {
		return nil, nil
	}
	b, err := json.Marshal(m)
	return string(b), err
}

func (m *JSONMap) Scan(v any) error {
	var b []byte
	switch x := v.(type) {
	case nil:
		*m = nil
		return nil
	case string:
		b = []byte(x)
	case []byte:
		b = x
	default:
		return fmt.Errorf("jsonmap: cannot scan %T", v)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	*m = out
	return nil
}

// JSONRaw is a JSON column kept as raw bytes.
type JSONRaw json.RawMessage

func (r JSONRaw) Value() (driver.Value, error) {
	if r == nil {
		return nil, nil
	}
	return []byte(r), nil
}

func (r *JSONRaw) Scan(v any) error {
	switch x := v.(type) {
	case nil:
		*r = nil
	case string:
		*r = JSONRaw(x)
	case []byte:
		*r = append(JSONRaw(nil), x...)
	default:
		return fmt.Errorf("jsonraw: cannot scan %T", v)
	}
	return nil
}

// ZonedTime is a custom Scanner/Valuer that keeps its times in a named
// location, whatever location the driver gives.
type ZonedTime struct{ time.Time }

var newYork = func() *time.Location {
	loc, err := time.LoadLocation("America/New_York")
	if err != nil {
		return time.FixedZone("EST5EDT", -5*3600)
	}
	return loc
}()

func (z ZonedTime) Value() (driver.Value, error) { return z.Time, nil }

func (z *ZonedTime) Scan(v any) error {
	t, ok := v.(time.Time)
	if !ok {
		return fmt.Errorf("zonedtime: cannot scan %T", v)
	}
	z.Time = t.In(newYork)
	return nil
}

// Status is a named string type.
type Status string

// Level is a named integer type.
type Level int16

// p7Meta is stored through GORM's JSON serializer.
type p7Meta struct {
	At    time.Time      `json:"at"`
	Tags  []string       `json:"tags"`
	Extra map[string]any `json:"extra"`
	Count *int           `json:"count"`
}

type p7Time struct {
	ID        uint `gorm:"primaryKey" cache:"ttl:10m"`
	Note      string
	TZ        time.Time `gorm:"type:timestamptz"`
	Naive     time.Time `gorm:"type:timestamp without time zone"`
	TZ3       time.Time `gorm:"type:timestamptz(3)"`
	Ptr       *time.Time
	NaivePtr  *time.Time `gorm:"type:timestamp without time zone"`
	CreatedAt time.Time
	UpdatedAt time.Time
}

type p7Nil struct {
	ID    uint `gorm:"primaryKey" cache:"ttl:10m"`
	Note  string
	Bytes []byte
	Str   *string
	Int   *int64
	Bool  *bool
	Float *float64
	Uint  *uint32
	When  *time.Time
}

type p7Null struct {
	ID     uint `gorm:"primaryKey" cache:"ttl:10m"`
	Note   string
	S      sql.NullString
	I64    sql.NullInt64
	I32    sql.NullInt32
	I16    sql.NullInt16
	Byte   sql.NullByte
	T      sql.NullTime
	Naive  sql.NullTime `gorm:"type:timestamp without time zone"`
	B      sql.NullBool
	F      sql.NullFloat64
	GenInt sql.Null[int64]
	GenStr sql.Null[string]
}

type p7Custom struct {
	ID     uint `gorm:"primaryKey" cache:"ttl:10m"`
	Note   string
	Money  Money
	MoneyP *Money
	Price  Price             `gorm:"type:text"`
	Doc    JSONMap           `gorm:"type:jsonb"`
	DocTxt JSONMap           `gorm:"type:json"`
	Raw    JSONRaw           `gorm:"type:jsonb"`
	Meta   p7Meta            `gorm:"serializer:json"`
	MetaP  *p7Meta           `gorm:"serializer:json"`
	List   []int             `gorm:"serializer:json"`
	Map    map[string]string `gorm:"serializer:json"`
	Unix   int64             `gorm:"serializer:unixtime;type:timestamptz"`
	Zoned  ZonedTime         `gorm:"type:timestamptz"`
	RawMsg json.RawMessage   `gorm:"type:jsonb"`
}

type P7Audit struct {
	By  string
	At  time.Time
	Rev *int
}

type P7Address struct {
	Street string
	City   *string
}

type p7Embed struct {
	ID uint `gorm:"primaryKey" cache:"ttl:10m"`
	P7Audit
	*P7Address
	Note    string
	Billing P7Address  `gorm:"embedded;embeddedPrefix:billing_"`
	Ship    *P7Address `gorm:"embedded;embeddedPrefix:ship_"`
	gorm.DeletedAt
}

type p7Soft struct {
	ID        uint `gorm:"primaryKey" cache:"ttl:10m"`
	Note      string
	DeletedAt gorm.DeletedAt `gorm:"index"`
}

type p7Num struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Note    string
	U       uint
	U8      uint8
	U16     uint16
	U32     uint32
	U64     uint64
	I8      int8
	I16     int16
	I32     int32
	I64     int64
	F32     float32
	F64     float64
	Numeric float64 `gorm:"type:numeric(20,6)"`
	Decimal string  `gorm:"type:numeric(30,10)"`
	Flag    bool
	Status  Status
	Level   Level
	Char    string `gorm:"type:char(5)"`
	Text    string `gorm:"type:text"`
}

type p7UUID struct {
	ID   string `gorm:"type:uuid;primaryKey;default:gen_random_uuid()" cache:"ttl:10m"`
	Note string
	Body []byte
}

type p7Composite struct {
	Tenant string `gorm:"primaryKey" cache:"ttl:10m"`
	Seq    int64  `gorm:"primaryKey;autoIncrement:false"`
	Note   string
	At     time.Time
}

// p7Case is one round trip, typed by the model it builds.
type p7Case struct {
	name  string
	model any
	run   func(t *testing.T, e *env)
}

// roundTrip builds a case for row (a *T): Create, Update("note"), then the
// hit, the miss-then-fill and the Get[T] checks.
func roundTrip[T any](name string, row *T, update map[string]any) p7Case {
	return p7Case{name: name, model: new(T), run: func(t *testing.T, e *env) {
		ctx := context.Background()
		require.NoError(t, e.db.Create(row).Error)
		if update == nil {
			update = map[string]any{}
		}
		if _, ok := update["note"]; !ok {
			update["note"] = "updated"
		}
		require.NoError(t, e.db.Model(keyOnly(t, e.db, row)).Updates(update).Error)

		// First by the key on the destination. A composite key is read with
		// Take: First adds ORDER BY the primary key, which the read planner
		// serves only for single-column keys (a bypass, not a wrong answer).
		first := func(db *gorm.DB, dest *T) error {
			if len(pkFields(t, e.db, row)) > 1 {
				return db.Take(dest).Error
			}
			return db.First(dest).Error
		}
		readDB := func() T {
			t.Helper()
			want := keyOnly(t, e.db, row)
			require.NoError(t, first(e.db, want))
			return *want
		}
		hit := func(what string) T {
			t.Helper()
			got := keyOnly(t, e.db, row)
			before, hits := e.sqls.Load(), e.p.Stats().Hits
			require.NoError(t, first(e.db.Scopes(writethrough.Cached), got))
			require.Equal(t, before, e.sqls.Load(), "%s: the cached read must be a hit (no SQL)", what)
			require.Equal(t, hits+1, e.p.Stats().Hits, what)
			return *got
		}

		// After the write path: the row the write installed.
		got := hit("after write")
		want := readDB()
		require.Equal(t, want, got, "cached read after the write differs from the database read")

		// Miss, fill, hit.
		require.NoError(t, writethrough.Invalidate(e.db, keyOnly(t, e.db, row)))
		fills := e.p.Stats().Fills
		filled := keyOnly(t, e.db, row)
		require.NoError(t, first(e.db.Scopes(writethrough.Cached), filled))
		require.Equal(t, fills+1, e.p.Stats().Fills, "the miss must fill the key")
		require.Equal(t, want, *filled, "the miss's own result differs from the database read")
		got = hit("after fill")
		require.Equal(t, want, got, "cached read after a fill differs from the database read")

		// The typed fast path decodes the same bytes.
		hits := e.p.Stats().Hits
		before := e.sqls.Load()
		g, err := writethrough.Get[T](ctx, e.db, keyOnly(t, e.db, row))
		require.NoError(t, err)
		require.Equal(t, before, e.sqls.Load(), "Get must be a hit")
		require.Equal(t, hits+1, e.p.Stats().Hits)
		require.Equal(t, want, g, "Get differs from the database read")
		require.Zero(t, e.p.Stats().DecodeErrors)
	}}
}

// pkFields returns the primary-key fields of model.
func pkFields(t testing.TB, db *gorm.DB, model any) []*schema.Field {
	t.Helper()
	stmt := &gorm.Statement{DB: db}
	require.NoError(t, stmt.Parse(model))
	return stmt.Schema.PrimaryFields
}

// keyOnly returns a new *T holding only row's primary key.
func keyOnly[T any](t testing.TB, db *gorm.DB, row *T) *T {
	t.Helper()
	out := new(T)
	src, dst := reflect.ValueOf(row).Elem(), reflect.ValueOf(out).Elem()
	for _, f := range pkFields(t, db, row) {
		v, zero := f.ValueOf(context.Background(), src)
		require.False(t, zero, "primary key %s not set", f.Name)
		require.NoError(t, f.Set(context.Background(), dst, v))
	}
	return out
}

func p7Cases() []p7Case {
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		kolkata = time.FixedZone("IST", 5*3600+1800)
	}
	whole := time.Date(2024, 3, 10, 12, 30, 45, 0, time.UTC)
	frac := time.Date(2024, 3, 10, 12, 30, 45, 123456000, time.UTC)
	nanos := time.Date(2024, 3, 10, 12, 30, 45, 123456789, time.UTC)
	inZone := time.Date(2024, 7, 1, 23, 59, 59, 999999000, kolkata)
	fixed := time.Date(2023, 1, 2, 3, 4, 5, 600000000, time.FixedZone("", -7*3600))
	before1970 := time.Date(1901, 12, 13, 20, 45, 52, 1000, time.UTC)
	meta := p7Meta{
		At:    time.Date(2024, 5, 6, 7, 8, 9, 10, time.FixedZone("", 2*3600)),
		Tags:  []string{"a", "", "c"},
		Extra: map[string]any{"n": 1.5, "nested": map[string]any{"x": []any{1.0, "y", nil, true}}, "null": nil},
		Count: ptr(3),
	}
	return []p7Case{
		// time.Time
		roundTrip("time/whole seconds", &p7Time{TZ: whole, Naive: whole, TZ3: whole}, nil),
		roundTrip("time/microseconds", &p7Time{TZ: frac, Naive: frac, TZ3: frac, Ptr: &frac, NaivePtr: &frac}, nil),
		roundTrip("time/nanoseconds truncated by the database", &p7Time{TZ: nanos, Naive: nanos, TZ3: nanos}, nil),
		roundTrip("time/written in a named zone", &p7Time{TZ: inZone, Naive: inZone, TZ3: inZone, Ptr: &inZone}, nil),
		roundTrip("time/written in a fixed zone", &p7Time{TZ: fixed, Naive: fixed, TZ3: fixed, Ptr: &fixed}, nil),
		roundTrip("time/before 1970", &p7Time{TZ: before1970, Naive: before1970, TZ3: before1970}, nil),
		roundTrip("time/zero", &p7Time{}, nil),
		roundTrip("time/zero pointer target", &p7Time{Ptr: &time.Time{}, NaivePtr: &time.Time{}}, nil),
		roundTrip("time/update sets a pointer to NULL", &p7Time{TZ: whole, Ptr: &whole}, map[string]any{"ptr": nil}),

		// nil versus empty, pointers
		roundTrip("nil/all nil", &p7Nil{}, nil),
		roundTrip("nil/all empty", &p7Nil{Bytes: []byte{}, Str: ptr(""), Int: ptr(int64(0)), Bool: ptr(false), Float: ptr(0.0), Uint: ptr(uint32(0)), When: &time.Time{}}, nil),
		roundTrip("nil/all set", &p7Nil{Bytes: []byte{0, 1, 2, 0xff}, Str: ptr("x"), Int: ptr(int64(-42)), Bool: ptr(true), Float: ptr(2.5), Uint: ptr(uint32(7)), When: &frac}, nil),
		roundTrip("nil/update empties bytes", &p7Nil{Bytes: []byte("abc")}, map[string]any{"bytes": []byte{}}),
		roundTrip("nil/update nils bytes", &p7Nil{Bytes: []byte("abc")}, map[string]any{"bytes": nil}),

		// sql.Null*
		roundTrip("null/invalid", &p7Null{}, nil),
		roundTrip("null/valid zero values", &p7Null{
			S: sql.NullString{Valid: true}, I64: sql.NullInt64{Valid: true}, I32: sql.NullInt32{Valid: true},
			I16: sql.NullInt16{Valid: true}, Byte: sql.NullByte{Valid: true}, T: sql.NullTime{Valid: true},
			Naive: sql.NullTime{Valid: true}, B: sql.NullBool{Valid: true}, F: sql.NullFloat64{Valid: true},
			GenInt: sql.Null[int64]{Valid: true}, GenStr: sql.Null[string]{Valid: true},
		}, nil),
		roundTrip("null/valid", &p7Null{
			S: sql.NullString{String: "s", Valid: true}, I64: sql.NullInt64{Int64: -1 << 62, Valid: true},
			I32: sql.NullInt32{Int32: -7, Valid: true}, I16: sql.NullInt16{Int16: 300, Valid: true},
			Byte: sql.NullByte{Byte: 255, Valid: true}, T: sql.NullTime{Time: inZone, Valid: true},
			Naive: sql.NullTime{Time: frac, Valid: true}, B: sql.NullBool{Bool: true, Valid: true},
			F:      sql.NullFloat64{Float64: 1e-300, Valid: true},
			GenInt: sql.Null[int64]{V: 99, Valid: true}, GenStr: sql.Null[string]{V: "g", Valid: true},
		}, nil),

		// custom Scanner/Valuer, JSON
		roundTrip("custom/zero", &p7Custom{}, nil),
		roundTrip("custom/set", &p7Custom{
			Money: Money{Cents: 12345}, MoneyP: &Money{Cents: -1}, Price: Price{Units: 12, Cents: 34, Currency: "EUR"},
			Doc: JSONMap{"a": 1.0, "b": []any{"x", nil}, "c": map[string]any{"d": false}}, DocTxt: JSONMap{"k": "v"},
			Raw: JSONRaw(`{"z": [1, 2, {"y": null}], "a": "é"}`), Meta: meta, MetaP: &meta,
			List: []int{3, 1, 2}, Map: map[string]string{"k": "v"}, Unix: 1700000000,
			Zoned: ZonedTime{inZone}, RawMsg: json.RawMessage(`[1, "two", {"3": null}]`),
		}, nil),
		roundTrip("custom/empty collections", &p7Custom{
			Price: Price{Currency: "USD"}, Doc: JSONMap{}, Raw: JSONRaw(`{}`),
			Meta: p7Meta{Tags: []string{}, Extra: map[string]any{}}, List: []int{}, Map: map[string]string{},
			RawMsg: json.RawMessage(`{}`),
		}, nil),

		// embedded structs, gorm.DeletedAt
		roundTrip("embedded/zero", &p7Embed{}, nil),
		roundTrip("embedded/set", &p7Embed{
			P7Audit:   P7Audit{By: "ann", At: inZone, Rev: ptr(2)},
			P7Address: &P7Address{Street: "Main", City: ptr("Oslo")},
			Billing:   P7Address{Street: "Bill", City: ptr("")},
			Ship:      &P7Address{Street: "Ship"},
		}, nil),
		roundTrip("deleted_at/not deleted", &p7Soft{Note: "x"}, nil),

		// numbers, bool, named types
		roundTrip("numbers/zero", &p7Num{Decimal: "0"}, nil),
		roundTrip("numbers/extremes", &p7Num{
			U: 1 << 40, U8: 255, U16: 65535, U32: 1<<32 - 1, U64: 1<<63 - 1,
			I8: -128, I16: -32768, I32: -1 << 31, I64: -1 << 63,
			F32: 3.4028235e38, F64: -1.7976931348623157e308, Numeric: 12345.678901,
			Decimal: "12345678901234567890.0123456789", Flag: true, Status: "on", Level: -3,
			Char: "ab", Text: "multi\nline ✓ \t",
		}, nil),
		roundTrip("numbers/update by expression", &p7Num{I64: 10, F32: 0.1, Decimal: "1"}, map[string]any{
			"i64": gorm.Expr("i64 * 3"), "f32": gorm.Expr("f32 + 0.2"), "decimal": gorm.Expr("1.0 / 3"),
		}),

		// keys
		roundTrip("key/uuid string", &p7UUID{Body: []byte("b")}, nil),
		roundTrip("key/composite", &p7Composite{Tenant: "acme", Seq: 7, At: frac}, nil),
		roundTrip("key/composite with separators", &p7Composite{Tenant: "a:b%{c}", Seq: -1}, nil),
	}
}

func TestCachedReadEqualsDatabaseRead(t *testing.T) {
	for _, tc := range p7Cases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, nil, calm(), tc.model)
			tc.run(t, e)
		})
	}
}

// TestCachedReadEqualsDatabaseReadInAnotherLocalZone runs the round trips in
// a child process whose time.Local is not UTC, so that timestamptz columns
// come back from the driver in a non-UTC location.
func TestCachedReadEqualsDatabaseReadInAnotherLocalZone(t *testing.T) {
	const childEnv = "WRITETHROUGH_P7_CHILD"
	if os.Getenv(childEnv) != "" {
		_, off := time.Now().Zone()
		require.NotZero(t, off, "the child must run with a non-UTC time.Local")
		TestCachedReadEqualsDatabaseRead(t)
		return
	}
	testenv.SkipShort(t) // the child needs the servers
	if _, err := time.LoadLocation("America/St_Johns"); err != nil {
		t.Skip("no time zone database:", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCachedReadEqualsDatabaseReadInAnotherLocalZone$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1", "TZ=America/St_Johns")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child with TZ=America/St_Johns failed: %v\n%s", err, out)
	}
	passed := strings.Count(string(out), "--- PASS: TestCachedReadEqualsDatabaseReadInAnotherLocalZone/")
	assert.Equal(t, len(p7Cases()), passed, "every round trip must run and pass in the child")
}

// TestTimeKeepsLocationAndPrecision checks the time column the driver hands
// back: the location pointer as well as the instant.
func TestTimeKeepsLocationAndPrecision(t *testing.T) {
	e := setup(t, nil, calm(), &p7Time{})
	at := time.Date(2024, 3, 10, 12, 30, 45, 123456000, time.UTC)
	row := p7Time{TZ: at, Naive: at, TZ3: at}
	require.NoError(t, e.db.Create(&row).Error)
	var got p7Time
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, row.ID).Error)
	require.Equal(t, before, e.sqls.Load())
	assert.Same(t, time.Local, got.TZ.Location(), "timestamptz comes back in time.Local, as the driver returns it")
	assert.Same(t, time.UTC, got.Naive.Location(), "timestamp without time zone comes back in UTC")
	assert.Equal(t, 123456000, got.TZ.Nanosecond())
	assert.Equal(t, 123000000, got.TZ3.Nanosecond(), "timestamptz(3) keeps milliseconds")
	assert.True(t, at.Equal(got.TZ))
}

// TestSoftDeletedRowIsNotFoundFromTheCache: gorm.DeletedAt set by a soft
// delete makes a scoped cached read report not found, as the database does.
func TestSoftDeletedRowIsNotFoundFromTheCache(t *testing.T) {
	e := setup(t, nil, calm(), &p7Soft{})
	row := p7Soft{Note: "x"}
	require.NoError(t, e.db.Create(&row).Error)
	require.NoError(t, e.db.Delete(&row).Error)
	var got p7Soft
	errDB := e.db.First(&got, row.ID).Error
	require.ErrorIs(t, errDB, gorm.ErrRecordNotFound)
	err := e.db.Scopes(writethrough.Cached).First(&got, row.ID).Error
	require.True(t, errors.Is(err, gorm.ErrRecordNotFound), "got %v", err)
	var unscoped p7Soft
	require.NoError(t, e.db.Unscoped().First(&unscoped, row.ID).Error)
	assert.True(t, unscoped.DeletedAt.Valid)
}

// P6: undecodable bytes in Redis are a miss. Corrupt, truncated and garbage
// entries are deleted (or replaced by a fresh fill); an entry of another
// format version or another build of the model (a rolling deploy) is left
// alone and the read goes to the database.

type badEntryCase struct {
	name    string
	foreign bool // well-formed for another format version or build: left alone
	mutate  func(valid []byte) []byte
	skip    string // a known gap, reported where it belongs
}

func badEntryCases(t testing.TB) []badEntryCase {
	const hdr = 27 // magic, version, state, 16-byte token, 8-byte fingerprint
	withByte := func(i int, c byte) func([]byte) []byte {
		return func(v []byte) []byte {
			out := bytes.Clone(v)
			out[i] = c
			return out
		}
	}
	headerPlus := func(row ...byte) func([]byte) []byte {
		return func(v []byte) []byte { return append(bytes.Clone(v[:hdr]), row...) }
	}
	wrongTypes := func(v []byte) []byte {
		// An array of the right length whose every element is a string.
		n, _, ok := arrayLen(v[hdr:])
		require.True(t, ok, "a committed row is a msgpack array")
		elems := make([]any, n)
		for i := range elems {
			elems[i] = "x"
		}
		b, err := msgpack.Marshal(elems)
		require.NoError(t, err)
		return append(bytes.Clone(v[:hdr]), b...)
	}
	return []badEntryCase{
		{name: "garbage", mutate: func([]byte) []byte { return []byte("this is not a cache entry") }},
		{name: "empty value", mutate: func([]byte) []byte { return []byte{} }},
		{name: "magic only", mutate: func([]byte) []byte { return []byte{'w'} }},
		{name: "truncated header", mutate: func(v []byte) []byte { return bytes.Clone(v[:hdr-1]) }},
		{name: "header without row", mutate: func(v []byte) []byte { return bytes.Clone(v[:hdr]) }},
		{name: "truncated row", mutate: func(v []byte) []byte { return bytes.Clone(v[:len(v)-3]) }},
		{name: "row with trailing bytes", mutate: func(v []byte) []byte { return append(bytes.Clone(v), 0) }},
		{name: "row of the wrong arity", mutate: headerPlus(0x91, 0x01)},
		{name: "row of the wrong types", mutate: wrongTypes},
		{name: "row with a reserved code", mutate: headerPlus(0xc1)},
		{name: "row claiming 4 GiB", mutate: headerPlus(0xdd, 0xff, 0xff, 0xff, 0xff)},
		{name: "bin claiming 4 GiB", mutate: headerPlus(0x91, 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00)},
		{name: "unknown state", mutate: withByte(2, 'X')},
		{name: "wrong magic", mutate: withByte(0, 'W')},
		{name: "pending without its writer tokens", mutate: func(v []byte) []byte {
			out := bytes.Clone(v[:hdr])
			out[2] = writethrough.StatePending
			return append(out, 0, 5) // flags 0, five writers, no tokens
		}},
		{name: "other format version", foreign: true, mutate: withByte(1, 2)},
		{name: "other format version, any body", foreign: true, mutate: func([]byte) []byte { return []byte("w\x07whatever") }},
		{name: "wrong fingerprint", foreign: true, mutate: func(v []byte) []byte {
			out := bytes.Clone(v)
			for i := 19; i < hdr; i++ {
				out[i] ^= 0xff
			}
			return out
		}},
	}
}

// arrayLen reads a msgpack array header.
func arrayLen(b []byte) (n, hdr int, ok bool) {
	switch {
	case len(b) > 0 && b[0]&0xf0 == 0x90:
		return int(b[0] & 0x0f), 1, true
	case len(b) >= 3 && b[0] == 0xdc:
		return int(b[1])<<8 | int(b[2]), 3, true
	}
	return 0, 0, false
}

func TestUndecodableEntriesAreAMissAndHealed(t *testing.T) {
	readers := []struct {
		name string
		read func(e *env, id uint) (User, error)
	}{
		{"Cached First", func(e *env, id uint) (User, error) {
			var u User
			err := e.db.Scopes(writethrough.Cached).First(&u, id).Error
			return u, err
		}},
		{"Get", func(e *env, id uint) (User, error) {
			return writethrough.Get[User](context.Background(), e.db, id)
		}},
		{"Cached Find of two keys", func(e *env, id uint) (User, error) {
			var us []User
			err := e.db.Scopes(writethrough.Cached).Find(&us, []uint{id, id + 1}).Error
			if err != nil {
				return User{}, err
			}
			if len(us) != 2 {
				return User{}, fmt.Errorf("Find returned %d rows, want 2", len(us))
			}
			for _, u := range us {
				if u.ID == id {
					return u, nil
				}
			}
			return User{}, fmt.Errorf("Find did not return row %d", id)
		}},
	}
	for _, r := range readers {
		for _, tc := range badEntryCases(t) {
			t.Run(r.name+"/"+tc.name, func(t *testing.T) {
				if tc.skip != "" {
					t.Skip(tc.skip)
				}
				t.Parallel()
				ctx := context.Background()
				e := setup(t, nil, calm())
				u := User{Email: "bad@x", Name: "Bea", Balance: 7}
				require.NoError(t, e.db.Create(&u).Error)
				other := User{Email: "other@x", Name: "Oz"}
				require.NoError(t, e.db.Create(&other).Error)
				require.Equal(t, u.ID+1, other.ID)
				require.NoError(t, e.db.Model(&u).Update("balance", 8).Error)
				key := e.key("users", u.ID)
				valid, err := e.rdb.Get(ctx, key).Bytes()
				require.NoError(t, err)
				bad := tc.mutate(valid)
				require.NoError(t, e.rdb.Set(ctx, key, bad, 0).Err())

				var want User
				require.NoError(t, e.db.First(&want, u.ID).Error)
				decodeErrors := e.p.Stats().DecodeErrors

				got, err := r.read(e, u.ID)
				require.NoError(t, err, "bad bytes in Redis must never fail a read")
				got.finds, want.finds = 0, 0
				require.Equal(t, want, got, "the read must return the database row")

				after, err := e.rdb.Get(ctx, key).Bytes()
				if tc.foreign {
					require.NoError(t, err, "another build's entry must be left alone")
					assert.Equal(t, bad, after, "another build's entry must be left alone")
					assert.Equal(t, decodeErrors, e.p.Stats().DecodeErrors, "a foreign entry is not a decode error")
					return
				}
				assert.Greater(t, e.p.Stats().DecodeErrors, decodeErrors, "DecodeErrors counts the bad entry")
				if errors.Is(err, redis.Nil) {
					return // deleted
				}
				require.NoError(t, err)
				require.NotEqual(t, bad, after, "the bad entry must not stay in Redis")
				en, perr := writethrough.ParseEntry(after)
				require.NoError(t, perr, "what replaced the bad entry must be a valid entry")
				require.Equal(t, byte(writethrough.StateCommitted), en.State, "replaced by a fresh fill")
				// And the fill serves the database row.
				before := e.sqls.Load()
				var again User
				require.NoError(t, e.db.Scopes(writethrough.Cached).First(&again, u.ID).Error)
				require.Equal(t, before, e.sqls.Load(), "the fresh fill is a hit")
				again.finds = 0
				require.Equal(t, want, again)
			})
		}
	}
}

// TestEmbeddedColumnsAreCached guards the embedded round trips against
// passing vacuously: the embedded fields are columns, and the hit holds them.
func TestEmbeddedColumnsAreCached(t *testing.T) {
	e := setup(t, nil, calm(), &p7Embed{})
	at := time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)
	row := p7Embed{
		P7Audit:   P7Audit{By: "ann", At: at, Rev: ptr(2)},
		P7Address: &P7Address{Street: "Main", City: ptr("Oslo")},
		Billing:   P7Address{Street: "Bill", City: ptr("")},
		Ship:      &P7Address{Street: "Ship"},
	}
	require.NoError(t, e.db.Create(&row).Error)
	var got p7Embed
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, row.ID).Error)
	require.Equal(t, before, e.sqls.Load())
	assert.Equal(t, "ann", got.By)
	assert.True(t, at.Equal(got.At))
	assert.Equal(t, ptr(2), got.Rev)
	require.NotNil(t, got.P7Address)
	assert.Equal(t, "Main", got.Street)
	assert.Equal(t, ptr("Oslo"), got.City)
	assert.Equal(t, ptr(""), got.Billing.City)
	require.NotNil(t, got.Ship)
	assert.Equal(t, "Ship", got.Ship.Street)
	assert.Nil(t, got.Ship.City)
}
