package writethrough_test

import (
	"context"
	"reflect"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// Tags that the plugin cannot use are errors (see badTags).

type (
	tMisspelt struct {
		ID int64 `gorm:"primaryKey" cache:"tll:10m"`
	}
	TAudit struct {
		By string
	}
	tEmbedNoKey struct {
		ID     int64 `gorm:"primaryKey"`
		TAudit `cache:"ttl:1m"`
	}
	TBase struct {
		ID   int64  `gorm:"primaryKey"`
		Note string `cache:"ttl:1m"`
	}
	tEmbedTagOnColumn struct {
		TBase
		Name string
	}
	tIgnoredField struct {
		ID   int64  `gorm:"primaryKey"`
		Skip string `gorm:"-" cache:"ttl:1m"`
	}
	tUnexportedField struct {
		ID     int64 `gorm:"primaryKey"`
		hidden int   `cache:"ttl:1m"`
	}
	TTeam struct {
		ID   int64 `gorm:"primaryKey"`
		Name string
	}
	tTagOnAssociation struct {
		ID     int64 `gorm:"primaryKey"`
		TeamID int64
		Team   TTeam `cache:"ttl:1m"`
	}
	tTwoTagsEmbedded struct {
		gorm.Model `cache:"ttl:1m"`
		ID         uint `gorm:"primaryKey" cache:"ttl:2m"`
	}
)

var _ = tUnexportedField{hidden: 0}

// A model that embeds gorm.Model is tagged on the embedded field: the tag
// applies to the primary key it holds.

type gmArticle struct {
	gorm.Model `cache:"ttl:10m"`
	Title      string
}

// GMBase is an application's own base struct, embedded in turn.
type GMBase struct {
	gorm.Model
	Tenant string
}

type gmNested struct {
	GMBase `cache:"ttl:10m;mode:strict"`
	Title  string
}

type gmNamed struct {
	Base  gorm.Model `gorm:"embedded" cache:"ttl:10m"`
	Title string
}

func TestTagOnEmbeddedGormModelAppliesToItsPrimaryKey(t *testing.T) {
	cases := []struct {
		name  string
		model any
		row   func(title string) any
		id    func(row any) uint
	}{
		{"gorm.Model embedded", &gmArticle{},
			func(s string) any { return &gmArticle{Title: s} },
			func(r any) uint { return r.(*gmArticle).ID }},
		{"gorm.Model inside an embedded base struct", &gmNested{},
			func(s string) any { return &gmNested{Title: s, GMBase: GMBase{Tenant: "t"}} },
			func(r any) uint { return r.(*gmNested).ID }},
		{"gorm.Model as a named embedded field", &gmNamed{},
			func(s string) any { return &gmNamed{Title: s} },
			func(r any) uint { return r.(*gmNamed).Base.ID }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: []any{tc.model}, cfg: calm()})
			var ids []uint
			tw.same(t, "create", func(db *gorm.DB) any {
				a, b := tc.row("a"), tc.row("b")
				err := db.Create(a).Error
				if err == nil {
					err = db.Create(b).Error
				}
				ids = []uint{tc.id(a), tc.id(b)}
				return res([]any{a, b}, err)
			})
			read := func(db *gorm.DB) any {
				out := []any{}
				for _, id := range ids {
					r := tc.row("")
					err := db.Scopes(writethrough.Cached).First(r, id).Error
					out = append(out, res(r, err))
				}
				return out
			}
			tw.same(t, "first read", read)
			before := tw.p.Stats()
			tw.same(t, "second read", read)
			after := tw.p.Stats()
			assert.Equal(t, before.Bypasses, after.Bypasses, "the reads are cacheable")
			assert.Equal(t, before.Hits+2, after.Hits, "the second reads are served from Redis")
			tw.same(t, "update and soft delete", func(db *gorm.DB) any {
				err := db.Model(tc.row("")).Where("id = ?", ids[0]).Update("title", "a2").Error
				if err == nil {
					err = db.Delete(tc.row(""), ids[1]).Error
				}
				return res(nil, err)
			})
			tw.same(t, "read after writes", read)
			tw.sameRows(t)
			assert.Equal(t, 1, tw.settled(t), "the updated row is cached; the deleted one is a tombstone")
		})
	}
}

// The tag on gorm.Model is the model's tag: its words take effect.
func TestTagOnEmbeddedGormModelTakesEffect(t *testing.T) {
	e := setup(t, nil, calm(), &gmNested{})
	row := gmNested{Title: "x"}
	require.NoError(t, e.db.Create(&row).Error)
	d := pttl(t, e, e.key("gm_nesteds", row.ID))
	assert.LessOrEqual(t, d.Minutes(), 11.0)
	got, err := writethrough.Inspect(context.Background(), e.db, &gmNested{}, row.ID)
	require.NoError(t, err)
	assert.Equal(t, writethrough.EntryCommitted, got.State)
}

// Many2many: GORM generates a join model that copies both sides' key
// fields, tags included. Two differently tagged models can be related, and
// the join table runs as plain GORM.

type m2User struct {
	ID    uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name  string
	Langs []m2Lang `gorm:"many2many:m2_user_langs"`
}

type m2Lang struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:1m;mode:strict"`
	Code string
}

