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
