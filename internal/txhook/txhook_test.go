package txhook

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"sync"
	"testing"

	"gorm.io/gorm"
)

// These tests see the wrapper between a fake plugin (Owner) and a fake
// driver transaction: they check the wrapper's bookkeeping, not a database.

// fakeOwner records what the wrapper tells the plugin.
type fakeOwner struct {
	mu         sync.Mutex // protects the fields below
	committing []string
	ends       []ended
}

type ended struct {
	ctx     context.Context
	token   string
	staged  []Staged
	outcome Outcome
}

func (o *fakeOwner) Committing(firstKey string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.committing = append(o.committing, firstKey)
}

func (o *fakeOwner) End(ctx context.Context, token string, staged []Staged, outcome Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ends = append(o.ends, ended{ctx: ctx, token: token, staged: staged, outcome: outcome})
}

// fakeTx is a driver transaction: COMMIT and ROLLBACK answer as
// database/sql's do (ErrTxDone once the transaction ended).
type fakeTx struct {
	gorm.Tx   // nil: only the methods below are called
	commitErr error
	execErr   error

	commits, rollbacks int
	over               bool
}

func (f *fakeTx) Commit() error {
	if f.over {
		return sql.ErrTxDone
	}
	f.commits++
	f.over = true
	return f.commitErr
}

func (f *fakeTx) Rollback() error {
	if f.over {
		return sql.ErrTxDone
	}
	f.rollbacks++
	f.over = true
	return nil
}

func (f *fakeTx) ExecContext(context.Context, string, ...any) (sql.Result, error) {
	if f.execErr != nil {
		return nil, f.execErr
	}
	return driver.RowsAffected(0), nil
}

// fakePool begins fakeTx transactions (or what begin returns).
type fakePool struct {
	gorm.ConnPool // nil: only BeginTx is called
	begin         func() (gorm.ConnPool, error)
}

func (p *fakePool) BeginTx(context.Context, *sql.TxOptions) (gorm.ConnPool, error) {
	if p.begin != nil {
		return p.begin()
	}
	return &fakeTx{}, nil
}

type ctxKey struct{}

// begin starts a transaction on a wrapped fake pool; it returns the
// wrapper, the driver transaction under it and the owner.
func begin(t *testing.T, driverTx *fakeTx) (*Tx, *fakeTx, *fakeOwner) {
	t.Helper()
	if driverTx == nil {
		driverTx = &fakeTx{}
	}
	owner := &fakeOwner{}
	db := &gorm.DB{Config: &gorm.Config{ConnPool: &fakePool{begin: func() (gorm.ConnPool, error) { return driverTx, nil }}}}
	Install(db, owner)
	ctx := context.WithValue(context.Background(), ctxKey{}, t.Name())
	cp, err := db.ConnPool.(gorm.ConnPoolBeginner).BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx, ok := cp.(*Tx)
	if !ok {
		t.Fatalf("BeginTx gave a %T, want a *Tx", cp)
	}
	return tx, driverTx, owner
}

// brief is a Staged entry without its sequence number, for comparisons.
type brief struct {
	Key           string
	Model         any
	Valid, Failed bool
}

func briefs(staged []Staged) []brief {
	out := make([]brief, len(staged))
	for i, s := range staged {
		out[i] = brief{s.Key, s.Model, s.Valid, s.Failed}
	}
	return out
}

