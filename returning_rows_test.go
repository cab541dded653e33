package writethrough_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
)

// The rows a write caches come from the statement's own RETURNING on
// PostgreSQL (returning.go), and inside a transaction the keys named before
// the statement are made pending while it runs (write.go, prepareAhead).
// Every test here writes through GORM and then asserts that what the write
// left in Redis is the row as the database holds it: a committed entry
// equal to it where the write installs one, and a cached read equal to a
// database read in every case. The models' columns are set by the
// database where possible (triggers, expressions, defaults, DB-only
// columns), so that a row taken from the caller's struct, or a RETURNING
// scanned into the wrong fields, shows.

// rrItem is the table most shapes write. A BEFORE trigger (rrStampDDL)
// sets stamp from name, so the caller's struct never holds the stored row.
type rrItem struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name    string
	Stamp   string
	Touched int
	Balance int64
}

// rrStampDDL: a BEFORE trigger that changes NEW. RETURNING sees its work.
var rrStampDDL = []string{
	`CREATE FUNCTION rr_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.stamp := 'before:' || NEW.name; RETURN NEW; END $$`,
	`CREATE TRIGGER rr_stamp BEFORE INSERT OR UPDATE ON rr_items FOR EACH ROW EXECUTE FUNCTION rr_stamp()`,
}

// rrTouchDDL: an AFTER trigger that updates the row it fired for once
// more. RETURNING does not see its work: the write must re-read.
var rrTouchDDL = []string{
	`CREATE FUNCTION rr_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_trigger_depth() = 1 THEN
    UPDATE rr_items SET touched = touched + 1 WHERE id = NEW.id;
  END IF;
  RETURN NULL;
END $$`,
	`CREATE TRIGGER rr_touch AFTER INSERT OR UPDATE ON rr_items FOR EACH ROW EXECUTE FUNCTION rr_touch()`,
}

// rrPrimary is the primary-key condition of id for First: a string key is
// not taken for SQL.
func rrPrimary(col string, id any) []any { return []any{col + " = ?", id} }

// dbRow reads the row of model matching conds from the database, around
// the cache, soft-deleted rows excluded as GORM excludes them. It returns
// nil when there is none.
func dbRow(t testing.TB, db *gorm.DB, model any, conds ...any) any {
	t.Helper()
	typ := reflect.TypeOf(model).Elem()
	v := reflect.New(typ)
	err := db.Session(&gorm.Session{NewDB: true}).First(v.Interface(), conds...).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil
	}
	require.NoError(t, err)
	return v.Interface()
}

// installed asserts that the write left a committed entry for the row of
// model under key equal to the database row (what the write installed,
// before any read fills the key), and that a cached read gives the row the
// database read gives.
func installed(t testing.TB, db *gorm.DB, model any, key any, conds ...any) {
	t.Helper()
	require.NotNil(t, dbRow(t, db, model, conds...), "the row exists in the database")
	en, err := writethrough.Inspect(context.Background(), db, model, key)
	require.NoError(t, err)
	assert.Equal(t, writethrough.EntryCommitted, en.State, "%s: the write installs the row", en.Key)
	notStale(t, db, model, key, conds...)
}

// notStale asserts that Redis holds nothing for the row of model under key
// that differs from the database (absent, pending of nobody, a tombstone
// of a row that is gone, or the row itself), and that a cached read gives
// what the database read gives.
func notStale(t testing.TB, db *gorm.DB, model any, key any, conds ...any) {
	t.Helper()
	want := dbRow(t, db, model, conds...)
	en, err := writethrough.Inspect(context.Background(), db, model, key)
	require.NoError(t, err)
	switch en.State {
	case writethrough.EntryAbsent:
	case writethrough.EntryTombstone:
		assert.Nil(t, want, "%s: a tombstone for a row the database has", en.Key)
	case writethrough.EntryCommitted:
		if assert.NotNil(t, want, "%s: a row for a row the database does not have", en.Key) {
			sch := (&twin{}).schema(t, db, model)
			if d := rowDiff(sch, reflect.ValueOf(want).Elem(), reflect.ValueOf(en.Row).Elem()); d != "" {
				t.Errorf("%s: the entry differs from the database: %s", en.Key, d)
			}
		}
	default:
		t.Errorf("%s: left %v after the write ended", en.Key, en.State)
	}
	cachedEqualsDB(t, db, model, conds...)
}

