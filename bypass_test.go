package writethrough_test

// Writes around the plugin in the histories of consistency_test.go: raw SQL
// on connections of their own (pgx, and psql-style scripts of several
// statements), db.Raw through GORM, and GORM transactions that also run raw
// SQL. A cdc.Consumer turns them into invalidations; the checker measures
// how long after such a write returned a read was still served the older
// row, and holds every other read to linearizability.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/checker"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// rawPool opens connections to dsn that GORM and the plugin never see.
func rawPool(t testing.TB, dsn string, clients int) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	cfg.MaxConns = int32(clients)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// startConsumer runs a cdc.Consumer on the items table until the test ends,
// and waits until it streams.
func startConsumer(t testing.TB, db *gorm.DB, it items, rdb redis.UniversalClient) *cdc.Consumer {
	t.Helper()
	name := "wt_h_" + strings.NewReplacer(":", "_", "-", "_").Replace(strings.ToLower(it.prefix))
	testrig.DropSlotAtCleanup(t, it.dsn, name)
	c, err := cdc.New(db, cdc.Config{
		Redis: rdb, Prefix: it.prefix, Models: []any{&Item{}}, ConnString: it.dsn,
		Slot: name, Publication: name, StatusInterval: 20 * time.Millisecond,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer: %v", err)
		}
	})
	require.NoError(t, testrig.Poll(30*time.Second, func() (bool, error) {
		return c.Stats().State == cdc.StateStreaming, nil
	}), "consumer not streaming: %+v", c.Stats())
	return c
}

const itemColumns = "id, version, a, b, tag"

func scanItem(row pgx.Row) (Item, error) {
	var it Item
	err := row.Scan(&it.ID, &it.Version, &it.A, &it.B, &it.Tag)
	return it, err
}

// bypass runs one write around the plugin.
func (w *worker) bypass(ctx context.Context, call int64) {
	raw := w.h.raw
	tag := w.tag()
	vals := map[int64]checker.Value{}
	var err error
	source := ""
	switch n := w.rng.IntN(10); {
	case n < 4: // one row, autocommit, pgx
		source = "raw-update"
		id := w.key()
		var it Item
		it, err = scanItem(raw.QueryRow(ctx, "UPDATE items SET version = version + 1, a = $2, tag = $3 WHERE id = $1 RETURNING "+itemColumns,
			id, w.rng.Int64N(1000), tag))
		if errors.Is(err, pgx.ErrNoRows) {
			return // absent: nothing written
		}
		if err == nil {
			vals[id] = it.value()
		}
	case n < 6: // a psql-style script: one transaction, simple protocol
		source = "raw-script"
		ids := w.keys(2 + w.rng.IntN(2))
		var b strings.Builder
		b.WriteString("BEGIN;")
		for _, id := range ids {
			fmt.Fprintf(&b, " UPDATE items SET version = version + 1, b = %d, tag = %d WHERE id = %d RETURNING %s;",
				w.rng.Int64N(1000), tag, id, itemColumns)
		}
		b.WriteString(" COMMIT")
		err = raw.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
			res, err := c.Conn().PgConn().Exec(ctx, b.String()).ReadAll()
			for _, r := range res {
				for _, row := range r.Rows {
					it, perr := itemOfText(row)
					if perr != nil {
						return perr
					}
					vals[it.ID] = it.value()
				}
			}
			return err
		})
	case n < 7: // delete
		source = "raw-delete"
		id := w.key()
		var version int64
		err = raw.QueryRow(ctx, "DELETE FROM items WHERE id = $1 RETURNING version", id).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return
		}
		if err == nil {
			vals[id] = checker.Value{Version: version}
		}
	case n < 8: // insert (fails when the row exists)
		source = "raw-insert"
		id := w.key()
		var it Item
		it, err = scanItem(raw.QueryRow(ctx, "INSERT INTO items (id, a, b, tag) VALUES ($1, $2, $3, $4) RETURNING "+itemColumns,
			id, w.rng.Int64N(1000), w.rng.Int64N(1000), tag))
		if err == nil {
			vals[id] = it.value()
		}
	case n < 9: // db.Raw through GORM: the plugin does not follow raw SQL
		source = "gorm-raw"
		id := w.key()
		var rows []Item
		err = w.h.s.db().WithContext(ctx).Raw("UPDATE items SET version = version + 1, a = a + 1, tag = ? WHERE id = ? RETURNING "+itemColumns,
			tag, id).Scan(&rows).Error
		if err == nil && len(rows) == 0 {
			return
		}
		for _, it := range rows {
			vals[it.ID] = it.value()
		}
	default: // a GORM transaction that writes one row through the plugin and one with tx.Exec
		w.mixed(ctx, call, tag)
		return
	}
	w.record(call, w.h.now(), source, err, vals, true)
}