func TestCommitEndsOnceWithTheStagedKeysInOrder(t *testing.T) {
	tx, drv, owner := begin(t, nil)
	tx.Stage("m1", "a")
	tx.Stage("m2", "b")
	tx.Stage("m3", "a") // staged again: the first model stays
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); !errors.Is(err, sql.ErrTxDone) { // gorm.Transaction's deferred rollback
		t.Fatalf("Rollback after Commit = %v, want sql.ErrTxDone", err)
	}
	if drv.commits != 1 || drv.rollbacks != 0 {
		t.Errorf("driver: %d commits, %d rollbacks; want 1, 0", drv.commits, drv.rollbacks)
	}
	if !reflect.DeepEqual(owner.committing, []string{"a"}) {
		t.Errorf("Committing got %q, want the first key", owner.committing)
	}
	if len(owner.ends) != 1 {
		t.Fatalf("End called %d times, want once", len(owner.ends))
	}
	e := owner.ends[0]
	if e.outcome != Committed || e.token != tx.Token() || e.token == "" || e.ctx.Value(ctxKey{}) != t.Name() {
		t.Errorf("End(outcome %v, token %q, ctx %v): want committed, the transaction's token, its BeginTx context", e.outcome, e.token, e.ctx)
	}
	want := []brief{{"a", "m1", true, false}, {"b", "m2", true, false}}
	if got := briefs(e.staged); !reflect.DeepEqual(got, want) {
		t.Errorf("staged = %+v, want %+v", got, want)
	}
}

func TestEveryOutcomeIsReportedOnceAndFirstWins(t *testing.T) {
	boom := errors.New("connection lost during COMMIT")
	cases := []struct {
		name    string
		drv     *fakeTx
		end     func(tx *Tx) error
		wantErr error
		want    Outcome
	}{
		{"commit", &fakeTx{}, func(tx *Tx) error { return tx.Commit() }, nil, Committed},
		{"commit that failed, then the rollback gorm.Transaction sends", &fakeTx{commitErr: boom},
			func(tx *Tx) error {
				err := tx.Commit()
				_ = tx.Rollback()
				return err
			}, boom, CommitFailed},
		{"rollback", &fakeTx{}, func(tx *Tx) error { return tx.Rollback() }, nil, RolledBack},
		{"rollback, then a commit", &fakeTx{}, func(tx *Tx) error {
			err := tx.Rollback()
			_ = tx.Commit()
			return err
		}, nil, RolledBack},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tx, _, owner := begin(t, tc.drv)
			tx.Stage(nil, "k")
			if err := tc.end(tx); !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if len(owner.ends) != 1 || owner.ends[0].outcome != tc.want {
				t.Fatalf("ends = %+v, want one %v", owner.ends, tc.want)
			}
		})
	}
}

func TestFailTurnsCommitIntoARollback(t *testing.T) {
	tx, drv, owner := begin(t, nil)
	tx.Stage(nil, "k")
	first := errors.New("strict prepare failed")
	tx.Fail(first)
	tx.Fail(errors.New("a later failure"))
	err := tx.Commit()
	if !errors.Is(err, first) {
		t.Fatalf("Commit = %v, want the first failure", err)
	}
	if drv.commits != 0 || drv.rollbacks != 1 {
		t.Errorf("driver: %d commits, %d rollbacks; want 0, 1", drv.commits, drv.rollbacks)
	}
	if len(owner.committing) != 0 {
		t.Errorf("Committing called for a transaction that rolls back")
	}
	if len(owner.ends) != 1 || owner.ends[0].outcome != RolledBack {
		t.Fatalf("ends = %+v, want one RolledBack", owner.ends)
	}
}

