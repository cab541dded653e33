package entry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotReplicated is the error of a call that ran on its key's master but
// that fewer replicas than asked acknowledged within the timeout: a
// failover may lose it.
var ErrNotReplicated = errors.New("not acknowledged by enough replicas")

// Durable reports a call whose loss in a failover would let a reader see a
// row older than the database's: Prepare (a key made pending before its
// write commits), Invalidate and Change. Losing a Finalize, a Fill or a
// lease only costs misses.
func (c *Call) Durable() bool {
	return c.sc == prepareScript || c.sc == invalidateScript || c.sc == changeScript
}

// Replication asks [Scripts.RunReplicated] to wait for replicas.
type Replication struct {
	Replicas int           // replicas of the key's master that must acknowledge (WAIT numreplicas)
	Timeout  time.Duration // how long WAIT may block
}

// RunReplicated runs calls like [Scripts.Run] and then, on the connection
// that carried them, WAITs until r.Replicas replicas of that master have
// them. Redis's WAIT counts only the writes of its own connection, so the
// calls are sent to each key's master directly, one pipeline per master
// ending in WAIT; on a *redis.Client that is one pipeline. A durable call
// (see [Call.Durable]) that fewer replicas acknowledged fails with
// [ErrNotReplicated]; the others keep their results. rdb must be a
// *redis.Client or a *redis.ClusterClient.
func (s *Scripts) RunReplicated(ctx context.Context, rdb redis.UniversalClient, calls []*Call, r Replication) {
	todo := make([]*Call, 0, len(calls))
	for _, c := range calls {
		c.res, c.Err = 0, c.invalid
		if c.invalid == nil {
			todo = append(todo, c)
		}
	}
	if len(todo) == 0 {
		return
	}
	switch cl := rdb.(type) {
	case *redis.Client:
		s.runAcked(ctx, cl, todo, r, false)
	case *redis.ClusterClient:
		s.runAckedCluster(ctx, cl, todo, r)
	default:
		for _, c := range todo {
			c.Err = fmt.Errorf("%s %s: waiting for replicas needs a *redis.Client or *redis.ClusterClient, not %T", c.sc.name, c.Key, rdb)
		}
	}
}

// maxRedirects bounds how often a call that met MOVED, ASK or TRYAGAIN is
// sent again.
const maxRedirects = 3

func (s *Scripts) runAckedCluster(ctx context.Context, cl *redis.ClusterClient, calls []*Call, r Replication) {
	for round := 0; len(calls) > 0; round++ {
		groups := map[*redis.Client][]*Call{}
		asking := map[string][]*Call{} // ASK target address -> calls
		for _, c := range calls {
			if addr, ok := askTarget(c.Err); ok {
				asking[addr] = append(asking[addr], c)
				continue
			}
			node, err := cl.MasterForKey(ctx, c.Key)
			if err != nil {
				c.Err = fmt.Errorf("%s %s: %w", c.sc.name, c.Key, err)
				continue
			}
			groups[node] = append(groups[node], c)
		}
		if len(asking) > 0 {
			nodes := mastersByAddr(ctx, cl)
			for addr, cs := range asking {
				if n := nodes[addr]; n != nil {
					groups[n] = append(groups[n], cs...)
					for _, c := range cs {
						c.res, c.Err = 0, errAsking
					}
				}
			}
		}
		var wg sync.WaitGroup
		for node, cs := range groups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ask := false
				for _, c := range cs {
					ask = ask || c.Err == errAsking
				}
				s.runAcked(ctx, node, cs, r, ask)
			}()
		}
		wg.Wait()
		if anyConnectionError(calls) {
			// The client keeps its slot map for seconds; a master that
			// stopped answering may have been replaced.
			cl.ReloadState(ctx)
		}
		var again []*Call
		for _, c := range calls {
			if redirected(c.Err) && round < maxRedirects {
				again = append(again, c)
			}
		}
		if len(again) > 0 {
			if !isAsk(again) {
				cl.ReloadState(ctx)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(round+1) * 10 * time.Millisecond):
			}
		}
		calls = again
	}
}

// anyConnectionError reports a call that failed without a reply from
// Redis.
func anyConnectionError(calls []*Call) bool {
	for _, c := range calls {
		var re redis.Error
		if c.Err != nil && c.Err != errAsking && !errors.As(c.Err, &re) && !errors.Is(c.Err, ErrNotReplicated) {
			return true
		}
	}
	return false
}

