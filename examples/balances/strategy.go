package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Account is the demo's model. Version grows by one with every committed
// update, so a (account, version) pair names one committed state; TxID is
// the transfer that wrote the row, so a state written by a transfer that
// rolled back can be told apart from the committed one with the same version.
type Account struct {
	ID      uint  `gorm:"primaryKey" cache:"ttl:10m"`
	Balance int64 `gorm:"not null"`
	Version int64 `gorm:"not null"`
	TxID    int64 `gorm:"not null"`
}

// TableName keeps the demo's table apart from anything else in the schema.
func (Account) TableName() string { return "balances_accounts" }

func (a Account) state() state { return state{balance: a.Balance, version: a.Version, txID: a.TxID} }

// cacheTTL is the TTL of every cached balance, in all three strategies.
const cacheTTL = 10 * time.Minute

// A transfer moves amount from one account to another in one transaction,
// and rolls back at the end when rollback is set.
type transfer struct {
	id       int64
	from, to uint
	amount   int64
	rollback bool
}

// errRollback is what a transfer that rolls back on purpose returns from
// its transaction function.
var errRollback = errors.New("rolled back on purpose")

// A strategy is one way of keeping balances in Redis.
type strategy interface {
	// read returns an account as a reader of this strategy sees it.
	read(ctx context.Context, id uint) (Account, error)
	// readAll returns the accounts with the given ids, in that order, read
	// through the cache in one batch.
	readAll(ctx context.Context, ids []uint) ([]Account, error)
	// transfer runs t and returns the two rows as t wrote them.
	// It returns errRollback (wrapped or not) when t rolled back on purpose.
	transfer(ctx context.Context, t transfer) ([2]Account, error)
	// settle waits for the strategy's background work (strategy 1's
	// delayed deletes) to finish.
	settle()
	// close releases the strategy.
	close() error
	// hits returns how many reads Redis answered, of how many.
	hits() (hits, reads uint64)
}

// strategyInfo describes a strategy for flags and output.
type strategyInfo struct {
	name  string // as in -strategies
	title string // as in the results table
	open  func(db *gorm.DB, rdb redis.UniversalClient, prefix string, cfg config) (strategy, error)
}

// strategies lists the strategies in the order they run.
var strategies = []strategyInfo{
	{"aside", "1 cache-aside, async delete", openAside},
	{"naive", "2 naive write-through", openNaive},
	{"writethrough", "3 writethrough (this library)", openWritethrough},
}

// strategyNames lists the strategies in the order they run.
func strategyNames() []string {
	var names []string
	for _, s := range strategies {
		names = append(names, s.name)
	}
	return names
}

// move is the transfer itself, the same SQL for every strategy: it locks
// both rows in id order (no deadlock between two transfers), moves the
// amount (at most the whole balance), and stamps both rows with the
// transfer's id and a version one higher.
func move(tx *gorm.DB, t transfer) ([2]Account, error) {
	var rows []Account
	err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Order("id").Find(&rows, []uint{t.from, t.to}).Error
	if err != nil {
		return [2]Account{}, err
	}
	if len(rows) != 2 {
		return [2]Account{}, fmt.Errorf("transfer %d: found %d of accounts %d and %d", t.id, len(rows), t.from, t.to)
	}
	from, to := &rows[0], &rows[1]
	if from.ID != t.from {
		from, to = to, from
	}
	amount := min(t.amount, from.Balance)
	from.Balance -= amount
	to.Balance += amount
	out := [2]Account{*from, *to}
	for i := range out {
		out[i].Version++
		out[i].TxID = t.id
		err := tx.Model(&Account{ID: out[i].ID}).Updates(map[string]any{
			"balance": out[i].Balance,
			"version": gorm.Expr("version + 1"),
			"tx_id":   t.id,
		}).Error
		if err != nil {
			return [2]Account{}, err
		}
	}
	return out, nil
}

// inOrder returns as ordered by ids, or an error naming the first id missing.
func inOrder(as []Account, ids []uint) ([]Account, error) {
	byID := make(map[uint]Account, len(as))
	for _, a := range as {
		byID[a.ID] = a
	}
	out := make([]Account, len(ids))
	for i, id := range ids {
		a, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("account %d: %w", id, gorm.ErrRecordNotFound)
		}
		out[i] = a
	}
	return out, nil
}

// redisCache is the read path strategies 1 and 2 share, the classic one:
// GET; on a miss SELECT the row and SET it.
type redisCache struct {
	db     *gorm.DB
	rdb    redis.UniversalClient
	prefix string

	hit, miss atomic.Uint64
}

