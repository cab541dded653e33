package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// apply invalidates what tx changed; an error leaves nothing confirmed.
func (c *Consumer) apply(ctx context.Context, tx *txn) error {
	for t := range tx.truncated {
		if err := c.purgeTable(ctx, t); err != nil {
			return err
		}
		c.stats.truncates.Add(1)
	}
	if len(tx.keys) == 0 {
		return nil
	}
	keys := make([]string, 0, len(tx.keys))
	for k := range tx.keys {
		keys = append(keys, k)
	}
	return c.invalidate(ctx, keys, tx.token)
}

// invalidate applies a change of the transaction of writer token ("" when
// the plugin did not write it) to keys, in one pipelined round trip per
// batch. Purges pass change = false: every key goes, whoever wrote it.
func (c *Consumer) invalidate(ctx context.Context, keys []string, token string) error {
	return c.run(ctx, keys, func(k string) *entry.Call { return entry.Change(k, token) }, true)
}

func (c *Consumer) run(ctx context.Context, keys []string, mk func(string) *entry.Call, change bool) error {
	for len(keys) > 0 {
		n := min(len(keys), 512)
		calls := make([]*entry.Call, n)
		for i, k := range keys[:n] {
			calls[i] = mk(k)
		}
		keys = keys[n:]
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		c.scripts.Run(rctx, c.cfg.Redis, calls)
		cancel()
		for _, call := range calls {
			if call.Err != nil {
				return fmt.Errorf("redis: %w", call.Err)
			}
			if change && call.Changed() == entry.ChangeSkipped {
				c.stats.keysSkipped.Add(1)
			} else {
				c.stats.keysApplied.Add(1)
			}
		}
	}
	return nil
}

// purge removes every key of tables, for a reason the log gives.
func (c *Consumer) purge(ctx context.Context, tables []*table, why string) error {
	c.setState(StatePurging)
	start := time.Now()
	before := c.stats.purgedKeys.Load()
	for _, t := range tables {
		if err := c.purgeTable(ctx, t); err != nil {
			return err
		}
	}
	c.stats.purges.Add(1)
	c.log(slog.LevelWarn, "cdc: purged every key of the followed tables", "why", why, "tables", len(tables),
		"keys", c.stats.purgedKeys.Load()-before, "took", time.Since(start).String())
	return nil
}

// purgeTable SCANs every key of t's models (on every master of a cluster)
// and invalidates them in batches.
func (c *Consumer) purgeTable(ctx context.Context, t *table) error {
	scan := func(ctx context.Context, rdb redis.UniversalClient) error {
		for _, m := range t.models {
			var cursor uint64
			for {
				rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
				keys, next, err := rdb.Scan(rctx, cursor, m.pattern, int64(c.cfg.PurgeBatch)).Result()
				cancel()
				if err != nil {
					return fmt.Errorf("redis: scan %s: %w", m.pattern, err)
				}
				if len(keys) > 0 {
					err := c.run(ctx, keys, entry.Invalidate, false)
					if err != nil {
						return err
					}
					c.stats.purgedKeys.Add(uint64(len(keys)))
				}
				cursor = next
				if cursor == 0 {
					break
				}
			}
		}
		return nil
	}
	if cc, ok := c.cfg.Redis.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scan(ctx, node)
		})
	}
	return scan(ctx, c.cfg.Redis)
}