// errAsking marks calls to send to an importing node after ASKING.
var errAsking = errors.New("asking")

// runAcked sends calls on one connection of node, then WAIT, and fails the
// durable calls when too few replicas acknowledged. With ask, every call
// is preceded by ASKING (the slot is being imported by node).
//
// Calls the server did not know (NOSCRIPT) are sent again with EVAL, and
// WAIT again after them, unless the first WAIT already fell short: the
// master then lacks replicas, a second WAIT would only spend another
// timeout (two of them overrun a Timeout twice as long, and fail every
// call of the batch with the deadline), and the resent durable calls fail
// with ErrNotReplicated at once.
func (s *Scripts) runAcked(ctx context.Context, node *redis.Client, calls []*Call, r Replication, ask bool) {
	send := func(cs []*Call, eval, wait bool) ([]*redis.Cmd, *redis.Cmd, error) {
		cmds := make([]*redis.Cmd, len(cs))
		var w *redis.Cmd
		var perr error
		_, perr = node.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, c := range cs {
				if ask {
					pipe.Do(ctx, "asking")
				}
				sc := s.pick(c.sc)
				if eval {
					cmds[i] = sc.Eval(ctx, pipe, []string{c.Key}, c.args...)
				} else {
					cmds[i] = sc.EvalSha(ctx, pipe, []string{c.Key}, c.args...)
				}
			}
			if wait {
				// WAIT 0 waits forever: never ask for less than 1ms.
				w = pipe.Do(ctx, "wait", r.Replicas, max(r.Timeout.Milliseconds(), 1))
			}
			return nil
		})
		return cmds, w, perr
	}
	settle := func(cs []*Call, cmds []*redis.Cmd, perr error, acked int64, werr error) (retry []*Call) {
		for i, c := range cs {
			c.res, c.Err = intResult(cmds[i], perr)
			switch {
			case noScript(c.Err) || compileError(c.Err):
				if compileError(c.Err) {
					s.noFlags.Store(true)
				}
				retry = append(retry, c)
				continue
			case c.Err != nil:
				c.Err = fmt.Errorf("%s %s: %w", c.sc.name, c.Key, c.Err)
			case !c.Durable():
			case werr != nil:
				c.Err = fmt.Errorf("%s %s: wait for replicas: %w", c.sc.name, c.Key, werr)
			case acked < int64(r.Replicas):
				c.Err = fmt.Errorf("%s %s: %w (%d of %d within %v)", c.sc.name, c.Key, ErrNotReplicated, acked, r.Replicas, r.Timeout)
			}
		}
		return retry
	}
	cmds, wait, perr := send(calls, false, true)
	acked, werr := intResult(wait, perr)
	retry := settle(calls, cmds, perr, acked, werr)
	if len(retry) == 0 {
		return
	}
	short := werr != nil || acked < int64(r.Replicas)
	cmds, wait, perr = send(retry, true, !short)
	if !short {
		acked, werr = intResult(wait, perr)
	}
	settle(retry, cmds, perr, acked, werr)
}

// redirected reports an error after which the call should be sent again:
// the slot moved, is moving, or is being rehashed.
func redirected(err error) bool {
	if err == nil {
		return false
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ") || strings.HasPrefix(msg, "TRYAGAIN")
}

// askTarget returns the address of an ASK redirection.
func askTarget(err error) (string, bool) {
	var re redis.Error
	if err == nil || !errors.As(err, &re) {
		return "", false
	}
	f := strings.Fields(re.Error())
	if len(f) == 3 && f[0] == "ASK" {
		return f[2], true
	}
	return "", false
}

func isAsk(calls []*Call) bool {
	for _, c := range calls {
		if _, ok := askTarget(c.Err); !ok {
			return false
		}
	}
	return true
}

// mastersByAddr maps the cluster's masters by address.
func mastersByAddr(ctx context.Context, cl *redis.ClusterClient) map[string]*redis.Client {
	var mu sync.Mutex
	out := map[string]*redis.Client{}
	_ = cl.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		out[n.Options().Addr] = n
		mu.Unlock()
		return nil
	})
	return out
}
