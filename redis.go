package writethrough

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// Every call the plugin makes to Redis starts in this file, goes through
// the circuit breaker (breaker.go) and is bounded by Config.Timeout:
//
//	lookup, lookupMany  read keys for a reader, and say what each holds
//	lease, leases       a reader's claim to fill keys it found empty
//	run                 the one-key scripts of internal/entry (prepare,
//	                    finalize, fill, invalidate), in one round trip
//	peek                a key's value and lifetime, for Inspect
//
// Reads are bounded by readCtx (the caller's cancellation applies); cache
// work that must not be cut short by the caller (leases, scripts, heals)
// by opCtx.

// errOwnTimeout is the cause of the contexts that bound Redis calls by
// Config.Timeout (see opCtx and readCtx): when one ends, Redis was too slow,
// which counts against the breaker. A context that ended for any other cause
// ended because the caller cancelled it or its own deadline passed.
var errOwnTimeout = errors.New("writethrough: Redis call exceeded Config.Timeout")

// opCtx bounds one Redis operation by Config.Timeout. Cache work that
// follows a commit must not be cut short by the caller's cancellation.
func (p *Plugin) opCtx(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	if !p.ctxTimeout {
		return context.WithoutCancel(parent), noCancel
	}
	return context.WithTimeoutCause(context.WithoutCancel(parent), p.cfg.Timeout, errOwnTimeout)
}

func noCancel() {}

// readCtx bounds a read's Redis call by Config.Timeout; the caller's
// cancellation still applies.
func (p *Plugin) readCtx(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	if !p.ctxTimeout {
		return parent, noCancel
	}
	return context.WithTimeoutCause(parent, p.cfg.Timeout, errOwnTimeout)
}

// deadlinePolicy decides whether Redis calls need a context deadline to
// honour Config.Timeout, and explains when they cannot honour it.
func deadlinePolicy(rdb redis.UniversalClient, timeout time.Duration) (bool, string) {
	var enabled bool
	var rt, wt time.Duration
	retries := true
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		enabled, rt, wt, retries = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout, o.MaxRetries > 0
	case *redis.ClusterClient:
		o := c.Options()
		enabled, rt, wt = o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout
	default:
		return true, ""
	}
	// The client's own timeouts bound one attempt; go-redis retries a
	// timed-out call (MaxRetries, a cluster's redirections), so only a
	// client that never retries is bounded by them alone.
	within := rt > 0 && rt <= timeout && wt > 0 && wt <= timeout && !retries
	switch {
	case within:
		return false, ""
	case !enabled:
		return false, fmt.Sprintf("writethrough: the Redis client ignores context deadlines (ContextTimeoutEnabled is false), "+
			"so Redis calls are bounded by its ReadTimeout %s and WriteTimeout %s rather than Config.Timeout %s", rt, wt, timeout)
	}
	return true, ""
}

// redisCall runs one Redis operation, with ctx, through the breaker.
func (p *Plugin) redisCall(ctx context.Context, fn func() error) error {
	if !p.brk.allow() {
		return errBreakerOpen
	}
	err := fn()
	p.brk.record(ctx, err)
	return err
}

// run runs script calls through the breaker, in one round trip; each call
// carries its own result or error.
func (p *Plugin) run(ctx context.Context, calls []*entry.Call) {
	if !p.brk.allow() {
		for _, c := range calls {
			c.Err = errBreakerOpen
		}
		return
	}
	if p.cfg.WaitReplicas > 0 && anyDurable(calls) {
		p.scripts.RunReplicated(ctx, p.rdb, calls, entry.Replication{Replicas: p.cfg.WaitReplicas, Timeout: p.cfg.WaitTimeout})
	} else {
		p.scripts.Run(ctx, p.rdb, calls)
	}
	var failed error
	for _, c := range calls {
		if connectionError(c.Err) {
			failed = c.Err
			break
		}
	}
	p.brk.record(ctx, failed)
}

// anyDurable reports calls a failover must not lose (Config.WaitReplicas).
func anyDurable(calls []*entry.Call) bool {
	for _, c := range calls {
		if c.Durable() {
			return true
		}
	}
	return false
}

// outcome is what a reader makes of one key.
type outcome int

const (
	outEmpty    outcome = iota // nothing there: take a lease and fill
	outHit                     // a committed row, decoded
	outNotFound                // a tombstone
	outBusy                    // leased, or another build's entry: read SQL, do not fill
	outPending                 // a write in flight: read SQL alone, do not fill
	outFailed                  // Redis did not answer (or the breaker is open): read SQL alone
)

