//go:build linux

package writethrough_test

// A writer process killed with SIGKILL at the plugin's interleaving points.
// The test binary runs itself again as the writer (TestCrashWriterSubprocess,
// selected by the WT_CRASH_WRITER environment variable): it writes row 1,
// prints "READY <point>" when the hook reaches the point for row 1's key,
// and blocks there until the parent kills it. The parent's readers and
// writers (on the other rows) run all along, as rows of TestFaultMatrix.
//
// Between prepare and COMMIT: the database is unchanged; the key stays
// pending until PendingTTL (readers go to the database meanwhile and read
// the old row), then readers fill the old row.
//
// Between COMMIT and finalize: the row is committed; the key stays pending
// until PendingTTL (readers go to the database: no stale read), then
// converges. No outbox record exists: the prepare succeeded, and the crash
// came before a failed finalize could have been recorded. The bound is
// PendingTTL, during which the row is served from the database.
//
// Between COMMIT and finalize with Redis paused: the prepare failed, so the
// Soft write recorded the key in the outbox in its own transaction; the
// crash loses nothing, because the record committed with the row and the
// parent's drainer removes the old entry once Redis answers.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/checker"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// crashEnv selects the writer process; the other settings follow it as
// WT_CRASH_<NAME>.
const crashEnv = "WT_CRASH_WRITER"

// crashHold bounds how long an orphaned writer waits at its point.
const crashHold = time.Minute

// crashScenarios are the fault matrix's crash rows.
func crashScenarios() []*faultScenario {
	return []*faultScenario{
		{
			name:    "writer SIGKILL between prepare and COMMIT",
			reserve: true,
			live:    true,
			inject: func(t *testing.T, r *faultRun) {
				r.crashWriter(t, "tx:before-commit", false)
			},
			check: func(t *testing.T, r *faultRun) { r.assertCrashRow(t) },
		},
		{
			name:    "writer SIGKILL between COMMIT and finalize",
			reserve: true,
			live:    true,
			inject: func(t *testing.T, r *faultRun) {
				r.crashWriter(t, "write:before-finalize", false)
			},
			check: func(t *testing.T, r *faultRun) { r.assertCrashRow(t) },
		},
		{
			name:       "writer SIGKILL between COMMIT and finalize, Redis paused",
			modes:      []writethrough.Mode{writethrough.Soft},
			redisFault: true,
			reserve:    true,
			live:       true,
			inject: func(t *testing.T, r *faultRun) {
				r.crashWriter(t, "write:before-finalize", true)
			},
			staleIn: softOnly(winFault, winRecovery),
			bound:   "the crashed writer's outbox record committed with its row: the old entry is served until the surviving process's drainer deletes it after Redis answers",
			check:   func(t *testing.T, r *faultRun) { r.assertCrashRow(t) },
		},
	}
}

// crashWriter starts the writer process on row 1, waits for it to reach
// point, kills it with SIGKILL and checks the state it left. With paused,
// Redis is paused while the writer runs and resumed after the kill.
func (r *faultRun) crashWriter(t *testing.T, point string, paused bool) {
	ctx := context.Background()
	const id = 1
	key := r.keys[id]
	var before FaultRow
	require.NoError(t, r.db.Take(&before, id).Error)
	// Row 1 is cached: the writer replaces a committed entry.
	var got FaultRow
	require.NoError(t, r.db.Scopes(writethrough.Cached).First(&got, id).Error)
	require.NoError(t, r.db.Scopes(writethrough.Cached).First(&got, id).Error)
	require.Equal(t, before.value(), got.value())

	if paused {
		r.srv.Pause()
	}
	w := r.startWriter(t, point, id)
	spawnAt, readyAt := w.spawnAt, w.readyAt
	tag := w.tag
	w.kill(t)
	cr := &crash{at: time.Now(), committed: point == "write:before-finalize", done: make(chan struct{})}
	killAt := r.now()

	// The database: the row as the writer left it.
	var after FaultRow
	require.NoError(t, r.db.Take(&after, id).Error)
	if cr.committed {
		require.Equal(t, before.Version+1, after.Version, "the writer's COMMIT happened")
		require.Equal(t, tag, after.Tag)
		cr.want = after.value()
		r.mu.Lock()
		r.commits[id] = append(r.commits[id], commitMark{version: after.Version, at: readyAt})
		r.extra = append(r.extra, checker.Op{Key: id, Kind: checker.Write, Value: after.value(), Call: spawnAt, Return: killAt, Client: 999, Source: "crashed-writer"})
		r.mu.Unlock()
	} else {
		require.Equal(t, before.value(), after.value(), "P1: the killed transaction never committed")
		cr.want = before.value()
	}

	// The outbox: a record only when the prepare failed.
	var records int64
	require.NoError(t, r.db.Table("writethrough_outbox").Where("cache_key = ?", key).Count(&records).Error)
	if paused {
		require.Equal(t, int64(1), records, "the Soft write recorded its key in its own transaction")
		r.srv.Resume()
	} else {
		require.Zero(t, records, "a prepared key is not in the outbox: the crash came before finalize")
		en := stateOf(t, r.rdb, key)
		require.Equal(t, byte(writethrough.StatePending), en, "the crashed writer's pending entry stays until PendingTTL")
	}
	r.note("writer killed %s after start", time.Duration(killAt-spawnAt).Round(time.Millisecond))
	r.crash = cr
	go r.watchCrash(ctx, cr)
}