// mixed writes ids[0] through the plugin and ids[1] with raw SQL, in one
// GORM transaction. With Config.CDC the raw statement keeps the plugin from
// marking the transaction as its own: the consumer invalidates both keys.
func (w *worker) mixed(ctx context.Context, call, tag int64) {
	ids := w.keys(2)
	var vals map[int64]checker.Value
	err := w.h.s.db().WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Item{ID: ids[0]}).Updates(w.assignments("update", tag)).Error; err != nil {
			return err
		}
		if err := tx.Exec("UPDATE items SET version = version + 1, b = b + 1, tag = ? WHERE id = ?", tag, ids[1]).Error; err != nil {
			return err
		}
		var err error
		vals, err = readBack(tx, ids, tag)
		return err
	})
	ret := w.h.now()
	if v, ok := vals[ids[0]]; ok {
		w.record(call, ret, "mixed-plugin", err, map[int64]checker.Value{ids[0]: v}, false)
	}
	if v, ok := vals[ids[1]]; ok {
		w.record(call, ret, "mixed-exec", err, map[int64]checker.Value{ids[1]: v}, true)
	}
	if err != nil && len(vals) == 0 {
		w.fails++
	}
}

// itemOfText parses a row of itemColumns in the text format.
func itemOfText(row [][]byte) (Item, error) {
	var n [5]int64
	if len(row) != len(n) {
		return Item{}, fmt.Errorf("row of %d columns", len(row))
	}
	for i, b := range row {
		v, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil {
			return Item{}, fmt.Errorf("column %d: %w", i, err)
		}
		n[i] = v
	}
	return Item{ID: n[0], Version: n[1], A: n[2], B: n[3], Tag: n[4]}, nil
}

// bypassRun is boundedRun with a tenth of the steps writing around the
// plugin, and the plugin marking its own transactions for a consumer.
func bypassRun(d time.Duration, consumer bool) runConfig {
	cfg := boundedRun(d)
	cfg.bypass, cfg.consumer = 10, consumer
	cfg.killCommits = 20
	cfg.plugin = writethrough.Config{Timeout: 5 * time.Second, DrainInterval: -1, CDC: true}
	return cfg
}

// requireBoundedByTheConsumer asserts what a run with writes around the
// plugin and a consumer promises: every read is linearizable but those
// stale behind such writes only, and none of those is staler than the
// longest lag the consumer measured; every key converges once the consumer
// caught up.
func requireBoundedByTheConsumer(t testing.TB, h *harness, rep runReport) {
	t.Helper()
	requireLinearizable(t, rep)
	require.Positive(t, rep.BypassWrites, "no write went around the plugin")
	st := h.s.(*pluginStrategy).consumer.Stats()
	require.LessOrEqual(t, rep.MaxBypassStaleness, st.MaxLag,
		"a read was served a row a write around the plugin had replaced longer ago than the consumer's longest lag\n%s", bypassDetails(rep))
}

func bypassDetails(rep runReport) string {
	var b strings.Builder
	for _, s := range rep.bypassStale {
		fmt.Fprintf(&b, "stale by %s behind writes around the plugin: %s\n", s.Staleness, s.Op)
	}
	return b.String()
}

// TestHistoriesWithWritesAroundThePlugin: with a consumer, writes that
// bypass GORM leave reads stale for at most the consumer's lag, and cost
// nothing else: every other read is linearizable and every key converges.
// Without one, the same run serves stale rows, which the checker sees.
func TestHistoriesWithWritesAroundThePlugin(t *testing.T) {
	t.Run("with a consumer", func(t *testing.T) {
		cfg := bypassRun(6*time.Second, true)
		cfg.log = t.Logf
		h := newPluginRun(t, nil, cfg)
		rep, err := h.run(context.Background())
		require.NoError(t, err)
		t.Logf("seed %d: %s", cfg.seed, rep)
		requireBoundedByTheConsumer(t, h, rep)
	})
	t.Run("without a consumer", func(t *testing.T) {
		cfg := bypassRun(3*time.Second, false)
		cfg.log = t.Logf
		h := newPluginRun(t, nil, cfg)
		rep, err := h.run(context.Background())
		require.NoError(t, err)
		t.Logf("seed %d: %s", cfg.seed, rep)
		require.Positive(t, rep.BypassStale, "no read stale behind a write around the plugin: the check sees nothing")
		require.Positive(t, rep.diverged, "no key kept a row a write around the plugin had replaced")
		require.Zero(t, rep.Phantoms, rep.details())
	})
}
