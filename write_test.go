package writethrough_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// Soft-deletable model.
type Note struct {
	ID        uint `gorm:"primaryKey" cache:"ttl:10m"`
	Body      string
	Stars     int `gorm:"default:3"`
	DeletedAt gorm.DeletedAt
}

// assertMatchesDB checks the promise every write keeps: the key holds the
// row exactly as the database has it (committed), or a tombstone when the
// row is gone.
func (e *env) assertMatchesDB(t *testing.T, table string, id uint, model any, fresh func() any) {
	t.Helper()
	key := e.key(table, id)
	raw, err := e.rdb.Get(context.Background(), key).Bytes()
	dbRow := fresh()
	dbErr := e.db.First(dbRow, id).Error
	if errors.Is(dbErr, gorm.ErrRecordNotFound) {
		if errors.Is(err, redis.Nil) {
			return
		}
		require.NoError(t, err)
		en, perr := writethrough.ParseEntry(raw)
		require.NoError(t, perr)
		assert.Equal(t, string(rune(writethrough.StateTombstone)), string(rune(en.State)), "row %d is gone: key must be a tombstone or absent", id)
		return
	}
	require.NoError(t, dbErr)
	require.NoError(t, err, "row %d: key %s must hold the committed row", id, key)
	en, err := writethrough.ParseEntry(raw)
	require.NoError(t, err)
	require.Equal(t, string(rune(writethrough.StateCommitted)), string(rune(en.State)), "row %d: state", id)
	before := e.sqls.Load()
	got := fresh()
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(got, id).Error)
	require.Equal(t, before, e.sqls.Load(), "row %d: cached read must be a hit", id)
	clearFinds(dbRow)
	clearFinds(got)
	assert.Equal(t, dbRow, got, "row %d: cache equals database", id)
}

func clearFinds(v any) {
	if u, ok := v.(*User); ok {
		u.finds = 0
	}
}

type writeCase struct {
	name string
	// missesRows: the statement matches no row, so it locks nothing; the
	// plugin then invalidates instead of installing (a concurrent insert
	// could overtake its re-read).
	missesRows bool
	// run performs the write with db and returns the ids it touched.
	run func(t *testing.T, db *gorm.DB, seed []User) []uint
}

