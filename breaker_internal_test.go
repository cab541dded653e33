package writethrough

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// replyError is an error reply from Redis, as go-redis reports one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestClassifyCountsOnlyFailuresOfRedis(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(live)
	cancel()
	callerDeadline, cancel2 := context.WithDeadline(live, time.Now().Add(-time.Second))
	defer cancel2()
	// A context the plugin bounded by its own Timeout, which ran out.
	own, cancel3 := context.WithTimeoutCause(context.WithoutCancel(cancelled), time.Nanosecond, errOwnTimeout)
	defer cancel3()
	<-own.Done()
	// The plugin's bound on a caller whose shorter deadline passed first.
	ownOnCaller, cancel4 := context.WithTimeoutCause(callerDeadline, time.Hour, errOwnTimeout)
	defer cancel4()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	cases := []struct {
		name string
		ctx  context.Context
		err  error
		want callOutcome
	}{
		{"success", live, nil, callOK},
		{"redis.Nil is an answer", live, redis.Nil, callOK},
		{"an error reply is an answer", live, replyError("OOM command not allowed"), callOK},
		{"a closed client counts", live, redis.ErrClosed, callFailed},
		{"connection refused counts", live, refused, callFailed},
		{"the plugin's own Timeout counts", own, context.DeadlineExceeded, callFailed},
		{"the plugin's own Timeout counts when the caller's context is passed", live, context.DeadlineExceeded, callFailed},
		{"a cancelled caller does not count", cancelled, context.Canceled, callAborted},
		{"a cancelled caller's connection error does not count", cancelled, refused, callAborted},
		{"a cancellation without a context does not count", nil, fmt.Errorf("wrapped: %w", context.Canceled), callAborted},
		{"a caller deadline does not count", callerDeadline, context.DeadlineExceeded, callAborted},
		{"a caller deadline under the plugin's bound does not count", ownOnCaller, context.DeadlineExceeded, callAborted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.ctx, tc.err); got != tc.want {
				t.Errorf("classify(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestAbortedProbeLetsTheNextCallProbe(t *testing.T) {
	now := time.Now()
	b := &breaker{threshold: 1, cooldown: time.Second, now: func() time.Time { return now }}
	refused := errors.New("dial tcp: connection refused")
	b.allow()
	b.record(context.Background(), refused)
	if b.current() != BreakerOpen {
		t.Fatalf("one failure at threshold 1 opens the breaker")
	}
	now = now.Add(2 * time.Second)
	if !b.allow() {
		t.Fatalf("after the cool-down one probe goes ahead")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	b.record(cancelled, context.Canceled)
	if b.current() != BreakerHalfOpen || !b.allow() {
		t.Fatalf("a probe the caller cancelled neither closes nor reopens the breaker; the next call probes")
	}
	b.record(context.Background(), nil)
	if b.current() != BreakerClosed {
		t.Fatalf("a successful probe closes the breaker")
	}
}

// fakeClock is a breaker's clock that moves only when the test says.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) advance(d time.Duration) { c.now = c.now.Add(d) }

// newTestBreaker is a breaker that opens after threshold failures and
// cools down for a second of clock's time.
func newTestBreaker(threshold int, clock *fakeClock) *breaker {
	return &breaker{threshold: threshold, cooldown: time.Second, now: clock.Now}
}

// errRefused is a connection failure: it counts against the breaker.
var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}

// fail lets one call through and records a connection failure.
func fail(t *testing.T, b *breaker) {
	t.Helper()
	if !b.allow() {
		t.Fatalf("a call was refused in state %s", b.current())
	}
	b.record(context.Background(), errRefused)
}

func TestBreakerOpensAfterThresholdConsecutiveFailures(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(3, clock)
	fail(t, b)
	fail(t, b)
	if b.current() != BreakerClosed {
		t.Fatalf("two failures of three: %s, want closed", b.current())
	}
	fail(t, b)
	if b.current() != BreakerOpen || b.opens.Load() != 1 {
		t.Fatalf("three failures: %s with %d opens, want open once", b.current(), b.opens.Load())
	}
	if b.allow() {
		t.Fatal("an open breaker let a call through before its cool-down")
	}
	clock.advance(time.Second - time.Millisecond)
	if b.allow() {
		t.Fatal("an open breaker let a call through a millisecond before its cool-down ended")
	}
}

func TestBreakerCountsOnlyConsecutiveFailures(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(2, clock)
	replies := []error{nil, redis.Nil, replyError("OOM command not allowed")}
	for _, reply := range replies {
		fail(t, b)
		if !b.allow() {
			t.Fatal("refused after one failure of two")
		}
		b.record(context.Background(), reply) // Redis answered: the count starts again
		if b.current() != BreakerClosed {
			t.Fatalf("after an answer (%v): %s, want closed", reply, b.current())
		}
	}
	fail(t, b)
	if b.current() != BreakerClosed {
		t.Fatalf("one failure after an answer: %s, want closed", b.current())
	}
}

func TestBreakerHalfOpenLetsOneProbeThrough(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(1, clock)
	fail(t, b)
	clock.advance(time.Second)
	if !b.allow() {
		t.Fatal("no probe after the cool-down")
	}
	if b.current() != BreakerHalfOpen {
		t.Fatalf("while the probe runs: %s, want half-open", b.current())
	}
	for i := 0; i < 3; i++ {
		if b.allow() {
			t.Fatal("a second call went through while the probe runs")
		}
	}
	clock.advance(time.Hour)
	if b.allow() {
		t.Fatal("a second call went through while the probe runs, however long it takes")
	}
}

func TestBreakerFailedProbeReopensForAnotherCooldown(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(3, clock)
	for i := 0; i < 3; i++ {
		fail(t, b)
	}
	clock.advance(time.Second)
	fail(t, b) // the probe: one failure reopens, whatever the threshold
	if b.current() != BreakerOpen || b.opens.Load() != 2 {
		t.Fatalf("after a failed probe: %s with %d opens, want open twice", b.current(), b.opens.Load())
	}
	clock.advance(time.Second - time.Millisecond)
	if b.allow() {
		t.Fatal("the new cool-down counts from the failed probe, not from the first opening")
	}
	clock.advance(time.Millisecond)
	if !b.allow() {
		t.Fatal("no probe after the second cool-down")
	}
}

func TestBreakerSuccessfulProbeCloses(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(2, clock)
	fail(t, b)
	fail(t, b)
	clock.advance(2 * time.Second)
	if !b.allow() {
		t.Fatal("no probe after the cool-down")
	}
	b.record(context.Background(), nil)
	if b.current() != BreakerClosed {
		t.Fatalf("after a successful probe: %s, want closed", b.current())
	}
	// Closed again, with the count reset: it takes threshold failures anew.
	fail(t, b)
	if b.current() != BreakerClosed {
		t.Fatalf("one failure after recovery: %s, want closed", b.current())
	}
	fail(t, b)
	if b.current() != BreakerOpen || b.opens.Load() != 2 {
		t.Fatalf("two failures after recovery: %s with %d opens, want open twice", b.current(), b.opens.Load())
	}
}

func TestBreakerDisabledNeverOpens(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(0, clock)
	for i := 0; i < 100; i++ {
		fail(t, b)
	}
	if b.current() != BreakerClosed || b.opens.Load() != 0 {
		t.Fatalf("threshold 0: %s with %d opens, want closed", b.current(), b.opens.Load())
	}
}

func TestBreakerCallerAbortsNeverOpenIt(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	b := newTestBreaker(1, clock)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 10; i++ {
		if !b.allow() {
			t.Fatal("refused a call")
		}
		b.record(cancelled, context.Canceled)
	}
	if b.current() != BreakerClosed {
		t.Fatalf("after cancelled calls: %s, want closed", b.current())
	}
}

func TestBreakerStateNames(t *testing.T) {
	for s, want := range map[BreakerState]string{
		BreakerClosed: "closed", BreakerOpen: "open", BreakerHalfOpen: "half-open", BreakerState(9): "unknown",
	} {
		if got := s.String(); got != want {
			t.Errorf("BreakerState(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}
