package writethrough_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

func seedUsers(t *testing.T, e *env, n int) []User {
	t.Helper()
	us := make([]User, n)
	for i := range us {
		us[i] = User{Email: "u" + uintStr(uint64(i)) + "@x", Name: "U" + uintStr(uint64(i)), Balance: int64(i * 10)}
	}
	require.NoError(t, e.db.Create(&us).Error)
	return us
}

type readForm struct {
	name string
	// run reads with db, returning the destination and the result.
	run func(db *gorm.DB, ids []uint) (any, *gorm.DB)
	hit bool // served from Redis when every key is cached
}

var readForms = []readForm{
	{"FirstInt", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.First(&u, ids[0])
	}, true},
	{"FirstString", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.First(&u, uintStr(uint64(ids[0])))
	}, true},
	{"FirstInlineCondition", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.First(&u, "id = ?", ids[0])
	}, true},
	{"WhereString", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Where("id = ?", ids[0]).First(&u)
	}, true},
	{"WhereQualified", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Where(`"users"."id" = ?`, ids[0]).Take(&u)
	}, true},
	{"WhereStruct", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Where(&User{ID: ids[0]}).First(&u)
	}, true},
	{"WhereMap", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Where(map[string]any{"id": ids[0]}).Take(&u)
	}, true},
	{"KeyOnDestination", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		u := User{ID: ids[0]}
		return &u, db.First(&u)
	}, true},
	{"Take", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Take(&u, ids[0])
	}, true},
	{"Last", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Last(&u, ids[0])
	}, true},
	{"FindOneIntoSlice", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []User
		return &us, db.Find(&us, ids[0])
	}, true},
	{"FindMany", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []User
		return &us, db.Find(&us, ids)
	}, true},
	{"FindManyPointers", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []*User
		return &us, db.Find(&us, ids)
	}, true},
	{"WhereIn", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []User
		return &us, db.Where("id IN ?", ids).Find(&us)
	}, true},
	{"WhereMapSlice", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []User
		return &us, db.Where(map[string]any{"id": ids}).Find(&us)
	}, true},
	// Shapes the cache does not serve: they run in SQL, untouched.
	{"SelectColumns", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Select("id", "name").First(&u, ids[0])
	}, false},
	{"NonKeyCondition", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Where("name = ?", "U1").First(&u)
	}, false},
	{"KeyAndOtherCondition", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Where("id = ?", ids[0]).Where("balance >= ?", 0).First(&u)
	}, false},
	{"OrderByOtherColumn", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []User
		return &us, db.Order("name desc").Find(&us, ids)
	}, false},
	{"Offset", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var us []User
		return &us, db.Offset(1).Find(&us, ids)
	}, false},
	{"FirstWithoutKey", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.First(&u)
	}, false},
	{"Locking", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var u User
		return &u, db.Raw("SELECT * FROM users WHERE id = ?", ids[0]).Scan(&u)
	}, false},
	{"Count", func(db *gorm.DB, ids []uint) (any, *gorm.DB) {
		var n int64
		return &n, db.Model(&User{}).Where("id IN ?", ids).Count(&n)
	}, false},
}

func TestCachedReadsMatchTheDatabase(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	us := seedUsers(t, e, 3)
	ids := []uint{us[0].ID, us[1].ID, us[2].ID}
	for _, f := range readForms {
		t.Run(f.name, func(t *testing.T) {
			want, wres := f.run(e.db, ids)
			require.NoError(t, wres.Error)
			stats := e.p.Stats()
			before := e.sqls.Load()
			got, gres := f.run(e.db.Scopes(writethrough.Cached), ids)
			require.NoError(t, gres.Error)
			if f.hit {
				assert.Equal(t, before, e.sqls.Load(), "served from Redis")
				assert.Greater(t, e.p.Stats().Hits, stats.Hits)
			} else {
				assert.Greater(t, e.sqls.Load(), before, "ran in SQL")
			}
			clearAll(want)
			clearAll(got)
			assert.Equal(t, want, got)
			assert.Equal(t, wres.RowsAffected, gres.RowsAffected, "RowsAffected as GORM reports it")
		})
	}
}

