package writethrough_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

type User struct {
	ID        uint   `gorm:"primaryKey" cache:"ttl:10m"`
	Email     string `gorm:"uniqueIndex"`
	Name      string
	Balance   int64
	Status    string `gorm:"default:active"`
	CreatedAt time.Time
	UpdatedAt time.Time
	finds     int `gorm:"-"`
}

func (u *User) AfterFind(*gorm.DB) error {
	u.finds++
	return nil
}

// env is one test's database, Redis and plugin.
type env struct {
	db     *gorm.DB
	rdb    *redis.Client
	prefix string
	p      *writethrough.Plugin
	sqls   *atomic.Int64 // statements that reached the database
}

// sqlCounter counts statements GORM sends to the database.
type sqlCounter struct {
	logger.Interface
	n *atomic.Int64
}

func (c sqlCounter) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), err error) {
	c.n.Add(1)
}

func (c sqlCounter) LogMode(logger.LogLevel) logger.Interface { return c }

func setup(t testing.TB, gcfg *gorm.Config, cfg writethrough.Config, models ...any) *env {
	t.Helper()
	n := &atomic.Int64{}
	if gcfg == nil {
		gcfg = &gorm.Config{}
	}
	gcfg.Logger = sqlCounter{Interface: logger.Discard, n: n}
	db := testenv.Postgres(t, gcfg)
	rdb, prefix := testenv.Redis(t)
	if cfg.Prefix == "" {
		cfg.Prefix = prefix
	}
	if cfg.DrainInterval == 0 {
		cfg.DrainInterval = -1 // no background statements: the SQL counter counts only the test's
	}
	p := writethrough.New(rdb, cfg)
	t.Cleanup(func() { _ = p.Close() })
	require.NoError(t, db.Use(p))
	if len(models) == 0 {
		models = []any{&User{}}
	}
	require.NoError(t, db.AutoMigrate(models...))
	return &env{db: db, rdb: rdb, prefix: cfg.Prefix, p: p, sqls: n}
}

func (e *env) key(table string, id any) string {
	return e.prefix + ":" + table + ":" + toString(id)
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case uint:
		return uintStr(uint64(x))
	case int:
		return uintStr(uint64(x))
	}
	panic("unsupported")
}

func uintStr(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

// state returns the state byte of the key's entry, or 0 when absent.
func (e *env) state(t testing.TB, key string) byte {
	t.Helper()
	raw, err := e.rdb.Get(context.Background(), key).Bytes()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	require.NoError(t, err)
	en, err := writethrough.ParseEntry(raw)
	require.NoError(t, err)
	return en.State
}

func TestCreateThenCachedReadIsAHit(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "a@x", Name: "Ann", Balance: 10}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))

	before := e.sqls.Load()
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, before, e.sqls.Load(), "a hit must not reach the database")
	assert.Equal(t, "Ann", got.Name)
	assert.Equal(t, "active", got.Status, "the cached row holds the database default")
	assert.Equal(t, 1, got.finds, "AfterFind runs on a hit")

	var fromDB User
	require.NoError(t, e.db.First(&fromDB, u.ID).Error)
	got.finds, fromDB.finds = 0, 0
	assert.Equal(t, fromDB, got)
}

func TestPartialUpdateCachesTheWholeRow(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "b@x", Name: "Bob", Balance: 10}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, e.db.Model(&User{ID: u.ID}).Update("balance", gorm.Expr("balance + ?", 5)).Error)

	before := e.sqls.Load()
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, before, e.sqls.Load())
	assert.Equal(t, int64(15), got.Balance)
	assert.Equal(t, "Bob", got.Name)
	assert.Equal(t, "b@x", got.Email)
}

func TestRollbackLeavesNoPendingEntry(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "c@x", Name: "Cy", Balance: 10}
	require.NoError(t, e.db.Create(&u).Error)
	key := e.key("users", u.ID)
	boom := errors.New("boom")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		require.NoError(t, tx.Model(&u).Update("balance", 999).Error)
		assert.Equal(t, byte(writethrough.StatePending), e.state(t, key))
		return boom
	})
	require.ErrorIs(t, err, boom)
	assert.Equal(t, byte(0), e.state(t, key), "a rollback deletes the pending entry")
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, int64(10), got.Balance)
}

func TestDeleteLeavesATombstone(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "d@x", Name: "Di"}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, e.db.Delete(&User{}, u.ID).Error)
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StateTombstone), e.state(t, key))
	before := e.sqls.Load()
	var got User
	err := e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error
	assert.ErrorIs(t, err, gorm.ErrRecordNotFound)
	assert.Equal(t, before, e.sqls.Load())
}

func TestMissFillsThenHits(t *testing.T) {
	e := setup(t, nil, writethrough.Config{})
	u := User{Email: "e@x", Name: "Eve"}
	require.NoError(t, e.db.Create(&u).Error)
	require.NoError(t, writethrough.Invalidate(e.db, &User{}, u.ID))
	key := e.key("users", u.ID)
	assert.Equal(t, byte(0), e.state(t, key))
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))
	assert.Equal(t, uint64(1), e.p.Stats().Fills)

	var many []User
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).Find(&many, []uint{u.ID}).Error)
	assert.Equal(t, before, e.sqls.Load())
	require.Len(t, many, 1)

	g, err := writethrough.Get[User](context.Background(), e.db, u.ID)
	require.NoError(t, err)
	assert.Equal(t, "Eve", g.Name)
	assert.Equal(t, 1, g.finds)
}

func TestAsyncFinalizeInstallsAfterCommitReturns(t *testing.T) {
	e := setup(t, nil, writethrough.Config{AsyncFinalize: true})
	release := make(chan struct{})
	writethrough.SetHook(e.p, func(point, key string) {
		if point == "write:before-finalize" {
			<-release
		}
	})
	u := User{Email: "async@x", Balance: 1}
	require.NoError(t, e.db.Create(&u).Error, "Create returns before the install")
	key := e.key("users", u.ID)
	assert.Equal(t, byte(writethrough.StatePending), e.state(t, key))
	var got User
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, u.ID).Error)
	assert.Equal(t, "async@x", got.Email, "a read after Commit returned sees the write (from the database)")
	close(release)
	require.NoError(t, e.p.Close(), "Close waits for the install")
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key))
}
