package testrig_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

func TestPollReturnsOnceTheConditionHolds(t *testing.T) {
	t.Parallel()
	calls := 0
	err := testrig.Poll(time.Minute, func() (bool, error) {
		calls++
		return calls == 3, nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll = %v after %d calls, want nil after 3", err, calls)
	}
}

func TestPollStopsAtTheConditionsError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	calls := 0
	err := testrig.Poll(time.Minute, func() (bool, error) {
		calls++
		return false, boom
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("Poll = %v after %d calls, want boom after 1", err, calls)
	}
}

func TestPollGivesUpAfterItsBound(t *testing.T) {
	t.Parallel()
	err := testrig.Poll(time.Millisecond, func() (bool, error) { return false, nil })
	if err == nil {
		t.Fatal("Poll of a condition that never holds returned nil")
	}
}

func TestSQLStateFindsTheCodeInTheChain(t *testing.T) {
	t.Parallel()
	pe := &pgconn.PgError{Code: "40001"}
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"not PostgreSQL's", errors.New("boom"), ""},
		{"a PostgreSQL error", pe, "40001"},
		{"wrapped", fmt.Errorf("commit: %w", pe), "40001"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := testrig.SQLState(tc.err); got != tc.want {
				t.Errorf("SQLState(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

func TestCountSQLCountsEveryStatement(t *testing.T) {
	t.Parallel()
	cfg := &gorm.Config{}
	n := testrig.CountSQL(cfg)
	db := testrig.Open(t, testenv.PostgresDSN(t), cfg)
	before := n.Load()
	var one int
	for range 3 {
		if err := db.Raw("SELECT 1").Scan(&one).Error; err != nil {
			t.Fatal(err)
		}
	}
	if got := n.Load() - before; got != 3 {
		t.Errorf("counted %d statements, want 3", got)
	}
}

func TestFillRedisMakesRedisRefuseWrites(t *testing.T) {
	t.Parallel()
	srv := redisproc.Start(t)
	rdb := srv.Client(t)
	testrig.FillRedis(t, rdb)
	err := rdb.Set(context.Background(), "another", "x", 0).Err()
	if !redis.IsOOMError(err) {
		t.Fatalf("SET after FillRedis = %v, want an OOM error", err)
	}
	if err := rdb.Get(context.Background(), "filler:0").Err(); err != nil {
		t.Errorf("reads still work: GET = %v", err)
	}
}

func TestFaultClientDoesNotRetry(t *testing.T) {
	t.Parallel()
	srv := redisproc.Start(t)
	rdb := testrig.FaultClient(t, srv.Addr())
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	// go-redis turns MaxRetries -1 into 0 retries (and 0 into its default, 3).
	opts := rdb.Options()
	if opts.MaxRetries != 0 || !opts.ContextTimeoutEnabled {
		t.Errorf("MaxRetries %d, ContextTimeoutEnabled %v; want 0, true", opts.MaxRetries, opts.ContextTimeoutEnabled)
	}
}
