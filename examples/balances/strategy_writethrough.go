//go:build writethrough

package main

import (
	"context"

	"github.com/gorm-writethrough/writethrough"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
)

// pluginBuiltIn reports whether strategy 3 is in this build.
const pluginBuiltIn = true

// lib is strategy 3, this library: the plugin stages every written row in
// Redis inside the transaction and installs it only once the commit
// returned; reads go through writethrough.Cached.
type lib struct {
	db *gorm.DB
	p  *writethrough.Plugin
}

func openWritethrough(db *gorm.DB, rdb redis.UniversalClient, prefix string, _ config) (strategy, error) {
	p := writethrough.New(rdb, writethrough.Config{Prefix: prefix})
	if err := db.Use(p); err != nil {
		return nil, err
	}
	return &lib{db: db, p: p}, nil
}

func (s *lib) read(ctx context.Context, id uint) (Account, error) {
	var a Account
	err := s.db.WithContext(ctx).Scopes(writethrough.Cached).First(&a, id).Error
	return a, err
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

func (s *lib) close() error { return nil }