// newRedisCache keys rows as the plugin does: {prefix}:{table}:{id}.
func newRedisCache(db *gorm.DB, rdb redis.UniversalClient, prefix string) redisCache {
	return redisCache{db: db, rdb: rdb, prefix: prefix + ":" + Account{}.TableName() + ":"}
}

func (c *redisCache) hits() (uint64, uint64) {
	h := c.hit.Load()
	return h, h + c.miss.Load()
}

func (c *redisCache) key(id uint) string { return c.prefix + strconv.FormatUint(uint64(id), 10) }

func (c *redisCache) read(ctx context.Context, id uint) (Account, error) {
	var a Account
	b, err := c.rdb.Get(ctx, c.key(id)).Bytes()
	if err == nil && json.Unmarshal(b, &a) == nil {
		c.hit.Add(1)
		return a, nil
	}
	c.miss.Add(1)
	if err := c.db.WithContext(ctx).First(&a, id).Error; err != nil {
		return Account{}, err
	}
	return a, c.set(ctx, c.rdb, a)
}

// readAll is the batch form of read: one MGET, one SELECT for the misses,
// a SET per row filled.
func (c *redisCache) readAll(ctx context.Context, ids []uint) ([]Account, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = c.key(id)
	}
	vals, err := c.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		vals = make([]any, len(ids))
	}
	out := make([]Account, len(ids))
	var missing []uint
	for i, v := range vals {
		if s, ok := v.(string); ok && json.Unmarshal([]byte(s), &out[i]) == nil {
			c.hit.Add(1)
			continue
		}
		c.miss.Add(1)
		missing = append(missing, ids[i])
	}
	if len(missing) == 0 {
		return out, nil
	}
	var rows []Account
	if err := c.db.WithContext(ctx).Find(&rows, missing).Error; err != nil {
		return nil, err
	}
	for _, a := range rows {
		if err := c.set(ctx, c.rdb, a); err != nil {
			return nil, err
		}
	}
	for i := range out {
		if out[i].ID == 0 {
			continue
		}
		rows = append(rows, out[i])
	}
	return inOrder(rows, ids)
}

func (c *redisCache) set(ctx context.Context, rdb redis.Cmdable, a Account) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return rdb.Set(ctx, c.key(a.ID), b, cacheTTL).Err()
}

// aside is strategy 1, cache-aside with asynchronous invalidation: a
// transfer commits, then a goroutine deletes both keys after a delay (a
// queue, a CDC pipeline or a message bus, in the systems this imitates).
type aside struct {
	redisCache
	delay time.Duration
	wg    sync.WaitGroup // counts pending invalidations
}

func openAside(db *gorm.DB, rdb redis.UniversalClient, prefix string, cfg config) (strategy, error) {
	return &aside{redisCache: newRedisCache(db, rdb, prefix), delay: cfg.InvalidationDelay}, nil
}

func (s *aside) transfer(ctx context.Context, t transfer) ([2]Account, error) {
	var rows [2]Account
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var err error
		if rows, err = move(tx, t); err != nil {
			return err
		}
		if t.rollback {
			return errRollback
		}
		return nil
	})
	if err != nil {
		return rows, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		time.Sleep(s.delay)
		// Deleting is all an invalidation does; a failure leaves the old
		// balance until the TTL, which is the point being made.
		s.rdb.Del(context.Background(), s.key(rows[0].ID), s.key(rows[1].ID))
	}()
	return rows, nil
}

func (s *aside) settle()      { s.wg.Wait() }
func (s *aside) close() error { s.wg.Wait(); return nil }

// naive is strategy 2, write-through done naively: the new rows are SET
// inside the transaction, right after the UPDATE, with no staging: nothing
// undoes them when the transaction rolls back, and readers see them before
// the commit.
type naive struct {
	redisCache
}

func openNaive(db *gorm.DB, rdb redis.UniversalClient, prefix string, _ config) (strategy, error) {
	return &naive{redisCache: newRedisCache(db, rdb, prefix)}, nil
}

func (s *naive) transfer(ctx context.Context, t transfer) ([2]Account, error) {
	var rows [2]Account
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var err error
		if rows, err = move(tx, t); err != nil {
			return err
		}
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, a := range rows {
				if err := s.set(ctx, p, a); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if t.rollback {
			return errRollback
		}
		return nil
	})
	return rows, err
}

func (s *naive) settle()      {}
func (s *naive) close() error { return nil }