var writeCases = []writeCase{
	{"CreateOne", false, func(t *testing.T, db *gorm.DB, _ []User) []uint {
		u := User{Email: "new@x", Name: "New"}
		require.NoError(t, db.Create(&u).Error)
		return []uint{u.ID}
	}},
	{"CreateSlice", false, func(t *testing.T, db *gorm.DB, _ []User) []uint {
		us := []User{{Email: "s1@x"}, {Email: "s2@x"}}
		require.NoError(t, db.Create(&us).Error)
		return []uint{us[0].ID, us[1].ID}
	}},
	{"CreateInBatches", false, func(t *testing.T, db *gorm.DB, _ []User) []uint {
		us := []User{{Email: "b1@x"}, {Email: "b2@x"}, {Email: "b3@x"}}
		require.NoError(t, db.CreateInBatches(&us, 2).Error)
		return []uint{us[0].ID, us[1].ID, us[2].ID}
	}},
	{"CreateMap", false, func(t *testing.T, db *gorm.DB, _ []User) []uint {
		m := map[string]any{"email": "map@x", "name": "Map"}
		require.NoError(t, db.Model(&User{}).Create(m).Error)
		id, ok := m["id"]
		require.True(t, ok, "the driver returns the generated id into the map")
		return []uint{toUint(t, id)}
	}},
	{"Save", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		u := seed[0]
		u.Name = "Saved"
		require.NoError(t, db.Save(&u).Error)
		return []uint{u.ID}
	}},
	{"UpdateColumnByName", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{ID: seed[0].ID}).Update("name", "Renamed").Error)
		return []uint{seed[0].ID}
	}},
	{"UpdatesStruct", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{ID: seed[0].ID}).Updates(User{Name: "S", Balance: 7}).Error)
		return []uint{seed[0].ID}
	}},
	{"UpdatesMap", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{ID: seed[0].ID}).Updates(map[string]any{"balance": 0, "name": ""}).Error)
		return []uint{seed[0].ID}
	}},
	{"UpdateExpr", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&seed[0]).Update("balance", gorm.Expr("balance * 2 + 1")).Error)
		return []uint{seed[0].ID}
	}},
	{"UpdateColumn", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{ID: seed[0].ID}).UpdateColumn("status", "frozen").Error)
		return []uint{seed[0].ID}
	}},
	{"UpdateColumns", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{ID: seed[0].ID}).UpdateColumns(map[string]any{"status": "x", "balance": 3}).Error)
		return []uint{seed[0].ID}
	}},
	{"UpdateWithUnmatchedCondition", true, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{ID: seed[0].ID}).Where("balance < 0").Update("name", "never").Error)
		return []uint{seed[0].ID}
	}},
	{"DeleteByModel", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Delete(&seed[0]).Error)
		return []uint{seed[0].ID}
	}},
	{"DeleteByKeys", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Delete(&User{}, []uint{seed[0].ID, seed[1].ID}).Error)
		return []uint{seed[0].ID, seed[1].ID}
	}},
	{"DeleteWithUnmatchedCondition", true, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Where("balance < 0").Delete(&seed[0]).Error)
		return []uint{seed[0].ID}
	}},
	{"BulkWhereUpdate", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		res := db.Model(&User{}).Where("balance >= ?", 20).Update("status", "rich")
		require.NoError(t, res.Error)
		assert.Equal(t, int64(2), res.RowsAffected, "RowsAffected is GORM's own")
		return []uint{seed[1].ID, seed[2].ID}
	}},
	{"BulkWhereUpdatesExpr", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		require.NoError(t, db.Model(&User{}).Where("id IN ?", []uint{seed[0].ID, seed[2].ID}).
			Updates(map[string]any{"balance": gorm.Expr("balance + 100")}).Error)
		return []uint{seed[0].ID, seed[2].ID}
	}},
	{"BulkWhereDelete", false, func(t *testing.T, db *gorm.DB, seed []User) []uint {
		res := db.Where("balance >= ?", 20).Delete(&User{})
		require.NoError(t, res.Error)
		assert.Equal(t, int64(2), res.RowsAffected)
		return []uint{seed[1].ID, seed[2].ID}
	}},
}

func toUint(t *testing.T, v any) uint {
	switch x := v.(type) {
	case uint:
		return x
	case int64:
		return uint(x)
	case int:
		return uint(x)
	case uint64:
		return uint(x)
	case int32:
		return uint(x)
	}
	t.Fatalf("unexpected id type %T", v)
	return 0
}

// writeContexts are the ways a write reaches the database.
var writeContexts = []struct {
	name string
	gcfg func() *gorm.Config
	wrap func(t *testing.T, db *gorm.DB, fn func(*gorm.DB))
}{
	{"Implicit", nil, func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) { fn(db) }},
	{"Transaction", nil, func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) {
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error { fn(tx); return nil }))
	}},
	{"BeginCommit", nil, func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) {
		tx := db.Begin()
		require.NoError(t, tx.Error)
		fn(tx)
		require.NoError(t, tx.Commit().Error)
	}},
	{"NestedCommitted", nil, func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) {
		require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
			return tx.Transaction(func(inner *gorm.DB) error { fn(inner); return nil })
		}))
	}},
	{"SkipDefaultTransaction", func() *gorm.Config { return &gorm.Config{SkipDefaultTransaction: true} },
		func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) { fn(db) }},
	{"PrepareStmt", func() *gorm.Config { return &gorm.Config{PrepareStmt: true} },
		func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) { fn(db) }},
	{"PrepareStmtTransaction", func() *gorm.Config { return &gorm.Config{PrepareStmt: true} },
		func(t *testing.T, db *gorm.DB, fn func(*gorm.DB)) {
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error { fn(tx); return nil }))
		}},
}

