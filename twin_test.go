package writethrough_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// twin is one test's pair of databases, created alike: plain runs GORM
// alone, cached has the plugin installed. The rule the plugin keeps is that
// a GORM call gives the same result on both, leaves the same rows on both,
// and leaves Redis agreeing with the cached database.
type twin struct {
	plain, cached *gorm.DB
	p             *writethrough.Plugin
	rdb           *redis.Client
	prefix        string
	models        []any
	plainSQL      *atomic.Int64 // statements sent by plain
	cachedSQL     *atomic.Int64 // statements sent by cached (the plugin's own included)
}

// twinOpts configures newTwin.
type twinOpts struct {
	// gorm returns a fresh *gorm.Config for each side; nil means the default.
	// Its Logger and NowFunc are replaced.
	gorm func() *gorm.Config
	cfg  writethrough.Config
	// models are migrated on both sides, in order, and compared by rows.
	models []any
	// ddl runs on both sides after the migration (triggers, constraints).
	ddl []string
	// setup runs on both sides before the migration (SetupJoinTable).
	setup func(db *gorm.DB) error
}

// twinNow is both sides' clock, so that autoCreateTime and autoUpdateTime
// columns agree.
var twinNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newTwin(t testing.TB, o twinOpts) *twin {
	t.Helper()
	open := func() (*gorm.DB, *atomic.Int64) {
		gcfg := &gorm.Config{}
		if o.gorm != nil {
			gcfg = o.gorm()
		}
		gcfg.NowFunc = func() time.Time { return twinNow }
		return openDB(t, gcfg)
	}
	tw := &twin{models: o.models}
	tw.plain, tw.plainSQL = open()
	tw.cached, tw.cachedSQL = open()
	tw.rdb, tw.prefix = testenv.Redis(t)
	cfg := o.cfg
	if cfg.Prefix == "" {
		cfg.Prefix = tw.prefix
	}
	tw.prefix = cfg.Prefix
	if cfg.DrainInterval == 0 {
		cfg.DrainInterval = -1
	}
	tw.p = install(t, tw.cached, tw.rdb, cfg)
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		if o.setup != nil {
			require.NoError(t, o.setup(db))
		}
		require.NoError(t, db.AutoMigrate(o.models...))
		for _, stmt := range o.ddl {
			require.NoError(t, db.Exec(stmt).Error, stmt)
		}
	}
	return tw
}

// result is what a call returned, in a form two databases can agree on:
// errors by message, since a driver's error values hold pointers.
type result struct {
	Value any
	Err   string
}