// cachedEqualsDB asserts that a cached read gives exactly what a database
// read gives (the same error, or the same value field by field).
func cachedEqualsDB(t testing.TB, db *gorm.DB, model any, conds ...any) {
	t.Helper()
	typ := reflect.TypeOf(model).Elem()
	want := reflect.New(typ)
	wantErr := db.Session(&gorm.Session{NewDB: true}).First(want.Interface(), conds...).Error
	got := reflect.New(typ)
	gotErr := db.Scopes(writethrough.Cached).First(got.Interface(), conds...).Error
	assert.Equal(t, res(want.Interface(), wantErr), res(got.Interface(), gotErr), "a cached read differs from the database read")
}

// sqlDelta runs fn on both sides of tw and returns how many more
// statements the cached side sent than the plain one.
func sqlDelta(tw *twin, fn func(db *gorm.DB)) int64 {
	p0, c0 := tw.plainSQL.Load(), tw.cachedSQL.Load()
	fn(tw.plain)
	fn(tw.cached)
	return (tw.cachedSQL.Load() - c0) - (tw.plainSQL.Load() - p0)
}

func newItemTwin(t *testing.T, ddl ...[]string) *twin {
	t.Helper()
	var all []string
	for _, d := range ddl {
		all = append(all, d...)
	}
	tw := newTwin(t, twinOpts{models: []any{&rrItem{}}, ddl: all})
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		require.NoError(t, db.Create(&[]rrItem{{Name: "a", Balance: 10}, {Name: "b", Balance: 20}}).Error)
	}
	return tw
}

func TestReturningBeforeTriggerRowIsCached(t *testing.T) {
	tw := newItemTwin(t, rrStampDDL)
	installed(t, tw.cached, &rrItem{}, 1, 1)
	tw.same(t, "update", func(db *gorm.DB) any {
		it := rrItem{ID: 1}
		err := db.Model(&it).Update("name", "x").Error
		return res(it, err)
	})
	installed(t, tw.cached, &rrItem{}, 1, 1)
	assert.Equal(t, "before:x", dbRow(t, tw.cached, &rrItem{}, 1).(*rrItem).Stamp)
	// The row came from the UPDATE itself: no statement more than GORM's.
	d := sqlDelta(tw, func(db *gorm.DB) {
		require.NoError(t, db.Model(&rrItem{ID: 2}).Update("name", "y").Error)
	})
	assert.Zero(t, d, "a table with only BEFORE triggers takes its rows from RETURNING")
	installed(t, tw.cached, &rrItem{}, 2, 2)
	tw.sameRows(t)
	tw.settled(t)
}

func TestReturningAfterTriggerRereadsTheRow(t *testing.T) {
	tw := newItemTwin(t, rrTouchDDL)
	installed(t, tw.cached, &rrItem{}, 1, 1)
	d := sqlDelta(tw, func(db *gorm.DB) {
		require.NoError(t, db.Model(&rrItem{ID: 1}).Update("name", "x").Error)
	})
	assert.Equal(t, int64(1), d, "an AFTER trigger: the row is re-read after the statement")
	installed(t, tw.cached, &rrItem{}, 1, 1)
	assert.Equal(t, 2, dbRow(t, tw.cached, &rrItem{}, 1).(*rrItem).Touched, "the AFTER trigger ran on insert and update")
	tw.sameRows(t)
	tw.settled(t)
}

// TestReturningAfterTriggerCreatedAfterFirstWrite: an AFTER trigger created
// while the application runs, after the model's first write, while the
// plugin still trusts the catalog it read then (returnCheckAge). The guard
// column the statement returns sees the trigger, and the row is re-read:
// the cache equals the database. With RereadWrites every write re-reads.
func TestReturningAfterTriggerCreatedAfterFirstWrite(t *testing.T) {
	for _, reread := range []bool{false, true} {
		t.Run(fmt.Sprintf("RereadWrites=%v", reread), func(t *testing.T) {
			cfg := calm()
			cfg.RereadWrites = reread
			e := setup(t, nil, cfg, &rrItem{})
			it := rrItem{Name: "a"}
			require.NoError(t, e.db.Create(&it).Error)
			installed(t, e.db, &rrItem{}, it.ID, it.ID)
			for _, s := range rrTouchDDL {
				require.NoError(t, e.db.Exec(s).Error)
			}
			require.NoError(t, e.db.Model(&it).Update("name", "b").Error)
			assert.Equal(t, 1, dbRow(t, e.db, &rrItem{}, it.ID).(*rrItem).Touched, "the new AFTER trigger ran")
			notStale(t, e.db, &rrItem{}, it.ID, it.ID)
			// The next write no longer takes RETURNING's row either.
			require.NoError(t, e.db.Model(&it).Update("name", "c").Error)
			assert.Equal(t, 2, dbRow(t, e.db, &rrItem{}, it.ID).(*rrItem).Touched)
			notStale(t, e.db, &rrItem{}, it.ID, it.ID)
		})
	}
}

