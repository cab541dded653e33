package redisproc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// shortly returns a context that ends after 200ms, the budget a command
// gets against a server that may be down or paused.
func shortly(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

func TestStartAnswersPing(t *testing.T) {
	t.Parallel()
	s := redisproc.Start(t)
	if err := s.Client(t).Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	if err := s.Do(context.Background(), "PING").Err(); err != nil {
		t.Fatalf("Do PING: %v", err)
	}
}

func TestStartPassesExtraArguments(t *testing.T) {
	t.Parallel()
	s := redisproc.Start(t, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	got, err := s.Client(t).ConfigGet(context.Background(), "maxmemory").Result()
	if err != nil {
		t.Fatalf("CONFIG GET: %v", err)
	}
	if got["maxmemory"] != "2097152" {
		t.Errorf("maxmemory = %q, want 2097152", got["maxmemory"])
	}
}

func TestServersDoNotShareData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := redisproc.Start(t), redisproc.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("both servers listen on %s", a.Addr())
	}
	if err := a.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := b.Client(t).Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET on the other server: err = %v, want redis.Nil", err)
	}
}

func TestPauseStallsCommandsUntilResume(t *testing.T) {
	t.Parallel()
	s := redisproc.Start(t)
	rdb := s.Client(t)
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING before Pause: %v", err)
	}

	s.Pause()
	if err := rdb.Ping(shortly(t)).Err(); err == nil {
		t.Fatal("PING on a paused server succeeded")
	}

	s.Resume()
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
}

func TestKillStopsTheServer(t *testing.T) {
	t.Parallel()
	s := redisproc.Start(t)
	rdb := s.Client(t)
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING before Kill: %v", err)
	}

	s.Kill()
	if err := rdb.Ping(shortly(t)).Err(); err == nil {
		t.Fatal("PING on a killed server succeeded")
	}
	s.Kill() // a second Kill does nothing
}

func TestKillWhilePaused(t *testing.T) {
	t.Parallel()
	s := redisproc.Start(t)
	s.Pause()
	s.Kill()
	if err := s.Client(t).Ping(shortly(t)).Err(); err == nil {
		t.Fatal("PING on a killed server succeeded")
	}
}

func TestRestartComesBackEmptyOnTheSamePort(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redisproc.Start(t)
	addr := s.Addr()
	rdb := s.Client(t)
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	s.Kill()
	s.Restart()

	if s.Addr() != addr {
		t.Errorf("Addr() = %s after Restart, want %s", s.Addr(), addr)
	}
	// The same client reconnects by itself.
	if err := rdb.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET after Restart: err = %v, want redis.Nil", err)
	}
	if n, err := rdb.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("DBSIZE after Restart = %d, %v; want 0, nil", n, err)
	}
}

func TestRestartOfARunningServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redisproc.Start(t)
	rdb := s.Client(t)
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	s.Restart()
	if n, err := rdb.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("DBSIZE after Restart = %d, %v; want 0, nil", n, err)
	}
}
