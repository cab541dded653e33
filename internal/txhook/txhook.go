// Package txhook wraps GORM's connection pool so that the plugin sees every
// transaction it begins end.
//
// GORM has no after-commit hook: a callback placed after
// gorm:commit_or_rollback_transaction runs before the real COMMIT when the
// statement is inside db.Transaction. So [Install] wraps the connection pool
// (under GORM's prepared-statement wrapper when there is one): every
// transaction GORM begins on it is a [*Tx], whose Commit and Rollback call
// the driver's and then tell the plugin, through the small [Owner]
// interface, how the transaction ended and which keys it staged.
//
// The package owns "a transaction began, a statement ran, it committed or
// rolled back, savepoints came and went" (sniff.go follows savepoints by
// reading the SQL). What to stage and what to do with staged keys at the
// end is the plugin's: it calls [Tx.Stage] as it writes and receives the
// keys back in [Owner.End].
package txhook

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// Owner is the plugin as a wrapped transaction sees it.
type Owner interface {
	// Committing is called just before the driver's COMMIT, with the first
	// key the transaction staged ("" when none). It is an interleaving
	// point for tests; it is not called when Commit rolls back instead.
	Committing(firstKey string)
	// End ends the transaction's part in the keys it staged. It is called
	// once per transaction that staged a key, after the driver's COMMIT or
	// ROLLBACK returned, with the first outcome (a Rollback after a failed
	// Commit is not reported again). ctx is the context the transaction
	// began with; token is [Tx.Token]; staged is a copy the owner may keep,
	// in staging order. End may hand the work to another goroutine.
	End(ctx context.Context, token string, staged []Staged, outcome Outcome)
}

// Marker is implemented by an Owner that writes one statement into every
// transaction that staged keys, just before its COMMIT (the plugin's mark
// for change data capture). Mark returns "" for none. When the statement
// fails, the transaction is rolled back instead of committed: it would be
// aborted anyway.
type Marker interface {
	Mark(t *Tx) (query string, args []any)
}

// PreCommitter is implemented by an Owner that acts on the keys a
// transaction staged just before its COMMIT is sent, when
// [Tx.NeedPreCommit] asked for it. An error from PreCommit rolls the
// transaction back instead: Commit returns it.
type PreCommitter interface {
	PreCommit(ctx context.Context, t *Tx, staged []Staged) error
}

// Outcome is how a transaction ended.
type Outcome int

const (
	// Committed: COMMIT returned success.
	Committed Outcome = iota
	// CommitFailed: COMMIT returned an error, so the transaction may or may
	// not have committed.
	CommitFailed
	// RolledBack: the transaction was rolled back, by Rollback or by a
	// Commit that [Tx.Fail] turned into a rollback.
	RolledBack
)

func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case CommitFailed:
		return "commit failed"
	case RolledBack:
		return "rolled back"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Staged is one key a transaction staged, as [Owner.End] receives it.
type Staged struct {
	Key string
	// Model is the value passed to [Tx.Stage] when the key was first
	// staged; the package never looks at it.
	Model any
	// Valid reports that the key may be installed at commit: no rollback
	// to a savepoint undid its last staging.
	Valid bool
	// Failed reports that [Tx.MarkFailed] was called for the key.
	Failed bool
	// Final is the value given to the key's last [Tx.StageFinal] (what to
	// install at commit, kept by the owner rather than in Redis), or nil
	// when its last staging was a [Tx.Stage]. The package never looks at it.
	Final any

	seq uint64 // staging sequence number of the key's last staging
}

// pool wraps a gorm.ConnPool. It begins transactions but is not itself a
// TxCommitter (GORM would then treat every statement as nested).
type pool struct {
	gorm.ConnPool
	owner Owner
}

// BeginTx implements gorm.ConnPoolBeginner.
func (h *pool) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
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
	return &Tx{Tx: tx, pool: h, owner: h.owner, ctx: ctx, token: entry.NewToken()}, nil
}

// GetDBConn implements gorm.GetDBConnector, so that db.DB() keeps working.
func (h *pool) GetDBConn() (*sql.DB, error) {
	switch c := h.ConnPool.(type) {
	case *sql.DB:
		return c, nil
	case gorm.GetDBConnector:
		return c.GetDBConn()
	}
	return nil, gorm.ErrInvalidDB
}