// rrMoney is a column type with Value and Scan methods: "cents currency".
type rrMoney struct {
	Cents int64
	Cur   string
}

func (m rrMoney) Value() (driver.Value, error) { return fmt.Sprintf("%d %s", m.Cents, m.Cur), nil }

func (m *rrMoney) Scan(v any) error {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	case nil:
		*m = rrMoney{}
		return nil
	default:
		return fmt.Errorf("rrMoney: cannot scan %T", v)
	}
	_, err := fmt.Sscanf(s, "%d %s", &m.Cents, &m.Cur)
	return err
}

// rrTyped has columns GORM converts on the way in and out, and the table
// has a column the struct does not (rrTypedDDL).
type rrTyped struct {
	ID    uint              `gorm:"primaryKey" cache:"ttl:10m"`
	Tags  []string          `gorm:"serializer:json"`
	Attrs map[string]string `gorm:"serializer:json"`
	Price rrMoney           `gorm:"type:text"`
	Note  *string
	Seen  time.Time
}

var rrTypedDDL = []string{
	`ALTER TABLE rr_typeds ADD COLUMN extra text NOT NULL DEFAULT 'db only'`,
	// The database decides part of every written row.
	`CREATE FUNCTION rr_typed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.tags := (COALESCE(NEW.tags::jsonb, '[]'::jsonb) || '["db"]'::jsonb)::text;
  NEW.price := NEW.price || 'X';
  NEW.extra := 'db:' || NEW.id;
  RETURN NEW;
END $$`,
	`CREATE TRIGGER rr_typed BEFORE INSERT OR UPDATE ON rr_typeds FOR EACH ROW EXECUTE FUNCTION rr_typed()`,
}

func TestReturningConvertedColumnsEqualTheDatabase(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&rrTyped{}}, ddl: rrTypedDDL})
	note := "n"
	seen := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.FixedZone("X", 3600))
	tw.same(t, "create", func(db *gorm.DB) any {
		r := rrTyped{Tags: []string{"a"}, Attrs: map[string]string{"k": "v"}, Price: rrMoney{150, "EUR"}, Note: &note, Seen: seen}
		err := db.Create(&r).Error
		return res(r, err)
	})
	installed(t, tw.cached, &rrTyped{}, 1, 1)
	row := dbRow(t, tw.cached, &rrTyped{}, 1).(*rrTyped)
	assert.Equal(t, []string{"a", "db"}, row.Tags, "the trigger's change of the JSON column")
	assert.Equal(t, rrMoney{150, "EURX"}, row.Price, "the trigger's change of the Scanner column")

	tw.same(t, "update with a struct", func(db *gorm.DB) any {
		r := rrTyped{ID: 1}
		err := db.Model(&r).Updates(rrTyped{Tags: []string{"b", "c"}, Price: rrMoney{7, "USD"}, Note: new(string)}).Error
		return res(r, err)
	})
	installed(t, tw.cached, &rrTyped{}, 1, 1)
	tw.same(t, "update of one serializer column", func(db *gorm.DB) any {
		return res(nil, db.Model(&rrTyped{ID: 1}).Updates(rrTyped{Attrs: map[string]string{"x": "y"}}).Error)
	})
	installed(t, tw.cached, &rrTyped{}, 1, 1)
	tw.same(t, "update to NULL", func(db *gorm.DB) any {
		return res(nil, db.Model(&rrTyped{ID: 1}).Select("note").Updates(rrTyped{}).Error)
	})
	installed(t, tw.cached, &rrTyped{}, 1, 1)
	var extra string
	require.NoError(t, tw.cached.Raw("SELECT extra FROM rr_typeds WHERE id = 1").Scan(&extra).Error)
	assert.Equal(t, "db:1", extra)
	tw.sameRows(t)
	tw.settled(t)
}

type rrSoft struct {
	ID        uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name      string
	DeletedAt gorm.DeletedAt
}

func TestReturningSoftDeleteByUpdateLeavesATombstone(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&rrSoft{}}})
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		require.NoError(t, db.Create(&rrSoft{Name: "a"}).Error)
	}
	installed(t, tw.cached, &rrSoft{}, 1, 1)
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	tw.same(t, "soft delete by Update", func(db *gorm.DB) any {
		tx := db.Model(&rrSoft{ID: 1}).Update("deleted_at", at)
		return res(tx.RowsAffected, tx.Error)
	})
	en, err := writethrough.Inspect(context.Background(), tw.cached, &rrSoft{}, 1)
	require.NoError(t, err)
	assert.Equal(t, writethrough.EntryTombstone, en.State, "a soft-deleted row is not found")
	tw.same(t, "cached read", func(db *gorm.DB) any {
		var r rrSoft
		return res(r, db.Scopes(writethrough.Cached).First(&r, 1).Error)
	})
	tw.same(t, "restore by Update", func(db *gorm.DB) any {
		tx := db.Unscoped().Model(&rrSoft{ID: 1}).Update("deleted_at", nil)
		return res(tx.RowsAffected, tx.Error)
	})
	installed(t, tw.cached, &rrSoft{}, 1, 1)
	tw.sameRows(t)
	tw.settled(t)
}