// writerProc is a writer process stopped at a hook point.
type writerProc struct {
	cmd              *exec.Cmd
	wait             func()
	tag              int64
	spawnAt, readyAt int64 // on the run's clock
}

// startWriter runs the test binary as a writer process that updates row id
// (tag and val from the run) and waits until it reports that it stopped at
// point. The process is killed when the test ends.
func (r *faultRun) startWriter(t *testing.T, point string, id int64) *writerProc {
	t.Helper()
	tag := r.tags.Add(1)
	val := 900_000_000 + tag // no other write uses this range
	// The writer's own Timeout is not what the test measures; a longer one
	// keeps a loaded machine from failing its (Strict) prepare, except
	// where Redis is paused on purpose.
	timeout := max(r.cfg.Timeout, time.Second)
	spawnAt := r.now()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashWriterSubprocess$", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(),
		crashEnv+"=1",
		"WT_CRASH_DSN="+r.dsn,
		"WT_CRASH_REDIS="+r.srv.Addr(),
		"WT_CRASH_PREFIX="+r.cfg.Prefix,
		"WT_CRASH_MODE="+r.mode.String(),
		"WT_CRASH_POINT="+point,
		"WT_CRASH_ID="+strconv.FormatInt(id, 10),
		"WT_CRASH_VAL="+strconv.FormatInt(val, 10),
		"WT_CRASH_TAG="+strconv.FormatInt(tag, 10),
		"WT_CRASH_TIMEOUT="+timeout.String(),
		"WT_CRASH_PENDING_TTL="+r.cfg.PendingTTL.String(),
	)
	// The kernel kills the writer if this process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &readyWatch{ready: make(chan string, 1)}
	cmd.Stdout = out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	var waitOnce sync.Once
	w := &writerProc{cmd: cmd, tag: tag, spawnAt: spawnAt}
	w.wait = func() { waitOnce.Do(func() { _ = cmd.Wait() }) }
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		w.wait()
	})
	select {
	case line := <-out.ready:
		require.Equal(t, "READY "+point, line)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		w.wait()
		t.Fatalf("the writer never reached %s; stdout:\n%s\nstderr:\n%s", point, out.text(), stderr.String())
	}
	w.readyAt = r.now()
	return w
}

// kill kills the writer with SIGKILL and waits for it to exit.
func (w *writerProc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGKILL))
	w.wait()
	require.Equal(t, "signal: killed", w.cmd.ProcessState.String())
}

// watchCrash polls row 1's key from the kill on, and notes when it stopped
// holding another row than the database's (stale-free) and when it held
// the row or nothing (converged: the pending entry expired, or the outbox
// was drained).
func (r *faultRun) watchCrash(ctx context.Context, cr *crash) {
	defer close(cr.done)
	key := r.keys[1]
	deadline := cr.at.Add(r.cfg.PendingTTL + 2*r.cfg.DrainInterval + r.cfg.BreakerCooldown + 10*time.Second)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		raw, err := r.rdb.Get(c, key).Bytes()
		cancel()
		state := byte(0)
		wrong := false
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			state = '?' // Redis paused: nothing known
		default:
			en, perr := writethrough.ParseEntry(raw)
			state = en.State
			if perr == nil && en.State == writethrough.StateCommitted {
				var row FaultRow
				wrong = writethrough.DecodeRow(r.db, r.p, raw, &row) != nil || row.value() != cr.want
			}
		}
		since := max(time.Since(cr.at), time.Nanosecond)
		cr.mu.Lock()
		if state != '?' && !wrong && cr.staleFree == 0 {
			cr.staleFree = since
		}
		if state != '?' && !wrong && state != writethrough.StatePending {
			cr.converged = since
			cr.mu.Unlock()
			return
		}
		cr.mu.Unlock()
		time.Sleep(5 * time.Millisecond) // polling Redis's state
	}
}

// assertCrashRow checks row 1 once the run is over: the database holds what
// the crashed writer left, and the key converged.
func (r *faultRun) assertCrashRow(t *testing.T) {
	cr := r.crash
	require.NotNil(t, cr)
	<-cr.done
	var row FaultRow
	require.NoError(t, r.db.Take(&row, 1).Error)
	require.Equal(t, cr.want, row.value(), "P4: row 1 holds what the crashed writer committed, or what it had")
	cr.mu.Lock()
	defer cr.mu.Unlock()
	require.NotZero(t, cr.converged, "P3: row 1's key never converged after the crash")
}

