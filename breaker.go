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
var errBreakerOpen = errors.New("circuit breaker open")

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

// record takes the outcome of a call that allow let through.
func (b *breaker) record(err error) {
	if b.threshold <= 0 {
		return
	}
	failed := connectionError(err)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if !failed {
		b.fails = 0
		b.state = BreakerClosed
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

// connectionError tells Redis being unreachable or slow (which counts
// against the breaker) from Redis answering with an error reply, such as OOM
// or a script error (which does not: Redis is there).
func connectionError(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var reply redis.Error
	return !errors.As(err, &reply)
}

// run runs script calls through the breaker.
func (p *Plugin) run(ctx context.Context, calls []*call) {
	if !p.brk.allow() {
		for _, c := range calls {
			c.err = errBreakerOpen
		}
		return
	}
	p.scripts.run(ctx, p.rdb, calls)
	var failed error
	for _, c := range calls {
		if connectionError(c.err) {
			failed = c.err
			break
		}
	}
	p.brk.record(failed)
}

// redisCall wraps one Redis operation with the breaker.
func (p *Plugin) redisCall(fn func() error) error {
	if !p.brk.allow() {
		return errBreakerOpen
	}
	err := fn()
	p.brk.record(err)
	return err
}
