// Package pgproc runs a PostgreSQL cluster that belongs to one test, for
// fault tests that restart or crash the server and must never touch the
// shared one.
//
// The cluster is made by initdb in a fresh directory. It listens on a free
// loopback port, trusts every connection (replication ones included), runs
// with wal_level=logical and fsync off, and is stopped and removed when the
// test ends. PostgreSQL refuses to run as root: under root, initdb and the
// server run as the postgres user, which owns the directory.
//
// [StartReplica] makes a streaming replica of such a cluster (pg_basebackup
// -R), whose WAL replay a test can pause, resume and wait for, to read from a
// replica that lags behind by exactly the writes it chose.
package pgproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/gorm-writethrough/writethrough/internal/procrun"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// readyTimeout bounds how long Start and Restart wait for the server to
// accept connections, crash recovery included.
const readyTimeout = 30 * time.Second

// stopTimeout bounds how long Stop waits for a fast shutdown, and Kill for
// the killed postmaster's children to exit.
const stopTimeout = 30 * time.Second

// pollInterval is how often a starting server is asked whether it is ready,
// and a killed one whether its processes are gone.
const pollInterval = 20 * time.Millisecond

// serverConf is appended to the postgresql.conf initdb writes; %s is the
// directory of the Unix-domain socket, empty for none.
const serverConf = `
# pgproc
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 50
shared_buffers = 32MB
fsync = off
`

// hbaConf trusts every local and loopback connection, replication included.
const hbaConf = `# pgproc: trust everything local
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
`

// maxSocketPath is the longest Unix-domain socket path PostgreSQL accepts.
const maxSocketPath = 107

// Server is a PostgreSQL cluster owned by a test. Its methods are safe for
// concurrent use, but Stop and Restart, which may fail the test, must be
// called from the test's goroutine.
type Server struct {
	t    testing.TB
	bin  string // the directory of initdb and postgres
	dir  string // holds data/ and postgres.log; removed when the test ends
	data string
	port int
	cred *syscall.Credential // the postgres user's, under root; else nil

	settings []string // -c options

	mu     sync.Mutex    // protects proc and exited
	proc   *os.Process   // the postmaster; nil when stopped or killed
	exited chan struct{} // closed when proc has been waited for
}

// Start makes a new cluster, starts it on a free loopback port and waits
// until it accepts connections. The cluster has the databases initdb makes
// (postgres among them) and the superuser postgres. When the test ends the
// server is stopped and its directory removed.
//
// Start skips the test when no PostgreSQL server binaries are installed
// (it looks in /usr/lib/postgresql/*/bin, the highest version first, then
// in `pg_config --bindir`), when it runs as root and there is no postgres
// user, and under `go test -short` ([testenv.SkipShort]).
//
// settings ("wal_level=replica") are passed to the server as -c options, over
// the ones it is made with.
func Start(t testing.TB, settings ...string) *Server {
	t.Helper()
	testenv.SkipShort(t)
	bin, err := binDir()
	if err != nil {
		t.Skipf("pgproc: %v", err)
	}
	cred, err := credential()
	if err != nil {
		t.Skipf("pgproc: %v", err)
	}
	s := newServer(t, bin, cred, settings)
	if err := s.initdb(); err != nil {
		t.Fatalf("pgproc: %v", err)
	}
	s.listen()
	return s
}

// newServer makes the directory of a cluster owned by the test (by the
// postgres user under root), removed with the cluster when the test ends.
func newServer(t testing.TB, bin string, cred *syscall.Credential, settings []string) *Server {
	t.Helper()
	// Not t.TempDir: its parent is private to root, and the postgres user
	// could not reach the cluster inside.
	dir, err := os.MkdirTemp("", "pgproc-")
	if err != nil {
		t.Fatalf("pgproc: %v", err)
	}
	s := &Server{t: t, bin: bin, dir: dir, data: filepath.Join(dir, "data"), cred: cred, settings: settings}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("pgproc: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("pgproc: %v", err)
		}
	})
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("pgproc: %v", err)
		}
	}
	return s
}

// listen starts the made cluster on a free loopback port.
func (s *Server) listen() {
	s.t.Helper()
	if _, err := procrun.OnFreePort(s.t, func(port int) error { s.port = port; return s.start() }); err != nil {
		s.t.Fatalf("pgproc: %v", err)
	}
}

// binDir finds the directory of the server's binaries.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		return slices.Compare(version(b), version(a)) // highest first
	})
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin or `pg_config --bindir`; install the PostgreSQL server to run this test")
}