type rrEmbedded struct {
	gorm.Model `cache:"ttl:10m"`
	Name       string
}

// The database keeps times to the microsecond; GORM's struct keeps the
// nanoseconds of time.Now. The cached row is the database's.
func TestReturningGormModelKeepsTheDatabaseTimes(t *testing.T) {
	e := setup(t, nil, calm(), &rrEmbedded{})
	r := rrEmbedded{Name: "a"}
	require.NoError(t, e.db.Create(&r).Error)
	installed(t, e.db, &rrEmbedded{}, r.ID, r.ID)
	require.NoError(t, e.db.Model(&r).Updates(rrEmbedded{Name: "b"}).Error)
	installed(t, e.db, &rrEmbedded{}, r.ID, r.ID)
	require.NoError(t, e.db.Save(&r).Error)
	installed(t, e.db, &rrEmbedded{}, r.ID, r.ID)
	require.NoError(t, e.db.Delete(&r).Error)
	notStale(t, e.db, &rrEmbedded{}, r.ID, r.ID)
}

type rrCode struct {
	Code  string `gorm:"primaryKey" cache:"ttl:10m"`
	Name  string
	Stamp string `gorm:"default:'-'"`
}

type rrDoc struct {
	ID    string `gorm:"primaryKey;type:uuid;default:gen_random_uuid()" cache:"ttl:10m"`
	Title string
	Rev   int `gorm:"default:1"`
}

func TestReturningStringAndUUIDKeys(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&rrCode{}, &rrDoc{}}, ddl: []string{
		`CREATE FUNCTION rr_code() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.stamp := upper(NEW.name); RETURN NEW; END $$`,
		`CREATE TRIGGER rr_code BEFORE INSERT OR UPDATE ON rr_codes FOR EACH ROW EXECUTE FUNCTION rr_code()`,
	}})
	tw.same(t, "create string key", func(db *gorm.DB) any {
		return res(nil, db.Create(&rrCode{Code: "k1", Name: "a"}).Error)
	})
	installed(t, tw.cached, &rrCode{}, "k1", rrPrimary("code", "k1")...)
	tw.same(t, "update string key", func(db *gorm.DB) any {
		return res(nil, db.Model(&rrCode{Code: "k1"}).Update("name", "b").Error)
	})
	installed(t, tw.cached, &rrCode{}, "k1", rrPrimary("code", "k1")...)

	// The key comes from the database.
	var doc rrDoc
	require.NoError(t, tw.cached.Create(&doc).Error)
	require.NotEmpty(t, doc.ID)
	installed(t, tw.cached, &rrDoc{}, doc.ID, rrPrimary("id", doc.ID)...)
	require.NoError(t, tw.cached.Model(&doc).Updates(map[string]any{"title": "t", "rev": gorm.Expr("rev + 1")}).Error)
	installed(t, tw.cached, &rrDoc{}, doc.ID, rrPrimary("id", doc.ID)...)
	// Another spelling of the same UUID names the same row.
	upper := strings.ToUpper(doc.ID)
	require.NoError(t, tw.cached.Model(&rrDoc{ID: upper}).Update("title", "u").Error)
	notStale(t, tw.cached, &rrDoc{}, doc.ID, rrPrimary("id", doc.ID)...)
	assert.Equal(t, "u", dbRow(t, tw.cached, &rrDoc{}, rrPrimary("id", doc.ID)...).(*rrDoc).Title)
	tw.settled(t)
}

type rrAccount struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Owner   string
	Balance int64
}

func TestReturningAliasedTableUpdate(t *testing.T) {
	tw := newTwin(t, twinOpts{
		cfg:    writethrough.Config{Models: []any{&rrAccount{}}},
		models: []any{&rrAccount{}},
	})
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		require.NoError(t, db.Create(&[]rrAccount{{Owner: "a", Balance: 1}, {Owner: "b", Balance: 2}}).Error)
	}
	for _, id := range []uint{1, 2} {
		installed(t, tw.cached, &rrAccount{}, id, id)
	}
	tw.same(t, "aliased table, map", func(db *gorm.DB) any {
		tx := db.Table("rr_accounts AS a").Where("a.id = ?", 1).
			Updates(map[string]any{"balance": gorm.Expr("a.balance + ?", 5)})
		return res(tx.RowsAffected, tx.Error)
	})
	installed(t, tw.cached, &rrAccount{}, 1, 1)
	tw.same(t, "aliased table, model", func(db *gorm.DB) any {
		acc := rrAccount{ID: 2}
		tx := db.Table("rr_accounts a").Model(&acc).Update("balance", gorm.Expr("a.balance * 10"))
		return res(tx.RowsAffected, tx.Error)
	})
	installed(t, tw.cached, &rrAccount{}, 2, 2)
	tw.sameRows(t)
	tw.settled(t)
}

