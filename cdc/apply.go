package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// applier applies a transaction's invalidations in Redis.
type applier struct {
	c *Consumer
}

// invalidateScript: delete the key, unless writers are in flight on it; then
// mark it so that it is deleted, never installed, when the last one leaves.
var invalidateScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.len(v) >= 29 and string.sub(v, 1, 3) == 'w\001P' then
  local f = string.byte(v, 28)
  if f % 2 == 0 then redis.call('SETRANGE', KEYS[1], 27, string.char(f + 1)) end
  return 1
end
redis.call('DEL', KEYS[1])
return 0
`)

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
	if err := c.invalidate(ctx, keys); err != nil {
		return err
	}
	c.stats.keysApplied.Add(uint64(len(keys)))
	return nil
}

// invalidate runs the invalidation script on keys in one pipelined round
// trip per batch.
func (c *Consumer) invalidate(ctx context.Context, keys []string) error {
	rdb := c.cfg.Redis
	for len(keys) > 0 {
		n := min(len(keys), 512)
		batch := keys[:n]
		keys = keys[n:]
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		cmds, err := rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
			for _, k := range batch {
				invalidateScript.EvalSha(rctx, p, []string{k})
			}
			return nil
		})
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			_, err = rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
				for _, k := range batch {
					invalidateScript.Eval(rctx, p, []string{k})
				}
				return nil
			})
		}
		cancel()
		_ = cmds
		if err != nil {
			return fmt.Errorf("redis: invalidate %d keys: %w", len(batch), err)
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
	c.logf("cdc: purged every key of the followed tables", "why", why, "tables", len(tables),
		"keys", c.stats.purgedKeys.Load()-before, "took", time.Since(start))
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
					if err := c.invalidate(ctx, keys); err != nil {
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
