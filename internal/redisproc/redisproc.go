// Package redisproc runs a redis-server that belongs to one test, for fault
// tests that kill, pause or fill Redis and must never touch the shared one.
//
// The server listens on a free loopback port, keeps nothing on disk, and is
// killed when the test ends. [StartCluster] and [StartSentinel] build a Redis
// Cluster and a master with a replica and three sentinels from such servers.
package redisproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/procrun"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// readyTimeout bounds how long Start and Restart wait for the server to
// answer PING.
const readyTimeout = 10 * time.Second

// pollInterval is how often a starting server is asked whether it is ready.
const pollInterval = 10 * time.Millisecond

// Server is a redis-server process owned by a test. Its methods are safe
// for concurrent use, but Start and Restart, which may fail the test, must be
// called from the test's goroutine.
type Server struct {
	t    testing.TB
	bin  string
	conf string // a configuration file, first on the command line; "" for none
	port int
	dir  string
	args []string

	mu     sync.Mutex    // protects proc, exited and paused
	proc   *os.Process   // the running server; nil once killed
	exited chan struct{} // closed when proc has been waited for
	paused bool          // proc was stopped with SIGSTOP

	rdb *redis.Client // used by Do; reconnects across Restart
}

// Start starts a redis-server on a free loopback port with persistence off
// and the data directory in t.TempDir(), followed by args (for example
// "--maxmemory", "2mb"), and waits until it answers PING. The server is
// killed when the test ends. Under `go test -short` it skips the test
// ([testenv.SkipShort]).
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return startWith(t, "", args...)
}

// startWith is [Start] with a configuration file, which redis-server reads
// before the arguments (a sentinel needs one it can rewrite); "" means none.
func startWith(t testing.TB, conf string, args ...string) *Server {
	t.Helper()
	testenv.SkipShort(t)
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redisproc: redis-server is not installed (%v); run `bash scripts/services.sh`, which installs it", err)
	}
	s := &Server{
		t:    t,
		bin:  bin,
		conf: conf,
		dir:  t.TempDir(),
		args: args,
	}
	if _, err := procrun.OnFreePort(t, func(port int) error { s.port = port; return s.start() }); err != nil {
		t.Fatalf("redisproc: %v", err)
	}
	s.rdb = redis.NewClient(s.Options())
	t.Cleanup(func() {
		s.Kill()
		_ = s.rdb.Close()
	})
	return s
}

// start runs the process and waits until it answers PING.
func (s *Server) start() error {
	logfile := filepath.Join(s.dir, "redis.log")
	_ = os.Remove(logfile)
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	args = append(append(args,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", logfile,
	), s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.SysProcAttr = sysProcAttr()
	exited, err := procrun.Start(cmd)
	if err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}

	s.mu.Lock()
	s.proc, s.exited, s.paused = cmd.Process, exited, false
	s.mu.Unlock()

	err = procrun.WaitReady(func() error { return ping(s.Addr()) }, exited, readyTimeout, pollInterval)
	switch {
	case errors.Is(err, procrun.ErrExited):
		s.mu.Lock()
		s.proc = nil
		s.mu.Unlock()
	case err != nil:
		s.Kill()
	}
	if err != nil {
		return fmt.Errorf("redis-server on port %d %w: %s", s.port, err, procrun.Tail(logfile, 5))
	}
	return nil
}

// ping sends one PING over a fresh connection and expects +PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		// -LOADING and the like: not ready yet.
		return errors.New(strings.TrimSpace(line))
	}
	return nil
}

// Addr returns the server's host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Options returns new client options for the server, with context
// deadlines honoured (ContextTimeoutEnabled), for tests that need their own
// timeouts or pool settings.
func (s *Server) Options() *redis.Options {
	return &redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true}
}

// Client returns a new client for the server (see [Server.Options]), closed
// when t ends. It reconnects by itself after [Server.Restart].
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(s.Options())
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Do runs one command on a client that the server keeps for the purpose.
func (s *Server) Do(ctx context.Context, args ...any) *redis.Cmd {
	return s.rdb.Do(ctx, args...)
}

// Kill kills the server with SIGKILL and waits for it to exit. Killing a
// server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	proc, exited, paused := s.proc, s.exited, s.paused
	s.proc, s.paused = nil, false
	s.mu.Unlock()
	if proc == nil {
		return
	}
	if paused {
		_ = proc.Signal(syscall.SIGCONT)
	}
	_ = proc.Kill()
	<-exited
}

// Restart kills the server if it runs and starts a new one on the same port
// with the same arguments and no data, then waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("redisproc: restart: %v", err)
	}
}

// Pause stops the server with SIGSTOP: connections stay open and commands
// wait, as with a server stuck in a long fork or a full swap.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP, true) }

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT, false) }

func (s *Server) signal(sig syscall.Signal, paused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		s.t.Errorf("redisproc: %v sent to a server that is not running", sig)
		return
	}
	if err := s.proc.Signal(sig); err != nil {
		s.t.Errorf("redisproc: %v: %v", sig, err)
		return
	}
	s.paused = paused
}