func TestReturningShapesEqualPlainGORMAndTheDatabase(t *testing.T) {
	tw := newItemTwin(t, rrStampDDL)
	ret := func(tx *gorm.DB, v any) any { return []any{v, tx.RowsAffected, res(nil, tx.Error)} }
	cases := []struct {
		name string
		run  func(db *gorm.DB) any
		keys []uint // rows that must be installed afterwards
	}{
		{"Updates(map) with gorm.Expr", func(db *gorm.DB) any {
			it := rrItem{ID: 1}
			tx := db.Model(&it).Updates(map[string]any{"balance": gorm.Expr("balance * 2 + ?", 1), "name": "e"})
			return ret(tx, it)
		}, []uint{1}},
		{"caller's RETURNING *, update", func(db *gorm.DB) any {
			it := rrItem{ID: 1}
			tx := db.Model(&it).Clauses(clause.Returning{}).Updates(map[string]any{"balance": gorm.Expr("balance + 10")})
			return ret(tx, it)
		}, []uint{1}},
		{"caller's RETURNING of one column, update", func(db *gorm.DB) any {
			it := rrItem{ID: 2}
			tx := db.Model(&it).Clauses(clause.Returning{Columns: []clause.Column{{Name: "stamp"}}}).Update("name", "r")
			return ret(tx, it)
		}, []uint{2}},
		{"caller's RETURNING, bulk update into a slice", func(db *gorm.DB) any {
			var out []rrItem
			tx := db.Model(&out).Clauses(clause.Returning{}).Where("balance > ?", 0).Update("balance", gorm.Expr("balance - 1"))
			return ret(tx, out)
		}, []uint{1, 2}},
		{"Create, auto-increment", func(db *gorm.DB) any {
			it := rrItem{Name: "c", Balance: 3}
			tx := db.Create(&it)
			return ret(tx, it)
		}, []uint{3}},
		{"Create of a slice, auto-increment", func(db *gorm.DB) any {
			its := []rrItem{{Name: "c4"}, {Name: "c5"}}
			tx := db.Create(&its)
			return ret(tx, its)
		}, []uint{4, 5}},
		{"Create with the caller's RETURNING *", func(db *gorm.DB) any {
			it := rrItem{Name: "c6"}
			tx := db.Clauses(clause.Returning{}).Create(&it)
			return ret(tx, it)
		}, []uint{6}},
		{"Create with its key", func(db *gorm.DB) any {
			it := rrItem{ID: 100, Name: "k"}
			tx := db.Create(&it)
			return ret(tx, it)
		}, []uint{100}},
		{"Save of an existing row", func(db *gorm.DB) any {
			it := rrItem{ID: 1, Name: "s", Balance: 77}
			tx := db.Save(&it)
			return ret(tx, it)
		}, []uint{1}},
		{"Save of a new row (update, then upsert)", func(db *gorm.DB) any {
			it := rrItem{ID: 200, Name: "s2", Balance: 2}
			tx := db.Save(&it)
			return ret(tx, it)
		}, []uint{200}},
		{"Create ON CONFLICT UpdateAll", func(db *gorm.DB) any {
			it := rrItem{ID: 2, Name: "ua", Balance: 5}
			tx := db.Clauses(clause.OnConflict{UpdateAll: true}).Create(&it)
			return ret(tx, it)
		}, []uint{2}},
		{"Create ON CONFLICT DO UPDATE with an expression", func(db *gorm.DB) any {
			it := rrItem{ID: 2, Name: "ignored", Balance: 1000}
			tx := db.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "id"}},
				DoUpdates: clause.Assignments(map[string]any{"balance": gorm.Expr("rr_items.balance + 1")}),
			}).Create(&it)
			return ret(tx, it)
		}, []uint{2}},
		{"Create ON CONFLICT DO NOTHING, new row", func(db *gorm.DB) any {
			it := rrItem{Name: "dn"}
			tx := db.Clauses(clause.OnConflict{DoNothing: true}).Create(&it)
			return ret(tx, it)
		}, []uint{7}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tw.same(t, tc.name, tc.run)
			for _, id := range tc.keys {
				installed(t, tw.cached, &rrItem{}, id, id)
			}
			tw.sameRows(t)
		})
	}

	// A conflict that does nothing: the caller's struct is not the row.
	t.Run("Create ON CONFLICT DO NOTHING, conflicting row", func(t *testing.T) {
		installed(t, tw.cached, &rrItem{}, 1, 1) // filled before
		tw.same(t, "do nothing", func(db *gorm.DB) any {
			it := rrItem{ID: 1, Name: "conflict", Balance: -1}
			tx := db.Clauses(clause.OnConflict{DoNothing: true}).Create(&it)
			return ret(tx, it)
		})
		notStale(t, tw.cached, &rrItem{}, 1, 1)
		tw.sameRows(t)
	})
	t.Run("PrepareStmt session", func(t *testing.T) {
		tw.same(t, "prepared update", func(db *gorm.DB) any {
			it := rrItem{ID: 2}
			tx := db.Session(&gorm.Session{PrepareStmt: true}).Model(&it).Clauses(clause.Returning{}).Update("name", "p")
			return ret(tx, it)
		})
		installed(t, tw.cached, &rrItem{}, 2, 2)
	})
	tw.settled(t)
}