func clearAll(v any) {
	switch x := v.(type) {
	case *User:
		x.finds = 0
	case *[]User:
		for i := range *x {
			(*x)[i].finds = 0
		}
	case *[]*User:
		for _, u := range *x {
			u.finds = 0
		}
	}
}

func TestNotFoundMatchesGORM(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	us := seedUsers(t, e, 2)
	missing := us[1].ID + 1000

	var u User
	res := e.db.Scopes(writethrough.Cached).First(&u, missing)
	assert.ErrorIs(t, res.Error, gorm.ErrRecordNotFound, "miss")
	assert.Equal(t, byte(writethrough.StateTombstone), e.state(t, e.key("users", missing)), "a miss that finds nothing leaves a tombstone")
	before := e.sqls.Load()
	res = e.db.Scopes(writethrough.Cached).First(&u, missing)
	assert.ErrorIs(t, res.Error, gorm.ErrRecordNotFound, "hit")
	assert.Zero(t, res.RowsAffected)
	assert.Equal(t, before, e.sqls.Load())

	var list []User
	res = e.db.Scopes(writethrough.Cached).Find(&list, []uint{us[0].ID, missing, us[1].ID})
	require.NoError(t, res.Error, "Find reports no error for missing keys")
	assert.Equal(t, int64(2), res.RowsAffected)
	assert.Len(t, list, 2)
	assert.Equal(t, before, e.sqls.Load(), "all three keys answered by Redis")

	var none []User
	res = e.db.Scopes(writethrough.Cached).Find(&none, []uint{missing})
	require.NoError(t, res.Error)
	assert.NotNil(t, none, "an empty, non-nil slice, as GORM gives")
	assert.Empty(t, none)

	// A10: an insert replaces the tombstone.
	require.NoError(t, e.db.Create(&User{ID: missing, Email: "late@x"}).Error)
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&u, missing).Error)
	assert.Equal(t, "late@x", u.Email)
}

func TestManyKeysMissFillsEachInOneQuery(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	us := seedUsers(t, e, 4)
	ids := []uint{us[0].ID, us[1].ID, us[2].ID, us[3].ID}
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, us[1].ID, us[3].ID))
	before := e.sqls.Load()
	var got []User
	require.NoError(t, e.db.Scopes(writethrough.Cached).Find(&got, ids).Error)
	assert.Equal(t, before+1, e.sqls.Load(), "one SQL query for the misses")
	assert.Len(t, got, 4)
	for _, id := range ids {
		assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", id)))
	}
}

func TestReadsInsideATransactionGoToTheDatabase(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	us := seedUsers(t, e, 1)
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, us[0].ID))
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Model(&us[0]).Update("name", "inside").Error)
		var u User
		require.NoError(t, tx.Scopes(writethrough.Cached).First(&u, us[0].ID).Error)
		assert.Equal(t, "inside", u.Name, "the transaction sees its own write")
		g, err := writethrough.Get[User](context.Background(), tx, us[0].ID)
		require.NoError(t, err)
		assert.Equal(t, "inside", g.Name)
		return nil
	}))
	assert.Zero(t, e.p.Stats().Fills, "never fill from inside a transaction")
}

func TestConcurrentMissesShareOneDatabaseRead(t *testing.T) {
	e := setup(t, nil, writethrough.Config{Timeout: 5 * time.Second}) // no lookup may time out: each reader must join the flight
	us := seedUsers(t, e, 1)
	id := us[0].ID
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, id))
	const n = 8
	allIn, release := gatherFlight(e.p, n)
	before := e.sqls.Load()
	var wg sync.WaitGroup
	results := make([]User, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = e.db.Scopes(writethrough.Cached).First(&results[i], id).Error
		}(i)
	}
	awaitFlight(t, allIn)
	release()
	wg.Wait()
	for i := 0; i < n; i++ {
		require.NoError(t, errs[i])
		assert.Equal(t, us[0].Email, results[i].Email)
		assert.Equal(t, 1, results[i].finds, "AfterFind runs once per reader")
	}
	// The readers that arrived after the leader's flight began shared it; a
	// reader scheduled after the leader finished would hit the cache. Either
	// way one SQL query.
	assert.Equal(t, before+1, e.sqls.Load(), "one database read for %d concurrent misses", n)
}

