package procrun

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestOnFreePortTriesAnotherPortOnlyWhenTaken(t *testing.T) {
	var ports []int
	port, err := OnFreePort(t, func(p int) error {
		ports = append(ports, p)
		if len(ports) < 3 {
			return errors.New("bind: address already in use")
		}
		return nil
	})
	if err != nil || len(ports) != 3 || port != ports[2] || port == 0 {
		t.Fatalf("port %d, err %v, tried %v", port, err, ports)
	}
	calls := 0
	boom := errors.New("bad config")
	if _, err := OnFreePort(t, func(int) error { calls++; return boom }); !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("another failure: %v after %d calls", err, calls)
	}
	calls = 0
	if _, err := OnFreePort(t, func(int) error { calls++; return errors.New("in use") }); err == nil || calls != attempts {
		t.Fatalf("always taken: %v after %d calls", err, calls)
	}
}

func TestWaitReady(t *testing.T) {
	exited, err := Start(exec.Command("true"))
	if err != nil {
		t.Skip(err)
	}
	notYet := func() error { return errors.New("not yet") }
	if err := WaitReady(notYet, exited, time.Minute, time.Millisecond); !errors.Is(err, ErrExited) {
		t.Fatalf("a process that exited: %v", err)
	}
	if err := WaitReady(notYet, make(chan struct{}), 20*time.Millisecond, time.Millisecond); !errors.Is(err, ErrNotReady) {
		t.Fatalf("a process that never answers: %v", err)
	}
	n := 0
	ready := func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}
	if err := WaitReady(ready, make(chan struct{}), time.Minute, time.Millisecond); err != nil || n != 3 {
		t.Fatalf("ready on the third poll: %v after %d", err, n)
	}
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("a\nb\nc\nd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := Tail(path, 2); got != "c\nd" {
		t.Fatalf("Tail: %q", got)
	}
	if got := Tail(filepath.Join(t.TempDir(), "none"), 2); got[:7] != "no log:" {
		t.Fatalf("Tail of a missing file: %q", got)
	}
}
