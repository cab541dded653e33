package writethrough_test

import (
	"log"
	"time"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// The README's Redis Cluster client. It has no output: it needs a cluster,
// so go test only compiles it, which keeps the option names true for the
// go-redis version in go.mod.
func ExampleNew_cluster() {
	var db *gorm.DB // from gorm.Open
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: []string{"redis-1:6379", "redis-2:6379", "redis-3:6379"}, // any of the nodes
		// The plugin bounds each call, retries and redirects included, by
		// Config.Timeout through the context.
		ContextTimeoutEnabled: true,
		DialTimeout:           time.Second,
		ReadTimeout:           time.Second, // above Config.Timeout, see the README
		WriteTimeout:          time.Second,
		// go-redis v9.18 and later: ClusterStateReloadInterval: 2 * time.Second,
		// Leave ReadOnly, RouteByLatency and RouteRandomly false: replicas lag.
	})
	defer rdb.Close()
	// Reload the slot map as soon as a node stops answering (a master died).
	rdb.AddHook(writethrough.ReloadOnUnreachable(rdb))
	p := writethrough.New(rdb, writethrough.Config{
		Prefix: "app", Timeout: 100 * time.Millisecond, Models: []any{&Product{}},
		WaitReplicas: 1, // each master's replicas; see "Redis Cluster" in the README
	})
	defer p.Close()
	if err := db.Use(p); err != nil {
		log.Fatal(err)
	}
}