func TestWritesLeaveTheDatabaseRowInTheCache(t *testing.T) {
	for _, wc := range writeContexts {
		t.Run(wc.name, func(t *testing.T) {
			t.Parallel()
			var gcfg *gorm.Config
			if wc.gcfg != nil {
				gcfg = wc.gcfg()
			}
			e := setup(t, gcfg, writethrough.Config{})
			for i, c := range writeCases {
				t.Run(c.name, func(t *testing.T) {
					seed := []User{
						{Email: fmt.Sprintf("%d-a@x", i), Name: "A", Balance: 10},
						{Email: fmt.Sprintf("%d-b@x", i), Name: "B", Balance: 20},
						{Email: fmt.Sprintf("%d-c@x", i), Name: "C", Balance: 30},
					}
					require.NoError(t, e.db.Create(&seed).Error)
					t.Cleanup(func() { e.db.Where("1 = 1").Delete(&User{}) })
					var ids []uint
					wc.wrap(t, e.db, func(db *gorm.DB) { ids = c.run(t, db, seed) })
					require.NotEmpty(t, ids)
					for _, id := range ids {
						if (c.missesRows || wc.name == "SkipDefaultTransaction") && e.state(t, e.key("users", id)) == 0 {
							// Invalidated: a statement that matched no row, or a
							// write without a transaction whose keys were learned
							// after it ran. Absent is what those promise.
							continue
						}
						e.assertMatchesDB(t, "users", id, &User{}, func() any { return &User{} })
					}
					// Rows the write did not touch keep their entries.
					for _, s := range seed {
						if (c.missesRows || wc.name == "SkipDefaultTransaction") && e.state(t, e.key("users", s.ID)) == 0 {
							continue
						}
						e.assertMatchesDB(t, "users", s.ID, &User{}, func() any { return &User{} })
					}
				})
			}
		})
	}
}

func TestSoftDeleteAndUnscopedDelete(t *testing.T) {
	e := setup(t, nil, writethrough.Config{}, &Note{})
	n := Note{Body: "hello"}
	require.NoError(t, e.db.Create(&n).Error)
	key := e.key("notes", n.ID)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))
	assert.Equal(t, 3, decodeNote(t, e, n.ID).Stars, "database default is cached")

	require.NoError(t, e.db.Delete(&n).Error)
	assert.Equal(t, byte(writethrough.StateTombstone), e.state(t, key), "soft delete: scoped reads do not find it")
	var got Note
	assert.ErrorIs(t, e.db.Scopes(writethrough.Cached).First(&got, n.ID).Error, gorm.ErrRecordNotFound)
	var unscoped Note
	require.NoError(t, e.db.Unscoped().Scopes(writethrough.Cached).First(&unscoped, n.ID).Error, "Unscoped reads go to SQL")
	assert.True(t, unscoped.DeletedAt.Valid)

	require.NoError(t, e.db.Unscoped().Delete(&Note{}, n.ID).Error)
	assert.Equal(t, byte(writethrough.StateTombstone), e.state(t, key))
	var count int64
	require.NoError(t, e.db.Unscoped().Model(&Note{}).Where("id = ?", n.ID).Count(&count).Error)
	assert.Zero(t, count)

	// Bulk soft delete reports its keys through RETURNING.
	ns := []Note{{Body: "a"}, {Body: "b"}}
	require.NoError(t, e.db.Create(&ns).Error)
	res := e.db.Where("body IN ?", []string{"a", "b"}).Delete(&Note{})
	require.NoError(t, res.Error)
	assert.Equal(t, int64(2), res.RowsAffected)
	for _, x := range ns {
		assert.Equal(t, byte(writethrough.StateTombstone), e.state(t, e.key("notes", x.ID)))
	}
}