// Ping lets health checks that look for it reach the database.
func (h *pool) Ping() error {
	db, err := h.GetDBConn()
	if err != nil {
		return err
	}
	return db.Ping()
}

// Install wraps db's connection pool, and its statement's, for owner. The
// wrapper goes under GORM's prepared-statement wrapper, so that SavePoint
// still finds a *gorm.PreparedStmtTX and statements are still prepared. A
// pool already wrapped, or a transaction, is left as it is.
func Install(db *gorm.DB, owner Owner) {
	install := func(cp gorm.ConnPool) gorm.ConnPool {
		switch c := cp.(type) {
		case nil, *pool, *Tx, gorm.TxCommitter:
			return cp
		case *gorm.PreparedStmtDB:
			c.ConnPool = wrap(c.ConnPool, owner)
			return c
		default:
			return wrap(c, owner)
		}
	}
	db.ConnPool = install(db.ConnPool)
	if db.Statement != nil {
		db.Statement.ConnPool = install(db.Statement.ConnPool)
	}
}

// Bind re-wraps a pool that another plugin (dbresolver) swapped into the
// statement, so that the transaction GORM is about to begin is a *Tx. A
// prepared-statement wrapper is copied, not changed: it may be shared.
func Bind(st *gorm.Statement, owner Owner) {
	switch c := st.ConnPool.(type) {
	case *pool, gorm.TxCommitter, nil:
	case *gorm.PreparedStmtDB:
		if _, ok := c.ConnPool.(*pool); !ok {
			st.ConnPool = &gorm.PreparedStmtDB{ConnPool: wrap(c.ConnPool, owner), Mux: c.Mux, Stmts: c.Stmts}
		}
	default:
		st.ConnPool = wrap(c, owner)
	}
}

func wrap(cp gorm.ConnPool, owner Owner) gorm.ConnPool {
	switch cp.(type) {
	case *pool, gorm.TxCommitter:
		return cp
	}
	return &pool{ConnPool: cp, owner: owner}
}

// Of tells whether cp is a transaction and, if Install's wrapper began it,
// which.
func Of(cp gorm.ConnPool) (tx *Tx, inTx bool) {
	switch t := cp.(type) {
	case *Tx:
		return t, true
	case *gorm.PreparedStmtTX:
		h, _ := t.Tx.(*Tx)
		return h, true
	case gorm.TxCommitter:
		return nil, true
	}
	return nil, false
}

// SniffPrepared follows a savepoint statement that ran through GORM's
// prepared-statement transaction, which bypasses [Tx.ExecContext] (a
// user's tx.Exec with PrepareStmt). Call it only for statements that
// succeeded; it does nothing when cp is not such a transaction of ours.
func SniffPrepared(cp gorm.ConnPool, query string) {
	if ptx, ok := cp.(*gorm.PreparedStmtTX); ok {
		if t, ok := ptx.Tx.(*Tx); ok {
			t.sniff(query)
		}
	}
}

// Tx is a transaction that knows what it staged. It must stay a pointer
// type: GORM calls reflect.Value.IsNil on the committer.
type Tx struct {
	gorm.Tx
	pool  *pool
	owner Owner
	ctx   context.Context
	token string

	mu         sync.Mutex // protects the fields below
	entries    []*Staged  // in staging order
	byKey      map[string]*Staged
	savepoints []savepoint
	seq        uint64
	failErr    error // set by Fail: Commit must not commit
	done       bool  // End was called, or is not to be
	tainted    bool  // Taint: it ran SQL whose writes the plugin did not follow
	preCommit  bool  // NeedPreCommit: the owner's PreCommitter runs before COMMIT
}

// NeedPreCommit asks for the owner's [PreCommitter] to run before COMMIT.
func (t *Tx) NeedPreCommit() {
	t.mu.Lock()
	t.preCommit = true
	t.mu.Unlock()
}

// Taint records that the transaction ran SQL whose writes the plugin does
// not follow (a raw statement): its keys may have changed in ways the
// staged entries do not show.
func (t *Tx) Taint() {
	t.mu.Lock()
	t.tainted = true
	t.mu.Unlock()
}

// Tainted reports whether Taint was called.
func (t *Tx) Tainted() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tainted
}

type savepoint struct {
	name string // as PostgreSQL compares it (sniff.go)
	seq  uint64 // the staging sequence number when it was set
}