// version parses the version directory of /usr/lib/postgresql/<v>/bin.
func version(bin string) []int {
	var v []int
	for _, p := range strings.Split(filepath.Base(filepath.Dir(bin)), ".") {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// credential returns the postgres user's credential when we run as root,
// else nil.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, which PostgreSQL refuses, and no postgres user to run it as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user postgres: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// command prepares one of the server's binaries to run as the cluster's
// owner.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir // the postgres user may not reach ours
	cmd.SysProcAttr = sysProcAttr(s.cred)
	return cmd
}

// initdb makes the cluster and writes its configuration.
func (s *Server) initdb() error {
	cmd := s.command("initdb", "-D", s.data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if err := s.appendConf(fmt.Sprintf(serverConf, s.socketDir())); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.data, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return fmt.Errorf("pg_hba.conf: %w", err)
	}
	return nil
}

// socketDir is the directory of the server's Unix-domain socket: its data
// directory, or none (TCP only) when the path would be too long.
func (s *Server) socketDir() string {
	if len(s.data)+len("/.s.PGSQL.65535") > maxSocketPath {
		return ""
	}
	return s.data
}

// appendConf appends text to the cluster's postgresql.conf, where later
// lines win over earlier ones.
func (s *Server) appendConf(text string) error {
	// The file exists, owned by the cluster's owner: writing keeps that.
	conf, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	_, err = conf.WriteString(text)
	if cerr := conf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	return nil
}

func (s *Server) logfile() string { return filepath.Join(s.dir, "postgres.log") }

// start runs the postmaster and waits until it accepts connections.
func (s *Server) start() error {
	log, err := os.OpenFile(s.logfile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("server log: %w", err)
	}
	defer log.Close() // the server has its own descriptor
	args := []string{"-D", s.data, "-p", strconv.Itoa(s.port)}
	for _, set := range s.settings {
		args = append(args, "-c", set)
	}
	cmd := s.command("postgres", args...)
	cmd.Stdout, cmd.Stderr = log, log
	exited, err := procrun.Start(cmd)
	if err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}

	s.mu.Lock()
	s.proc, s.exited = cmd.Process, exited
	s.mu.Unlock()

	err = procrun.WaitReady(s.ping, exited, readyTimeout, pollInterval)
	switch {
	case errors.Is(err, procrun.ErrExited):
		s.mu.Lock()
		if s.proc == cmd.Process {
			s.proc = nil
		}
		s.mu.Unlock()
	case err != nil:
		s.Kill()
	}
	if err != nil {
		return fmt.Errorf("postgres on port %d %w: %s", s.port, err, s.lastLines())
	}
	return nil
}

// ping opens and closes one connection.
func (s *Server) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err // 57P03 while starting up or recovering
	}
	return conn.Close(ctx)
}

// lastLines returns the end of the server's log, for error messages.
func (s *Server) lastLines() string { return procrun.Tail(s.logfile(), 8) }

// Log returns what the server has logged since the cluster was made.
func (s *Server) Log() string {
	b, err := os.ReadFile(s.logfile())
	if err != nil {
		return "no log: " + err.Error()
	}
	return string(b)
}

// Addr returns the server's host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// DSN returns a keyword/value connection string for database db as the
// superuser postgres, over TCP. It stays valid across Restart.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", s.port, db)
}

// take forgets the running postmaster and returns it, or nil.
func (s *Server) take() (*os.Process, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	proc, exited := s.proc, s.exited
	s.proc = nil
	return proc, exited
}

// Stop shuts the server down the fast way (SIGINT: sessions are ended,
// open transactions roll back, a checkpoint is written, and logical
// walsenders send what their clients have not confirmed) and waits until it
// has exited. Stopping a server that is not running does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.stop(); err != nil {
		s.t.Fatalf("pgproc: %v", err)
	}
}

func (s *Server) stop() error {
	proc, exited := s.take()
	if proc == nil {
		return nil
	}
	_ = proc.Signal(syscall.SIGINT)
	select {
	case <-exited:
		return nil
	case <-time.After(stopTimeout):
		s.kill(proc, exited)
		return fmt.Errorf("postgres on port %d did not shut down within %v, killed it: %s", s.port, stopTimeout, s.lastLines())
	}
}

// Kill kills the postmaster with SIGKILL, as a crash would, and waits for
// it and for the server processes it had started, which exit by themselves
// once they see it gone. The cluster is left as a crash leaves it: the next
// start ([Server.Restart]) recovers from the WAL. Killing a server that is
// not running does nothing.
func (s *Server) Kill() {
	if proc, exited := s.take(); proc != nil {
		s.kill(proc, exited)
	}
}

func (s *Server) kill(proc *os.Process, exited chan struct{}) {
	// Stopped, the postmaster starts no child between the listing and
	// the kill.
	_ = proc.Signal(syscall.SIGSTOP)
	kids := children(proc.Pid)
	_ = proc.Kill()
	<-exited
	// A new postmaster refuses to start while they hold the old shared
	// memory. Past the bound, they are killed too.
	deadline := time.Now().Add(stopTimeout)
	for _, pid := range kids {
		for alive(pid) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				deadline = time.Now().Add(time.Second)
			}
			time.Sleep(pollInterval)
		}
	}
}

// Restart stops the server if it runs (as [Server.Stop] does) and starts
// it again on the same port with the same data, then waits until it
// accepts connections. After [Server.Kill] the new server first recovers
// from the crash. Clients must reconnect.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.stop(); err != nil {
		s.t.Fatalf("pgproc: restart: %v", err)
	}
	if err := s.start(); err != nil {
		s.t.Fatalf("pgproc: restart: %v", err)
	}
}