func TestReturningSavepoints(t *testing.T) {
	boom := errors.New("boom")
	t.Run("nested rolled back, outer commits", func(t *testing.T) {
		tw := newItemTwin(t, rrStampDDL)
		tw.same(t, "transaction", func(db *gorm.DB) any {
			return res(nil, db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&rrItem{ID: 2}).Update("balance", 21).Error; err != nil {
					return err
				}
				_ = tx.Transaction(func(tx2 *gorm.DB) error {
					if err := tx2.Model(&rrItem{ID: 1}).Update("name", "rolled back").Error; err != nil {
						return err
					}
					return boom
				})
				return nil
			}))
		})
		tw.sameRows(t)
		notStale(t, tw.cached, &rrItem{}, 1, 1)
		assert.Equal(t, "a", dbRow(t, tw.cached, &rrItem{}, 1).(*rrItem).Name)
		installed(t, tw.cached, &rrItem{}, 2, 2)
		tw.settled(t)
	})
	t.Run("outer writes, nested writes the key again and commits", func(t *testing.T) {
		tw := newItemTwin(t, rrStampDDL)
		tw.same(t, "transaction", func(db *gorm.DB) any {
			return res(nil, db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&rrItem{ID: 1}).Update("name", "outer").Error; err != nil {
					return err
				}
				return tx.Transaction(func(tx2 *gorm.DB) error {
					return tx2.Model(&rrItem{ID: 1}).Updates(map[string]any{"name": "inner", "balance": gorm.Expr("balance + 1")}).Error
				})
			}))
		})
		tw.sameRows(t)
		installed(t, tw.cached, &rrItem{}, 1, 1)
		assert.Equal(t, "before:inner", dbRow(t, tw.cached, &rrItem{}, 1).(*rrItem).Stamp)
		tw.settled(t)
	})
	t.Run("outer writes, nested writes the key again and rolls back", func(t *testing.T) {
		tw := newItemTwin(t, rrStampDDL)
		tw.same(t, "transaction", func(db *gorm.DB) any {
			return res(nil, db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&rrItem{ID: 1}).Update("name", "outer").Error; err != nil {
					return err
				}
				_ = tx.Transaction(func(tx2 *gorm.DB) error {
					if err := tx2.Model(&rrItem{ID: 1}).Update("name", "inner").Error; err != nil {
						return err
					}
					return boom
				})
				return nil
			}))
		})
		tw.sameRows(t)
		notStale(t, tw.cached, &rrItem{}, 1, 1)
		assert.Equal(t, "outer", dbRow(t, tw.cached, &rrItem{}, 1).(*rrItem).Name)
		tw.settled(t)
	})
}

