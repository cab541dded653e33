package writethrough

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// The outbox keeps Soft mode's promise that the cache converges (P3) when
// Redis fails during a write. A key whose prepare failed is recorded in the
// outbox table inside the write's own transaction, so the record commits if
// and only if the write does. A drainer deletes those keys once Redis answers
// and then removes the records: at least once, safe with many processes
// (FOR UPDATE SKIP LOCKED on PostgreSQL), and from the start, so that a crash
// loses nothing. A finalize that fails after COMMIT is recorded the same way.

// outboxRow is one key waiting to be invalidated.
type outboxRow struct {
	ID        uint64    `gorm:"primaryKey"`
	CacheKey  string    `gorm:"not null"`
	CreatedAt time.Time `gorm:"index"`
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

const drainBatch = 256

// startOutbox creates the outbox table and starts the drainer, once.
func (p *Plugin) startOutbox(db *gorm.DB) error {
	if p.cfg.DisableOutbox {
		return nil
	}
	var err error
	p.outboxOnce.Do(func() {
		p.db = db.Session(&gorm.Session{NewDB: true, Logger: db.Logger})
		if err = p.db.Table(p.cfg.OutboxTable).AutoMigrate(&outboxRow{}); err != nil {
			err = fmt.Errorf("writethrough: create outbox table %s: %w", p.cfg.OutboxTable, err)
			return
		}
	})
	return err
}

// ensureDrainer starts the background drainer the first time the plugin
// handles a statement on a cached model, or records a key: by then the
// application has registered its plugins and callbacks (GORM does not
// allow registering them while statements run). An application that never
// uses a cached model runs no drainer.
func (p *Plugin) ensureDrainer() {
	if p.drainStarted.Load() || p.db == nil || p.cfg.DrainInterval < 0 {
		return
	}
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	if p.drainStarted.Load() || p.gate.isClosed() {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stopDrain = cancel
	p.drainDone = make(chan struct{})
	go p.drainLoop(ctx)
	p.drainStarted.Store(true)
}

// record adds keys to the outbox on db's connection (the write's transaction
// when there is one).
func (p *Plugin) record(db *gorm.DB, keys []string) error {
	if p.cfg.DisableOutbox || len(keys) == 0 || p.db == nil {
		return nil
	}
	rows := make([]outboxRow, len(keys))
	for i, k := range keys {
		rows[i] = outboxRow{CacheKey: k}
	}
	p.suspects.mark(keys)
	err := db.Session(&gorm.Session{NewDB: true, SkipHooks: true}).Table(p.cfg.OutboxTable).Create(&rows).Error
	if err != nil {
		p.suspects.unmark(keys)
		return fmt.Errorf("writethrough: record keys in outbox: %w", err)
	}
	p.stats.outboxed.Add(uint64(len(keys)))
	p.wakeDrainer()
	return nil
}

// recordAfterCommit records keys whose finalize failed after the write
// committed, on a connection of its own.
func (p *Plugin) recordAfterCommit(ctx context.Context, keys []string) {
	if p.db == nil || len(keys) == 0 {
		return
	}
	if err := p.record(p.db.WithContext(context.WithoutCancel(ctx)), keys); err != nil {
		p.logf("writethrough: outbox record failed; keys stay until PendingTTL and their TTL", "keys", len(keys), "err", err)
	}
}

func (p *Plugin) wakeDrainer() {
	p.ensureDrainer() // a key recorded for a table written without its model
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Plugin) drainLoop(ctx context.Context) {
	defer close(p.drainDone)
	t := time.NewTicker(p.cfg.DrainInterval)
	defer t.Stop()
	for {
		if p.drainPass(ctx) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
	}
}

// drainPass is one pass of the background drainer; a panic in it is
// logged, and the drainer carries on.
// It reports whether the drainer should stop: the application closed its
// database, so no pass can succeed again.
func (p *Plugin) drainPass(ctx context.Context) (stop bool) {
	defer p.recoverLogged("outbox drain")
	_, err := p.Drain(ctx)
	if err == nil || ctx.Err() != nil {
		p.drainFails = 0
		return false
	}
	if dbClosed(err) {
		p.logf("writethrough: the database was closed; the outbox drainer stops", "err", err)
		return true
	}
	// Every recorded key wakes the drainer: while Redis (or a master's
	// replica) stays away, say so once per drainLogEvery, not per pass.
	p.drainFails++
	if now := time.Now(); now.Sub(p.drainLogged) >= drainLogEvery {
		p.drainLogged = now
		p.logf("writethrough: outbox drain failed; retrying", "err", err, "failed_passes", p.drainFails)
	}
	return false
}

// dbClosed reports the error of a *sql.DB the application closed
// (database/sql does not export it).
func dbClosed(err error) bool {
	return err != nil && strings.Contains(err.Error(), "sql: database is closed")
}

// drainLogEvery is how often a drainer that keeps failing logs it.
const drainLogEvery = 10 * time.Second

// Drain invalidates every key recorded in the outbox and removes the
// records, and returns how many it removed. The plugin's drainer calls it in
// the background; tests and operators may call it to converge at once.
// Records whose key Redis did not invalidate stay in place, and the first
// such error is returned. A key that fewer than Config.WaitReplicas
// replicas acknowledged (one master short of replicas) does not hold back
// the keys of other masters: Drain pages on past it. Any other Redis error
// stops it, leaving the remaining records in place.
func (p *Plugin) Drain(ctx context.Context) (int, error) {
	if p.db == nil {
		return 0, nil
	}
	total := 0
	var first error
	var after uint64
	for {
		n, last, full, err := p.drainBatch(ctx, after)
		total += n
		if err != nil && first == nil {
			first = err
		}
		if err != nil && !errors.Is(err, ErrNotReplicated) || !full {
			return total, first
		}
		after = last
	}
}

// drainBatch drains up to drainBatch records with ids above after. It
// returns how many it removed, the last id it read, whether it read a full
// batch (more may follow), and the first failure.
func (p *Plugin) drainBatch(ctx context.Context, after uint64) (n int, last uint64, full bool, failed error) {
	var drained map[string]int
	err := p.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var rows []outboxRow
		q := tx.Table(p.cfg.OutboxTable).Where("id > ?", after).Order("id").Limit(drainBatch)
		if name := tx.Dialector.Name(); name == "postgres" || name == "mysql" {
			q = q.Clauses(clause.Locking{Strength: "UPDATE", Options: "SKIP LOCKED"})
		}
		if err := q.Find(&rows).Error; err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		last, full = rows[len(rows)-1].ID, len(rows) == drainBatch
		seen := make(map[string]bool, len(rows))
		keys := make([]string, 0, len(rows))
		for _, r := range rows {
			if !seen[r.CacheKey] {
				seen[r.CacheKey] = true
				keys = append(keys, r.CacheKey)
			}
		}
		bad := p.invalidateEach(ctx, keys)
		ids := make([]uint64, 0, len(rows))
		drained = make(map[string]int, len(keys))
		for _, r := range rows {
			if err, ok := bad[r.CacheKey]; ok {
				if failed == nil {
					failed = err
				}
				continue
			}
			ids = append(ids, r.ID)
			drained[r.CacheKey]++
		}
		if len(ids) == 0 {
			return nil
		}
		if err := tx.Table(p.cfg.OutboxTable).Where("id IN ?", ids).Delete(&outboxRow{}).Error; err != nil {
			return err
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		return 0, last, false, err
	}
	p.suspects.drained(drained)
	p.stats.drained.Add(uint64(n))
	return n, last, full, failed
}