// lookup reads key for a reader and says what it holds; a committed row is
// decoded into dst. A Redis failure is counted and logged, and an entry
// that cannot be decoded is deleted (heal).
func (p *Plugin) lookup(ctx context.Context, spec *modelSpec, key string, dst reflect.Value) outcome {
	c, cancel := p.readCtx(ctx)
	var raw []byte
	err := errBreakerOpen
	if p.brk.allow() {
		raw, err = p.rdb.Get(c, key).Bytes()
		p.brk.record(c, err)
	}
	cancel()
	switch {
	case errors.Is(err, redis.Nil):
		return outEmpty
	case err != nil:
		p.stats.redisErrors.Add(1)
		p.logf("writethrough: cache read failed; reading the database", "key", key, "err", err)
		return outFailed
	}
	return p.outcomeOf(ctx, spec, key, raw, dst)
}

// lookupMany is lookup for several keys in one round trip; dst(i) is where
// the row of keys[i] goes, asked for only when there is one to decode.
// When Redis fails, every key's outcome is outFailed.
func (p *Plugin) lookupMany(ctx context.Context, spec *modelSpec, keys []string, dst func(i int) reflect.Value) []outcome {
	outs := make([]outcome, len(keys))
	c, cancel := p.readCtx(ctx)
	var raws [][]byte
	err := p.redisCall(c, func() (err error) {
		raws, err = p.getMany(c, keys)
		return err
	})
	cancel()
	if err != nil {
		p.stats.redisErrors.Add(1)
		p.logf("writethrough: cache read failed; reading the database", "keys", len(keys), "err", err)
		for i := range outs {
			outs[i] = outFailed
		}
		return outs
	}
	for i, raw := range raws {
		if raw == nil {
			outs[i] = outEmpty
			continue
		}
		outs[i] = p.outcomeOf(ctx, spec, keys[i], raw, dst(i))
	}
	return outs
}

// getMany reads keys in one round trip: MGET on a single node (a plain or
// Sentinel client), a pipeline of GETs on a cluster or a ring, whose keys
// live on different nodes (go-redis sends each node its share at once).
// Absent keys are nil.
func (p *Plugin) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if _, single := p.rdb.(*redis.Client); single {
		vals, err := p.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, err
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				out[i] = []byte(s)
			}
		}
		return out, nil
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, c := range cmds {
		if b, err := c.Bytes(); err == nil {
			out[i] = b
		}
	}
	return out, nil
}

// outcomeOf is what raw, the value of key, means to a reader.
func (p *Plugin) outcomeOf(ctx context.Context, spec *modelSpec, key string, raw []byte, dst reflect.Value) outcome {
	state, e, err := entryState(spec, raw, dst)
	switch state {
	case EntryCommitted:
		// canonical keys: a loose key's entry is served only under the
		// row's own spelling.
		if spec.keys.Loose() && !spec.keys.Matches(ctx, dst, key) {
			return outBusy
		}
		return outHit
	case EntryTombstone:
		return outNotFound
	case EntryPending:
		p.stats.pendingMisses.Add(1)
		return outPending
	case EntryCorrupt:
		p.heal(ctx, key, err)
		if e.State == entry.Committed {
			// An entry of this build whose row does not decode: read the
			// database, but do not fill what may not decode again.
			return outBusy
		}
		return outEmpty
	}
	return outBusy // a lease, or another format's or build's entry
}

// entryState says what raw, the value of a key of spec's model, holds, and
// decodes a committed row into dst. For EntryCorrupt, err says why and e is
// the parsed entry when the bytes parsed (its row did not decode). It is
// the one reading of an entry: readers act on it (outcomeOf), Inspect
// reports it.
func entryState(spec *modelSpec, raw []byte, dst reflect.Value) (state EntryState, e entry.Entry, err error) {
	e, err = entry.Parse(raw)
	switch {
	case errors.Is(err, entry.ErrForeign):
		return EntryForeign, e, nil
	case err != nil:
		return EntryCorrupt, e, err
	}
	switch e.State {
	case entry.Committed:
		if string(e.Fingerprint) != spec.codec.Fingerprint() {
			return EntryForeign, e, nil
		}
		if err := spec.codec.Decode(e.Row, dst); err != nil {
			return EntryCorrupt, e, err
		}
		return EntryCommitted, e, nil
	case entry.Pending:
		return EntryPending, e, nil
	case entry.Lease:
		return EntryLease, e, nil
	case entry.Tombstone:
		return EntryTombstone, e, nil
	}
	return EntryCorrupt, entry.Entry{}, entry.ErrCorrupt // Parse admits no other state
}

