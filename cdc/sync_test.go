package cdc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gorm-writethrough/writethrough/cdc"
)

// TestSyncWaitsForTheChangesBeforeIt: once Sync returns, every change
// committed before it was called is applied: the key a raw write changed is
// gone at once, with no waiting by the test.
func TestSyncWaitsForTheChangesBeforeIt(t *testing.T) {
	r := newRig(t, &Account{})
	r.accounts(3)
	c := r.start()
	ctx := context.Background()
	for i := range 30 {
		id := int64(1 + i%3)
		r.fill(&Account{}, id)
		if s := r.state(&Account{}, id); s != "committed" {
			t.Fatalf("round %d: key %d after the fill: %s", i, id, s)
		}
		r.exec("UPDATE accounts SET balance = balance + 1 WHERE id = $1", id)
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if s := r.state(&Account{}, id); s != "absent" {
			t.Fatalf("round %d: key %d right after Sync: %s", i, id, s)
		}
	}
}

// TestSyncWithoutAConsumerWaitsForItsContext: with no consumer running,
// Sync cannot know the changes are applied; it gives up with ctx.
func TestSyncWithoutAConsumerWaitsForItsContext(t *testing.T) {
	r := newRig(t, &Account{})
	r.accounts(1)
	r.start()
	r.caughtUp()
	r.stop()
	r.fill(&Account{}, int64(1))
	if s := r.state(&Account{}, int64(1)); s != "committed" {
		t.Fatalf("key 1 after the fill: %s", s)
	}
	r.exec("UPDATE accounts SET balance = 7 WHERE id = 1")
	c, err := cdc.New(r.db, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Sync(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sync with no consumer running: %v", err)
	}
	// Without a gorm.DB it asks PostgreSQL through its own connection.
	cfg := r.cfg
	cfg.ConnString = r.dsn
	c, err = cdc.New(nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.run(c)
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := c.Sync(sctx); err != nil {
		t.Fatal(err)
	}
	if s := r.state(&Account{}, int64(1)); s != "absent" {
		t.Fatalf("key 1 after Sync: %s", s)
	}
}