// TestReturningPrepareFails: Redis does not answer while a write makes its
// key pending, in GORM's own transaction (the prepare runs beside the
// statement) and in a transaction of the caller's (the prepare runs just
// before COMMIT). Strict rolls back with ErrCacheUnavailable; Soft commits,
// records the key in the outbox, reads it from the database meanwhile, and
// the drain leaves no old row.
func TestReturningPrepareFails(t *testing.T) {
	shapes := []struct {
		name  string
		write func(db *gorm.DB, u *User) (stmtErr, err error)
	}{
		{"GORM's transaction", func(db *gorm.DB, u *User) (error, error) {
			err := db.Model(u).Update("balance", 2).Error
			return err, err
		}},
		{"the caller's transaction", func(db *gorm.DB, u *User) (error, error) {
			var stmtErr error
			err := db.Transaction(func(tx *gorm.DB) error {
				stmtErr = tx.Model(u).Update("balance", 2).Error
				return stmtErr
			})
			return stmtErr, err
		}},
	}
	for _, sh := range shapes {
		for _, mode := range []writethrough.Mode{writethrough.Strict, writethrough.Soft} {
			t.Run(sh.name+"/"+mode.String(), func(t *testing.T) {
				e, proxy := setupBehindProxy(t, writethrough.Config{Mode: mode, BreakerThreshold: -1})
				u := User{Email: "ahead@x", Balance: 1}
				require.NoError(t, e.db.Create(&u).Error)
				installed(t, e.db, &User{}, u.ID, u.ID)
				key := e.key("users", u.ID)
				proxy.Block()
				stmtErr, err := sh.write(e.db, &u)
				proxy.Unblock()
				if mode == writethrough.Strict {
					require.ErrorIs(t, err, writethrough.ErrCacheUnavailable, "rolled back")
					if sh.name == "the caller's transaction" {
						require.NoError(t, stmtErr, "the statement needs no Redis; its COMMIT does")
					}
					assert.Equal(t, int64(1), e.dbUser(t, u.ID).Balance, "rolled back")
					notStale(t, e.db, &User{}, u.ID, u.ID)
					return
				}
				require.NoError(t, stmtErr)
				require.NoError(t, err)
				assert.Equal(t, int64(2), e.dbUser(t, u.ID).Balance, "Soft commits")
				assert.Equal(t, uint64(1), e.p.Stats().Outboxed)
				// This process reads the database while the key is in the outbox.
				cachedEqualsDB(t, e.db, &User{}, u.ID)
				n, err := e.p.Drain(context.Background())
				require.NoError(t, err)
				assert.Equal(t, 1, n)
				// What another process, which never saw the failure, finds in
				// Redis: not the old row.
				assert.NotEqual(t, byte(writethrough.StateCommitted), e.state(t, key), "the drain removed the old row")
				notStale(t, e.db, &User{}, u.ID, u.ID)
			})
		}
	}
}

// rrPicky is a column type whose Scan refuses a value the database may
// hold ("bad").
type rrPicky string

func (p rrPicky) Value() (driver.Value, error) { return string(p), nil }

func (p *rrPicky) Scan(v any) error {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	case nil:
	default:
		return fmt.Errorf("rrPicky: cannot scan %T", v)
	}
	if s == "bad" {
		return errors.New("rrPicky: refuses bad")
	}
	*p = rrPicky(s)
	return nil
}

type rrPickySoft struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
	Mood rrPicky
}

type rrPickyStrict struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m;mode:strict"`
	Name string
	Mood rrPicky
}

// TestReturningUnscannableRowIsInvalidated: the row the database holds
// cannot be scanned into the model (its Scan refuses a value written
// around GORM). The UPDATE must behave as in plain GORM (it succeeds, it
// commits) and the key be invalidated, never filled, in Soft and Strict
// mode alike: a row that cannot be scanned is not a Redis failure.
func TestReturningUnscannableRowIsInvalidated(t *testing.T) {
	for _, m := range []any{&rrPickySoft{}, &rrPickyStrict{}} {
		name := reflect.TypeOf(m).Elem().Name()
		t.Run(name, func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: []any{m}})
			table := tw.schema(t, tw.cached, m).Table
			for _, db := range []*gorm.DB{tw.plain, tw.cached} {
				v := reflect.New(reflect.TypeOf(m).Elem())
				v.Elem().FieldByName("Mood").SetString("ok")
				require.NoError(t, db.Create(v.Interface()).Error)
				require.NoError(t, db.Exec("UPDATE "+table+" SET mood = 'bad'").Error) // around GORM
			}
			tw.same(t, "update", func(db *gorm.DB) any {
				v := reflect.New(reflect.TypeOf(m).Elem())
				v.Elem().FieldByName("ID").SetUint(1)
				tx := db.Model(v.Interface()).Update("name", "x")
				return res(tx.RowsAffected, tx.Error)
			})
			tw.same(t, "update in a transaction", func(db *gorm.DB) any {
				return res(nil, db.Transaction(func(tx *gorm.DB) error {
					v := reflect.New(reflect.TypeOf(m).Elem())
					v.Elem().FieldByName("ID").SetUint(1)
					return tx.Model(v.Interface()).Update("name", "y").Error
				}))
			})
			tw.sameRows(t)
			en, err := writethrough.Inspect(context.Background(), tw.cached, m, 1)
			require.NoError(t, err)
			assert.Equal(t, writethrough.EntryAbsent, en.State, "the key is invalidated, not filled")
			tw.same(t, "cached read", func(db *gorm.DB) any {
				v := reflect.New(reflect.TypeOf(m).Elem())
				return res(nil, db.Scopes(writethrough.Cached).First(v.Interface(), 1).Error)
			})
		})
	}
}