// heal removes an entry that cannot be decoded (unless writers are in flight
// on it), the way go-redis/cache heals poisoned keys.
func (p *Plugin) heal(parent context.Context, key string, cause error) {
	p.stats.decodeErrors.Add(1)
	p.logf("writethrough: undecodable cache entry deleted", "key", key, "err", cause)
	ctx, cancel := p.opCtx(parent)
	defer cancel()
	p.run(ctx, []*entry.Call{entry.Invalidate(key)})
}

// lease claims key for a reader that found it empty; see leases.
func (p *Plugin) lease(parent context.Context, spec *modelSpec, token, key string) bool {
	return p.leases(parent, spec, token, []string{key})[0]
}

// leases claims keys that a reader found empty: each that is still absent
// becomes a lease under token (SET NX, for Config.LeaseTTL), which only this
// reader's fill replaces and any write overrides. ok[i] says keys[i] is
// leased. One key is one SET; several are one pipelined round trip.
func (p *Plugin) leases(parent context.Context, spec *modelSpec, token string, keys []string) (ok []bool) {
	ok = make([]bool, len(keys))
	ctx, cancel := p.opCtx(parent)
	defer cancel()
	val := entry.LeaseValue(token, spec.codec.Fingerprint())
	if len(keys) == 1 {
		var set bool
		err := p.redisCall(ctx, func() (err error) {
			set, err = p.rdb.SetNX(ctx, keys[0], val, p.cfg.LeaseTTL).Result()
			return err
		})
		if err != nil {
			p.stats.redisErrors.Add(1)
		}
		ok[0] = set && err == nil
		return ok
	}
	cmds := make([]*redis.BoolCmd, len(keys))
	err := p.redisCall(ctx, func() error {
		_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, k := range keys {
				cmds[i] = pipe.SetNX(ctx, k, val, p.cfg.LeaseTTL)
			}
			return nil
		})
		return err
	})
	if err != nil {
		p.stats.redisErrors.Add(1)
		if connectionError(err) {
			return ok // the breaker refused, or Redis did not answer: nothing is ours
		}
	}
	for i, c := range cmds {
		if c == nil {
			break
		}
		if set, err := c.Result(); err == nil && set {
			ok[i] = true
		}
	}
	return ok
}

// peek reads key's value and remaining lifetime in one round trip, without
// changing it; err is redis.Nil when the key is absent.
func (p *Plugin) peek(ctx context.Context, key string) (raw []byte, ttl time.Duration, err error) {
	c, cancel := p.readCtx(ctx)
	defer cancel()
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	err = p.redisCall(c, func() error {
		_, err := p.rdb.Pipelined(c, func(pipe redis.Pipeliner) error {
			get = pipe.Get(c, key)
			pttl = pipe.PTTL(c, key)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	if raw, err = get.Bytes(); err != nil {
		return nil, 0, err
	}
	ttl, _ = pttl.Result()
	return raw, ttl, nil
}

// The arguments the plugin gives the scripts, from its Config and the
// model's tag.

// prepareCall makes key pending under a writer's token, with the row to
// install (entry.FlagHasRow), a tombstone (entry.FlagDelete) or nothing.
func (p *Plugin) prepareCall(spec *modelSpec, token, key string, intent entry.Flags, row []byte) *entry.Call {
	return entry.Prepare(key, entry.PrepareArgs{
		Token:       token,
		Fingerprint: spec.codec.Fingerprint(),
		Intent:      looseIntent(spec, intent), // canonical keys
		Row:         row,
		PendingTTL:  p.cfg.PendingTTL,
		MaxWriters:  maxWriters,
	})
}

// prepareErr is why a prepare call did not make its key pending, or nil.
func prepareErr(c *entry.Call) error {
	if c.Err != nil {
		return c.Err
	}
	if c.Prepared() == entry.PrepareRefused {
		return fmt.Errorf("%s: %d writers already in flight", c.Key, maxWriters)
	}
	return nil
}

// entryTTL is the model's TTL with jitter.
func entryTTL(spec *modelSpec) time.Duration {
	return jittered(spec.ttl, spec.jitter)
}

func jittered(ttl time.Duration, pct int) time.Duration {
	if pct <= 0 {
		return ttl
	}
	spread := int64(ttl) * int64(pct) / 100
	if spread <= 0 {
		return ttl
	}
	d := ttl + time.Duration(rand.Int64N(2*spread+1)-spread)
	if d < time.Millisecond {
		d = time.Millisecond
	}
	return d
}
