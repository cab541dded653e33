// Package cdc keeps the cache right when rows change outside the plugin.
//
// A write that does not go through this process's GORM (psql, a migration, a
// batch job, another service, a foreign-key cascade, a trigger) would leave
// its cached rows stale until their TTL. A [Consumer] reads PostgreSQL's
// logical replication stream (the pgoutput plugin) for the tables of the
// cached models and, for every committed insert, update, delete and
// truncate, invalidates the affected keys with the plugin's own one-key
// protocol: a writer's pending entry is marked so that it never installs, a
// committed entry or a tombstone is deleted.
//
//	c, err := cdc.New(db, cdc.Config{Redis: rdb, Prefix: "app", Models: []any{&User{}}})
//	if err != nil { ... }
//	go c.Run(ctx)
//
// # What it promises
//
//   - At least once: the consumer confirms a commit's end LSN to PostgreSQL
//     only after Redis applied every invalidation up to it. A consumer killed
//     at any point resumes from its replication slot and applies again;
//     invalidation is idempotent.
//   - Nothing missed silently: on a new slot, or one PostgreSQL invalidated
//     (max_slot_wal_keep_size), changes may have been lost, so before
//     confirming anything the consumer removes every key of the published
//     tables (SCAN and the invalidation script in batches; never KEYS, never
//     FLUSH), logs it and counts it in [Stats.Purges].
//   - One reader per slot: several consumers may run for availability; one
//     streams, the others wait and take the slot over when it is released.
//   - Redis down: the consumer stops confirming, reconnects with backoff,
//     and PostgreSQL retains the WAL in the slot until Redis answers again.
//
// # What the database needs
//
// wal_level = logical (a restart), a role with REPLICATION (or a superuser),
// a pg_hba.conf line for the role on the real database name (logical
// replication connections do not match the "replication" keyword), and
// preferably max_slot_wal_keep_size, since an abandoned slot keeps every WAL
// segment written after it.
package cdc
