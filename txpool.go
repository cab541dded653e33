package writethrough

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// GORM has no after-commit hook: a callback placed after
// gorm:commit_or_rollback_transaction runs before the real COMMIT when the
// statement is inside db.Transaction. So the plugin wraps the connection
// pool: every transaction GORM begins is a *hookTx, whose Commit and Rollback
// call the driver's and then finalize what the transaction staged.

// hookPool wraps a gorm.ConnPool. It begins transactions but is not itself a
// TxCommitter (GORM would then treat every statement as nested).
type hookPool struct {
	gorm.ConnPool
	p *Plugin
}

// BeginTx implements gorm.ConnPoolBeginner.
func (h *hookPool) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
	var tx gorm.Tx
	switch b := h.ConnPool.(type) {
	case gorm.TxBeginner:
		t, err := b.BeginTx(ctx, opts)
		if err != nil {
			return nil, err
		}
		tx = t
	case gorm.ConnPoolBeginner:
		c, err := b.BeginTx(ctx, opts)
		if err != nil {
			return nil, err
		}
		t, ok := c.(gorm.Tx)
		if !ok {
			return c, nil
		}
		tx = t
	default:
		return nil, gorm.ErrInvalidTransaction
	}
	return &hookTx{Tx: tx, pool: h, p: h.p, ctx: ctx, token: entry.NewToken()}, nil
}

// GetDBConn implements gorm.GetDBConnector, so that db.DB() keeps working.
func (h *hookPool) GetDBConn() (*sql.DB, error) {
	switch c := h.ConnPool.(type) {
	case *sql.DB:
		return c, nil
	case gorm.GetDBConnector:
		return c.GetDBConn()
	}
	return nil, gorm.ErrInvalidDB
}

// Ping lets health checks that look for it reach the database.
func (h *hookPool) Ping() error {
	db, err := h.GetDBConn()
	if err != nil {
		return err
	}
	return db.Ping()
}

// wrapPool installs the hook pool under GORM's prepared-statement wrapper, so
// that SavePoint still finds a *gorm.PreparedStmtTX and statements are still
// prepared.
func (p *Plugin) wrapPool(db *gorm.DB) {
	wrap := func(cp gorm.ConnPool) gorm.ConnPool {
		switch c := cp.(type) {
		case nil, *hookPool, *hookTx, gorm.TxCommitter:
			return cp
		case *gorm.PreparedStmtDB:
			c.ConnPool = p.wrapRaw(c.ConnPool)
			return c
		default:
			return p.wrapRaw(c)
		}
	}
	db.ConnPool = wrap(db.ConnPool)
	if db.Statement != nil {
		db.Statement.ConnPool = wrap(db.Statement.ConnPool)
	}
}

func (p *Plugin) wrapRaw(cp gorm.ConnPool) gorm.ConnPool {
	if _, ok := cp.(*hookPool); ok {
		return cp
	}
	if _, ok := cp.(gorm.TxCommitter); ok {
		return cp
	}
	return &hookPool{ConnPool: cp, p: p}
}

// staged is one key a transaction wrote.
type staged struct {
	spec   *modelSpec
	key    string
	seq    uint64 // staging sequence number of the last write
	valid  bool   // may be installed at commit (not undone by a savepoint rollback)
	failed bool   // a prepare failed: the key is only invalidated afterwards
}

type savepoint struct {
	name string
	seq  uint64
}

// hookTx is a transaction that knows what it staged. It must stay a pointer
// type: GORM calls reflect.Value.IsNil on the committer.
type hookTx struct {
	gorm.Tx
	pool  *hookPool
	p     *Plugin
	ctx   context.Context
	token string // this transaction's writer token, for every key it stages

	mu         sync.Mutex // protects the fields below
	entries    []*staged
	byKey      map[string]*staged
	savepoints []savepoint
	seq        uint64
	strictErr  error // a Strict prepare failed: Commit must not commit
	done       bool
}

// GetDBConn implements gorm.GetDBConnector.
func (t *hookTx) GetDBConn() (*sql.DB, error) { return t.pool.GetDBConn() }

// ExecContext watches for savepoint statements, then runs the statement.
func (t *hookTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := t.Tx.ExecContext(ctx, query, args...)
	if err == nil {
		t.sniff(query)
	}
	return res, err
}

// Commit commits, then finalizes: staged rows become committed entries.
func (t *hookTx) Commit() error {
	t.mu.Lock()
	strictErr := t.strictErr
	t.mu.Unlock()
	if strictErr != nil {
		rbErr := t.Tx.Rollback()
		t.finish(false)
		return errors.Join(fmt.Errorf("writethrough: transaction rolled back instead of committed: %w", strictErr), rbErr)
	}
	t.p.at("tx:before-commit", t.firstKey())
	err := t.Tx.Commit()
	if err != nil {
		// The outbox records may or may not have committed: keep reading
		// those keys from the database for a while, not forever.
		t.p.suspects.expire(t.failedKeys(), t.p.cfg.PendingTTL)
	}
	// An error from COMMIT may hide a commit that happened: the keys are
	// released and deleted, never installed.
	t.finish(err == nil)
	return err
}

// Rollback rolls back, then releases every staged key.
func (t *hookTx) Rollback() error {
	err := t.Tx.Rollback()
	t.unmarkFailed()
	t.finish(false)
	return err
}

