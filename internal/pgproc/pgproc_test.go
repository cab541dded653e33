package pgproc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gorm-writethrough/writethrough/internal/pgproc"
)

// connect opens a connection to the server's postgres database, closed
// when the test ends.
func connect(t *testing.T, s *pgproc.Server) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), s.DSN("postgres"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// count returns the rows of table t.
func count(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestStartAcceptsConnectionsWithLogicalDecoding(t *testing.T) {
	t.Parallel()
	s := pgproc.Start(t)
	conn := connect(t, s)
	var level, user string
	if err := conn.QueryRow(context.Background(), "SELECT current_setting('wal_level'), current_user").Scan(&level, &user); err != nil {
		t.Fatal(err)
	}
	if level != "logical" || user != "postgres" {
		t.Errorf("wal_level %q, user %q; want logical, postgres", level, user)
	}
	exec(t, conn, "SELECT pg_create_logical_replication_slot('s', 'pgoutput')")

	// pg_hba.conf lets replication connections in.
	ctx := context.Background()
	repl, err := pgconn.Connect(ctx, s.DSN("postgres")+" replication=database")
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	defer repl.Close(ctx)
	if _, err := repl.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
}

func TestServersDoNotShareData(t *testing.T) {
	t.Parallel()
	a, b := pgproc.Start(t), pgproc.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("both servers listen on %s", a.Addr())
	}
	exec(t, connect(t, a), "CREATE TABLE t (id int)")
	var found bool
	if err := connect(t, b).QueryRow(context.Background(), "SELECT to_regclass('t') IS NOT NULL").Scan(&found); err != nil {
		t.Fatal(err)
	}
	if found {
		t.Error("a table made on one server exists on the other")
	}
}

func TestRestartKeepsDataOnTheSamePort(t *testing.T) {
	t.Parallel()
	s := pgproc.Start(t)
	addr := s.Addr()
	conn := connect(t, s)
	exec(t, conn, "CREATE TABLE t (id int)")
	exec(t, conn, "INSERT INTO t SELECT generate_series(1, 10)")

	s.Restart()

	if s.Addr() != addr {
		t.Errorf("Addr() = %s after Restart, want %s", s.Addr(), addr)
	}
	if err := conn.Ping(context.Background()); err == nil {
		t.Error("a connection to the stopped server still answers")
	}
	if n := count(t, connect(t, s)); n != 10 {
		t.Errorf("%d rows after Restart, want 10", n)
	}
	if !strings.Contains(s.Log(), "database system was shut down at") {
		t.Errorf("the restarted server does not say it was shut down cleanly:\n%s", s.Log())
	}
}

func TestKillThenRestartRecoversCommittedRows(t *testing.T) {
	t.Parallel()
	s := pgproc.Start(t)
	conn := connect(t, s)
	exec(t, conn, "CREATE TABLE t (id int)")
	exec(t, conn, "INSERT INTO t SELECT generate_series(1, 10)")
	// An open transaction's rows are lost; its backend outlives the
	// postmaster for a moment, and Kill waits for it.
	idle := connect(t, s)
	exec(t, idle, "BEGIN")
	exec(t, idle, "INSERT INTO t VALUES (11)")

	s.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := pgconn.Connect(ctx, s.DSN("postgres")); err == nil {
		t.Fatal("a killed server accepts connections")
	}
	s.Kill() // a second Kill does nothing

	s.Restart()

	if n := count(t, connect(t, s)); n != 10 {
		t.Errorf("%d rows after the crash, want the 10 committed", n)
	}
	if !strings.Contains(s.Log(), "automatic recovery in progress") {
		t.Errorf("the restarted server did not recover from a crash:\n%s", s.Log())
	}
}

func TestStopThenRestart(t *testing.T) {
	t.Parallel()
	s := pgproc.Start(t)
	exec(t, connect(t, s), "CREATE TABLE t (id int)")
	s.Stop()
	s.Stop() // a second Stop does nothing
	s.Kill() // and so does a Kill
	s.Restart()
	if n := count(t, connect(t, s)); n != 0 {
		t.Errorf("%d rows, want 0", n)
	}
}

func TestReplicaStreamsPausesAndCatchesUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgproc.Start(t)
	pconn := connect(t, primary)
	exec(t, pconn, "CREATE TABLE t (id int)")
	exec(t, pconn, "INSERT INTO t SELECT generate_series(1, 10)")

	replica := pgproc.StartReplica(t, primary)
	if replica.Addr() == primary.Addr() {
		t.Fatalf("the replica listens on the primary's %s", primary.Addr())
	}
	rconn := connect(t, replica.Server)
	var recovering bool
	if err := rconn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovering); err != nil || !recovering {
		t.Fatalf("pg_is_in_recovery() = %v, %v on the replica; want true", recovering, err)
	}
	if n := count(t, rconn); n != 10 {
		t.Errorf("%d rows on the new replica, want the primary's 10", n)
	}
	_, err := rconn.Exec(ctx, "INSERT INTO t VALUES (0)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("a write on the replica: %v; want read_only_sql_transaction (25006)", err)
	}

	// Streaming: what the primary commits reaches the replica.
	exec(t, pconn, "INSERT INTO t SELECT generate_series(11, 20)")
	replica.CatchUp()
	if n := count(t, rconn); n != 20 {
		t.Errorf("%d rows after CatchUp, want 20", n)
	}

	// Paused: the replica receives the WAL but does not apply it.
	replica.PauseReplay()
	exec(t, pconn, "INSERT INTO t SELECT generate_series(21, 30)")
	var target string
	if err := pconn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var received bool
		if err := rconn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_receive_lsn() >= $1::pg_lsn, false)", target).Scan(&received); err != nil {
			t.Fatal(err)
		}
		if received {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the paused replica did not receive the primary's WAL up to %s", target)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if recv, replayed, behind := replica.Lag(); !behind {
		t.Errorf("Lag() = %s received, %s replayed, not behind; want behind while paused", recv, replayed)
	}
	if n := count(t, rconn); n != 20 {
		t.Errorf("%d rows on the paused replica, want the 20 it had before the pause", n)
	}

	// Resumed: it catches up.
	replica.ResumeReplay()
	replica.CatchUp()
	if n := count(t, rconn); n != 30 {
		t.Errorf("%d rows after ResumeReplay and CatchUp, want 30", n)
	}
	if _, _, behind := replica.Lag(); behind {
		t.Error("Lag() reports the replica behind after CatchUp")
	}
}