// Token is the transaction's writer token, the same for every key it
// stages.
func (t *Tx) Token() string { return t.token }

// GetDBConn implements gorm.GetDBConnector.
func (t *Tx) GetDBConn() (*sql.DB, error) { return t.pool.GetDBConn() }

// ExecContext runs the statement, then follows it if it set, rolled back
// to or released a savepoint.
func (t *Tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := t.Tx.ExecContext(ctx, query, args...)
	if err == nil {
		t.sniff(query)
	}
	return res, err
}

// Commit commits and ends the transaction: Committed, or CommitFailed when
// COMMIT returned an error. After [Tx.Fail] it rolls back instead, ends
// RolledBack, and returns the error Fail recorded.
func (t *Tx) Commit() error {
	t.mu.Lock()
	failErr := t.failErr
	first := ""
	if len(t.entries) > 0 {
		first = t.entries[0].Key
	}
	t.mu.Unlock()
	if failErr != nil {
		rbErr := t.Tx.Rollback()
		t.end(RolledBack)
		return errors.Join(fmt.Errorf("writethrough: transaction rolled back instead of committed: %w", failErr), rbErr)
	}
	if s, ok := t.owner.(PreCommitter); ok {
		t.mu.Lock()
		var staged []Staged
		if t.preCommit {
			staged = make([]Staged, len(t.entries))
			for i, e := range t.entries {
				staged[i] = *e
			}
		}
		t.mu.Unlock()
		if len(staged) > 0 {
			if err := s.PreCommit(t.ctx, t, staged); err != nil {
				rbErr := t.Tx.Rollback()
				t.end(RolledBack)
				return errors.Join(fmt.Errorf("writethrough: transaction rolled back instead of committed: %w", err), rbErr)
			}
		}
	}
	if m, ok := t.owner.(Marker); ok && first != "" {
		if q, args := m.Mark(t); q != "" {
			if _, err := t.Tx.ExecContext(t.ctx, q, args...); err != nil {
				rbErr := t.Tx.Rollback()
				t.end(RolledBack)
				return errors.Join(fmt.Errorf("writethrough: marking the transaction for change data capture: %w", err), rbErr)
			}
		}
	}
	t.owner.Committing(first)
	if err := t.Tx.Commit(); err != nil {
		t.end(CommitFailed)
		return err
	}
	t.end(Committed)
	return nil
}

// Rollback rolls back and ends the transaction: RolledBack.
func (t *Tx) Rollback() error {
	err := t.Tx.Rollback()
	t.end(RolledBack)
	return err
}

// end reports the first outcome to the owner, once.
func (t *Tx) end(o Outcome) {
	t.mu.Lock()
	if t.done {
		t.mu.Unlock()
		return
	}
	t.done = true
	staged := make([]Staged, len(t.entries))
	for i, e := range t.entries {
		staged[i] = *e
	}
	t.mu.Unlock()
	if len(staged) > 0 {
		t.owner.End(t.ctx, t.token, staged, o)
	}
}

// Stage records that the transaction wrote key: at the end it is reported
// to [Owner.End], valid unless a rollback to a savepoint set before this
// call undoes it. model travels with the key when it is first staged.
func (t *Tx) Stage(model any, key string) { t.StageFinal(model, key, nil) }

// StageFinal is Stage with final, which travels with the key to
// [Owner.End] as [Staged.Final] until the key is staged again.
func (t *Tx) StageFinal(model any, key string, final any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	e := t.byKey[key]
	if e == nil {
		if t.byKey == nil {
			t.byKey = make(map[string]*Staged)
		}
		e = &Staged{Key: key, Model: model}
		t.byKey[key] = e
		t.entries = append(t.entries, e)
	}
	e.seq = t.seq
	e.Valid = true
	e.Final = final
}

// MarkFailed records that the owner gave up on a staged key (its prepare
// failed). It reports whether the key was marked already in this
// transaction; a key never staged is not marked.
func (t *Tx) MarkFailed(key string) (already bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byKey[key]
	if e == nil {
		return false
	}
	already = e.Failed
	e.Failed = true
	return already
}

// Fail makes Commit roll back and return err (the first error Fail was
// given): the transaction must not commit.
func (t *Tx) Fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failErr == nil {
		t.failErr = err
	}
}
