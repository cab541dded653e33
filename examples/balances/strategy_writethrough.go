package main

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/gorm-writethrough/writethrough"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
)

// lib is strategy 3, this library: the plugin stages every row a
// transaction writes as pending in Redis, installs it once COMMIT returned
// and drops it on ROLLBACK; readers skip pending keys and fill misses under
// a lease. Reads alternate between the typed fast path, writethrough.Get,
// and db.Scopes(writethrough.Cached).First, batches between
// writethrough.GetMany and db.Scopes(writethrough.Cached).Find, so every
// read path is checked.
type lib struct {
	db      *gorm.DB
	p       *writethrough.Plugin
	reads   atomic.Uint64
	batches atomic.Uint64
}

func openWritethrough(db *gorm.DB, rdb redis.UniversalClient, prefix string, cfg config) (strategy, error) {
	p := writethrough.New(rdb, writethrough.Config{Prefix: prefix, Models: []any{&Account{}}, Logger: cfg.Logger})
	if err := db.Use(p); err != nil {
		return nil, err
	}
	return &lib{db: db, p: p}, nil
}

func (s *lib) read(ctx context.Context, id uint) (Account, error) {
	if s.reads.Add(1)%2 == 0 {
		return writethrough.Get[Account](ctx, s.db, id)
	}
	var a Account
	err := s.db.WithContext(ctx).Scopes(writethrough.Cached).First(&a, id).Error
	return a, err
}

func (s *lib) readAll(ctx context.Context, ids []uint) ([]Account, error) {
	keys := make([]any, len(ids))
	for i, id := range ids {
		keys[i] = id
	}
	var as []Account
	var err error
	if s.batches.Add(1)%2 == 0 {
		as, err = writethrough.GetMany[Account](ctx, s.db, keys...)
	} else {
		err = s.db.WithContext(ctx).Scopes(writethrough.Cached).Find(&as, ids).Error
	}
	if err != nil {
		return nil, err
	}
	return inOrder(as, ids)
}

func (s *lib) transfer(ctx context.Context, t transfer) ([2]Account, error) {
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
	return rows, err
}

func (s *lib) settle()      {}
func (s *lib) close() error { return s.p.Close() }

// trouble reports what the plugin counted going wrong with Redis, if anything.
func (s *lib) trouble() string {
	st := s.p.Stats()
	if st.PrepareErrors+st.FinalizeErrors+st.RedisErrors+st.DecodeErrors == 0 {
		return ""
	}
	return fmt.Sprintf("plugin counted %d prepare errors, %d finalize errors, %d Redis errors on reads, %d undecodable entries (run with -v for details)",
		st.PrepareErrors, st.FinalizeErrors, st.RedisErrors, st.DecodeErrors)
}

func (s *lib) hits() (uint64, uint64) {
	st := s.p.Stats()
	return st.Hits, st.Hits + st.Misses + st.Bypasses
}
