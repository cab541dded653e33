package bench_test

import (
	"context"
	"fmt"
	"strconv"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/bench"
)

func init() { extraContenders = append(extraContenders, (*env).plugin) }

// pluginPrefix is the plugin's key namespace: its keys are
// "wtbench:wt:users:{id}".
const pluginPrefix = bench.Prefix + ":wt"

func pluginKey(id int64) string { return pluginPrefix + ":users:" + strconv.FormatInt(id, 10) }

// plugin: writethrough on GORM's defaults (implicit transactions, no
// PrepareStmt), the same configuration as the naive write-through. Reads
// through the scope and through the typed fast path; writes are plain
// GORM updates the plugin sees.
func (e *env) plugin() ([]contender, error) {
	db, err := gorm.Open(postgres.New(postgres.Config{Conn: e.sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return nil, err
	}
	p := writethrough.New(e.rdb, writethrough.Config{Prefix: pluginPrefix, Models: []any{&bench.User{}}})
	if err := db.Use(p); err != nil {
		return nil, fmt.Errorf("writethrough: %w", err)
	}
	if err := e.warmPlugin(db); err != nil {
		return nil, err
	}
	update := func(ctx context.Context, id int64) error {
		return db.WithContext(ctx).Model(&bench.User{ID: id}).Update("balance", gorm.Expr("balance + 1")).Error
	}
	evict := func(ctx context.Context, id int64) error {
		return writethrough.Invalidate(db.WithContext(ctx), &bench.User{}, id)
	}
	hits := func() (uint64, uint64, uint64) {
		st := p.Stats()
		return st.Hits, st.Misses, st.PendingMisses
	}
	// The same plugin with AsyncFinalize, on its own *gorm.DB over the
	// same pool and keys: Update only.
	adb, err := gorm.Open(postgres.New(postgres.Config{Conn: e.sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return nil, err
	}
	if err := adb.Use(writethrough.New(e.rdb, writethrough.Config{Prefix: pluginPrefix, Models: []any{&bench.User{}}, AsyncFinalize: true})); err != nil {
		return nil, fmt.Errorf("writethrough: %w", err)
	}
	async := contender{
		name: "wt-async",
		update: func(ctx context.Context, id int64) error {
			return adb.WithContext(ctx).Model(&bench.User{ID: id}).Update("balance", gorm.Expr("balance + 1")).Error
		},
	}
	scope := contender{
		name:   "wt-scope",
		mixed:  true,
		alias:  "wt",
		update: update,
		evict:  evict,
		key:    pluginKey,
		hits:   hits,
		read: func(ctx context.Context, id int64) error {
			var u bench.User
			return db.WithContext(ctx).Scopes(writethrough.Cached).First(&u, id).Error
		},
		batch: func(ctx context.Context, ids []int64) error {
			var us []bench.User
			if err := db.WithContext(ctx).Scopes(writethrough.Cached).Find(&us, ids).Error; err != nil {
				return err
			}
			return wantRows(len(us), len(ids))
		},
	}
	get := contender{
		name:   "wt-get",
		mixed:  true,
		alias:  "-",
		update: update,
		evict:  evict,
		hits:   hits,
		read: func(ctx context.Context, id int64) error {
			_, err := writethrough.Get[bench.User](ctx, db, id)
			return err
		},
		batch: func(ctx context.Context, ids []int64) error {
			keys := make([]any, len(ids))
			for i, id := range ids {
				keys[i] = id
			}
			us, err := writethrough.GetMany[bench.User](ctx, db, keys...)
			if err != nil {
				return err
			}
			return wantRows(len(us), len(ids))
		},
	}
	return []contender{scope, get, async}, nil
}

// warmPlugin fills the plugin's cache with every row, through the plugin's
// own read path, unless a previous run already did.
func (e *env) warmPlugin(db *gorm.DB) error {
	ctx := context.Background()
	marker := pluginPrefix + ":warm"
	if n, err := e.rdb.Get(ctx, marker).Int64(); err == nil && n == e.rows {
		return nil
	}
	const chunk = 500
	keys := make([]any, 0, chunk)
	for id := int64(1); id <= e.rows; id++ {
		keys = append(keys, id)
		if len(keys) == chunk || id == e.rows {
			us, err := writethrough.GetMany[bench.User](ctx, db, keys...)
			if err != nil {
				return fmt.Errorf("warming the plugin's cache: %w", err)
			}
			if err := wantRows(len(us), len(keys)); err != nil {
				return fmt.Errorf("warming the plugin's cache: %w", err)
			}
			keys = keys[:0]
		}
	}
	n, err := e.rdb.Exists(ctx, pluginKey(1), pluginKey(e.rows)).Result()
	if err != nil {
		return err
	}
	if n != 2 {
		return fmt.Errorf("warming the plugin's cache: GetMany did not fill %s", pluginKey(1))
	}
	return e.rdb.Set(ctx, marker, e.rows, 0).Err()
}
