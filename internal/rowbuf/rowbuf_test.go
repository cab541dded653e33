package rowbuf

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"testing"
	"time"
)

var when = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func sample() *Buffer {
	return &Buffer{
		Columns: []Column{
			{Name: "id", ScanType: reflect.TypeOf(int64(0)), DatabaseType: "INT8", Nullable: false, HasNullable: true},
			{Name: "name", ScanType: reflect.TypeOf(""), DatabaseType: "VARCHAR", Length: 40, HasLength: true, Nullable: true, HasNullable: true},
			{Name: "price", DatabaseType: "NUMERIC", Precision: 10, Scale: 2, HasDecimal: true},
			{Name: "at", ScanType: reflect.TypeOf(time.Time{}), DatabaseType: "TIMESTAMPTZ"},
		},
		Values: [][]driver.Value{
			{int64(1), "one", []byte("1.50"), when},
			{int64(2), nil, []byte("2.00"), nil},
		},
	}
}

func TestRowsScanAsTheDriverValuesWould(t *testing.T) {
	rows, err := sample().Rows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type row struct {
		id    int
		name  sql.NullString
		price string
		at    sql.NullTime
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.name, &r.price, &r.at); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []row{
		{1, sql.NullString{String: "one", Valid: true}, "1.50", sql.NullTime{Time: when, Valid: true}},
		{2, sql.NullString{}, "2.00", sql.NullTime{}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rows = %+v, want %+v", got, want)
	}
}

func TestRowsDescribeTheColumnsAsGiven(t *testing.T) {
	b := sample()
	rows, err := b.Rows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	names, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(names, []string{"id", "name", "price", "at"}) {
		t.Errorf("columns = %q", names)
	}
	types, err := rows.ColumnTypes()
	if err != nil {
		t.Fatal(err)
	}
	got := ColumnsOf(types)
	want := b.Columns
	want[2].ScanType = reflect.TypeOf((*any)(nil)).Elem() // none given: any, as database/sql says
	if !reflect.DeepEqual(got, want) {
		t.Errorf("column types = %+v\nwant %+v", got, want)
	}
}

func TestSeveralRowsMayBeOpenAtOnce(t *testing.T) {
	ctx := context.Background()
	var open []*sql.Rows
	for i := 0; i < 10; i++ { // more than the idle connections kept
		r, err := sample().Rows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, r)
	}
	for round := 0; round < 2; round++ {
		for i, r := range open {
			if !r.Next() {
				t.Fatalf("rows %d ended early: %v", i, r.Err())
			}
			var id int
			var rest [3]any
			if err := r.Scan(&id, &rest[0], &rest[1], &rest[2]); err != nil {
				t.Fatal(err)
			}
			if id != round+1 {
				t.Errorf("rows %d: id %d in round %d", i, id, round)
			}
		}
	}
	for _, r := range open {
		if r.Next() {
			t.Error("a third row")
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAnEmptyBufferHasColumnsAndNoRows(t *testing.T) {
	b := sample()
	b.Values = nil
	rows, err := b.Rows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if names, _ := rows.Columns(); len(names) != 4 {
		t.Errorf("columns = %q", names)
	}
	if rows.Next() {
		t.Error("a row from an empty buffer")
	}
	if err := rows.Err(); err != nil {
		t.Error(err)
	}
}

func TestAMalformedRowIsAnError(t *testing.T) {
	b := sample()
	b.Values = [][]driver.Value{{int64(1)}}
	rows, err := b.Rows(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if rows.Next() {
		t.Fatal("a malformed row was served")
	}
	if rows.Err() == nil {
		t.Error("no error for a row shorter than its columns")
	}
}

func TestTheDriverServesOnlyBuffers(t *testing.T) {
	ctx := context.Background()
	db := bufDB()
	for name, args := range map[string][]any{
		"no argument":      nil,
		"another argument": {42},
		"two arguments":    {sample(), sample()},
		"a nil buffer":     {(*Buffer)(nil)},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := db.QueryContext(ctx, "", args...); !errors.Is(err, errBufOnly) {
				t.Errorf("err = %v, want errBufOnly", err)
			}
		})
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM t"); err == nil {
		t.Error("an Exec was served")
	}
	if _, err := db.BeginTx(ctx, nil); !errors.Is(err, errBufOnly) {
		t.Errorf("BeginTx: err = %v, want errBufOnly", err)
	}
}

func TestACancelledContextOpensNoRows(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sample().Rows(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}
