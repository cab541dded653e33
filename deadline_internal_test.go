package writethrough

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestDeadlinePolicy: the plugin leaves out its per-call context deadline
// only for a client whose own timeouts bound every call, which a client
// that retries timed-out calls does not.
func TestDeadlinePolicy(t *testing.T) {
	short := 50 * time.Millisecond
	for _, tc := range []struct {
		name string
		rdb  redis.UniversalClient
		want bool // a context deadline is needed
	}{
		{"client, default timeouts", redis.NewClient(&redis.Options{ContextTimeoutEnabled: true}), true},
		{"client, short timeouts, retries", redis.NewClient(&redis.Options{ReadTimeout: short, WriteTimeout: short, ContextTimeoutEnabled: true}), true},
		{"client, short timeouts, no retries", redis.NewClient(&redis.Options{ReadTimeout: short, WriteTimeout: short, MaxRetries: -1}), false},
		{"cluster, short timeouts", redis.NewClusterClient(&redis.ClusterOptions{ReadTimeout: short, WriteTimeout: short, ContextTimeoutEnabled: true}), true},
		{"ring", redis.NewRing(&redis.RingOptions{}), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.rdb.Close()
			if got, _ := deadlinePolicy(tc.rdb, 100*time.Millisecond); got != tc.want {
				t.Errorf("deadline needed: got %v, want %v", got, tc.want)
			}
		})
	}
}