func TestMarkFailedReportsAKeyAlreadyMarked(t *testing.T) {
	tx, _, owner := begin(t, nil)
	tx.Stage(nil, "a")
	tx.Stage(nil, "b")
	if tx.MarkFailed("a") {
		t.Error("the first mark reported the key marked already")
	}
	if !tx.MarkFailed("a") {
		t.Error("the second mark did not report the key marked already")
	}
	if tx.MarkFailed("never staged") {
		t.Error("a key never staged reported marked")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	want := []brief{{"a", nil, true, true}, {"b", nil, true, false}}
	if got := briefs(owner.ends[0].staged); !reflect.DeepEqual(got, want) {
		t.Errorf("staged = %+v, want %+v", got, want)
	}
}

func TestATransactionThatStagedNothingEndsSilently(t *testing.T) {
	tx, _, owner := begin(t, nil)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(owner.committing, []string{""}) {
		t.Errorf("Committing got %q, want one call with no key", owner.committing)
	}
	if len(owner.ends) != 0 {
		t.Errorf("End called for a transaction that staged nothing")
	}
}

func TestExecContextFollowsOnlyStatementsThatRan(t *testing.T) {
	drv := &fakeTx{}
	tx, _, owner := begin(t, drv)
	ctx := context.Background()
	if _, err := tx.ExecContext(ctx, "SAVEPOINT sp"); err != nil {
		t.Fatal(err)
	}
	tx.Stage(nil, "a")
	drv.execErr = errors.New("no such savepoint")
	if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT sp"); err == nil {
		t.Fatal("the driver's error was lost")
	}
	tx.Stage(nil, "b")
	drv.execErr = nil
	if _, err := tx.ExecContext(ctx, "RELEASE SAVEPOINT sp"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	want := []brief{{"a", nil, true, false}, {"b", nil, true, false}}
	if got := briefs(owner.ends[0].staged); !reflect.DeepEqual(got, want) {
		t.Errorf("a failed ROLLBACK TO undid writes: staged = %+v, want %+v", got, want)
	}

	tx, drv, owner = begin(t, nil)
	tx.Stage(nil, "a")
	if _, err := tx.ExecContext(ctx, "SAVEPOINT sp"); err != nil {
		t.Fatal(err)
	}
	tx.Stage(nil, "b")
	if _, err := tx.ExecContext(ctx, "ROLLBACK TRANSACTION TO SAVEPOINT sp"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	want = []brief{{"a", nil, true, false}, {"b", nil, false, false}}
	if got := briefs(owner.ends[0].staged); !reflect.DeepEqual(got, want) {
		t.Errorf("staged = %+v, want %+v", got, want)
	}
}

func TestEachTransactionHasItsOwnToken(t *testing.T) {
	a, _, _ := begin(t, nil)
	b, _, _ := begin(t, nil)
	if a.Token() == "" || a.Token() == b.Token() {
		t.Errorf("tokens %q and %q: want two different ones", a.Token(), b.Token())
	}
}

func TestBeginTx(t *testing.T) {
	notTx := &fakePool{}
	boom := errors.New("too many connections")
	cases := []struct {
		name    string
		pool    gorm.ConnPool
		want    any // a *Tx, or the ConnPool itself
		wantErr error
	}{
		{"a transaction is wrapped", &fakePool{}, &Tx{}, nil},
		{"a begun pool that is no transaction is returned as it is",
			&fakePool{begin: func() (gorm.ConnPool, error) { return notTx, nil }}, notTx, nil},
		{"an error to begin is returned", &fakePool{begin: func() (gorm.ConnPool, error) { return nil, boom }}, nil, boom},
		{"a pool that cannot begin", struct{ gorm.ConnPool }{}, nil, gorm.ErrInvalidTransaction},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := (&pool{ConnPool: tc.pool, owner: &fakeOwner{}}).BeginTx(context.Background(), nil)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			switch want := tc.want.(type) {
			case *Tx:
				if _, ok := got.(*Tx); !ok {
					t.Errorf("got a %T, want a *Tx", got)
				}
			case nil:
				if got != nil {
					t.Errorf("got %v, want nothing", got)
				}
			default:
				if got != want {
					t.Errorf("got %v, want %v", got, want)
				}
			}
		})
	}
}

// wrapped reports whether cp is the wrapper around inner.
func wrapped(cp, inner gorm.ConnPool) bool {
	p, ok := cp.(*pool)
	return ok && p.ConnPool == inner
}