// res packs a value and an error for twin.same.
func res(v any, err error) result {
	r := result{Value: v}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// same runs fn on the plain and then the cached database and asserts that
// both returned the same thing. It returns the cached side's result.
func (tw *twin) same(t testing.TB, what string, fn func(db *gorm.DB) any) any {
	t.Helper()
	want := fn(tw.plain)
	got := fn(tw.cached)
	assert.Equal(t, want, got, "%s: the plugin changed what GORM returns", what)
	return got
}

// sameRows asserts that every model's table holds the same rows on both
// sides (soft-deleted rows included).
func (tw *twin) sameRows(t testing.TB) {
	t.Helper()
	for _, m := range tw.models {
		want := tw.allRows(t, tw.plain, m)
		got := tw.allRows(t, tw.cached, m)
		assert.Equal(t, want, got, "%T: the plugin changed what GORM wrote", m)
	}
}

// allRows reads a model's table, ordered by primary key, as a slice of
// column-value maps (hooks skipped, soft-deleted rows included).
func (tw *twin) allRows(t testing.TB, db *gorm.DB, model any) []map[string]any {
	t.Helper()
	sch := tw.schema(t, db, model)
	var order []string
	for _, f := range sch.PrimaryFields {
		order = append(order, f.DBName)
	}
	var rows []map[string]any
	err := db.Session(&gorm.Session{NewDB: true, SkipHooks: true}).Table(sch.Table).
		Order(strings.Join(order, ", ")).Find(&rows).Error
	require.NoError(t, err)
	for _, r := range rows {
		for k, v := range r {
			if tm, ok := v.(time.Time); ok {
				r[k] = tm.UTC()
			}
		}
	}
	return rows
}

func (tw *twin) schema(t testing.TB, db *gorm.DB, model any) *schema.Schema {
	t.Helper()
	st := &gorm.Statement{DB: db}
	require.NoError(t, st.Parse(model))
	return st.Schema
}

// settled asserts P3 at rest on the cached side: every committed entry in
// Redis holds its row as the database has it, every tombstone stands for a
// row that is absent (or soft-deleted), no key is left pending, and no entry
// sits under a key that is not its row's (another spelling of the key).
// It returns how many committed entries it compared.
func (tw *twin) settled(t testing.TB) int {
	t.Helper()
	ctx := context.Background()
	known := map[string]bool{}
	compared := 0
	for _, m := range tw.models {
		sch := tw.schema(t, tw.cached, m)
		list := reflect.New(reflect.SliceOf(sch.ModelType))
		require.NoError(t, tw.cached.Session(&gorm.Session{NewDB: true, SkipHooks: true}).
			Unscoped().Find(list.Interface()).Error)
		for i := 0; i < list.Elem().Len(); i++ {
			row := list.Elem().Index(i)
			en, err := writethrough.Inspect(ctx, tw.cached, m, row.Addr().Interface())
			if errors.Is(err, writethrough.ErrUnsupported) {
				break // not a cached model
			}
			require.NoError(t, err)
			known[en.Key] = true
			deleted := softDeleted(sch, row)
			switch en.State {
			case writethrough.EntryCommitted:
				compared++
				if deleted {
					t.Errorf("P3: %s holds a soft-deleted row", en.Key)
					continue
				}
				if diff := rowDiff(sch, row, reflect.ValueOf(en.Row).Elem()); diff != "" {
					t.Errorf("P3: %s differs from the database: %s", en.Key, diff)
				}
			case writethrough.EntryTombstone:
				if !deleted {
					t.Errorf("P3: %s is a tombstone but the row exists", en.Key)
				}
			case writethrough.EntryPending:
				t.Errorf("P3: %s is still pending at rest", en.Key)
			}
		}
	}
	var cursor uint64
	for {
		keys, next, err := tw.rdb.Scan(ctx, cursor, tw.prefix+":*", 1000).Result()
		require.NoError(t, err)
		sort.Strings(keys)
		for _, k := range keys {
			if known[k] {
				continue
			}
			raw, err := tw.rdb.Get(ctx, k).Bytes()
			if errors.Is(err, redis.Nil) {
				continue
			}
			require.NoError(t, err)
			en, err := writethrough.ParseEntry(raw)
			if err != nil {
				t.Errorf("P3: %s holds bytes that are not an entry: %v", k, err)
				continue
			}
			switch en.State {
			case writethrough.StateCommitted:
				t.Errorf("P3: %s holds a row, but no row of the database has that key", k)
			case writethrough.StatePending:
				t.Errorf("P3: %s is still pending at rest", k)
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	return compared
}

func softDeleted(sch *schema.Schema, row reflect.Value) bool {
	for _, f := range sch.Fields {
		if f.FieldType == reflect.TypeOf(gorm.DeletedAt{}) {
			v, _ := f.ValueOf(context.Background(), row)
			if d, ok := v.(gorm.DeletedAt); ok && d.Valid {
				return true
			}
		}
	}
	return false
}

// rowDiff compares two rows column by column (times by instant).
func rowDiff(sch *schema.Schema, a, b reflect.Value) string {
	var diffs []string
	for _, f := range sch.Fields {
		if f.DBName == "" {
			continue
		}
		// The field itself: ValueOf wraps serializer fields.
		va := f.ReflectValueOf(context.Background(), a).Interface()
		vb := f.ReflectValueOf(context.Background(), b).Interface()
		if ta, ok := va.(time.Time); ok {
			if tb, ok := vb.(time.Time); ok && ta.Equal(tb) {
				continue
			}
		}
		if !reflect.DeepEqual(va, vb) {
			diffs = append(diffs, fmt.Sprintf("%s: database %#v, cache %#v", f.DBName, va, vb))
		}
	}
	return strings.Join(diffs, "; ")
}

// sameJoinRows asserts that a table that is no model (a many2many join
// table) holds the same rows on both sides, ordered by order.
func (tw *twin) sameJoinRows(t testing.TB, table, order string) {
	t.Helper()
	read := func(db *gorm.DB) []map[string]any {
		var rows []map[string]any
		if err := db.Session(&gorm.Session{NewDB: true}).Table(table).Order(order).Find(&rows).Error; err != nil {
			t.Fatalf("read %s: %v", table, err)
		}
		return rows
	}
	assert.Equal(t, read(tw.plain), read(tw.cached), "%s: the plugin changed what GORM wrote", table)
}
