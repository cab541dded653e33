package cdc_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/pgproc"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// reconnect replaces the rig's raw connection, after a database restart.
func (r *rig) reconnect() {
	r.t.Helper()
	_ = r.raw.Close(context.Background())
	raw, err := pgx.Connect(context.Background(), r.dsn)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = raw.Close(context.Background()) })
	r.raw = raw
}

// flushed returns the WAL position flushed so far.
func (r *rig) flushed() pglogrepl.LSN {
	r.t.Helper()
	var s string
	if err := r.raw.QueryRow(context.Background(), "SELECT pg_current_wal_flush_lsn()::text").Scan(&s); err != nil {
		r.t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		r.t.Fatal(err)
	}
	return lsn
}

// confirmedBefore fails the test when the consumer or the slot has
// confirmed a position at or past end.
func (r *rig) confirmedBefore(end pglogrepl.LSN) {
	r.t.Helper()
	var slot string
	if err := r.raw.QueryRow(context.Background(),
		"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", r.cfg.Slot).Scan(&slot); err != nil {
		r.t.Fatal(err)
	}
	for what, v := range map[string]string{"consumer": r.c.Stats().ConfirmedLSN, "slot": slot} {
		if l, err := pglogrepl.ParseLSN(v); err != nil || l >= end {
			r.t.Fatalf("%s confirmed %s, at or past an unapplied commit (WAL flushed to %s)", what, v, end)
		}
	}
}

// keysMatchRows checks every key of Account rows 1..n: absent, or holding
// the row as the database has it. It returns the keys that hold a row.
func (r *rig) keysMatchRows(n int64) (held []int64) {
	r.t.Helper()
	ctx := context.Background()
	for i := int64(1); i <= n; i++ {
		var db Account
		if err := r.raw.QueryRow(ctx, "SELECT id, owner, balance FROM accounts WHERE id = $1", i).Scan(&db.ID, &db.Owner, &db.Balance); err != nil {
			r.t.Fatal(err)
		}
		e, err := writethrough.Inspect(ctx, r.db, &Account{}, i)
		if err != nil {
			r.t.Fatal(err)
		}
		switch e.State {
		case writethrough.EntryAbsent:
		case writethrough.EntryCommitted:
			if got := e.Row.(*Account); *got != db {
				r.t.Errorf("key %d holds %+v, the database %+v", i, *got, db)
			}
			held = append(held, i)
		default:
			r.t.Errorf("key %d: %s", i, e.State)
		}
	}
	return held
}

// TestPostgresRestartLosesNoChange restarts the database under a streaming
// consumer while writers commit in other connections: once with a fast
// shutdown, once by killing the postmaster (crash recovery). The consumer
// reconnects by itself and skips no committed change. Every key is filled
// before the writers start and each row is changed by exactly one committed
// transaction, so a transaction the consumer skipped leaves its key holding
// the row as it was before: each key must end absent.
func TestPostgresRestartLosesNoChange(t *testing.T) {
	const rows, writers = 240, 3
	for _, tc := range []struct {
		name  string
		crash bool
	}{
		{"fast shutdown", false},
		{"postmaster SIGKILL", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := pgproc.Start(t)
			rdb, prefix := testenv.Redis(t)
			r := newRigAt(t, srv.DSN("postgres"), rdb, writethrough.Config{Prefix: prefix}, &Account{})
			r.accounts(rows)
			c := r.start()
			r.caughtUp()
			r.fillAccounts(rows)
			for i := int64(1); i <= rows; i++ {
				if s := r.state(&Account{}, i); s != "committed" {
					t.Fatalf("key %d before the writers: %s", i, s)
				}
			}
			before := c.Stats()

			// Each writer changes its rows in turn, one transaction each, and
			// retries on a new connection until the change is in. The guard
			// makes a retry of a COMMIT whose outcome was lost change nothing.
			// Rows past the first half wait for the restart, so that changes
			// commit before, during and after it.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			restarted := make(chan struct{})
			var committed atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for w := int64(1); w <= writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var conn *pgx.Conn
					defer func() {
						if conn != nil {
							_ = conn.Close(context.Background())
						}
					}()
					for id := w; id <= rows; id += writers {
						if id > rows/2 {
							select {
							case <-restarted:
							case <-ctx.Done():
							}
						}
						for {
							if ctx.Err() != nil {
								errs <- fmt.Errorf("writer %d: row %d not changed: %w", w, id, ctx.Err())
								return
							}
							var err error
							if conn == nil {
								conn, err = pgx.Connect(ctx, srv.DSN("postgres"))
							}
							if err == nil {
								_, err = conn.Exec(ctx, "UPDATE accounts SET balance = balance + 1000 WHERE id = $1 AND balance < 1000", id)
							}
							if err == nil {
								committed.Add(1)
								break
							}
							if conn != nil {
								_ = conn.Close(context.Background())
								conn = nil
							}
							time.Sleep(10 * time.Millisecond) // the server is down: back off
						}
					}
				}()
			}

			r.eventually("writers under way", func() error {
				if n := committed.Load(); n < rows/8 {
					return fmt.Errorf("%d changes committed", n)
				}
				return nil
			})
			atRestart := committed.Load()
			if tc.crash {
				srv.Kill()
			}
			srv.Restart()
			back := time.Now()
			close(restarted)
			r.eventually("streaming again", func() error {
				if st := c.Stats(); st.Reconnects == before.Reconnects || st.State != cdc.StateStreaming {
					return fmt.Errorf("state %s, %d reconnects", st.State, st.Reconnects)
				}
				return nil
			})
			t.Logf("the consumer streamed again %v after PostgreSQL accepted connections", time.Since(back).Round(time.Millisecond))
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}

			r.reconnect()
			r.caughtUp()
			st := c.Stats()
			t.Logf("%d of %d changes committed when the restart began; the consumer reconnected %d times and applied %d transactions",
				atRestart, rows, st.Reconnects-before.Reconnects, st.Transactions-before.Transactions)
			if st.Reconnects == before.Reconnects {
				t.Fatalf("the consumer did not reconnect: %+v", st)
			}
			if st.Purges != before.Purges {
				t.Fatalf("the consumer purged after the restart (the slot should have survived it): %+v", st)
			}
			var changed int64
			if err := r.raw.QueryRow(ctx, "SELECT count(*) FROM accounts WHERE balance = id + 1000").Scan(&changed); err != nil {
				t.Fatal(err)
			}
			if changed != rows {
				t.Fatalf("%d rows changed, want %d", changed, rows)
			}
			if held := r.keysMatchRows(rows); len(held) > 0 {
				t.Fatalf("keys %v were filled before their row changed and still hold a row: a change was skipped", held)
			}
			// Each row's change is one transaction, applied at least once
			// (replays after the restart count again).
			if n := st.Transactions - before.Transactions; n < rows {
				t.Fatalf("the consumer applied %d transactions, want at least %d: %+v", n, rows, st)
			}
		})
	}
}