// Found by the fault matrix (a reader got the old row after another reader
// had got the new one, while the write was between COMMIT and finalize): a
// reader that finds the key pending must not join a database load that is
// already running, because that load may have begun before the write
// committed. The writer here is another process, whose finalize could never
// make this process forget the load anyway.
func TestReaderAfterACommitNeverJoinsALoadThatBeganBeforeIt(t *testing.T) {
	ctx := context.Background()
	r := newFaultRun(t, &faultScenario{name: t.Name(), reserve: true}, writethrough.Soft, shape())
	const id = 1
	key := r.keys[id]
	var before FaultRow
	require.NoError(t, r.db.Take(&before, id).Error)
	require.NoError(t, writethrough.Invalidate(r.db, &FaultRow{}, id))

	// The leader of a load read the row and stops before its fill.
	pause := hookPoints(t, r.p).pauseAt("read:after-db-before-fill", key)
	leader := make(chan FaultRow, 1)
	go func() {
		row, err := writethrough.Get[FaultRow](ctx, r.db, id)
		assert.NoError(t, err)
		leader <- row
	}()
	select {
	case <-pause.reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the leader never read the database")
	}
	t.Cleanup(pause.resume)

	// Another process commits a new row and stops before its finalize.
	w := r.startWriter(t, "write:before-finalize", id)
	var now FaultRow
	require.NoError(t, r.db.Take(&now, id).Error)
	require.Equal(t, before.Version+1, now.Version, "the writer committed")
	require.Equal(t, byte(writethrough.StatePending), stateOf(t, r.rdb, key))

	// A read that begins after the commit must see it.
	late := make(chan FaultRow, 1)
	go func() {
		row, err := writethrough.Get[FaultRow](ctx, r.db, id)
		assert.NoError(t, err)
		late <- row
	}()
	select {
	case got := <-late:
		assert.Equal(t, now.value(), got.value(), "a read that began after the commit must see it")
	case <-time.After(5 * time.Second): // a failure, not an ordering
		pause.resume()
		got := <-late
		t.Fatalf("the reader joined the load that began before the commit and got %s, not %s", got.value(), now.value())
	}
	pause.resume()
	assert.Equal(t, before.value(), (<-leader).value(), "the leader began before the commit")
	w.kill(t)
}

// readyWatch collects the writer's output and reports its READY line.
type readyWatch struct {
	mu    sync.Mutex // protects buf, sent
	buf   bytes.Buffer
	sent  bool
	ready chan string
}

func (w *readyWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.sent {
		for _, line := range strings.SplitAfter(w.buf.String(), "\n") {
			if strings.HasPrefix(line, "READY ") && strings.HasSuffix(line, "\n") {
				w.sent = true
				w.ready <- strings.TrimSuffix(line, "\n")
				break
			}
		}
	}
	return len(p), nil
}

func (w *readyWatch) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestCrashWriterSubprocess is the writer process of the crash rows of
// TestFaultMatrix. Run on its own, it skips.
func TestCrashWriterSubprocess(t *testing.T) {
	if os.Getenv(crashEnv) == "" {
		t.Skip("the writer process of TestFaultMatrix's crash rows; it runs only as their subprocess")
	}
	env := func(name string) string { return os.Getenv("WT_CRASH_" + name) }
	num := func(name string) int64 {
		n, err := strconv.ParseInt(env(name), 10, 64)
		require.NoError(t, err, name)
		return n
	}
	dur := func(name string) time.Duration {
		d, err := time.ParseDuration(env(name))
		require.NoError(t, err, name)
		return d
	}
	db := testrig.Open(t, env("DSN"), nil)
	rdb := testrig.FaultClient(t, env("REDIS"))
	mode := writethrough.Soft
	if env("MODE") == writethrough.Strict.String() {
		mode = writethrough.Strict
	}
	p := install(t, db, rdb, writethrough.Config{
		Prefix:           env("PREFIX"),
		Mode:             mode,
		Timeout:          dur("TIMEOUT"),
		PendingTTL:       dur("PENDING_TTL"),
		DrainInterval:    -1, // the parent drains
		BreakerThreshold: -1,
	})
	id := num("ID")
	key, err := writethrough.KeyOf(db, p, &FaultRow{}, id)
	require.NoError(t, err)
	point := env("POINT")
	writethrough.SetHook(p, func(pt, k string) {
		if pt != point || k != key {
			return
		}
		fmt.Printf("READY %s\n", pt)
		<-time.After(crashHold) // the parent kills this process here
		os.Exit(3)
	})
	err = db.Model(&FaultRow{ID: id}).Updates(map[string]any{
		"version": gorm.Expr("version + 1"), "val": num("VAL"), "tag": num("TAG"),
	}).Error
	fmt.Printf("DONE without reaching %s: %v\n", point, err)
	os.Exit(4)
}
