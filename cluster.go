package writethrough

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ReloadOnUnreachable returns a go-redis hook for a cluster client that
// asks it to reload its map of slots to masters (rdb.ReloadState, in the
// background) whenever a command fails without a reply from Redis
// (refused, reset, timed out) or with CLUSTERDOWN. go-redis v9.17 reloads
// the map only on MOVED or once it is 10 s old, so after a master dies it
// keeps sending that master's slots to the dead address even once a
// replica has taken over; with the hook the calls recover within a second
// of the promotion. Add it with rdb.AddHook(ReloadOnUnreachable(rdb)).
func ReloadOnUnreachable(rdb *redis.ClusterClient) redis.Hook {
	return reloadHook{rdb}
}

type reloadHook struct{ c *redis.ClusterClient }

func (h reloadHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if unreachable(err) {
			h.c.ReloadState(ctx)
		}
		return err
	}
}

func (h reloadHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if unreachable(cmd.Err()) {
				h.c.ReloadState(ctx)
				break
			}
		}
		return err
	}
}

// unreachable reports an error that may mean the client's map of the
// cluster is out of date: no reply (refused, reset, timed out), or a node
// saying the cluster is down.
func unreachable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		return strings.HasPrefix(err.Error(), "CLUSTERDOWN")
	}
	return true
}