func TestMany2ManyBetweenDifferentlyTaggedModelsIsPlainGORM(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&m2User{}, &m2Lang{}}, cfg: calm()})
	joins := func(db *gorm.DB) []map[string]any {
		var rows []map[string]any
		_ = db.Table("m2_user_langs").Order("m2_user_id, m2_lang_id").Find(&rows).Error
		return rows
	}
	tw.same(t, "create rows", func(db *gorm.DB) any {
		u := m2User{Name: "ann"}
		ls := []m2Lang{{Code: "en"}, {Code: "fr"}, {Code: "de"}}
		err := db.Create(&u).Error
		if err == nil {
			err = db.Create(&ls).Error
		}
		return res([]any{u, ls}, err)
	})
	tw.same(t, "append", func(db *gorm.DB) any {
		u := m2User{ID: 1}
		err := db.Model(&u).Association("Langs").Append([]m2Lang{{ID: 1}, {ID: 2}})
		return res(joins(db), err)
	})
	tw.same(t, "replace", func(db *gorm.DB) any {
		u := m2User{ID: 1}
		err := db.Model(&u).Association("Langs").Replace([]m2Lang{{ID: 2}, {ID: 3}})
		return res(joins(db), err)
	})
	tw.same(t, "preload", func(db *gorm.DB) any {
		var u m2User
		err := db.Preload("Langs", func(db *gorm.DB) *gorm.DB { return db.Order("id") }).First(&u, 1).Error
		return res(u, err)
	})
	tw.same(t, "count and delete", func(db *gorm.DB) any {
		u := m2User{ID: 1}
		n := db.Model(&u).Association("Langs").Count()
		err := db.Model(&u).Association("Langs").Delete(&m2Lang{ID: 2})
		return res([]any{n, joins(db)}, err)
	})
	tw.same(t, "create with associations", func(db *gorm.DB) any {
		u := m2User{Name: "bob", Langs: []m2Lang{{Code: "it"}, {ID: 1, Code: "en"}}}
		err := db.Create(&u).Error
		return res([]any{u, joins(db)}, err)
	})
	tw.same(t, "cached reads of both sides", func(db *gorm.DB) any {
		var u m2User
		var l m2Lang
		err1 := db.Scopes(writethrough.Cached).First(&u, 1).Error
		err2 := db.Scopes(writethrough.Cached).First(&l, 3).Error
		return []any{res(u, err1), res(l, err2)}
	})
	tw.same(t, "clear", func(db *gorm.DB) any {
		err := db.Model(&m2User{ID: 1}).Association("Langs").Clear()
		return res(joins(db), err)
	})
	tw.sameRows(t)
	tw.settled(t)
}

// m2UserLang is a join model the application declares with SetupJoinTable:
// its own tag is the application's choice, and is followed.
type m2UserLang struct {
	M2UserID uint `gorm:"primaryKey" cache:"ttl:5m"`
	M2LangID uint `gorm:"primaryKey"`
	Note     string
}

func TestOnlyJoinModelsTheUserDeclaresAreCached(t *testing.T) {
	e := setup(t, nil, calm(), &m2User{}, &m2Lang{})
	sch, err := schema.Parse(&m2User{}, &sync.Map{}, e.db.NamingStrategy)
	require.NoError(t, err)
	generated := sch.Relationships.Relations["Langs"].JoinTable
	require.NotNil(t, generated)
	joinRow := reflect.New(generated.ModelType).Interface()
	_, err = writethrough.Inspect(context.Background(), e.db, joinRow, joinRow)
	assert.ErrorIs(t, err, writethrough.ErrUnsupported, "the generated join model is not cached")

	require.NoError(t, e.db.SetupJoinTable(&m2User{}, "Langs", &m2UserLang{}))
	require.NoError(t, e.db.AutoMigrate(&m2UserLang{}))
	_, err = writethrough.Inspect(context.Background(), e.db, &m2UserLang{}, &m2UserLang{M2UserID: 1, M2LangID: 1})
	assert.NoError(t, err, "a declared join model with its own tag is cached")
}

func TestRegisteringAPluginTwiceSaysWhatHappened(t *testing.T) {
	e := setup(t, nil, calm())

	t.Run("again on the same database: GORM's own error", func(t *testing.T) {
		err := e.db.Use(e.p)
		assert.ErrorIs(t, err, gorm.ErrRegistered)
		err = e.db.Session(&gorm.Session{NewDB: true}).Use(e.p)
		assert.ErrorIs(t, err, gorm.ErrRegistered)
	})

	t.Run("on another database: refused, naming what to do", func(t *testing.T) {
		other := testenv.Postgres(t, nil)
		err := other.Use(e.p)
		require.Error(t, err)
		assert.ErrorIs(t, err, gorm.ErrRegistered)
		assert.Contains(t, err.Error(), "another *gorm.DB")
		assert.Contains(t, err.Error(), "one Plugin per database")
		_, err = writethrough.Get[User](context.Background(), other, 1)
		assert.ErrorContains(t, err, "not registered", "the other database runs without the plugin")
	})

	u := User{Email: "r@x"}
	require.NoError(t, e.db.Create(&u).Error)
	got, err := writethrough.Get[User](context.Background(), e.db, u.ID)
	require.NoError(t, err)
	assert.Equal(t, u.Email, got.Email, "the plugin still serves its own database")
}
