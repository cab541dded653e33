package writethrough_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// A zoo of column types with Value and Scan methods, serializers and
// arrays. Whatever the plugin serves from Redis must equal what GORM reads
// from the database, field by field.

// zJSON is a raw JSON document, as gorm.io/datatypes.JSON is.
type zJSON json.RawMessage

func (j zJSON) Value() (driver.Value, error) {
	if len(j) == 0 {
		return nil, nil
	}
	return string(j), nil
}

func (j *zJSON) Scan(v any) error {
	switch x := v.(type) {
	case nil:
		*j = nil
	case []byte:
		*j = append(zJSON{}, x...)
	case string:
		*j = zJSON(x)
	default:
		return fmt.Errorf("zJSON: cannot scan %T", v)
	}
	return nil
}

// zJSONMap is a JSON object, as datatypes.JSONMap is.
type zJSONMap map[string]any

func (m zJSONMap) Value() (driver.Value, error) {
	b, err := json.Marshal(map[string]any(m))
	return string(b), err
}

func (m *zJSONMap) Scan(v any) error {
	var b []byte
	switch x := v.(type) {
	case nil:
		*m = nil
		return nil
	case []byte:
		b = x
	case string:
		b = []byte(x)
	default:
		return fmt.Errorf("zJSONMap: cannot scan %T", v)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	*m = out
	return nil
}

// zPoint is a custom struct with Scan on a pointer receiver.
type zPoint struct{ X, Y int }

func (p zPoint) Value() (driver.Value, error) { return fmt.Sprintf("(%d,%d)", p.X, p.Y), nil }

func (p *zPoint) Scan(v any) error {
	s, ok := v.(string)
	if b, isBytes := v.([]byte); isBytes {
		s, ok = string(b), true
	}
	if !ok {
		return fmt.Errorf("zPoint: cannot scan %T", v)
	}
	_, err := fmt.Sscanf(s, "(%d,%d)", &p.X, &p.Y)
	return err
}

// zSecret keeps its state in an unexported field.
type zSecret struct{ v string }

func (s zSecret) Value() (driver.Value, error) { return s.v, nil }

func (s *zSecret) Scan(v any) error {
	switch x := v.(type) {
	case string:
		s.v = x
	case []byte:
		s.v = string(x)
	case nil:
		s.v = ""
	default:
		return fmt.Errorf("zSecret: cannot scan %T", v)
	}
	return nil
}

// zTextArray is a PostgreSQL text[] column, as pq.StringArray is.
type zTextArray []string

func (a zTextArray) Value() (driver.Value, error) {
	if a == nil {
		return nil, nil
	}
	q := make([]string, len(a))
	for i, s := range a {
		q[i] = `"` + s + `"`
	}
	return "{" + strings.Join(q, ",") + "}", nil
}

func (a *zTextArray) Scan(v any) error {
	var s string
	switch x := v.(type) {
	case nil:
		*a = nil
		return nil
	case string:
		s = x
	case []byte:
		s = string(x)
	default:
		return fmt.Errorf("zTextArray: cannot scan %T", v)
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	out := zTextArray{}
	if s != "" {
		for _, e := range strings.Split(s, ",") {
			out = append(out, strings.Trim(e, `"`))
		}
	}
	*a = out
	return nil
}

type zMeta struct {
	At   time.Time `json:"at"`
	Tags []string  `json:"tags"`
}

// zooGood holds types that survive the cache: its rows are served from
// Redis.
type zooGood struct {
	ID     uint       `gorm:"primaryKey" cache:"ttl:10m"`
	JSON   zJSON      `gorm:"type:jsonb"`
	JMap   zJSONMap   `gorm:"type:jsonb"`
	Point  zPoint     `gorm:"type:text"`
	PPoint *zPoint    `gorm:"type:text"`
	Secret zSecret    `gorm:"type:text"`
	Tags   zTextArray `gorm:"type:text[]"`
	UID    UUID       `gorm:"type:uuid"`
	Blob   []byte
	NS     sql.NullString
	NT     sql.NullTime
	NI     sql.Null[int64]
	Num    pgtype.Numeric     `gorm:"type:numeric"`
	Txt    pgtype.Text        `gorm:"type:text"`
	TS     pgtype.Timestamptz `gorm:"type:timestamptz"`
	PUID   pgtype.UUID        `gorm:"type:uuid"`
	Meta   zMeta              `gorm:"serializer:json"`
	Gob    map[string]int     `gorm:"serializer:gob;type:bytea"`
	Unix   int64              `gorm:"serializer:unixtime;type:timestamptz"`
	At     *time.Time
}

// zNilText accepts NULL: Scan(nil) marks it null. Its Value is NULL for
// the empty string. GORM never calls Scan(nil): a NULL column leaves the
// field as it was.
type zNilText struct {
	S    string
	Null bool
}

func (n zNilText) Value() (driver.Value, error) {
	if n.S == "" {
		return nil, nil
	}
	return n.S, nil
}

func (n *zNilText) Scan(v any) error {
	switch x := v.(type) {
	case nil:
		*n = zNilText{Null: true}
	case string:
		*n = zNilText{S: x}
	case []byte:
		*n = zNilText{S: string(x)}
	default:
		return fmt.Errorf("zNilText: cannot scan %T", v)
	}
	return nil
}

// zAsym's Value is bytes, but its Scan takes only the string PostgreSQL
// gives for a text column.
type zAsym struct{ S string }

func (a zAsym) Value() (driver.Value, error) { return []byte(a.S), nil }

func (a *zAsym) Scan(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("zAsym: cannot scan %T", v)
	}
	a.S = s
	return nil
}

// zKind remembers whether it scanned bytes or a string. Its Value is bytes,
// PostgreSQL gives a text column as a string: Scan(Value()) is another value.
type zKind struct {
	S         string
	FromBytes bool
}

func (k zKind) Value() (driver.Value, error) { return []byte(k.S), nil }

func (k *zKind) Scan(v any) error {
	switch x := v.(type) {
	case string:
		*k = zKind{S: x}
	case []byte:
		*k = zKind{S: string(x), FromBytes: true}
	default:
		return fmt.Errorf("zKind: cannot scan %T", v)
	}
	return nil
}

type zooNil struct {
	ID   uint     `gorm:"primaryKey" cache:"ttl:10m"`
	Note zNilText `gorm:"type:text"`
}

type zooAsym struct {
	ID uint  `gorm:"primaryKey" cache:"ttl:10m"`
	A  zAsym `gorm:"type:text"`
	K  zKind `gorm:"type:text"`
}

// get is writethrough.Get where the plugin is registered and GORM's First
// where it is not, so that a twin can compare the two.
func get[T any](ctx context.Context, db *gorm.DB, key any) (T, error) {
	if _, ok := db.Config.Plugins[writethrough.Name]; ok {
		return writethrough.Get[T](ctx, db, key)
	}
	var out T
	err := db.WithContext(ctx).First(&out, key).Error
	return out, err
}

// getMany is writethrough.GetMany, or GORM's Find in key order.
func getMany[T any](ctx context.Context, db *gorm.DB, keys ...any) ([]T, error) {
	if _, ok := db.Config.Plugins[writethrough.Name]; ok {
		return writethrough.GetMany[T](ctx, db, keys...)
	}
	var out []T
	err := db.WithContext(ctx).Order("id").Find(&out, keys).Error
	return out, err
}

func TestCachedValuerColumnsEqualDatabaseReads(t *testing.T) {
	at := time.Date(2025, 6, 7, 8, 9, 10, 123456000, time.UTC)
	num := pgtype.Numeric{}
	if err := num.Scan("12.340"); err != nil {
		t.Fatal(err)
	}
	full := zooGood{
		JSON: zJSON(`{"a": [1, 2.5, null]}`), JMap: zJSONMap{"k": "v", "n": 1.5, "l": []any{"x"}},
		Point: zPoint{1, -2}, PPoint: &zPoint{3, 4}, Secret: zSecret{"s3"}, Tags: zTextArray{"a", "b"},
		UID: UUID{1, 2, 3, 15: 16}, Blob: []byte{0, 1, 0xff},
		NS: sql.NullString{String: "x", Valid: true}, NT: sql.NullTime{Time: at, Valid: true},
		NI: sql.Null[int64]{V: -7, Valid: true}, Num: num, Txt: pgtype.Text{String: "t", Valid: true},
		TS: pgtype.Timestamptz{Time: at, Valid: true}, PUID: pgtype.UUID{Bytes: [16]byte{9, 15: 1}, Valid: true},
		Meta: zMeta{At: at, Tags: []string{"m"}}, Gob: map[string]int{"g": 1}, Unix: 1700000000, At: &at,
	}
	empty := zooGood{Blob: []byte{}, Tags: zTextArray{}, JMap: zJSONMap{}, Gob: map[string]int{}}
	zero := zooGood{}

	tw := newTwin(t, twinOpts{models: []any{&zooGood{}, &zooNil{}, &zooAsym{}}, cfg: calm()})
	created := tw.same(t, "create", func(db *gorm.DB) any {
		rows := []zooGood{full, empty, zero}
		err := db.Create(&rows).Error
		var errs []error
		errs = append(errs, err)
		errs = append(errs, db.Create(&[]zooNil{{Note: zNilText{S: "n"}}, {Note: zNilText{}}}).Error)
		errs = append(errs, db.Create(&[]zooAsym{{A: zAsym{"a"}, K: zKind{S: "k"}}}).Error)
		return fmt.Sprint(len(rows), errs)
	})
	var n int64
	tw.cached.Model(&zooGood{}).Count(&n)
	if n != 3 {
		t.Fatalf("the zoo was not created: %v", created)
	}
	read := func(db *gorm.DB) any {
		ctx := context.Background()
		var out []any
		for id := uint(1); id <= 3; id++ {
			var g zooGood
			err := db.Scopes(writethrough.Cached).First(&g, id).Error
			out = append(out, res(g, err))
		}
		var gs []zooGood
		err := db.Scopes(writethrough.Cached).Find(&gs, []uint{1, 2, 3}).Error
		// SQL gives no order without ORDER BY; hits come in key order.
		sort.Slice(gs, func(i, j int) bool { return gs[i].ID < gs[j].ID })
		out = append(out, res(gs, err))
		g, err := get[zooGood](ctx, db, 1)
		out = append(out, res(g, err))
		many, err := getMany[zooGood](ctx, db, 1, 2, 3)
		out = append(out, res(many, err))
		for id := uint(1); id <= 2; id++ {
			var n zooNil
			err := db.Scopes(writethrough.Cached).First(&n, id).Error
			out = append(out, res(n, err))
			nn, err := get[zooNil](ctx, db, id)
			out = append(out, res(nn, err))
		}
		var a zooAsym
		err = db.Scopes(writethrough.Cached).First(&a, 1).Error
		out = append(out, res(a, err))
		aa, err := get[zooAsym](ctx, db, 1)
		out = append(out, res(aa, err))
		return out
	}
	tw.same(t, "first reads (fill)", read)
	sqlBefore := tw.cachedSQL.Load()
	before := tw.p.Stats()
	tw.same(t, "second reads (hits)", read)
	after := tw.p.Stats()
	assert.Zero(t, after.DecodeErrors, "every entry in Redis decodes")
	// zooGood is served from Redis: 3 Firsts, a Find of 3, a Get and a
	// GetMany of 3 are 10 hits; zooNil's two rows 4 more. zooAsym's row
	// cannot be cached and is read in SQL: a First and a Get.
	assert.Equal(t, before.Hits+14, after.Hits, "hits")
	assert.Equal(t, sqlBefore+2, tw.cachedSQL.Load(), "only the row that cannot be cached is read in SQL")

	tw.same(t, "writes", func(db *gorm.DB) any {
		err1 := db.Model(&zooGood{ID: 1}).Updates(map[string]any{"p_point": nil, "tags": zTextArray{}}).Error
		err2 := db.Model(&zooNil{ID: 1}).Update("note", gorm.Expr("NULL")).Error
		err3 := db.Model(&zooAsym{ID: 1}).Updates(map[string]any{"a": zAsym{"b"}, "k": zKind{S: "l"}}).Error
		return fmt.Sprint(err1, err2, err3)
	})
	tw.same(t, "reads after writes", read)
	tw.same(t, "reads after writes, again", read)
	assert.Zero(t, tw.p.Stats().DecodeErrors, "every entry in Redis decodes")
	tw.sameRows(t)
	assert.Equal(t, 5, tw.settled(t), "the zooGood and zooNil rows are cached")
}