func TestInstallWrapsOnceUnderThePreparedStatementWrapper(t *testing.T) {
	owner := &fakeOwner{}
	raw := &fakePool{}
	db := &gorm.DB{Config: &gorm.Config{ConnPool: raw}, Statement: &gorm.Statement{ConnPool: raw}}
	Install(db, owner)
	Install(db, owner)
	if !wrapped(db.ConnPool, raw) || !wrapped(db.Statement.ConnPool, raw) {
		t.Errorf("pools %T, %T: want the wrapper around the raw pool, once", db.ConnPool, db.Statement.ConnPool)
	}

	prep := &gorm.PreparedStmtDB{ConnPool: raw}
	db = &gorm.DB{Config: &gorm.Config{ConnPool: prep}}
	Install(db, owner)
	Install(db, owner)
	if db.ConnPool != prep || !wrapped(prep.ConnPool, raw) {
		t.Errorf("want the same prepared-statement wrapper, over the wrapper, once")
	}

	foreign := &fakeTx{}
	db = &gorm.DB{Config: &gorm.Config{ConnPool: foreign}}
	Install(db, owner)
	if db.ConnPool != foreign {
		t.Errorf("a transaction was wrapped")
	}
}

func TestBindCopiesASharedPreparedStatementWrapper(t *testing.T) {
	owner := &fakeOwner{}
	raw := &fakePool{}
	prep := &gorm.PreparedStmtDB{ConnPool: raw, Mux: &sync.RWMutex{}}
	st := &gorm.Statement{ConnPool: prep}
	Bind(st, owner)
	copied, ok := st.ConnPool.(*gorm.PreparedStmtDB)
	if !ok || copied == prep || copied.Mux != prep.Mux || !wrapped(copied.ConnPool, raw) {
		t.Fatalf("want a copy of the prepared-statement wrapper over the wrapper")
	}
	if prep.ConnPool != raw {
		t.Errorf("the shared wrapper was changed")
	}
	Bind(st, owner)
	if st.ConnPool != copied {
		t.Errorf("a bound statement was bound again")
	}

	st = &gorm.Statement{ConnPool: raw}
	Bind(st, owner)
	if !wrapped(st.ConnPool, raw) {
		t.Errorf("a plain pool was not wrapped")
	}
	foreign := &fakeTx{}
	st = &gorm.Statement{ConnPool: foreign}
	Bind(st, owner)
	if st.ConnPool != foreign {
		t.Errorf("a transaction was wrapped")
	}
}

func TestOfTellsTransactionsApart(t *testing.T) {
	ours, _, _ := begin(t, nil)
	cases := []struct {
		name string
		cp   gorm.ConnPool
		tx   *Tx
		inTx bool
	}{
		{"ours", ours, ours, true},
		{"ours under the prepared-statement wrapper", &gorm.PreparedStmtTX{Tx: ours}, ours, true},
		{"another's under the prepared-statement wrapper", &gorm.PreparedStmtTX{Tx: &fakeTx{}}, nil, true},
		{"another's", &fakeTx{}, nil, true},
		{"a pool", &pool{ConnPool: &fakePool{}}, nil, false},
		{"nothing", nil, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tx, inTx := Of(tc.cp)
			if tx != tc.tx || inTx != tc.inTx {
				t.Errorf("Of = %p, %v; want %p, %v", tx, inTx, tc.tx, tc.inTx)
			}
		})
	}
}

func TestSniffPreparedFollowsOnlyThePreparedStatementPath(t *testing.T) {
	tx, _, owner := begin(t, nil)
	tx.Stage(nil, "a")
	SniffPrepared(&gorm.PreparedStmtTX{Tx: tx}, "SAVEPOINT sp")
	tx.Stage(nil, "b")
	// Statements on the transaction itself went through ExecContext.
	SniffPrepared(tx, "ROLLBACK TO sp")
	SniffPrepared(&gorm.PreparedStmtTX{Tx: &fakeTx{}}, "ROLLBACK TO sp")
	SniffPrepared(nil, "ROLLBACK TO sp")
	tx.Stage(nil, "c")
	SniffPrepared(&gorm.PreparedStmtTX{Tx: tx}, "ROLLBACK WORK TO sp")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	want := []brief{{"a", nil, true, false}, {"b", nil, false, false}, {"c", nil, false, false}}
	if got := briefs(owner.ends[0].staged); !reflect.DeepEqual(got, want) {
		t.Errorf("staged = %+v, want %+v", got, want)
	}
}

