package writethrough_test

import (
	"context"
	"database/sql"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
)

// The read-shape models: an integer key, a gorm.Model-style soft-deleted
// model, a string key, a composite key, and a belongs-to / has-many pair.
type rsAccount struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Owner   string
	Balance int64
	Memo    string `gorm:"-"` // not a column: GORM leaves it as it was
}

type rsSoft struct {
	ID        uint `gorm:"primarykey" cache:"ttl:10m"`
	CreatedAt time.Time
	UpdatedAt time.Time
	DeletedAt gorm.DeletedAt `gorm:"index"`
	Name      string
}

type rsCode struct {
	Code string `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
}

type rsPair struct {
	Tenant string `gorm:"primaryKey" cache:"ttl:10m"`
	Seq    int64  `gorm:"primaryKey;autoIncrement:false"`
	Name   string
}

type rsTeam struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name    string
	Members []rsMember `gorm:"foreignKey:TeamID"`
}

type rsMember struct {
	ID     uint `gorm:"primaryKey" cache:"ttl:10m"`
	TeamID uint
	Team   *rsTeam
	Name   string
	Tags   []rsTag `gorm:"many2many:rs_member_tags"`
}

type rsTag struct {
	ID    uint `gorm:"primaryKey" cache:"ttl:10m"`
	Label string
}

// rsView is another struct over rs_accounts' columns.
type rsView struct {
	ID    uint
	Owner string
}

var rsModels = []any{&rsAccount{}, &rsSoft{}, &rsCode{}, &rsPair{}, &rsTeam{}, &rsMember{}, &rsTag{}}

// seedShapes writes the same rows on both sides of tw, without the cache.
func seedShapes(t *testing.T, tw *twin) {
	t.Helper()
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		db = db.Session(&gorm.Session{NewDB: true})
		require.NoError(t, db.Create(&[]rsAccount{
			{ID: 1, Owner: "ann", Balance: 10}, {ID: 2, Owner: "bob", Balance: 20},
			{ID: 3, Owner: "cy", Balance: 30}, {ID: 4, Owner: "di", Balance: 40},
		}).Error)
		require.NoError(t, db.Create(&[]rsSoft{{ID: 1, Name: "s1"}, {ID: 2, Name: "s2"}, {ID: 3, Name: "s3"}}).Error)
		require.NoError(t, db.Delete(&rsSoft{}, 3).Error)
		require.NoError(t, db.Create(&[]rsCode{{Code: "k1", Name: "one"}, {Code: "k2", Name: "two"}, {Code: "K1", Name: "upper"}}).Error)
		require.NoError(t, db.Create(&[]rsPair{{Tenant: "t1", Seq: 1, Name: "a"}, {Tenant: "t1", Seq: 2, Name: "b"}, {Tenant: "t2", Seq: 1, Name: "c"}}).Error)
		require.NoError(t, db.Create(&[]rsTeam{{ID: 1, Name: "red"}, {ID: 2, Name: "blue"}}).Error)
		tags := []rsTag{{ID: 1, Label: "x"}, {ID: 2, Label: "y"}, {ID: 3, Label: "z"}}
		require.NoError(t, db.Create(&tags).Error)
		require.NoError(t, db.Create(&[]rsMember{
			{ID: 1, TeamID: 1, Name: "m1", Tags: []rsTag{tags[0], tags[2]}},
			{ID: 2, TeamID: 1, Name: "m2", Tags: []rsTag{tags[1]}},
			{ID: 3, TeamID: 2, Name: "m3"},
		}).Error)
	}
}

// warmShapes fills every row's key (and the soft-deleted row's tombstone)
// through plain key lookups.
func warmShapes(t *testing.T, tw *twin) {
	t.Helper()
	db := tw.cached.Scopes(writethrough.Cached)
	for id := uint(1); id <= 4; id++ {
		require.NoError(t, tw.cached.Scopes(writethrough.Cached).First(&rsAccount{}, id).Error)
	}
	for id := uint(1); id <= 3; id++ {
		_ = tw.cached.Scopes(writethrough.Cached).First(&rsSoft{}, id).Error
	}
	for _, c := range []string{"k1", "k2", "K1"} {
		require.NoError(t, tw.cached.Scopes(writethrough.Cached).First(&rsCode{}, "code = ?", c).Error)
	}
	for _, k := range []rsPair{{Tenant: "t1", Seq: 1}, {Tenant: "t1", Seq: 2}, {Tenant: "t2", Seq: 1}} {
		require.NoError(t, tw.cached.Scopes(writethrough.Cached).Where(&k).First(&rsPair{}).Error)
	}
	require.NoError(t, db.Find(&[]rsTeam{}, []uint{1, 2}).Error)
	require.NoError(t, tw.cached.Scopes(writethrough.Cached).Find(&[]rsMember{}, []uint{1, 2, 3}).Error)
	require.NoError(t, tw.cached.Scopes(writethrough.Cached).Find(&[]rsTag{}, []uint{1, 2, 3}).Error)
}

// flushCache deletes every key under the twin's prefix.
func (tw *twin) flushCache(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	keys, err := tw.rdb.Keys(ctx, tw.prefix+":*").Result()
	require.NoError(t, err)
	if len(keys) > 0 {
		require.NoError(t, tw.rdb.Del(ctx, keys...).Err())
	}
}

// readShape is a GORM read as applications write it. q starts a statement
// that may be served from the cache.
type readShape struct {
	name string
	run  func(q func() *gorm.DB) any
	// sql is how many statements the cached side sends when every row is
	// cached; -1: not checked.
	sql int
}

func one(db *gorm.DB) any { return res(db.RowsAffected, db.Error) }

// sortedAccounts orders rows whose SQL order is unspecified.
func sortedAccounts(us []rsAccount) []rsAccount {
	sort.Slice(us, func(i, j int) bool { return us[i].ID < us[j].ID })
	return us
}

var readShapes = []readShape{
	// Served: the complete condition is one key (or a set of keys).
	{"FirstByKey", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().First(&a, 1)), a}
	}, 0},
	{"ReusedStructSameKey", func(q func() *gorm.DB) any {
		var a rsAccount
		r1 := one(q().First(&a, 1))
		return []any{r1, one(q().First(&a, 1)), a}
	}, 0},
	{"DestinationKeyEqualsWhereKey", func(q func() *gorm.DB) any {
		a := rsAccount{ID: 2}
		return []any{one(q().Where("id = ?", 2).First(&a)), a}
	}, 0},
	{"DestinationKeyOnly", func(q func() *gorm.DB) any {
		a := rsAccount{ID: 3, Owner: "stale", Memo: "kept"}
		return []any{one(q().First(&a)), a}
	}, 0},
	{"StaleFieldsOverwritten", func(q func() *gorm.DB) any {
		a := rsAccount{Owner: "stale", Balance: 99, Memo: "kept"}
		return []any{one(q().First(&a, 1)), a}
	}, 0},
	{"NilPointerDestination", func(q func() *gorm.DB) any {
		var a *rsAccount
		return []any{one(q().Take(&a, 2)), a}
	}, 0},
	{"ReusedSliceDifferentKeys", func(q func() *gorm.DB) any {
		var us []rsAccount
		r1 := one(q().Find(&us, []uint{1, 2}))
		return []any{r1, one(q().Find(&us, []uint{3})), us}
	}, 0},
	{"ReusedPointerSlice", func(q func() *gorm.DB) any {
		us := []*rsAccount{{ID: 4, Owner: "stale"}}
		return []any{one(q().Find(&us, []uint{1, 2})), us}
	}, 0},
	{"FirstOnSlice", func(q func() *gorm.DB) any {
		us := []rsAccount{{ID: 1}}
		return []any{one(q().First(&us, 2)), us}
	}, 0},
	{"ModelWithKeyDestinationWithout", func(q func() *gorm.DB) any {
		var b rsAccount
		return []any{one(q().Model(&rsAccount{ID: 1}).First(&b, 2)), b}
	}, 0},
	{"LimitMinusOne", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Limit(-1).Find(&us, []uint{1, 2})), us}
	}, 0},
	{"SoftDeletedIsNotFound", func(q func() *gorm.DB) any {
		var s rsSoft
		return []any{one(q().First(&s, 3)), s}
	}, 0},
	{"SoftLive", func(q func() *gorm.DB) any {
		var s rsSoft
		return []any{one(q().First(&s, 1)), s}
	}, 0},
	{"StringKeys", func(q func() *gorm.DB) any {
		var c rsCode
		r1 := one(q().First(&c, "code = ?", "k1"))
		var d rsCode
		r2 := one(q().Where("code = ?", "K1").First(&d))
		return []any{r1, c, r2, d}
	}, 0},
	{"CompositeByStruct", func(q func() *gorm.DB) any {
		var p rsPair
		return []any{one(q().Where(&rsPair{Tenant: "t1", Seq: 2}).First(&p)), p}
	}, 0},
	{"CompositeHalfOnDestination", func(q func() *gorm.DB) any {
		p := rsPair{Tenant: "t2"}
		return []any{one(q().Where(map[string]any{"seq": 1}).First(&p)), p}
	}, 0},

	{"FindManyKeysOutOfOrder", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Find(&us, []uint{3, 1, 2})), us}
	}, 0},
	{"FindManyOrderByKeyDesc", func(q func() *gorm.DB) any {
		var us []*rsAccount
		return []any{one(q().Order("id DESC").Find(&us, []uint{1, 3, 2})), us}
	}, 0},
	{"FindManyOrderByKeyColumn", func(q func() *gorm.DB) any {
		var us []rsAccount
		desc := clause.OrderByColumn{Column: clause.Column{Name: "id"}, Desc: true}
		return []any{one(q().Order(desc).Where("id IN ?", []uint{2, 4}).Find(&us)), us}
	}, 0},
	{"FirstOrderByKeyString", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Order(`"rs_accounts"."id" asc`).First(&a, 4)), a}
	}, 0},

	// The destination's key is a condition too.
	{"ReusedStructOtherKey", func(q func() *gorm.DB) any {
		var a rsAccount
		r1 := one(q().First(&a, 1))
		return []any{r1, one(q().First(&a, 2)), a}
	}, 1},
	{"ReusedStructTake", func(q func() *gorm.DB) any {
		var a rsAccount
		r1 := one(q().Take(&a, 1))
		return []any{r1, one(q().Take(&a, 2)), a}
	}, 1},
	{"ReusedStructFind", func(q func() *gorm.DB) any {
		var a rsAccount
		r1 := one(q().Find(&a, 1))
		return []any{r1, one(q().Find(&a, 2)), a}
	}, 1},
	{"ReusedStructLast", func(q func() *gorm.DB) any {
		var a rsAccount
		r1 := one(q().Last(&a, 1))
		return []any{r1, one(q().Where("id = ?", 2).Last(&a)), a}
	}, 1},
	{"DestinationKeyDiffersFromWhereKey", func(q func() *gorm.DB) any {
		a := rsAccount{ID: 1}
		return []any{one(q().Where(map[string]any{"id": 2}).First(&a)), a}
	}, 1},
	{"ReusedSoftDeleted", func(q func() *gorm.DB) any {
		var s rsSoft
		r1 := one(q().First(&s, 1))
		return []any{r1, one(q().First(&s, 2)), s}
	}, 1},
	{"ReusedStringKey", func(q func() *gorm.DB) any {
		var c rsCode
		r1 := one(q().First(&c, "code = ?", "k1"))
		return []any{r1, one(q().First(&c, "code = ?", "k2")), c}
	}, 1},
	{"ReusedCompositeKey", func(q func() *gorm.DB) any {
		var p rsPair
		r1 := one(q().Where(&rsPair{Tenant: "t1", Seq: 1}).First(&p))
		return []any{r1, one(q().Where(&rsPair{Tenant: "t1", Seq: 2}).First(&p)), p}
	}, 1},

	// Not one key: plain GORM.
	{"TenantScope", func(q func() *gorm.DB) any {
		var a rsAccount
		tenant := func(db *gorm.DB) *gorm.DB { return db.Where("balance > ?", 15) }
		return []any{one(q().Scopes(tenant).First(&a, 1)), a}
	}, 1},
	{"WhereStructWithZeroField", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Where(&rsAccount{ID: 1}, "ID", "Owner").First(&a)), a}
	}, 1},
	{"WhereMapWithOtherColumn", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Where(map[string]any{"id": 1, "owner": "nobody"}).First(&a)), a}
	}, 1},
	{"Not", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Not("id = ?", 1).First(&a)), a}
	}, 1},
	{"Or", func(q func() *gorm.DB) any {
		var us []rsAccount
		r := one(q().Where("id = ?", 1).Or("id = ?", 2).Find(&us))
		return []any{r, sortedAccounts(us)}
	}, 1},
	{"NullKey", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Where(map[string]any{"id": nil}).Find(&us)), us}
	}, 1},
	{"LimitZero", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Limit(0).Find(&us, []uint{1})), us}
	}, 1},
	{"Offset", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Offset(1).Find(&us, []uint{1})), us}
	}, 1},
	{"OrderByOtherColumn", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Order("owner desc").Find(&us, []uint{1, 2})), us}
	}, 1},
	{"OrderByKeyThenLimit", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Order("id desc").Limit(2).Find(&us, []uint{1, 2, 3})), us}
	}, 1},
	{"StringKeysOrdered", func(q func() *gorm.DB) any {
		var cs []rsCode
		return []any{one(q().Order("code").Find(&cs, "code IN ?", []string{"k2", "k1"})), cs}
	}, 1},
	{"Group", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Group("id").Having("count(*) > 1").Find(&us, []uint{1})), us}
	}, 1},
	{"Select", func(q func() *gorm.DB) any {
		a := rsAccount{Balance: 7}
		return []any{one(q().Select("id", "owner").First(&a, 1)), a}
	}, 1},
	{"Omit", func(q func() *gorm.DB) any {
		a := rsAccount{Balance: 7}
		return []any{one(q().Omit("balance").First(&a, 1)), a}
	}, 1},
	{"Distinct", func(q func() *gorm.DB) any {
		var us []rsAccount
		return []any{one(q().Distinct().Find(&us, []uint{1})), us}
	}, 1},
	{"Locking", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Clauses(clause.Locking{Strength: "UPDATE"}).First(&a, 1)), a}
	}, 1},
	{"Table", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Table("rs_accounts").First(&a, 1)), a}
	}, 1},
	{"Unscoped", func(q func() *gorm.DB) any {
		var s rsSoft
		r := one(q().Unscoped().First(&s, 3))
		return []any{r, s.ID, s.Name, s.DeletedAt.Valid}
	}, 1},
	{"Raw", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Raw("SELECT * FROM rs_accounts WHERE id = ?", 1).Scan(&a)), a}
	}, 1},
	{"RawFind", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Raw("SELECT * FROM rs_accounts WHERE id = ?", 2).Find(&a)), a}
	}, 1},
	{"NamedArgument", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Where("id = @id", sql.Named("id", 1)).First(&a)), a}
	}, 1},
	{"SubqueryValue", func(q func() *gorm.DB) any {
		var a rsAccount
		sub := q().Model(&rsAccount{}).Select("max(id)")
		return []any{one(q().Where("id = ?", sub).First(&a)), a}
	}, 1},
	{"ExpressionValue", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Where("id = ?", gorm.Expr("1 + 1")).First(&a)), a}
	}, 1},
	{"Pluck", func(q func() *gorm.DB) any {
		var owners []string
		return []any{one(q().Model(&rsAccount{}).Where("id = ?", 1).Pluck("owner", &owners)), owners}
	}, 1},
	{"Count", func(q func() *gorm.DB) any {
		var n int64
		return []any{one(q().Model(&rsAccount{}).Where("id IN ?", []uint{1, 2}).Count(&n)), n}
	}, 1},
	{"CountOnKeyedModel", func(q func() *gorm.DB) any {
		var n int64
		return []any{one(q().Model(&rsAccount{ID: 1}).Count(&n)), n}
	}, 1},
	{"Row", func(q func() *gorm.DB) any {
		var owner string
		err := q().Model(&rsAccount{}).Where("id = ?", 1).Select("owner").Row().Scan(&owner)
		return []any{res(owner, err)}
	}, 1},
	{"ScanIntoOtherStruct", func(q func() *gorm.DB) any {
		var v rsView
		return []any{one(q().Model(&rsAccount{}).Where("id = ?", 1).Scan(&v)), v}
	}, 1},
	{"FindIntoOtherStruct", func(q func() *gorm.DB) any {
		var v rsView
		return []any{one(q().Model(&rsAccount{}).Find(&v, 1)), v}
	}, 1},
	{"FindIntoMap", func(q func() *gorm.DB) any {
		m := map[string]any{}
		return []any{one(q().Model(&rsAccount{}).Where("id = ?", 1).Find(&m)), m}
	}, 1},
	{"ModelWithKeyFindAll", func(q func() *gorm.DB) any {
		var us []rsAccount
		r := one(q().Model(&rsAccount{ID: 1}).Find(&us))
		return []any{r, sortedAccounts(us)}
	}, 1},
	{"FindInBatches", func(q func() *gorm.DB) any {
		var us []rsAccount
		var seen []uint
		r := q().Where("id IN ?", []uint{1, 2, 3}).FindInBatches(&us, 2, func(tx *gorm.DB, batch int) error {
			for _, u := range us {
				seen = append(seen, u.ID)
			}
			return nil
		})
		return []any{one(r), seen}
	}, -1},
	{"HasManyAssociationFind", func(q func() *gorm.DB) any {
		var ms []rsMember
		err := q().Model(&rsTeam{ID: 1}).Association("Members").Find(&ms)
		sort.Slice(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
		return []any{res(ms, err)}
	}, 1},
	{"BelongsToAssociationFindReused", func(q func() *gorm.DB) any {
		var team rsTeam
		e1 := q().Model(&rsMember{ID: 1, TeamID: 1}).Association("Team").Find(&team)
		e2 := q().Model(&rsMember{ID: 3, TeamID: 2}).Association("Team").Find(&team)
		return []any{res(nil, e1), res(team, e2)}
	}, -1},
	{"PreloadBelongsTo", func(q func() *gorm.DB) any {
		var m rsMember
		return []any{one(q().Preload("Team").First(&m, 2)), m}
	}, -1},
	{"PreloadHasMany", func(q func() *gorm.DB) any {
		var team rsTeam
		r := one(q().Preload("Members").First(&team, 1))
		sort.Slice(team.Members, func(i, j int) bool { return team.Members[i].ID < team.Members[j].ID })
		return []any{r, team}
	}, -1},
	{"PreloadManyToMany", func(q func() *gorm.DB) any {
		var ms []rsMember
		r := one(q().Preload("Tags").Find(&ms, []uint{1, 2}))
		for _, m := range ms {
			sort.Slice(m.Tags, func(i, j int) bool { return m.Tags[i].ID < m.Tags[j].ID })
		}
		return []any{r, ms}
	}, -1},
	{"ManyToManyAssociationFind", func(q func() *gorm.DB) any {
		var tags []rsTag
		err := q().Model(&rsMember{ID: 1}).Association("Tags").Find(&tags)
		sort.Slice(tags, func(i, j int) bool { return tags[i].ID < tags[j].ID })
		return []any{res(tags, err)}
	}, 1},
	{"Joins", func(q func() *gorm.DB) any {
		var m rsMember
		return []any{one(q().Joins("Team").First(&m, 3)), m}
	}, 1},
	{"NewDBSession", func(q func() *gorm.DB) any {
		var a rsAccount
		return []any{one(q().Session(&gorm.Session{NewDB: true}).First(&a, 4)), a}
	}, -1},
	{"GenericFirst", func(q func() *gorm.DB) any {
		a, err := gorm.G[rsAccount](q()).Where("id = ?", 2).First(context.Background())
		return []any{res(a, err)}
	}, -1},
	{"GenericFind", func(q func() *gorm.DB) any {
		as, err := gorm.G[rsAccount](q()).Where("id IN ?", []uint{1, 2}).Find(context.Background())
		return []any{res(sortedAccounts(as), err)}
	}, -1},
	{"GenericCount", func(q func() *gorm.DB) any {
		n, err := gorm.G[rsAccount](q()).Where("id = ?", 2).Count(context.Background(), "*")
		return []any{res(n, err)}
	}, -1},
}

// runShapes runs every shape on a twin whose cached side serves reads
// started by q, once with an empty cache and once with every row cached,
// and checks results, statements and what Redis holds afterwards.
// sqlOverride replaces a shape's expected statement count. q starts a
// statement as the variant's application would.
func runShapes(t *testing.T, tw *twin, q func(db *gorm.DB) *gorm.DB, sqlOverride map[string]int) {
	seedShapes(t, tw)
	for _, sh := range readShapes {
		t.Run(sh.name, func(t *testing.T) {
			for _, warm := range []bool{false, true} {
				tw.flushCache(t)
				if warm {
					warmShapes(t, tw)
				}
				what := sh.name + " (cold)"
				if warm {
					what = sh.name + " (warm)"
				}
				before := tw.cachedSQL.Load()
				var sent int64
				tw.same(t, what, func(db *gorm.DB) any {
					out := sh.run(func() *gorm.DB { return q(db) })
					if db == tw.cached {
						sent = tw.cachedSQL.Load() - before
					}
					return out
				})
				want, ok := sqlOverride[sh.name]
				if !ok {
					want = sh.sql
				}
				if warm && want >= 0 {
					assert.Equal(t, int64(want), sent, "%s: statements sent with every row cached", what)
				}
				tw.settled(t)
				// Every row is still readable, as GORM reads it, through the cache.
				tw.same(t, what+": then key lookups", func(db *gorm.DB) any {
					var out []any
					for id := uint(1); id <= 4; id++ {
						var a rsAccount
						out = append(out, one(q(db).First(&a, id)), a)
					}
					var c rsCode
					var p rsPair
					return append(out, one(q(db).First(&c, "code = ?", "k2")), c,
						one(q(db).Where(&rsPair{Tenant: "t1", Seq: 2}).First(&p)), p)
				})
			}
		})
	}
}

// TestReadShapesWithTheCachedScope runs GORM's read shapes with
// db.Scopes(writethrough.Cached) on the cached side: the same results as
// GORM alone, the hits still hits, and nothing wrong left in Redis.
func TestReadShapesWithTheCachedScope(t *testing.T) {
	t.Parallel()
	tw := newTwin(t, twinOpts{models: rsModels})
	runShapes(t, tw, func(db *gorm.DB) *gorm.DB { return db.Scopes(writethrough.Cached) }, map[string]int{
		// The mark covers the statement only.
		"PreloadBelongsTo": 1, "PreloadHasMany": 1, "NewDBSession": 1,
		"GenericFirst": 1, "GenericFind": 1, "GenericCount": 1,
		"BelongsToAssociationFindReused": 1, "FindInBatches": 2, "PreloadManyToMany": 2,
	})
}

// TestReadShapesWithCachedDB: the same through a CachedDB handle kept and
// reused across calls.
func TestReadShapesWithCachedDB(t *testing.T) {
	t.Parallel()
	tw := newTwin(t, twinOpts{models: rsModels})
	handles := map[*gorm.DB]*gorm.DB{
		tw.plain:  writethrough.CachedDB(tw.plain),
		tw.cached: writethrough.CachedDB(tw.cached),
	}
	runShapes(t, tw, func(db *gorm.DB) *gorm.DB { return handles[db] }, map[string]int{
		"PreloadBelongsTo": 1, "PreloadHasMany": 1, "NewDBSession": 1,
		"GenericFirst": 1, "GenericFind": 1, "GenericCount": 1,
		"BelongsToAssociationFindReused": 1, "FindInBatches": 2, "PreloadManyToMany": 2,
	})
}

// TestReadShapesWithCacheReads: the same with Config.CacheReads and no
// scope at all; preloads by key, NewDB sessions and gorm.G reads are hits
// too.
func TestReadShapesWithCacheReads(t *testing.T) {
	t.Parallel()
	tw := newTwin(t, twinOpts{models: rsModels, cfg: writethrough.Config{CacheReads: true}})
	runShapes(t, tw, func(db *gorm.DB) *gorm.DB { return db }, map[string]int{
		"PreloadBelongsTo": 0, "PreloadHasMany": 1, "NewDBSession": 0,
		"GenericFirst": 0, "GenericFind": 0, "GenericCount": 1,
		"BelongsToAssociationFindReused": 1, "FindInBatches": 2, "PreloadManyToMany": 1,
	})
}

// TestCacheReadsNeverFillInsideATransaction: with CacheReads, reads inside a
// transaction (statements, preloads, gorm.G) go to the database, see the
// transaction's own writes, and leave nothing in Redis.
func TestCacheReadsNeverFillInsideATransaction(t *testing.T) {
	tw := newTwin(t, twinOpts{models: rsModels, cfg: writethrough.Config{CacheReads: true}})
	seedShapes(t, tw)
	fills := tw.p.Stats().Fills
	tw.same(t, "reads in a transaction", func(db *gorm.DB) any {
		var out []any
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Model(&rsAccount{ID: 1}).Update("owner", "inside").Error; err != nil {
				return err
			}
			var a rsAccount
			out = append(out, one(tx.First(&a, 1)), a)
			var m rsMember
			out = append(out, one(tx.Preload("Team").First(&m, 1)), m)
			g, err := gorm.G[rsAccount](tx).Where("id = ?", 2).First(context.Background())
			out = append(out, res(g, err))
			return nil
		})
		return append(out, res(nil, err))
	})
	assert.Equal(t, fills, tw.p.Stats().Fills, "no fill from inside a transaction")
	tw.sameRows(t)
	tw.settled(t)
}

// TestCacheReadsWithWritesStayConsistent: writes of every kind (generic
// gorm.G writes included) between reads that CacheReads serves: reads see
// every write, and Redis agrees with the database afterwards.
func TestCacheReadsWithWritesStayConsistent(t *testing.T) {
	tw := newTwin(t, twinOpts{models: rsModels, cfg: writethrough.Config{CacheReads: true}})
	seedShapes(t, tw)
	ctx := context.Background()
	read := func(what string) {
		t.Helper()
		tw.same(t, what, func(db *gorm.DB) any {
			var a rsAccount
			var m rsMember
			var s rsSoft
			as, err := gorm.G[rsAccount](db).Where("id IN ?", []uint{1, 2, 3}).Find(ctx)
			return []any{
				one(db.First(&a, 1)), a,
				one(db.Preload("Team").First(&m, 1)), m,
				one(db.First(&s, 2)), s,
				res(sortedAccounts(as), err),
			}
		})
	}
	read("first read")
	read("warm read")
	steps := []struct {
		name string
		fn   func(db *gorm.DB) error
	}{
		{"generic Update", func(db *gorm.DB) error {
			_, err := gorm.G[rsAccount](db).Where("id = ?", 1).Update(ctx, "owner", "zed")
			return err
		}},
		{"generic Updates", func(db *gorm.DB) error {
			_, err := gorm.G[rsAccount](db).Where("id IN ?", []uint{2, 3}).Updates(ctx, rsAccount{Balance: 77})
			return err
		}},
		{"generic Create", func(db *gorm.DB) error {
			return gorm.G[rsAccount](db).Create(ctx, &rsAccount{ID: 9, Owner: "new"})
		}},
		{"generic Delete", func(db *gorm.DB) error {
			_, err := gorm.G[rsAccount](db).Where("id = ?", 9).Delete(ctx)
			return err
		}},
		{"team renamed", func(db *gorm.DB) error {
			return db.Model(&rsTeam{ID: 1}).Update("name", "crimson").Error
		}},
		{"member moved", func(db *gorm.DB) error {
			return db.Model(&rsMember{ID: 1}).Update("team_id", 2).Error
		}},
		{"soft delete", func(db *gorm.DB) error {
			return db.Delete(&rsSoft{ID: 2}).Error
		}},
		{"NewDB session save", func(db *gorm.DB) error {
			var a rsAccount
			s := db.Session(&gorm.Session{NewDB: true})
			if err := s.First(&a, 3).Error; err != nil {
				return err
			}
			a.Owner = "saved"
			return s.Save(&a).Error
		}},
	}
	for _, step := range steps {
		tw.same(t, step.name, func(db *gorm.DB) any { return res(nil, step.fn(db)) })
		read("after " + step.name)
		tw.sameRows(t)
		tw.settled(t)
	}
}

// TestUncachedReadsTheDatabase: with CacheReads, Uncached sends a cached
// key's read to the database.
func TestUncachedReadsTheDatabase(t *testing.T) {
	tw := newTwin(t, twinOpts{models: rsModels, cfg: writethrough.Config{CacheReads: true}})
	seedShapes(t, tw)
	warmShapes(t, tw)
	before := tw.cachedSQL.Load()
	tw.same(t, "uncached", func(db *gorm.DB) any {
		var m rsMember
		return []any{one(db.Scopes(writethrough.Uncached).Preload("Team").First(&m, 1)), m}
	})
	assert.Equal(t, int64(2), tw.cachedSQL.Load()-before, "the statement and its preload ran in SQL")
	before = tw.cachedSQL.Load()
	tw.same(t, "cached", func(db *gorm.DB) any {
		var m rsMember
		return []any{one(db.Preload("Team").First(&m, 1)), m}
	})
	assert.Equal(t, int64(0), tw.cachedSQL.Load()-before, "served from Redis")
}

// TestCachedDBHandleDoesNotPileUpConditions: a CachedDB handle kept in a
// variable starts a new statement on every call.
func TestCachedDBHandleDoesNotPileUpConditions(t *testing.T) {
	tw := newTwin(t, twinOpts{models: rsModels})
	seedShapes(t, tw)
	h := writethrough.CachedDB(tw.cached)
	var a, b rsAccount
	require.NoError(t, h.Where("owner = ?", "ann").First(&a).Error)
	require.NoError(t, h.First(&b, 2).Error, "the first call's condition is not carried over")
	assert.Equal(t, "bob", b.Owner)
	before := tw.cachedSQL.Load()
	var c rsAccount
	require.NoError(t, h.First(&c, 2).Error)
	assert.Equal(t, before, tw.cachedSQL.Load(), "served from Redis")
	assert.Equal(t, b, c)
}

type rsLabelled struct {
	ID   uint    `gorm:"primaryKey" cache:"key:lab:{id}"`
	Tags []rsTag `gorm:"many2many:rs_labelled_tags"`
}

// TestManyToManyJoinTableIsNotCached: GORM builds a many-to-many join table
// from the two models' key fields, tags included; it is not a cached model,
// so its rows never reach Redis and a key template on one side does not
// break writes of the association.
func TestManyToManyJoinTableIsNotCached(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&rsTag{}, &rsLabelled{}}})
	tw.same(t, "create with associations", func(db *gorm.DB) any {
		l := rsLabelled{ID: 1, Tags: []rsTag{{ID: 1, Label: "x"}, {ID: 2, Label: "y"}}}
		return res(l, db.Create(&l).Error)
	})
	tw.same(t, "replace associations", func(db *gorm.DB) any {
		return res(nil, db.Model(&rsLabelled{ID: 1}).Association("Tags").Replace([]rsTag{{ID: 3, Label: "z"}}))
	})
	tw.same(t, "preload", func(db *gorm.DB) any {
		var l rsLabelled
		return []any{one(db.Scopes(writethrough.Cached).Preload("Tags").First(&l, 1)), l}
	})
	tw.sameRows(t)
	tw.settled(t)
}
