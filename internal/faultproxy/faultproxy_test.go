package faultproxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/faultproxy"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// failWithin bounds every wait for the proxy to break a connection, so that
// a proxy that fails to break it fails the test instead of hanging it. It is
// not a timing assertion: the break is expected at once.
const failWithin = 5 * time.Second

// echoServer starts a TCP server that sends back every line it receives,
// stopped when the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // protects conns
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// dial connects to addr, closed when the test ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, failWithin)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// roundTrip sends a line and reads the echo.
func roundTrip(c net.Conn, line string) error {
	if err := c.SetDeadline(time.Now().Add(failWithin)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return errors.New("echo mismatch: " + got)
	}
	return nil
}

// requireBroken asserts that the proxy closed c: a read ends with an error
// (a reset, or the end of the stream), not by running out of time.
func requireBroken(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(failWithin))
	_, err := c.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("read on a broken connection returned data")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection still open: the read timed out")
	}
}

// requireRefused asserts that a new connection to addr is broken at once:
// the dial fails (the reset can beat the handshake's end) or the first read
// does.
func requireRefused(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, failWithin)
	if err != nil {
		return
	}
	defer c.Close()
	requireBroken(t, c)
}

func TestProxyForwardsBothWays(t *testing.T) {
	t.Parallel()
	p := faultproxy.New(t, echoServer(t))
	c := dial(t, p.Addr())
	for _, line := range []string{"hello", "world"} {
		if err := roundTrip(c, line); err != nil {
			t.Fatalf("round trip %q: %v", line, err)
		}
	}
}

func TestLatencyStillForwards(t *testing.T) {
	t.Parallel()
	p := faultproxy.New(t, echoServer(t))
	c := dial(t, p.Addr())

	p.SetLatency(20 * time.Millisecond)
	if err := roundTrip(c, "slow"); err != nil {
		t.Fatalf("round trip with latency: %v", err)
	}
	p.SetLatency(0)
	if err := roundTrip(c, "fast"); err != nil {
		t.Fatalf("round trip without latency: %v", err)
	}
}

func TestResetAllBreaksLiveConnections(t *testing.T) {
	t.Parallel()
	p := faultproxy.New(t, echoServer(t))
	c := dial(t, p.Addr())
	if err := roundTrip(c, "before"); err != nil {
		t.Fatalf("round trip before ResetAll: %v", err)
	}

	p.ResetAll()
	requireBroken(t, c)

	if err := roundTrip(dial(t, p.Addr()), "after"); err != nil {
		t.Fatalf("round trip on a new connection: %v", err)
	}
}

func TestBlockRefusesConnectionsUntilUnblock(t *testing.T) {
	t.Parallel()
	p := faultproxy.New(t, echoServer(t))
	live := dial(t, p.Addr())
	if err := roundTrip(live, "before"); err != nil {
		t.Fatalf("round trip before Block: %v", err)
	}

	p.Block()
	requireBroken(t, live)
	requireRefused(t, p.Addr())

	p.Unblock()
	if err := roundTrip(dial(t, p.Addr()), "after"); err != nil {
		t.Fatalf("round trip after Unblock: %v", err)
	}
}

func TestUnreachableTargetBreaksConnections(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	closedPort := ln.Addr().String()
	_ = ln.Close()

	p := faultproxy.New(t, closedPort)
	requireRefused(t, p.Addr())
}

func TestCloseEndsLiveConnections(t *testing.T) {
	t.Parallel()
	p := faultproxy.New(t, echoServer(t))
	c := dial(t, p.Addr())
	if err := roundTrip(c, "before"); err != nil {
		t.Fatalf("round trip before Close: %v", err)
	}

	p.Close() // returns once every goroutine of the proxy has ended
	requireBroken(t, c)
	// No dial to p.Addr() here: a parallel test may already listen on
	// the freed port.
	p.Close() // a second Close does nothing
}

func TestRedisClientThroughProxy(t *testing.T) {
	t.Parallel()
	srv := redisproc.Start(t)
	p := faultproxy.New(t, srv.Addr())
	opts := srv.Options()
	opts.Addr = p.Addr()
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })

	ping := func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
	if err := ping(context.Background()); err != nil {
		t.Fatalf("PING through the proxy: %v", err)
	}

	p.SetLatency(10 * time.Millisecond)
	if err := ping(context.Background()); err != nil {
		t.Fatalf("PING with latency: %v", err)
	}
	p.SetLatency(0)

	p.ResetAll()
	if err := ping(context.Background()); err != nil {
		t.Fatalf("PING after ResetAll: the client should reconnect: %v", err)
	}

	p.Block()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := ping(ctx); err == nil {
		t.Fatal("PING through a blocked proxy succeeded")
	}

	p.Unblock()
	if err := ping(context.Background()); err != nil {
		t.Fatalf("PING after Unblock: %v", err)
	}
}
