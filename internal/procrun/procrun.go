// Package procrun holds what the test helpers that run a private server
// (internal/redisproc, internal/pgproc) share: a free loopback port, a
// process started and waited for, a wait until it answers, the end of its
// log for error messages.
package procrun

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// attempts bounds how often OnFreePort tries another port.
const attempts = 5

// OnFreePort calls start with a loopback port that was free a moment ago,
// and again with another while start fails because someone else took the
// port first ("in use"), at most a few times. It returns the port start
// succeeded on, or start's last error.
func OnFreePort(t testing.TB, start func(port int) error) (int, error) {
	t.Helper()
	for i := 1; ; i++ {
		port, err := freePort()
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		err = start(port)
		if err == nil {
			return port, nil
		}
		if i == attempts || !strings.Contains(err.Error(), "in use") {
			return 0, err
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start starts cmd and returns a channel closed once it has exited (and
// been waited for).
func Start(cmd *exec.Cmd) (exited chan struct{}, err error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return exited, nil
}

// ErrExited and ErrNotReady are WaitReady's failures.
var (
	ErrExited   = errors.New("exited at start")
	ErrNotReady = errors.New("did not answer in time")
)

// WaitReady calls ready every poll until it returns nil. It fails with
// ErrExited when exited closes first, with ErrNotReady after timeout.
func WaitReady(ready func() error, exited <-chan struct{}, timeout, poll time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if ready() == nil {
			return nil
		}
		select {
		case <-exited:
			return ErrExited
		case <-time.After(poll):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (%v)", ErrNotReady, timeout)
		}
	}
}

// Tail returns the last n lines of the file at path, for error messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log: " + err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