// unmarkFailed clears the suspect marks of keys whose outbox records this
// transaction wrote and then rolled back.
func (t *hookTx) unmarkFailed() {
	t.mu.Lock()
	done := t.done
	t.mu.Unlock()
	if keys := t.failedKeys(); !done && len(keys) > 0 {
		t.p.suspects.unmark(keys)
	}
}

// failedKeys lists the keys whose prepare failed (Soft: in the outbox).
func (t *hookTx) failedKeys() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var keys []string
	for _, e := range t.entries {
		if e.failed {
			keys = append(keys, e.key)
		}
	}
	return keys
}

func (t *hookTx) firstKey() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.entries) > 0 {
		return t.entries[0].key
	}
	return ""
}

// finish runs once per transaction, with the first outcome.
func (t *hookTx) finish(committed bool) {
	t.mu.Lock()
	if t.done {
		t.mu.Unlock()
		return
	}
	t.done = true
	entries := t.entries
	t.mu.Unlock()
	if len(entries) == 0 {
		return
	}
	// Close waits for the finalizes it counts; once it has begun, a
	// finalize runs here, uncounted, before Commit returns.
	counted := t.p.gate.enter()
	if counted && t.p.cfg.AsyncFinalize {
		// Readers of a pending key already go to the database, so the
		// caller need not wait for the install. Forget the flights now, so
		// that reads starting after Commit returns never join older loads.
		for _, e := range entries {
			t.p.flights.Forget(e.key)
		}
		go func() {
			defer t.p.gate.leave()
			defer t.p.recoverLogged("asynchronous finalize")
			t.p.finalize(t.ctx, t.token, entries, committed)
		}()
		return
	}
	if counted {
		defer t.p.gate.leave()
	}
	t.p.finalize(t.ctx, t.token, entries, committed)
}

// stage records that the transaction wrote key; it returns the entry.
func (t *hookTx) stage(spec *modelSpec, key string) *staged {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	e := t.byKey[key]
	if e == nil {
		if t.byKey == nil {
			t.byKey = make(map[string]*staged)
		}
		e = &staged{spec: spec, key: key}
		t.byKey[key] = e
		t.entries = append(t.entries, e)
	}
	e.seq = t.seq
	e.valid = true
	return e
}

// markFailed records a failed prepare; it reports whether the key had
// already failed in this transaction (and so is in the outbox already).
func (t *hookTx) markFailed(e *staged, strict bool, err error) (already bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	already = e.failed
	e.failed = true
	if strict && t.strictErr == nil {
		t.strictErr = err
	}
	return already
}

// fail makes Commit roll back and return err: the transaction wrote rows
// whose keys the plugin could not name.
func (t *hookTx) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.strictErr == nil {
		t.strictErr = err
	}
}

// sniff follows SAVEPOINT, ROLLBACK TO SAVEPOINT and RELEASE SAVEPOINT.
func (t *hookTx) sniff(query string) {
	q := strings.TrimSpace(query)
	if len(q) < 9 || (q[0]|0x20 != 's' && q[0]|0x20 != 'r') {
		return
	}
	w := strings.Fields(strings.ToUpper(strings.TrimSuffix(q, ";")))
	name := func(i int) string {
		if i < len(w) {
			return strings.Trim(w[i], "\"`")
		}
		return ""
	}
	switch {
	case len(w) == 2 && w[0] == "SAVEPOINT":
		t.savepoint(name(1))
	case len(w) >= 3 && w[0] == "ROLLBACK" && w[1] == "TO":
		if w[2] == "SAVEPOINT" {
			t.rollbackTo(name(3))
		} else {
			t.rollbackTo(name(2))
		}
	case len(w) >= 2 && w[0] == "RELEASE":
		if w[1] == "SAVEPOINT" {
			t.release(name(2))
		} else {
			t.release(name(1))
		}
	}
}

func (t *hookTx) savepoint(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.savepoints = append(t.savepoints, savepoint{name: name, seq: t.seq})
}

func (t *hookTx) find(name string) int {
	for i := len(t.savepoints) - 1; i >= 0; i-- {
		if t.savepoints[i].name == name {
			return i
		}
	}
	return -1
}

// rollbackTo undoes, for the cache, every write staged since the savepoint:
// those keys are released and deleted at the end, never installed.
func (t *hookTx) rollbackTo(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.find(name)
	if i < 0 {
		// A savepoint we did not see: undo everything, to be safe.
		for _, e := range t.entries {
			e.valid = false
		}
		return
	}
	mark := t.savepoints[i].seq
	for _, e := range t.entries {
		if e.seq > mark {
			e.valid = false
		}
	}
	t.savepoints = t.savepoints[:i+1]
}

func (t *hookTx) release(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := t.find(name); i >= 0 {
		t.savepoints = t.savepoints[:i]
	}
}

// txOf tells whether pool is a transaction and, if it is ours, which.
func txOf(pool gorm.ConnPool) (tx *hookTx, inTx bool) {
	switch t := pool.(type) {
	case *hookTx:
		return t, true
	case *gorm.PreparedStmtTX:
		h, _ := t.Tx.(*hookTx)
		return h, true
	case gorm.TxCommitter:
		return nil, true
	}
	return nil, false
}