// TestRedisKilledAndRestartedLosesNoChange kills Redis under a streaming
// consumer and commits changes while it is dead: none of them is confirmed
// until it is back. Redis restarts empty, and before the consumer applies
// its backlog, entries land there: rows read before the changes (as a
// filler that raced the outage could leave them), rows read after, and rows
// that change again. Once the backlog is applied every key is absent or
// holds its row.
func TestRedisKilledAndRestartedLosesNoChange(t *testing.T) {
	const rows = 12
	ctx := context.Background()
	srv := redisproc.Start(t)
	rdb := srv.Client(t)
	r := newRigOn(t, rdb, "wtcdc", &Account{})
	r.cfg.Timeout = 200 * time.Millisecond
	// While held, the consumer waits on each commit it receives before it
	// applies it.
	var held atomic.Bool
	parked := make(chan struct{}, 1)
	release := make(chan struct{})
	r.hook = func(point string) {
		if point == "commit:received" && held.Load() {
			select {
			case parked <- struct{}{}:
			default:
			}
			<-release
		}
	}
	r.accounts(rows)
	c := r.start()
	var once sync.Once
	open := func() { once.Do(func() { held.Store(false); close(release) }) }
	t.Cleanup(open) // before the consumer stops

	r.caughtUp()
	r.fillAccounts(rows)
	key := func(id int64) string {
		e, err := writethrough.Inspect(ctx, r.db, &Account{}, id)
		if err != nil {
			t.Fatal(err)
		}
		return e.Key
	}
	// The entries of rows 1..4 as a read before the changes fills them.
	old := map[string][]byte{}
	for i := int64(1); i <= 4; i++ {
		k := key(i)
		b, err := rdb.Get(ctx, k).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		old[k] = b
	}
	before := c.Stats()

	srv.Kill()
	// Rows 1..8 change while Redis is dead, one transaction each.
	r.exec("UPDATE accounts SET balance = balance + 100 WHERE id = 1")
	first := r.flushed()
	for i := int64(2); i <= 8; i++ {
		r.exec("UPDATE accounts SET balance = balance + 100 WHERE id = $1", i)
	}
	r.eventually("a failed apply", func() error {
		if c.Stats().Errors == before.Errors {
			return errors.New("no error yet")
		}
		return nil
	})
	r.confirmedBefore(first)

	// Hold the consumer at the first change, then bring Redis back empty.
	held.Store(true)
	select {
	case <-parked:
	case <-time.After(30 * time.Second):
		t.Fatalf("the consumer did not receive the changes again: %+v", c.Stats())
	}
	srv.Restart()
	r.eventually("the plugin reaches Redis", func() error {
		_, err := writethrough.Inspect(ctx, r.db, &Account{}, 1)
		return err
	})
	for k, b := range old {
		if err := rdb.Set(ctx, k, b, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(1); i <= 4; i++ {
		e, err := writethrough.Inspect(ctx, r.db, &Account{}, i)
		if err != nil {
			t.Fatal(err)
		}
		if e.State != writethrough.EntryCommitted || e.Row.(*Account).Balance != i {
			t.Fatalf("key %d does not hold the row before its change: %s %+v", i, e.State, e.Row)
		}
	}
	for i := int64(5); i <= rows; i++ {
		r.eventually(fmt.Sprintf("key %d filled", i), func() error {
			r.fill(&Account{}, i)
			if s := r.state(&Account{}, i); s != "committed" {
				return fmt.Errorf("state %s", s)
			}
			return nil
		})
	}
	r.exec("UPDATE accounts SET balance = balance + 100 WHERE id IN (9, 10)")
	r.confirmedBefore(first)
	open()

	r.caughtUp()
	st := c.Stats()
	if st.Reconnects == before.Reconnects {
		t.Fatalf("the consumer did not reconnect: %+v", st)
	}
	holding := r.keysMatchRows(rows)
	if len(holding) != 2 || holding[0] != 11 || holding[1] != 12 {
		t.Fatalf("keys holding a row after the backlog: %v, want [11 12] (the rows that did not change)", holding)
	}
	if n := st.Transactions - before.Transactions; n < 9 {
		t.Fatalf("the consumer applied %d transactions, want at least 9: %+v", n, st)
	}
}
