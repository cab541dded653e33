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
}

// rsView is another struct over rs_accounts' columns.
type rsView struct {
	ID    uint
	Owner string
}

var rsModels = []any{&rsAccount{}, &rsSoft{}, &rsCode{}, &rsPair{}, &rsTeam{}, &rsMember{}}

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
		require.NoError(t, db.Create(&[]rsMember{{ID: 1, TeamID: 1, Name: "m1"}, {ID: 2, TeamID: 1, Name: "m2"}, {ID: 3, TeamID: 2, Name: "m3"}}).Error)
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
func runShapes(t *testing.T, tw *twin, q func(db *gorm.DB) *gorm.DB, variant int) {
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
				if warm && sh.sql >= 0 {
					assert.Equal(t, int64(sh.sql), sent, "%s: statements sent with every row cached", what)
				}
				tw.settled(t)
				// Every row is still readable, as GORM reads it, through the cache.
				for id := uint(1); id <= 4; id++ {
					var a rsAccount
					tw.same(t, what+": then a key lookup", func(db *gorm.DB) any {
						return []any{one(q(db).First(&a, id)), a}
					})
				}
				tw.same(t, what+": then a string key lookup", func(db *gorm.DB) any {
					var c rsCode
					return []any{one(q(db).First(&c, "code = ?", "k2")), c}
				})
				tw.same(t, what+": then a composite key lookup", func(db *gorm.DB) any {
					var p rsPair
					return []any{one(q(db).Where(&rsPair{Tenant: "t1", Seq: 2}).First(&p)), p}
				})
				tw.settled(t)
			}
		})
	}
	_ = variant
}

// TestReadShapesWithTheCachedScope runs GORM's read shapes with
// db.Scopes(writethrough.Cached) on the cached side: the same results as
// GORM alone, the hits still hits, and nothing wrong left in Redis.
func TestReadShapesWithTheCachedScope(t *testing.T) {
	tw := newTwin(t, twinOpts{models: rsModels})
	runShapes(t, tw, func(db *gorm.DB) *gorm.DB { return db.Scopes(writethrough.Cached) }, 0)
}
