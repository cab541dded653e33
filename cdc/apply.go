package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// apply invalidates what the committed transactions txns changed, in
// commit order, with one pipelined round trip for the keys of consecutive
// transactions that truncated nothing. An error leaves nothing confirmed.
//
// alive is called between the batches of a long truncate purge: a session
// sends PostgreSQL a status there, or the walsender ends a replication
// connection that stays silent for wal_sender_timeout.
func (c *Consumer) apply(ctx context.Context, txns []*txn, alive func()) error {
	var calls []*entry.Call
	for _, tx := range txns {
		if len(tx.truncated) > 0 {
			// What came before the truncate first, then the truncate.
			if err := c.runCalls(ctx, calls, true); err != nil {
				return err
			}
			calls = calls[:0]
			for t := range tx.truncated {
				if err := c.purgeTable(ctx, t, alive); err != nil {
					return err
				}
				c.stats.truncates.Add(1)
			}
		}
		for k, n := range tx.keys {
			// The plugin's own transaction may also have changed a row
			// after the statement that staged it read it back: a trigger
			// fired by a later statement, a second statement that named it
			// otherwise.
			// Its entry is then the plugin's yet stale. Only a row the
			// transaction changed once is left to the plugin.
			token := tx.token
			if n > 1 {
				token = ""
			}
			calls = append(calls, entry.Change(k, token))
		}
	}
	return c.runCalls(ctx, calls, true)
}

// run runs mk for every key, in pipelined batches.
func (c *Consumer) run(ctx context.Context, keys []string, mk func(string) *entry.Call, change bool) error {
	calls := make([]*entry.Call, len(keys))
	for i, k := range keys {
		calls[i] = mk(k)
	}
	return c.runCalls(ctx, calls, change)
}

// runCalls runs calls in pipelined batches of at most 512 and counts the
// keys: change calls the plugin's own write had installed as skipped, the
// others as applied.
func (c *Consumer) runCalls(ctx context.Context, all []*entry.Call, change bool) error {
	for len(all) > 0 {
		n := min(len(all), 512)
		calls := all[:n]
		all = all[n:]
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		if c.cfg.WaitReplicas > 0 {
			c.scripts.RunReplicated(rctx, c.cfg.Redis, calls, entry.Replication{Replicas: c.cfg.WaitReplicas, Timeout: c.cfg.WaitTimeout})
		} else {
			c.scripts.Run(rctx, c.cfg.Redis, calls)
		}
		cancel()
		for _, call := range calls {
			if call.Err != nil {
				return fmt.Errorf("redis: %w", call.Err)
			}
			switch {
			case !change: // purged keys are counted by the purge
			case call.Changed() == entry.ChangeSkipped:
				c.stats.keysSkipped.Add(1)
			default:
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
		if err := c.purgeTable(ctx, t, nil); err != nil {
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
func (c *Consumer) purgeTable(ctx context.Context, t *table, alive func()) error {
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
				if alive != nil {
					alive()
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
