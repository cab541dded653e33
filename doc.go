// Package writethrough is a GORM plugin that keeps Redis and a SQL database
// (PostgreSQL first, SQLite too) in sync with a write-through cache that
// readers can trust.
//
// Register it, tag a model's primary key, and wrap reads in the [Cached]
// scope:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
//	p := writethrough.New(rdb, writethrough.Config{Prefix: "app"})
//	if err := db.Use(p); err != nil { ... }
//	defer p.Close()
//
//	type User struct {
//		ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
//		Balance int64
//	}
//
//	db.Scopes(writethrough.Cached).First(&u, 42)          // one GET on a hit
//	db.Scopes(writethrough.Cached).Find(&us, []int{1, 2}) // one round trip for all
//	u, err := writethrough.Get[User](ctx, db, 42)          // a hit without GORM's pipeline
//	writethrough.Invalidate(db, &User{}, 42)               // for writes GORM never saw
//
// [Config.CacheReads] serves every eligible read without the scope (NewDB
// sessions, gorm.G[T], Preload sub-queries by key included); [CachedDB] is a
// reusable handle whose statements carry [Cached]. Only reads whose complete
// condition is a primary-key lookup are served; every other read runs in SQL.
//
// Every write GORM makes to a tagged model (Create, Save, Update, Updates,
// Delete, bulk Where(...).Update/Delete, soft deletes) re-reads the rows it
// touched inside its transaction and stages them in Redis as "pending";
// after the real COMMIT they become the cached rows, after a ROLLBACK they
// are deleted. Readers never see a pending row: they read the database.
//
// # Promises
//
//   - P1: no reader gets data from a transaction that did not commit
//     (rollbacks, savepoints rolled back, failed and unknown commits).
//   - P2: a cached read never returns a row older than a write that
//     completed through GORM before the read began.
//   - P3: after writes stop, every key equals its row or is absent (in Soft
//     mode, once the outbox drains).
//   - P4: Redis down, slow or out of memory never corrupts the database;
//     Soft mode never fails a write because of Redis; Strict mode fails it
//     fast with [ErrCacheUnavailable] and rolls it back.
//   - P5: writes that bypass GORM (raw SQL, other services, triggers fired
//     by a later statement) are bounded by the TTL and by [Invalidate], and
//     with change data capture (package cdc) by its lag.
//   - P6: bad tags, bad configuration and corrupt bytes in Redis give a clear
//     error or a safe miss, never a panic.
//   - P7: a cached read returns exactly what the database read returns, field
//     by field.
//
// The limits of each promise are in the README and docs/design.md.
//
// # Modes
//
// [Soft] (the default) lets a write commit when Redis fails and records the
// keys in an outbox table in the same transaction; a drainer deletes them
// once Redis answers ([Plugin.Drain], [Plugin.Close]). [Strict] fails the
// write instead. A circuit breaker ([Config.BreakerThreshold]) keeps the
// plugin off a Redis that keeps failing.
//
// # Read replicas
//
// With gorm.io/plugin/dbresolver registered after the plugin, writes and
// the plugin's own statements go to the primary, and so do the reads that
// fill the cache and the reads of keys being written: Redis never holds a
// row older than the primary's. Other reads the cache cannot answer (Redis
// down, another reader filling the key) go where dbresolver sends them and
// fill nothing.
//
// # Shutdown and panics
//
// [Plugin.Close] waits for the finalizes, cached reads and fills in flight
// and stops the drainer; afterwards writes finalize before Commit returns and
// reads go to the database. User code that GORM runs for a statement panics
// as it does without the plugin; user code the plugin runs on its own
// account (decoding or encoding a cached row) never panics out of it, and is
// reported as a [PanicError] holding the value and the stack.
package writethrough