func decodeNote(t *testing.T, e *env, id uint) Note {
	t.Helper()
	var n Note
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&n, id).Error)
	require.Equal(t, before, e.sqls.Load(), "expected a hit")
	return n
}

func TestSavepointRolledBackOuterCommitted(t *testing.T) {
	for _, prep := range []bool{false, true} {
		t.Run(fmt.Sprintf("PrepareStmt=%v", prep), func(t *testing.T) {
			e := setup(t, &gorm.Config{PrepareStmt: prep}, writethrough.Config{})
			a := User{Email: "sa@x", Balance: 1}
			b := User{Email: "sb@x", Balance: 1}
			require.NoError(t, e.db.Create(&[]*User{&a, &b}).Error)
			innerErr := errors.New("inner fails")
			require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
				require.NoError(t, tx.Model(&a).Update("balance", 2).Error)
				err := tx.Transaction(func(inner *gorm.DB) error {
					require.NoError(t, inner.Model(&b).Update("balance", 666).Error)
					require.NoError(t, inner.Model(&a).Update("balance", 777).Error)
					return innerErr
				})
				require.ErrorIs(t, err, innerErr)
				return nil
			}))
			// b's staged value came from the rolled-back savepoint: never
			// installed. a was re-written inside it: invalidated, not installed.
			for _, u := range []User{a, b} {
				st := e.state(t, e.key("users", u.ID))
				assert.Contains(t, []byte{0}, st, "user %d: key deleted after a savepoint rollback", u.ID)
				var got User
				require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
				assert.NotEqual(t, int64(666), got.Balance)
				assert.NotEqual(t, int64(777), got.Balance)
			}
			var ga User
			require.NoError(t, e.db.First(&ga, a.ID).Error)
			assert.Equal(t, int64(2), ga.Balance)
		})
	}
}

func TestBeginRollbackDeletesPending(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "br@x", Balance: 5}
	require.NoError(t, e.db.Create(&u).Error)
	tx := e.db.Begin()
	require.NoError(t, tx.Model(&u).Update("balance", 50).Error)
	require.NoError(t, tx.Create(&User{Email: "br2@x"}).Error)
	require.NoError(t, tx.Rollback().Error)
	assert.NotEqual(t, byte(writethrough.StatePending), e.state(t, e.key("users", u.ID)), "deleted, or the kept row put back")
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(5), got.Balance)
}

func TestEveryKeyHasATTL(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "ttl@x"}
	require.NoError(t, e.db.Create(&u).Error)
	ctx := context.Background()
	key := e.key("users", u.ID)
	ttl := e.rdb.PTTL(ctx, key).Val()
	assert.Greater(t, ttl, 9*time.Minute-time.Second, "committed: model TTL minus jitter")
	assert.LessOrEqual(t, ttl, 11*time.Minute, "committed: model TTL plus jitter")

	require.NoError(t, e.db.Delete(&u).Error)
	ttl = e.rdb.PTTL(ctx, key).Val()
	assert.Greater(t, ttl, time.Duration(0))
	assert.LessOrEqual(t, ttl, time.Minute, "tombstone: NegativeTTL")

	// Pending: PendingTTL, from the prepare just before COMMIT.
	tx := e.db.Begin()
	v := User{Email: "ttl2@x"}
	require.NoError(t, tx.Create(&v).Error)
	writethrough.SetHook(e.p, func(point, key string) {
		if point == "tx:before-commit" && key == e.key("users", v.ID) {
			ttl := e.rdb.PTTL(ctx, key).Val()
			assert.Greater(t, ttl, time.Duration(0))
			assert.LessOrEqual(t, ttl, time.Minute, "pending: PendingTTL")
		}
	})
	require.NoError(t, tx.Commit().Error)
	writethrough.SetHook(e.p, nil)

	// Everything under the prefix has a TTL.
	keys, err := e.rdb.Keys(ctx, e.prefix+":*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		assert.Greater(t, e.rdb.PTTL(ctx, k).Val(), time.Duration(0), k)
	}
}