func TestStageIsSafeForConcurrentStatements(t *testing.T) {
	tx, _, owner := begin(t, nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				key := string(rune('a' + j%4))
				tx.Stage(nil, key)
				tx.MarkFailed(key)
				tx.sniff("SAVEPOINT sp")
				tx.sniff("RELEASE sp")
			}
		}()
	}
	wg.Wait()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := len(owner.ends[0].staged); n != 4 {
		t.Errorf("%d keys staged, want 4", n)
	}
}

// markingOwner is a fakeOwner that marks transactions (Marker).
type markingOwner struct {
	fakeOwner
	marks int
}

func (o *markingOwner) Mark(t *Tx) (string, []any) {
	o.marks++
	if t.Tainted() {
		return "", nil
	}
	return "SELECT mark($1)", []any{t.Token()}
}

// beginMarked is begin with a markingOwner.
func beginMarked(t *testing.T, driverTx *fakeTx) (*Tx, *markingOwner) {
	t.Helper()
	owner := &markingOwner{}
	db := &gorm.DB{Config: &gorm.Config{ConnPool: &fakePool{begin: func() (gorm.ConnPool, error) { return driverTx, nil }}}}
	Install(db, owner)
	cp, err := db.ConnPool.(gorm.ConnPoolBeginner).BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cp.(*Tx), owner
}

func TestMarkRunsBeforeCommitOnlyWhenKeysWereStaged(t *testing.T) {
	t.Run("staged", func(t *testing.T) {
		driverTx := &fakeTx{}
		tx, owner := beginMarked(t, driverTx)
		tx.Stage("m", "k1")
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if owner.marks != 1 || driverTx.commits != 1 {
			t.Fatalf("marks %d, commits %d; want 1 and 1", owner.marks, driverTx.commits)
		}
	})
	t.Run("nothing staged", func(t *testing.T) {
		driverTx := &fakeTx{}
		tx, owner := beginMarked(t, driverTx)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if owner.marks != 0 {
			t.Fatalf("a transaction that staged nothing was marked")
		}
	})
	t.Run("a failed mark rolls back", func(t *testing.T) {
		driverTx := &fakeTx{execErr: errors.New("no logical decoding")}
		tx, owner := beginMarked(t, driverTx)
		tx.Stage("m", "k1")
		err := tx.Commit()
		if err == nil || driverTx.commits != 0 || driverTx.rollbacks != 1 {
			t.Fatalf("Commit = %v with commits %d, rollbacks %d; want an error and a rollback", err, driverTx.commits, driverTx.rollbacks)
		}
		if len(owner.ends) != 1 || owner.ends[0].outcome != RolledBack {
			t.Fatalf("ends %+v, want one RolledBack", owner.ends)
		}
	})
	t.Run("tainted", func(t *testing.T) {
		driverTx := &fakeTx{execErr: errors.New("must not run")}
		tx, _ := beginMarked(t, driverTx)
		tx.Stage("m", "k1")
		tx.Taint()
		if err := tx.Commit(); err != nil {
			t.Fatalf("a tainted transaction ran its mark: %v", err)
		}
	})
}

func TestIsSavepointSQL(t *testing.T) {
	for q, want := range map[string]bool{
		"SAVEPOINT sp1":                     true,
		"release savepoint sp1":             true,
		"ROLLBACK TO SAVEPOINT sp1":         true,
		"ROLLBACK TRANSACTION TO sp1":       true,
		"ROLLBACK":                          false,
		"UPDATE accounts SET balance = 1":   false,
		"/* x */ SAVEPOINT \"Sp\"":          true,
		"":                                  false,
		"SELECT pg_logical_emit_message(1)": false,
	} {
		if got := IsSavepointSQL(q); got != want {
			t.Errorf("IsSavepointSQL(%q) = %v, want %v", q, got, want)
		}
	}
}
