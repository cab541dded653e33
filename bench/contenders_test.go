package bench_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough/bench"
)

// A contender is one way of reading and writing a User row. A nil function
// means the contender has no such path; it is left out of that workload.
type contender struct {
	name   string
	read   func(ctx context.Context, id int64) error
	batch  func(ctx context.Context, ids []int64) error
	update func(ctx context.Context, id int64) error
	// evict makes the next read of id a miss (untimed).
	evict func(ctx context.Context, id int64) error
	// mixed puts the contender in the throughput workloads, which use read
	// and update.
	mixed bool
	// alias, when set, names the contender's rows in the Update and
	// Memory workloads, where two contenders share one path; "-" leaves
	// them out.
	alias string
	// key returns the Redis key of row id, for the memory workload.
	key func(id int64) string
	// hits returns the contender's cache hits and misses so far, and of
	// the misses those that found a write in flight, for the hit-% and
	// pending-% of the throughput workloads (nil: not reported).
	hits func() (hits, misses, pending uint64)
}

// extraContenders is filled by files behind build tags (the plugin's).
var extraContenders []func(e *env) ([]contender, error)

var (
	contendersOnce sync.Once
	contendersList []contender
	contendersErr  error
)

// contenders returns every contender, in table order; the floor first.
func (e *env) contenders() ([]contender, error) {
	contendersOnce.Do(func() {
		contendersList = []contender{
			e.floor(), e.dryRunFloor(),
			e.plainGORM("gorm", e.gorm), e.plainGORM("gorm-prepared", e.gormPrep),
			e.pgx(), e.naive(),
		}
		for _, f := range extraContenders {
			cs, err := f(e)
			if err != nil {
				contendersErr = err
				return
			}
			contendersList = append(contendersList, cs...)
		}
		contendersErr = warmUp(contendersList)
	})
	return contendersList, contendersErr
}

// warmUp reads a few rows through every contender, so that connections are
// open and statements prepared before the first benchmark of a process.
func warmUp(cs []contender) error {
	ctx := context.Background()
	for _, c := range cs {
		if c.read == nil {
			continue
		}
		for id := int64(1); id <= 200; id++ {
			if err := c.read(ctx, id); err != nil {
				return fmt.Errorf("warm-up of %s: %w", c.name, err)
			}
		}
	}
	return nil
}

// floor: go-redis GET of the msgpack-encoded row plus msgpack.Unmarshal;
// MGET for batches; SET for writes. What any cache must cost at least.
func (e *env) floor() contender {
	tmpl := bench.MakeUser(0, time.Now().UTC())
	return contender{
		name:  "floor",
		mixed: true,
		key:   rawKey,
		read: func(ctx context.Context, id int64) error {
			var u bench.User
			return e.getRaw(ctx, id, &u)
		},
		batch: func(ctx context.Context, ids []int64) error {
			_, err := e.mgetRaw(ctx, ids)
			return err
		},
		update: func(ctx context.Context, id int64) error {
			u := tmpl
			u.ID, u.Balance, u.UpdatedAt = id, u.Balance+1, time.Now()
			buf, err := msgpack.Marshal(&u)
			if err != nil {
				return err
			}
			return e.rdb.Set(ctx, rawKey(id), buf, rowTTL).Err()
		},
	}
}

func (e *env) getRaw(ctx context.Context, id int64, u *bench.User) error {
	buf, err := e.rdb.Get(ctx, rawKey(id)).Bytes()
	if err != nil {
		return err
	}
	return msgpack.Unmarshal(buf, u)
}

// mgetRaw returns the rows under ids' raw keys, failing if one is missing.
func (e *env) mgetRaw(ctx context.Context, ids []int64) ([]bench.User, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = rawKey(id)
	}
	vals, err := e.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	users := make([]bench.User, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("floor: key %s missing", keys[i])
		}
		if err := msgpack.Unmarshal([]byte(s), &users[i]); err != nil {
			return nil, err
		}
	}
	return users, nil
}

// dryRunFloor: GORM builds the statement of First (or Find) without running
// it, then the floor serves the row. The cheapest hit a plugin inside GORM's
// query chain can give.
func (e *env) dryRunFloor() contender {
	dry := e.gorm.Session(&gorm.Session{DryRun: true})
	return contender{
		name: "gorm-dryrun+floor",
		read: func(ctx context.Context, id int64) error {
			var u bench.User
			if err := dry.WithContext(ctx).First(&u, id).Error; err != nil {
				return err
			}
			return e.getRaw(ctx, id, &u)
		},
		batch: func(ctx context.Context, ids []int64) error {
			var us []bench.User
			if err := dry.WithContext(ctx).Find(&us, ids).Error; err != nil {
				return err
			}
			_, err := e.mgetRaw(ctx, ids)
			return err
		},
	}
}

