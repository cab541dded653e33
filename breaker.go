package writethrough

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// BreakerState is the state of the plugin's circuit breaker.
type BreakerState int

const (
	// BreakerClosed: Redis is called as usual.
	BreakerClosed BreakerState = iota
	// BreakerOpen: Redis failed repeatedly; for the cool-down the plugin does
	// not call it. Reads go to the database, Soft writes go to the outbox,
	// Strict writes fail at once with ErrCacheUnavailable.
	BreakerOpen
	// BreakerHalfOpen: the cool-down is over; one probe is let through and
	// its outcome closes or reopens the breaker.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// errBreakerOpen is what a call gets while the breaker is open.
var errBreakerOpen = errors.New("circuit breaker open: Redis failed Config.BreakerThreshold times in a row; " +
	"the plugin calls it again after Config.BreakerCooldown")

type breaker struct {
	threshold int // consecutive failures that open it; 0 disables the breaker
	cooldown  time.Duration
	now       func() time.Time

	mu       sync.Mutex // protects state, fails, openedAt, probing
	state    BreakerState
	fails    int
	openedAt time.Time
	probing  bool

	opens atomic.Uint64
}

// allow reports whether a call to Redis may go ahead now.
func (b *breaker) allow() bool {
	if b.threshold <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerOpen:
		if b.now().Sub(b.openedAt) < b.cooldown {
			return false
		}
		b.state, b.probing = BreakerHalfOpen, true
		return true
	case BreakerHalfOpen:
		if b.probing {
			return false
		}
		b.probing = true
		return true
	}
	return true
}

// record takes the outcome of a call that allow let through. ctx is the
// context the call ran with: the caller's, or one the plugin derived from it
// with [Plugin.opCtx] or [Plugin.readCtx].
func (b *breaker) record(ctx context.Context, err error) {
	if b.threshold <= 0 {
		return
	}
	out := classify(ctx, err)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	switch out {
	case callOK:
		b.fails = 0
		b.state = BreakerClosed
		return
	case callAborted:
		// The caller gave up: it says nothing about Redis. A half-open
		// breaker lets the next call probe instead.
		return
	}
	b.fails++
	if b.state == BreakerHalfOpen || b.fails >= b.threshold {
		if b.state != BreakerOpen {
			b.opens.Add(1)
		}
		b.state, b.openedAt = BreakerOpen, b.now()
	}
}

func (b *breaker) current() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// callOutcome is what one Redis call tells the breaker about Redis.
type callOutcome int

const (
	callOK      callOutcome = iota // Redis answered (a value, nil, or an error reply)
	callFailed                     // Redis unreachable, or slower than Config.Timeout
	callAborted                    // the caller cancelled, or its deadline passed first
)

// classify tells a failure of Redis itself (a connection error, the
// plugin's own Timeout), which counts against the breaker, from Redis
// answering with an error reply such as OOM or a script error (Redis is
// there) and from the caller giving up (a cancelled context, or a caller's
// deadline shorter than Timeout), neither of which says anything about
// Redis. Six reads with a cancelled context must not make the next write
// with a live context fail.
func classify(ctx context.Context, err error) callOutcome {
	if !connectionError(err) {
		return callOK
	}
	if ctx != nil && ctx.Err() != nil && !errors.Is(context.Cause(ctx), errOwnTimeout) {
		return callAborted // the caller's context ended, not the plugin's Timeout
	}
	if errors.Is(err, context.Canceled) {
		return callAborted // only a caller cancels a call in flight
	}
	return callFailed
}

// connectionError tells an error of the connection to Redis, or a context
// that ended, from Redis answering (a value, redis.Nil, an error reply).
func connectionError(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var reply redis.Error
	return !errors.As(err, &reply)
}