// rrParent and rrKid are cached models related by has-many: GORM creates
// the kids in the parent's Create, after the parent's INSERT.
type rrParent struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
	Kids []rrKid `gorm:"foreignKey:ParentID"`
}

type rrKid struct {
	ID       uint `gorm:"primaryKey" cache:"ttl:10m"`
	ParentID uint
	Name     string
}

// rrHooked's AfterCreate updates a cached row in the same transaction.
type rrHooked struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
}

func (h *rrHooked) AfterCreate(tx *gorm.DB) error {
	return tx.Model(&rrKid{ID: 1}).Update("name", "from hook "+h.Name).Error
}

// Writes that GORM runs inside a Create (associations, AfterCreate hooks)
// are inside its transaction: nothing they write may be visible before the
// transaction commits, or after it rolls back.
func TestReturningCreateNestedWritesStayInTheTransaction(t *testing.T) {
	boom := errors.New("boom")
	t.Run("has-many kids", func(t *testing.T) {
		e := setup(t, nil, calm(), &rrParent{}, &rrKid{})
		err := e.db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&rrParent{Name: "p", Kids: []rrKid{{Name: "k"}}}).Error; err != nil {
				return err
			}
			en, err := writethrough.Inspect(context.Background(), e.db, &rrKid{}, 1)
			require.NoError(t, err)
			assert.NotEqual(t, writethrough.EntryCommitted, en.State, "P1: the kid is cached before its transaction commits")
			return boom
		})
		require.ErrorIs(t, err, boom)
		notStale(t, e.db, &rrKid{}, 1, 1)
		notStale(t, e.db, &rrParent{}, 1, 1)
	})
	t.Run("AfterCreate hook", func(t *testing.T) {
		e := setup(t, nil, calm(), &rrHooked{}, &rrKid{})
		require.NoError(t, e.db.Create(&rrKid{Name: "k"}).Error)
		installed(t, e.db, &rrKid{}, 1, 1)
		err := e.db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&rrHooked{Name: "h"}).Error; err != nil {
				return err
			}
			return boom
		})
		require.ErrorIs(t, err, boom)
		assert.Equal(t, "k", dbRow(t, e.db, &rrKid{}, 1).(*rrKid).Name, "rolled back")
		notStale(t, e.db, &rrKid{}, 1, 1)
	})
}

// rrOrder's total is kept by a trigger on its lines' table: GORM creates
// the lines after the order (has-many), so the order row the INSERT
// returned is not the stored one by the time the plugin stages it. Found
// by a new user: the cache served total 0 for an order of 600.
type rrOrder struct {
	ID    uint `gorm:"primaryKey" cache:"ttl:10m"`
	Total int64
	Lines []rrLine `gorm:"foreignKey:OrderID"`
}

type rrLine struct {
	ID      uint `gorm:"primaryKey"`
	OrderID uint
	Amount  int64
}

var rrOrderDDL = []string{
	`CREATE FUNCTION rr_total() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rr_orders SET total = (SELECT COALESCE(sum(amount), 0) FROM rr_lines WHERE order_id = NEW.order_id) WHERE id = NEW.order_id;
  RETURN NULL;
END $$`,
	`CREATE TRIGGER rr_total AFTER INSERT OR UPDATE ON rr_lines FOR EACH ROW EXECUTE FUNCTION rr_total()`,
}

func TestReturningOwnerChangedByItsChildrensTriggerIsReread(t *testing.T) {
	e := setup(t, nil, calm(), &rrOrder{}, &rrLine{})
	for _, s := range rrOrderDDL {
		require.NoError(t, e.db.Exec(s).Error)
	}
	o := rrOrder{Lines: []rrLine{{Amount: 100}, {Amount: 500}}}
	require.NoError(t, e.db.Create(&o).Error)
	require.Equal(t, int64(600), dbRow(t, e.db, &rrOrder{}, o.ID).(*rrOrder).Total)
	notStale(t, e.db, &rrOrder{}, o.ID, o.ID)
	got, err := writethrough.Get[rrOrder](context.Background(), e.db, o.ID)
	require.NoError(t, err)
	assert.Equal(t, int64(600), got.Total)

	// An order without lines still takes its row from RETURNING.
	bare := rrOrder{Total: 7}
	require.NoError(t, e.db.Create(&bare).Error)
	installed(t, e.db, &rrOrder{}, bare.ID, bare.ID)
}
