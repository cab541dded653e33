package pgproc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// catchUpTimeout bounds how long CatchUp waits for the replica to replay
// what the primary has written, and PauseReplay for replay to stop.
const catchUpTimeout = 30 * time.Second

// slots numbers the replication slots of the replicas this process makes,
// so that two replicas of one primary never share one.
var slots atomic.Int64

// Replica is a streaming replica (a hot standby) of a [Server], owned by a
// test. It is a Server of its own (Addr, DSN, Stop, Restart, Kill and Log
// work as for a primary) that accepts reads, refuses writes, and replays the
// primary's WAL as it arrives, unless [Replica.PauseReplay] stopped it.
type Replica struct {
	*Server
	primary *Server
}

// StartReplica makes a streaming replica of primary with pg_basebackup -R
// (through a physical replication slot of its own, so that the primary keeps
// the WAL the replica has not received), starts it on another free loopback
// port and waits until it accepts connections. It runs with the primary's
// settings, then settings. When the test ends it is stopped and its
// directory removed, before the primary (cleanups run last-in first-out).
//
// The primary must allow replication connections, which every pgproc
// server does unless started with wal_level=minimal. StartReplica skips the
// test when the server binaries have no pg_basebackup.
func StartReplica(t testing.TB, primary *Server, settings ...string) *Replica {
	t.Helper()
	basebackup := filepath.Join(primary.bin, "pg_basebackup")
	if !isFile(basebackup) {
		t.Skipf("pgproc: no pg_basebackup in %s; install the PostgreSQL client programs of the server's version to run this test", primary.bin)
	}
	all := append(slices.Clone(primary.settings), settings...)
	r := &Replica{Server: newServer(t, primary.bin, primary.cred, all), primary: primary}
	slot := fmt.Sprintf("pgproc_replica_%d", slots.Add(1))
	cmd := r.command("pg_basebackup", "-D", r.data, "-h", "127.0.0.1", "-p", fmt.Sprint(primary.port),
		"-U", "postgres", "-X", "stream", "-R", "-C", "-S", slot, "--checkpoint=fast", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgproc: pg_basebackup from the primary on port %d (it needs wal_level replica or logical, and max_wal_senders): %v\n%s", primary.port, err, out)
	}
	// The copied postgresql.conf names the primary's socket directory.
	if err := r.appendConf(fmt.Sprintf("\n# pgproc replica\nunix_socket_directories = '%s'\n", r.socketDir())); err != nil {
		t.Fatalf("pgproc: %v", err)
	}
	r.listen()
	return r
}

// query runs one statement on a new connection to s and scans its one row
// into dest.
func (s *Server) query(sql string, args []any, dest ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// PauseReplay stops the replica from applying WAL (pg_wal_replay_pause) and
// waits until replay has stopped: from then on, nothing the primary commits
// is visible on the replica until [Replica.ResumeReplay]. The replica keeps
// receiving the WAL meanwhile.
func (r *Replica) PauseReplay() {
	r.t.Helper()
	if err := r.query("SELECT pg_wal_replay_pause()", nil, nil); err != nil {
		r.t.Fatalf("pgproc: pausing replay: %v", err)
	}
	// From PostgreSQL 14 a pause is first only requested; the startup
	// process may replay a few more records before it stops.
	err := r.poll(func() (bool, error) {
		state, err := r.replayState()
		return state == "paused", err
	})
	if err != nil {
		r.t.Fatalf("pgproc: pausing replay: %v", err)
	}
}

// ResumeReplay lets the replica apply WAL again (pg_wal_replay_resume).
func (r *Replica) ResumeReplay() {
	r.t.Helper()
	if err := r.query("SELECT pg_wal_replay_resume()", nil, nil); err != nil {
		r.t.Fatalf("pgproc: resuming replay: %v", err)
	}
}

// replayState reports "not paused", "pause requested" or "paused".
func (r *Replica) replayState() (string, error) {
	var version int
	if err := r.query("SELECT current_setting('server_version_num')::int", nil, &version); err != nil {
		return "", err
	}
	if version < 140000 {
		// Before 14, pg_wal_replay_pause takes effect at once.
		var paused bool
		err := r.query("SELECT pg_is_wal_replay_paused()", nil, &paused)
		if paused {
			return "paused", err
		}
		return "not paused", err
	}
	var state string
	err := r.query("SELECT pg_get_wal_replay_pause_state()", nil, &state)
	return state, err
}

// CatchUp waits until the replica has replayed the primary's WAL up to the
// primary's current position (pg_current_wal_lsn), so that every
// transaction committed on the primary before the call is visible on the
// replica. It fails the test if replay is paused.
func (r *Replica) CatchUp() {
	r.t.Helper()
	if state, err := r.replayState(); err != nil {
		r.t.Fatalf("pgproc: catching up: %v", err)
	} else if state != "not paused" {
		r.t.Fatalf("pgproc: catching up: replay is %s; call ResumeReplay first", state)
	}
	var target string
	if err := r.primary.query("SELECT pg_current_wal_lsn()::text", nil, &target); err != nil {
		r.t.Fatalf("pgproc: catching up: the primary's position: %v", err)
	}
	var replayed string
	err := r.poll(func() (bool, error) {
		var done bool
		err := r.query("SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0'), coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)",
			[]any{target}, &replayed, &done)
		return done, err
	})
	if err != nil {
		r.t.Fatalf("pgproc: catching up to the primary's %s (replayed: %s): %v", target, replayed, err)
	}
}

// Lag reports whether the replica has received WAL that it has not replayed
// yet, and the two positions: what a paused replica accumulates.
func (r *Replica) Lag() (received, replayed string, behind bool) {
	r.t.Helper()
	err := r.query(`SELECT coalesce(pg_last_wal_receive_lsn()::text, '0/0'), coalesce(pg_last_wal_replay_lsn()::text, '0/0'),
		coalesce(pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), false)`, nil, &received, &replayed, &behind)
	if err != nil {
		r.t.Fatalf("pgproc: replication positions: %v", err)
	}
	return received, replayed, behind
}

// poll calls cond until it returns true, an error, or catchUpTimeout passes.
func (r *Replica) poll(cond func() (bool, error)) error {
	deadline := time.Now().Add(catchUpTimeout)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("timed out after " + catchUpTimeout.String())
		}
		time.Sleep(pollInterval)
	}
}