func TestRedisDownReadsFallBackToTheDatabase(t *testing.T) {
	e := newEnv(t, rigOpts{own: true, cfg: writethrough.Config{Prefix: "down"}})
	db, srv := e.db, e.srv
	u := User{Email: "down@x", Name: "Dee"}
	require.NoError(t, db.Create(&u).Error)
	srv.Kill()
	var got User
	require.NoError(t, db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, "Dee", got.Name)
	var list []User
	require.NoError(t, db.Scopes(writethrough.Cached).Find(&list, []uint{u.ID}).Error)
	assert.Len(t, list, 1)
	g, err := writethrough.Get[User](context.Background(), db, u.ID)
	require.NoError(t, err)
	assert.Equal(t, "Dee", g.Name)
	assert.NotZero(t, e.p.Stats().RedisErrors)
}

func TestGetManyKeepsKeyOrder(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	us := seedUsers(t, e, 3)
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, us[1].ID))
	got, err := writethrough.GetMany[User](context.Background(), e.db, us[2].ID, us[1].ID, 999999, us[0].ID)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, []uint{us[2].ID, us[1].ID, us[0].ID}, []uint{got[0].ID, got[1].ID, got[2].ID})
	for _, g := range got {
		assert.Equal(t, 1, g.finds, "AfterFind runs on every row")
	}
	_, err = writethrough.Get[User](context.Background(), e.db, 999999)
	assert.ErrorIs(t, err, gorm.ErrRecordNotFound)
}

func TestPreloadIsNotServedFromTheCache(t *testing.T) {
	type Team struct {
		ID   uint `gorm:"primaryKey" cache:""`
		Name string
	}
	type Member struct {
		ID     uint `gorm:"primaryKey" cache:""`
		TeamID uint
		Team   Team
	}
	e := setup(t, nil, writethrough.Config{}, &Team{}, &Member{})
	m := Member{Team: Team{Name: "red"}}
	require.NoError(t, e.db.Create(&m).Error)
	var got Member
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).Preload("Team").First(&got, m.ID).Error)
	assert.Greater(t, e.sqls.Load(), before)
	assert.Equal(t, "red", got.Team.Name)
}

func TestGetMissReadsRedisOnce(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		cached  int // of the keys read, how many are cached beforehand
		missing int // and how many are not
		read    func(db *gorm.DB, ids []uint) (int, error)
	}{
		{"Get", 0, 1, func(db *gorm.DB, ids []uint) (int, error) {
			_, err := writethrough.Get[User](ctx, db, ids[0])
			return 1, err
		}},
		{"GetMany, one key missing", 2, 1, func(db *gorm.DB, ids []uint) (int, error) {
			got, err := writethrough.GetMany[User](ctx, db, anyIDs(ids)...)
			return len(got), err
		}},
		{"GetMany, two keys missing", 2, 2, func(db *gorm.DB, ids []uint) (int, error) {
			got, err := writethrough.GetMany[User](ctx, db, anyIDs(ids)...)
			return len(got), err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, nil, calm())
			us := seedUsers(t, e, tc.cached+tc.missing)
			ids := make([]uint, len(us))
			for i, u := range us {
				ids[i] = u.ID
			}
			require.NoError(t, writethrough.Invalidate(e.db, &User{}, anyIDs(ids[tc.cached:])...))
			cmds := countRedisCommands(e.rdb)
			before := e.p.Stats()
			n, err := tc.read(e.db, ids)
			require.NoError(t, err)
			assert.Equal(t, len(ids), n)
			assert.Equal(t, 1, cmds.reads(), "one GET or MGET for the keys, none again for the database fallback")
			after := e.p.Stats()
			assert.Equal(t, uint64(tc.missing), after.Fills-before.Fills, "the missing keys are leased and filled")
			for _, id := range ids {
				assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", id)))
			}
			// Now every key is cached: the same read is one round trip.
			cmds.reset()
			_, err = tc.read(e.db, ids)
			require.NoError(t, err)
			assert.Equal(t, 1, cmds.reads())
		})
	}
}

func anyIDs(ids []uint) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}
