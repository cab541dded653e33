package writethrough_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
)

// Issue 9, items 2-4: Get and GetMany take keys as values, honour the
// conditions on the db they are given, and every spelling of a key that the
// database treats as one reads the same row.

type gProduct struct {
	ID     uint `gorm:"primaryKey" cache:"ttl:10m"`
	SKU    string
	Name   string
	Loaded bool `gorm:"-"` // set by AfterFind
}

func (p *gProduct) AfterFind(*gorm.DB) error { p.Loaded = true; return nil }

type gCode struct {
	Code string `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
}

type gDoc struct {
	ID    string `gorm:"type:uuid;primaryKey" cache:"ttl:10m"`
	Title string
}

type gPlainProduct struct { // no cache tag
	ID  uint `gorm:"primaryKey"`
	SKU string
}

type gPair struct {
	A    string `gorm:"primaryKey" cache:"ttl:10m"`
	B    int64  `gorm:"primaryKey;autoIncrement:false"`
	Name string
}

// getOn runs Get on the cached side and what it stands for, db.Where(pk =
// key).First(&out), on the plain side.
func getOn[T any](tw *twin, db *gorm.DB, mod func(*gorm.DB) *gorm.DB, pk string, key any) any {
	var out T
	var err error
	if db == tw.plain {
		err = mod(db).Where(pk+" = ?", key).First(&out).Error
	} else {
		out, err = writethrough.Get[T](context.Background(), mod(db), key)
	}
	return res(out, err)
}

func TestGetKeysAreValuesNeverSQL(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&gProduct{}, &gCode{}, &gDoc{}, &gPlainProduct{}, &gPair{}}})
	ctx := context.Background()
	doc := "5f1e1c2a-8a1b-4c3d-9e0f-112233445566"
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		require.NoError(t, db.Create(&[]gProduct{{SKU: "SEC1", Name: "secret"}, {SKU: "PUB1", Name: "public"}}).Error)
		require.NoError(t, db.Create(&[]gCode{{Code: "a", Name: "A"}, {Code: "b", Name: "B"}}).Error)
		require.NoError(t, db.Create(&[]gPlainProduct{{SKU: "SEC1"}, {SKU: "PUB1"}}).Error)
		require.NoError(t, db.Create(&[]gPair{{A: "x", B: 1, Name: "x1"}, {A: "x", B: 2, Name: "x2"}}).Error)
	}
	require.NoError(t, tw.plain.Exec("INSERT INTO g_docs VALUES (?, 'd')", doc).Error)
	require.NoError(t, tw.cached.Exec("INSERT INTO g_docs VALUES (?, 'd')", doc).Error)

	t.Run("keys that fit are bound as values", func(t *testing.T) {
		// Integer text as PostgreSQL reads it: leading zeros, a sign, spaces.
		for _, key := range []any{uint(1), 2, "1", int64(2), ptr(uint(1)), 99, "01", " 2", "+1", "002 "} {
			tw.same(t, fmt.Sprintf("Get[gProduct](%#v)", key), func(db *gorm.DB) any {
				return getOn[gProduct](tw, db, none, "id", key)
			})
		}
		for _, key := range []any{"a", "sku LIKE 'SEC%'", "1=1", "a' OR 'x'='x", "b"} {
			tw.same(t, fmt.Sprintf("Get[gCode](%q)", key), func(db *gorm.DB) any {
				return getOn[gCode](tw, db, none, "code", key)
			})
		}
		for _, key := range []any{doc, "00000000-0000-0000-0000-000000000001"} {
			tw.same(t, fmt.Sprintf("Get[gDoc](%q)", key), func(db *gorm.DB) any {
				return getOn[gDoc](tw, db, none, "id", key)
			})
		}
		tw.same(t, "Get of a model without the tag", func(db *gorm.DB) any {
			return getOn[gPlainProduct](tw, db, none, "id", 2)
		})
	})

	t.Run("keys that do not fit are refused before any SQL", func(t *testing.T) {
		cases := []struct {
			name string
			call func() error
		}{
			{"Get: SQL in a string", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, "sku LIKE 'SEC%'"); return err }},
			{"Get: 1=1", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, "1=1"); return err }},
			{"Get: empty string", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, ""); return err }},
			{"Get: nil", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, nil); return err }},
			{"Get: struct{}{}", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, struct{}{}); return err }},
			{"Get: zero", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, 0); return err }},
			{"Get: model without its key", func() error { _, err := writethrough.Get[gProduct](ctx, tw.cached, gProduct{Name: "x"}); return err }},
			{"Get: string key empty", func() error { _, err := writethrough.Get[gCode](ctx, tw.cached, ""); return err }},
			{"Get: not a UUID", func() error { _, err := writethrough.Get[gDoc](ctx, tw.cached, "1=1"); return err }},
			{"Get: untagged model, SQL", func() error { _, err := writethrough.Get[gPlainProduct](ctx, tw.cached, "sku LIKE 'SEC%'"); return err }},
			{"Get: untagged model, nil", func() error { _, err := writethrough.Get[gPlainProduct](ctx, tw.cached, nil); return err }},
			{"Get: composite, one value", func() error { _, err := writethrough.Get[gPair](ctx, tw.cached, "x"); return err }},
			{"Get: composite, short tuple", func() error { _, err := writethrough.Get[gPair](ctx, tw.cached, []any{"x"}); return err }},
			{"GetMany: SQL", func() error { _, err := writethrough.GetMany[gProduct](ctx, tw.cached, 1, "1=1"); return err }},
			{"GetMany: nil", func() error { _, err := writethrough.GetMany[gProduct](ctx, tw.cached, nil); return err }},
			{"GetMany: untagged, SQL", func() error { _, err := writethrough.GetMany[gPlainProduct](ctx, tw.cached, "1=1"); return err }},
			{"GetMany: composite, a value", func() error { _, err := writethrough.GetMany[gPair](ctx, tw.cached, "x"); return err }},
			{"GetMany: composite, zero model", func() error { _, err := writethrough.GetMany[gPair](ctx, tw.cached, gPair{}); return err }},
			{"Invalidate: SQL", func() error { return writethrough.Invalidate(tw.cached, &gProduct{}, "1=1") }},
			{"Invalidate: nil", func() error { return writethrough.Invalidate(tw.cached, &gProduct{}, nil) }},
			{"Invalidate: struct{}{}", func() error { return writethrough.Invalidate(tw.cached, &gProduct{}, struct{}{}) }},
			{"Invalidate: not a UUID", func() error { return writethrough.Invalidate(tw.cached, &gDoc{}, "x") }},
			{"Inspect: SQL", func() error { _, err := writethrough.Inspect(ctx, tw.cached, &gProduct{}, "1=1"); return err }},
			{"Inspect: nil", func() error { _, err := writethrough.Inspect(ctx, tw.cached, &gProduct{}, nil); return err }},
			{"Inspect: empty", func() error { _, err := writethrough.Inspect(ctx, tw.cached, &gCode{}, ""); return err }},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				before := tw.cachedSQL.Load()
				err := tc.call()
				require.Error(t, err)
				assert.ErrorIs(t, err, writethrough.ErrUnsupported)
				assert.NotContains(t, err.Error(), "SQLSTATE", "refused before the database")
				assert.Equal(t, before, tw.cachedSQL.Load(), "no SQL for a key that does not fit")
			})
		}
	})

	t.Run("GetMany binds values and keeps key order", func(t *testing.T) {
		many := func(keys ...any) func(db *gorm.DB) any {
			return func(db *gorm.DB) any {
				if db == tw.plain {
					var rows []gCode
					err := db.Where("code IN ?", keys).Find(&rows).Error
					return res(orderBy(rows, keys, func(r gCode) any { return r.Code }), err)
				}
				rows, err := writethrough.GetMany[gCode](ctx, db, keys...)
				return res(rows, err)
			}
		}
		tw.same(t, "GetMany(b, 1=1, a)", many("b", "1=1", "a"))
		tw.same(t, "GetMany again, from Redis", many("b", "1=1", "a"))
		got, err := writethrough.GetMany[gPlainProduct](ctx, tw.cached, "2", 1)
		require.NoError(t, err)
		require.Len(t, got, 2)
		assert.Equal(t, []uint{2, 1}, []uint{got[0].ID, got[1].ID})
	})

	t.Run("composite keys", func(t *testing.T) {
		for _, key := range []any{gPair{A: "x", B: 2}, &gPair{A: "x", B: 1}, []any{"x", 2}, []any{"x", "1"}} {
			got, err := writethrough.Get[gPair](ctx, tw.cached, key)
			require.NoError(t, err, "%#v", key)
			assert.Equal(t, "x", got.A)
		}
		// A reused destination-like key does not leak into the answer.
		got, err := writethrough.Get[gPair](ctx, tw.cached, gPair{A: "x", B: 3, Name: "stale"})
		assert.ErrorIs(t, err, gorm.ErrRecordNotFound)
		assert.Equal(t, gPair{}, got)
		rows, err := writethrough.GetMany[gPair](ctx, tw.cached, []any{"x", 2}, gPair{A: "x", B: 1}, []any{"x", 9})
		require.NoError(t, err)
		require.Len(t, rows, 2)
		assert.Equal(t, []string{"x2", "x1"}, []string{rows[0].Name, rows[1].Name})
		rows, err = writethrough.GetMany[gPair](ctx, tw.cached, []any{"x", 2}, gPair{A: "x", B: 1})
		require.NoError(t, err)
		assert.Equal(t, []string{"x2", "x1"}, []string{rows[0].Name, rows[1].Name}, "from Redis")
	})
	tw.settled(t)
}

// orderBy orders rows as keys are (GetMany's promise), by key text.
func orderBy[T any](rows []T, keys []any, keyOf func(T) any) []T {
	pos := map[string]int{}
	for i := len(keys) - 1; i >= 0; i-- {
		pos[fmt.Sprint(keys[i])] = i
	}
	out := append([]T{}, rows...)
	sort.SliceStable(out, func(i, j int) bool {
		return pos[fmt.Sprint(keyOf(out[i]))] < pos[fmt.Sprint(keyOf(out[j]))]
	})
	return out
}

type gOrder struct {
	ID         uint `gorm:"primaryKey" cache:"ttl:10m"`
	CustomerID uint
	Note       string
	Items      []gItem
	DeletedAt  gorm.DeletedAt
	Loaded     bool `gorm:"-"`
}

func (o *gOrder) AfterFind(*gorm.DB) error { o.Loaded = true; return nil }

type gItem struct {
	ID       uint `gorm:"primaryKey"`
	GOrderID uint
	What     string
}

type gArchive struct { // the same columns under another table
	ID         uint
	CustomerID uint
	Note       string
	DeletedAt  gorm.DeletedAt
}

func TestGetHonoursTheDBConditions(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&gOrder{}, &gItem{}, &gArchive{}}})
	ctx := context.Background()
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		require.NoError(t, db.Create(&[]gOrder{
			{CustomerID: 1, Note: "mine", Items: []gItem{{What: "pen"}}},
			{CustomerID: 2, Note: "theirs"},
			{CustomerID: 1, Note: "gone"},
		}).Error)
		require.NoError(t, db.Delete(&gOrder{ID: 3}).Error)
		require.NoError(t, db.Create(&gArchive{ID: 1, CustomerID: 1, Note: "archived"}).Error)
	}
	// Warm the cache: every key is in Redis (rows and a tombstone).
	for _, id := range []uint{1, 2, 3, 4} {
		_, _ = writethrough.Get[gOrder](ctx, tw.cached, id)
	}
	before := tw.cachedSQL.Load()
	o, err := writethrough.Get[gOrder](ctx, tw.cached, 2)
	require.NoError(t, err)
	require.Equal(t, "theirs", o.Note)
	require.Equal(t, before, tw.cachedSQL.Load(), "a db with no conditions is served from Redis")

	tenant := func(id uint) func(*gorm.DB) *gorm.DB {
		return func(db *gorm.DB) *gorm.DB { return db.Where("customer_id = ?", id) }
	}
	cases := []struct {
		name string
		mod  func(*gorm.DB) *gorm.DB
		key  uint
	}{
		{"Where filters another tenant out", func(db *gorm.DB) *gorm.DB { return db.Where("customer_id = ?", 1) }, 2},
		{"Where keeps the tenant's row", func(db *gorm.DB) *gorm.DB { return db.Where("customer_id = ?", 1) }, 1},
		{"Scopes filter another tenant out", func(db *gorm.DB) *gorm.DB { return db.Scopes(tenant(1)) }, 2},
		{"Scopes keep the tenant's row", func(db *gorm.DB) *gorm.DB { return db.Scopes(tenant(2)) }, 2},
		{"Unscoped finds a soft-deleted row", func(db *gorm.DB) *gorm.DB { return db.Unscoped() }, 3},
		{"Table reads another table", func(db *gorm.DB) *gorm.DB { return db.Table("g_archives") }, 1},
		{"Select reads some columns", func(db *gorm.DB) *gorm.DB { return db.Select("id", "note") }, 1},
		{"Omit leaves columns out", func(db *gorm.DB) *gorm.DB { return db.Omit("note") }, 1},
		{"Preload loads associations", func(db *gorm.DB) *gorm.DB { return db.Preload("Items") }, 1},
		{"Joins", func(db *gorm.DB) *gorm.DB {
			return db.Joins("JOIN g_items ON g_items.g_order_id = g_orders.id AND g_items.what = ?", "none")
		}, 1},
		{"Offset skips the row", func(db *gorm.DB) *gorm.DB { return db.Offset(1) }, 1},
		{"Not excludes the row", func(db *gorm.DB) *gorm.DB { return db.Not("note = ?", "mine") }, 1},
		{"Or does not widen a key lookup", func(db *gorm.DB) *gorm.DB { return db.Where("note = ?", "x").Or("customer_id = ?", 2) }, 1},
		{"locking clause", func(db *gorm.DB) *gorm.DB { return db.Clauses(clause.Locking{Strength: "SHARE"}) }, 1},
		{"SkipHooks", func(db *gorm.DB) *gorm.DB { return db.Session(&gorm.Session{SkipHooks: true}) }, 1},
		{"DryRun", func(db *gorm.DB) *gorm.DB { return db.Session(&gorm.Session{DryRun: true}) }, 1},
		{"a setting", func(db *gorm.DB) *gorm.DB { return db.Set("gorm:query_option", "FOR SHARE") }, 1},
		{"an earlier error", func(db *gorm.DB) *gorm.DB {
			tx := db.Where("customer_id = ?", 1)
			_ = tx.AddError(errors.New("an earlier error"))
			return tx
		}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tw.same(t, tc.name, func(db *gorm.DB) any {
				if db == tw.plain {
					var out gOrder
					err := tc.mod(db).Where("g_orders.id = ?", tc.key).First(&out).Error
					if tc.name == "Table reads another table" {
						out = gOrder{}
						err = tc.mod(db).Where("id = ?", tc.key).First(&out).Error
					}
					return res(out, err)
				}
				out, err := writethrough.Get[gOrder](ctx, tc.mod(db), tc.key)
				return res(out, err)
			})
			tw.same(t, tc.name+" (GetMany)", func(db *gorm.DB) any {
				keys := []any{tc.key, uint(2), uint(1)}
				if db == tw.plain {
					var rows []gOrder
					col := "g_orders.id"
					if tc.name == "Table reads another table" {
						col = "id"
					}
					err := tc.mod(db).Where(col+" IN ?", keys).Find(&rows).Error
					if err != nil {
						return res([]gOrder(nil), err)
					}
					return res(orderBy(rows, keys, func(o gOrder) any { return o.ID }), err)
				}
				rows, err := writethrough.GetMany[gOrder](ctx, tc.mod(db), keys...)
				return res(rows, err)
			})
		})
	}
	t.Run("a transaction reads its own writes", func(t *testing.T) {
		tw.same(t, "Get in a transaction", func(db *gorm.DB) any {
			var out gOrder
			err := db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&gOrder{ID: 1}).Update("note", "in tx").Error; err != nil {
					return err
				}
				var err error
				if db == tw.plain {
					err = tx.Where("id = ?", 1).First(&out).Error
				} else {
					out, err = writethrough.Get[gOrder](ctx, tx, 1)
				}
				if err != nil {
					return err
				}
				return errors.New("roll back")
			})
			return res(out, err)
		})
	})
	tw.sameRows(t)
	tw.settled(t)
}

// TestUUIDKeysReadTheSameRowInEverySpelling: a UUID key in upper case (or
// braces, or without hyphens) is the same row to PostgreSQL; it must map to
// the row's one key, so that a write through either spelling is seen by
// readers of the other.
func TestUUIDKeysReadTheSameRowInEverySpelling(t *testing.T) {
	const lower = "9b2f6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
	upper := strings.ToUpper(lower)
	spellings := []string{lower, upper, "{" + upper + "}", strings.ReplaceAll(lower, "-", "")}
	type docLike struct {
		name   string
		models []any
		ddl    []string
		create func(db *gorm.DB, id, title string) error
		update func(db *gorm.DB, id, title string) error
		remove func(db *gorm.DB, id string) error
		model  any
		braces bool // the Go type parses "{...}"
	}
	cases := []docLike{
		{
			name:   "string Go type, uuid tag",
			models: []any{&gDoc{}},
			create: func(db *gorm.DB, id, title string) error { return db.Create(&gDoc{ID: id, Title: title}).Error },
			update: func(db *gorm.DB, id, title string) error {
				return db.Model(&gDoc{ID: id}).Update("title", title).Error
			},
			remove: func(db *gorm.DB, id string) error { return db.Delete(&gDoc{ID: id}).Error },
			model:  &gDoc{},
			braces: true,
		},
		{
			name:   "string Go type, uuid column without a tag",
			models: []any{&gDocUntyped{}},
			ddl:    []string{"ALTER TABLE g_doc_untypeds ALTER COLUMN id TYPE uuid USING id::uuid"},
			create: func(db *gorm.DB, id, title string) error { return db.Create(&gDocUntyped{ID: id, Title: title}).Error },
			update: func(db *gorm.DB, id, title string) error {
				return db.Model(&gDocUntyped{ID: id}).Update("title", title).Error
			},
			remove: func(db *gorm.DB, id string) error { return db.Delete(&gDocUntyped{ID: id}).Error },
			model:  &gDocUntyped{},
			braces: true,
		},
		{
			name:   "[16]byte Go type",
			models: []any{&gDocBytes{}},
			create: func(db *gorm.DB, id, title string) error {
				var u UUID
				if err := u.Scan(id); err != nil {
					return err
				}
				return db.Create(&gDocBytes{ID: u, Title: title}).Error
			},
			update: func(db *gorm.DB, id, title string) error {
				return db.Model(&gDocBytes{}).Where("id = ?", id).Update("title", title).Error
			},
			remove: func(db *gorm.DB, id string) error { return db.Where("id = ?", id).Delete(&gDocBytes{}).Error },
			model:  &gDocBytes{},
		},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: tc.models, ddl: tc.ddl})
			read := func(what string) {
				t.Helper()
				for _, id := range spellings {
					if strings.HasPrefix(id, "{") && !tc.braces {
						continue // the test's UUID type does not parse braces
					}
					tw.same(t, what+": scoped First "+id, func(db *gorm.DB) any {
						out := newOf(tc.model)
						err := db.Scopes(writethrough.Cached).First(out, "id = ?", id).Error
						return res(out, err)
					})
					tw.same(t, what+": Get "+id, func(db *gorm.DB) any {
						return getAny(tw, db, tc.model, id)
					})
				}
				tw.same(t, what+": GetMany", func(db *gorm.DB) any {
					return getManyAny(tw, db, tc.model, upper, lower)
				})
			}
			for _, db := range []*gorm.DB{tw.plain, tw.cached} {
				require.NoError(t, tc.create(db, upper, "v1"))
			}
			read("after create through upper case")
			tw.settled(t)
			for i, id := range []string{lower, upper, "{" + upper + "}"} {
				if strings.HasPrefix(id, "{") && !tc.braces {
					continue
				}
				title := fmt.Sprintf("v%d", i+2)
				tw.same(t, "update through "+id, func(db *gorm.DB) any { return res(nil, tc.update(db, id, title)) })
				read("after update through " + id)
				tw.settled(t)
			}
			e1, err := writethrough.Inspect(ctx, tw.cached, tc.model, upper)
			require.NoError(t, err)
			e2, err := writethrough.Inspect(ctx, tw.cached, tc.model, lower)
			require.NoError(t, err)
			assert.Equal(t, e1.Key, e2.Key, "one key for every spelling")
			assert.Equal(t, writethrough.EntryCommitted, e1.State)
			require.NoError(t, writethrough.Invalidate(tw.cached, tc.model, upper))
			e2, err = writethrough.Inspect(ctx, tw.cached, tc.model, lower)
			require.NoError(t, err)
			assert.Equal(t, writethrough.EntryAbsent, e2.State, "Invalidate through upper case reaches the row's key")
			read("after Invalidate")
			tw.same(t, "delete through upper case", func(db *gorm.DB) any { return res(nil, tc.remove(db, upper)) })
			read("after delete")
			tw.same(t, "create again through lower case", func(db *gorm.DB) any { return res(nil, tc.create(db, lower, "again")) })
			read("after create again")
			tw.sameRows(t)
			tw.settled(t)
		})
	}
}

type gDocUntyped struct {
	ID    string `gorm:"primaryKey" cache:"ttl:10m"`
	Title string
}

type gDocBytes struct {
	ID    UUID `gorm:"type:uuid;primaryKey" cache:"ttl:10m"`
	Title string
}

// newOf returns a new value of model's type, as a pointer.
func newOf(model any) any {
	switch model.(type) {
	case *gDoc:
		return &gDoc{}
	case *gDocUntyped:
		return &gDocUntyped{}
	case *gDocBytes:
		return &gDocBytes{}
	case *gTag:
		return &gTag{}
	}
	panic(fmt.Sprintf("newOf: %T", model))
}

// getAny is getOn for the models of the spelling tests.
func getAny(tw *twin, db *gorm.DB, model any, id string) any {
	switch model.(type) {
	case *gDoc:
		return getOn[gDoc](tw, db, none, "id", id)
	case *gDocUntyped:
		return getOn[gDocUntyped](tw, db, none, "id", id)
	case *gDocBytes:
		return getOn[gDocBytes](tw, db, none, "id", id)
	case *gTag:
		return getOn[gTag](tw, db, none, "name", id)
	}
	panic(fmt.Sprintf("getAny: %T", model))
}

// getManyAny runs GetMany on the cached side and, on the plain side, the
// query it stands for with rows in the order of the database's keys.
func getManyAny(tw *twin, db *gorm.DB, model any, ids ...any) any {
	ctx := context.Background()
	col := "id"
	if _, ok := model.(*gTag); ok {
		col = "name"
	}
	many := func(out any) error { return db.Where(col+" IN ?", ids).Order(col).Find(out).Error }
	switch model.(type) {
	case *gDoc:
		if db == tw.plain {
			var rows []gDoc
			return res(rows, many(&rows))
		}
		return res(writethrough.GetMany[gDoc](ctx, db, ids...))
	case *gDocUntyped:
		if db == tw.plain {
			var rows []gDocUntyped
			return res(rows, many(&rows))
		}
		return res(writethrough.GetMany[gDocUntyped](ctx, db, ids...))
	case *gDocBytes:
		if db == tw.plain {
			var rows []gDocBytes
			return res(rows, many(&rows))
		}
		return res(writethrough.GetMany[gDocBytes](ctx, db, ids...))
	case *gTag:
		if db == tw.plain {
			var rows []gTag
			return res(rows, many(&rows))
		}
		return res(writethrough.GetMany[gTag](ctx, db, ids...))
	}
	panic(fmt.Sprintf("getManyAny: %T", model))
}

type gTag struct {
	Name  string `gorm:"primaryKey" cache:"ttl:10m"`
	Score int
}

// TestLooseKeysNeverServeAnotherSpelling: citext, a non-deterministic
// collation and char(n) find one row under several spellings. Only the
// spelling the database returns may name a cached row; no spelling may hold
// a tombstone.
func TestLooseKeysNeverServeAnotherSpelling(t *testing.T) {
	cases := []struct {
		name           string
		ddl            []string
		stored, others []string // the spelling created, and other spellings of the same row
		absent, later  string   // a key read while absent, then created under another spelling
		public         bool     // put public on the search_path
	}{
		{
			// The extension lives in public, where an application's
			// search_path finds its operators (see publicOnPath).
			name: "citext",
			ddl: []string{
				"CREATE EXTENSION IF NOT EXISTS citext SCHEMA public",
				"ALTER TABLE g_tags ALTER COLUMN name TYPE public.citext",
			},
			public: true,
			stored: []string{"Alpha"}, others: []string{"ALPHA", "alpha"},
			absent: "beta", later: "BETA",
		},
		{
			name: "non-deterministic collation",
			ddl: []string{
				"CREATE COLLATION IF NOT EXISTS g_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
				"ALTER TABLE g_tags ALTER COLUMN name TYPE text COLLATE g_ci",
			},
			stored: []string{"Alpha"}, others: []string{"ALPHA", "alpha"},
			absent: "beta", later: "BETA",
		},
		{
			name:   "char(n)",
			ddl:    []string{"ALTER TABLE g_tags ALTER COLUMN name TYPE char(8)"},
			stored: []string{"alpha"}, others: []string{"alpha   ", "alpha "},
			absent: "beta ", later: "beta",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: []any{&gTag{}}, ddl: tc.ddl})
			if tc.public {
				publicOnPath(t, tw.plain)
				publicOnPath(t, tw.cached)
			}
			spellings := append(append([]string{}, tc.stored...), tc.others...)
			read := func(what string) {
				t.Helper()
				for _, s := range append(spellings, tc.absent, tc.later) {
					for round := 0; round < 2; round++ { // the second may be served from Redis
						tw.same(t, fmt.Sprintf("%s: scoped First %q #%d", what, s, round), func(db *gorm.DB) any {
							var out gTag
							err := db.Scopes(writethrough.Cached).First(&out, "name = ?", s).Error
							return res(out, err)
						})
						tw.same(t, fmt.Sprintf("%s: Get %q #%d", what, s, round), func(db *gorm.DB) any {
							return getAny(tw, db, &gTag{}, s)
						})
					}
				}
				tw.settled(t)
			}
			read("before create")
			for _, db := range []*gorm.DB{tw.plain, tw.cached} {
				require.NoError(t, db.Create(&gTag{Name: tc.stored[0], Score: 1}).Error)
			}
			read("after create")
			for i, s := range tc.others {
				score := 10 + i
				tw.same(t, "update through "+s, func(db *gorm.DB) any {
					return res(nil, db.Model(&gTag{Name: s}).Update("score", score).Error)
				})
				read("after update through " + s)
				tw.same(t, "Save through "+s, func(db *gorm.DB) any {
					return res(nil, db.Save(&gTag{Name: s, Score: score + 100}).Error)
				})
				read("after Save through " + s)
			}
			tw.same(t, "create the absent key under another spelling", func(db *gorm.DB) any {
				return res(nil, db.Create(&gTag{Name: tc.later, Score: 7}).Error)
			})
			read("after the late create")
			tw.same(t, "delete through "+tc.others[0], func(db *gorm.DB) any {
				return res(nil, db.Delete(&gTag{Name: tc.others[0]}).Error)
			})
			read("after delete")
			tw.sameRows(t)
		})
	}
}

// publicOnPath puts public after the test's schema on db's search_path, as
// an application's would be, so that citext's operators (in public) are
// found: without them "=" compares citext as text, case-sensitively, while
// the key's unique index still compares case-insensitively. The pool keeps
// one connection, whose session holds the setting.
func publicOnPath(t *testing.T, db *gorm.DB) {
	t.Helper()
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxIdleConns(1)
	sqlDB.SetMaxOpenConns(1)
	require.NoError(t, db.Exec("SELECT set_config('search_path', current_schema() || ', public', false)").Error)
	var cmp bool
	require.NoError(t, db.Raw("SELECT 'A'::public.citext = 'a'").Scan(&cmp).Error)
	require.True(t, cmp, "citext's = is on the search_path")
}