// plainGORM: no cache, every read and write goes to PostgreSQL.
func (e *env) plainGORM(name string, db *gorm.DB) contender {
	return contender{
		name:  name,
		mixed: name == "gorm",
		read: func(ctx context.Context, id int64) error {
			var u bench.User
			return db.WithContext(ctx).First(&u, id).Error
		},
		batch: func(ctx context.Context, ids []int64) error {
			var us []bench.User
			if err := db.WithContext(ctx).Find(&us, ids).Error; err != nil {
				return err
			}
			return wantRows(len(us), len(ids))
		},
		update: func(ctx context.Context, id int64) error {
			return db.WithContext(ctx).Model(&bench.User{ID: id}).Update("balance", gorm.Expr("balance + 1")).Error
		},
	}
}

const (
	pgxSelect      = "SELECT " + bench.Columns + " FROM users WHERE id = $1"
	pgxSelectBatch = "SELECT " + bench.Columns + " FROM users WHERE id = ANY($1)"
	pgxUpdate      = "UPDATE users SET balance = balance + 1, updated_at = now() WHERE id = $1"
)

// pgx: raw pgxpool, no ORM, no cache. Its update is one autocommit
// statement (GORM's runs in BEGIN/UPDATE/COMMIT).
func (e *env) pgx() contender {
	return contender{
		name: "pgx",
		read: func(ctx context.Context, id int64) error {
			var u bench.User
			return e.pool.QueryRow(ctx, pgxSelect, id).Scan(scanDest(&u)...)
		},
		batch: func(ctx context.Context, ids []int64) error {
			rows, err := e.pool.Query(ctx, pgxSelectBatch, ids)
			if err != nil {
				return err
			}
			defer rows.Close()
			us := make([]bench.User, 0, len(ids))
			for rows.Next() {
				var u bench.User
				if err := rows.Scan(scanDest(&u)...); err != nil {
					return err
				}
				us = append(us, u)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			return wantRows(len(us), len(ids))
		},
		update: func(ctx context.Context, id int64) error {
			_, err := e.pool.Exec(ctx, pgxUpdate, id)
			return err
		},
	}
}

func scanDest(u *bench.User) []any {
	return []any{&u.ID, &u.Email, &u.Name, &u.Balance, &u.Status, &u.Logins, &u.Score, &u.Bio, &u.CreatedAt, &u.UpdatedAt}
}

// naive: the write-through everyone writes first. Update ... RETURNING *
// and SET inside db.Transaction; reads GET and fall back to the database,
// then SET what they read.
func (e *env) naive() contender {
	db := e.gorm
	return contender{
		name:  "naive-wt",
		mixed: true,
		read: func(ctx context.Context, id int64) error {
			var u bench.User
			err := e.getRaw(ctx, id, &u)
			if !errors.Is(err, redis.Nil) {
				return err
			}
			if err := db.WithContext(ctx).First(&u, id).Error; err != nil {
				return err
			}
			buf, err := msgpack.Marshal(&u)
			if err != nil {
				return err
			}
			return e.rdb.Set(ctx, rawKey(id), buf, rowTTL).Err()
		},
		batch: func(ctx context.Context, ids []int64) error {
			keys := make([]string, len(ids))
			for i, id := range ids {
				keys[i] = rawKey(id)
			}
			vals, err := e.rdb.MGet(ctx, keys...).Result()
			if err != nil {
				return err
			}
			us := make([]bench.User, len(ids))
			var missing []int64
			for i, v := range vals {
				s, ok := v.(string)
				if !ok {
					missing = append(missing, ids[i])
					continue
				}
				if err := msgpack.Unmarshal([]byte(s), &us[i]); err != nil {
					return err
				}
			}
			if len(missing) == 0 {
				return nil
			}
			var found []bench.User
			if err := db.WithContext(ctx).Find(&found, missing).Error; err != nil {
				return err
			}
			pipe := e.rdb.Pipeline()
			for i := range found {
				buf, err := msgpack.Marshal(&found[i])
				if err != nil {
					return err
				}
				pipe.Set(ctx, rawKey(found[i].ID), buf, rowTTL)
			}
			_, err = pipe.Exec(ctx)
			return err
		},
		update: func(ctx context.Context, id int64) error {
			return db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				u := bench.User{ID: id}
				res := tx.Model(&u).Clauses(clause.Returning{}).Update("balance", gorm.Expr("balance + 1"))
				if res.Error != nil {
					return res.Error
				}
				if err := wantRows(int(res.RowsAffected), 1); err != nil {
					return err
				}
				buf, err := msgpack.Marshal(&u)
				if err != nil {
					return err
				}
				return e.rdb.Set(ctx, rawKey(id), buf, rowTTL).Err()
			})
		},
		evict: func(ctx context.Context, id int64) error {
			return e.rdb.Del(ctx, rawKey(id)).Err()
		},
	}
}

func wantRows(got, want int) error {
	if got != want {
		return fmt.Errorf("got %d rows, want %d", got, want)
	}
	return nil
}
