package cdc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// The environment of a consumer run as a child process, to be SIGKILLed.
const (
	envChild = "WT_CDC_CHILD"       // "1" in the child
	envDSN   = "WT_CDC_CHILD_DSN"   // the test's schema
	envRedis = "WT_CDC_CHILD_REDIS" // Redis address
	envCfg   = "WT_CDC_CHILD_NAMES" // prefix, slot (also the publication)
	envPoint = "WT_CDC_CHILD_POINT" // the hook point to die at
	envNth   = "WT_CDC_CHILD_NTH"   // on its nth occurrence
)

// TestCrashChild is not a test: it is the consumer a crash test runs in a
// child process and kills itself with SIGKILL at a chosen point.
func TestCrashChild(t *testing.T) {
	if os.Getenv(envChild) != "1" {
		t.Skip("runs only as the child of a crash test")
	}
	db, err := gorm.Open(postgres.Open(os.Getenv(envDSN)), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	var prefix, slot string
	if _, err := fmt.Sscan(os.Getenv(envCfg), &prefix, &slot); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(envRedis)})
	c, err := cdc.New(db, cdc.Config{Redis: rdb, Prefix: prefix, Models: []any{&Account{}},
		Slot: slot, Publication: slot, StatusInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	point := os.Getenv(envPoint)
	nth, _ := strconv.Atoi(os.Getenv(envNth))
	seen := 0
	cdc.SetHook(c, func(p string) {
		if p == point {
			seen++
			if seen == nth {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = c.Run(ctx)
	t.Fatal("the child was to be killed before its consumer stopped")
}

// TestAKilledConsumerLosesNoChange kills a consumer (SIGKILL, a child
// process) after it received a transaction but before it applied it, and
// after it applied one but before it confirmed it. A new consumer on the
// same slot then applies every change: no key is left stale.
func TestAKilledConsumerLosesNoChange(t *testing.T) {
	const rows, nth = 20, 5
	for _, tc := range []struct {
		point     string
		staleKept bool // the nth transaction's key is still stale after the kill
	}{
		{"commit:received", true},
		{"commit:applied", false},
	} {
		t.Run(tc.point, func(t *testing.T) {
			r := newRig(t, &Account{})
			for i := int64(1); i <= rows; i++ {
				if err := r.db.Create(&Account{ID: i, Balance: i}).Error; err != nil {
					t.Fatal(err)
				}
			}
			r.start() // makes the slot
			r.caughtUp()
			r.stop()
			for i := int64(1); i <= rows; i++ {
				r.fill(&Account{}, i)
				if s := r.state(&Account{}, i); s != "committed" {
					t.Fatalf("key %d before the child: %s", i, s)
				}
			}

			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			redisAddr := testenv.DefaultRedisAddr
			if u := os.Getenv("REDIS_URL"); u != "" {
				o, err := redis.ParseURL(u)
				if err != nil {
					t.Fatal(err)
				}
				redisAddr = o.Addr
			}
			cmd.Env = append(os.Environ(), envChild+"=1", envDSN+"="+r.dsn, envRedis+"="+redisAddr,
				envCfg+"="+r.cfg.Prefix+" "+r.cfg.Slot, envPoint+"="+tc.point, envNth+"="+strconv.Itoa(nth))
			out := &prefixWriter{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// One transaction per row, in row order.
			for i := int64(1); i <= rows; i++ {
				r.exec("UPDATE accounts SET balance = balance + 1000 WHERE id = $1", i)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("the child was not killed: %v\n%s", err, out)
				}
			case <-time.After(time.Minute):
				_ = cmd.Process.Kill()
				t.Fatalf("the child did not reach %s %d times\n%s", tc.point, nth, out)
			}
			if s := r.state(&Account{}, nth); (s == "committed") != tc.staleKept {
				t.Fatalf("key %d right after the kill: %s", nth, s)
			}

			c := r.start()
			r.caughtUp()
			for i := int64(1); i <= rows; i++ {
				var db Account
				if err := r.db.Scopes(writethrough.Uncached).First(&db, i).Error; err != nil {
					t.Fatal(err)
				}
				e, err := writethrough.Inspect(context.Background(), r.db, &Account{}, i)
				if err != nil {
					t.Fatal(err)
				}
				switch e.State.String() {
				case "absent":
				case "committed":
					if got := e.Row.(*Account); *got != db {
						t.Fatalf("key %d holds %+v, the database %+v", i, *got, db)
					}
				default:
					t.Fatalf("key %d: %s", i, e.State)
				}
			}
			// The transactions from the nth on were not all confirmed by the
			// child: the new consumer applied them again.
			if st := c.Stats(); st.Transactions < rows-nth {
				t.Fatalf("the new consumer applied %d transactions, want at least %d: %+v", st.Transactions, rows-nth, st)
			}
		})
	}
}

// prefixWriter collects a child's output for failure messages.
type prefixWriter struct{ b []byte }

func (w *prefixWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *prefixWriter) String() string              { return string(w.b) }

// TestRedisDownHoldsBackConfirmation: while Redis does not answer the
// consumer confirms nothing and retries; the slot keeps the changes, and
// when Redis answers again every one is applied.
func TestRedisDownHoldsBackConfirmation(t *testing.T) {
	srv := redisproc.Start(t)
	rdb := srv.Client(t)
	r := newRigOn(t, rdb, "wtcdc", &Account{})
	r.cfg.Timeout = 200 * time.Millisecond
	r.accounts(10)
	c := r.start()
	r.caughtUp()
	r.fillAccounts(10)
	before := c.Stats()
	srv.Pause()
	paused := true
	defer func() {
		if paused {
			srv.Resume()
		}
	}()
	r.exec("UPDATE accounts SET balance = balance + 100")
	upd := r.flushed()
	r.eventually("a failed apply", func() error {
		if c.Stats().Errors == before.Errors {
			return errors.New("no error yet")
		}
		return nil
	})
	// Nothing at or after the update's commit may be confirmed while the
	// update is not applied: neither by the consumer nor in the slot.
	r.confirmedBefore(upd)
	srv.Resume()
	paused = false
	r.caughtUp()
	for i := int64(1); i <= 10; i++ {
		if s := r.state(&Account{}, i); s != "absent" {
			t.Fatalf("key %d after Redis came back: %s", i, s)
		}
	}
}

// TestADroppedSlotIsRemadeAndPurged: a slot dropped under a running
// consumer means changes may be lost; the consumer makes a new slot and
// removes every key before it confirms anything.
func TestADroppedSlotIsRemadeAndPurged(t *testing.T) {
	r := newRig(t, &Account{})
	r.accounts(10)
	c := r.start()
	r.caughtUp()
	r.fillAccounts(10)
	ctx := context.Background()
	// Kill the walsender, then drop the slot before the consumer is back.
	for {
		r.exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", r.cfg.Slot)
		_, err := r.raw.Exec(ctx, "SELECT pg_drop_replication_slot($1)", r.cfg.Slot)
		if err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.exec("UPDATE accounts SET balance = -1 WHERE id = 3") // with no slot: no stream carries it
	r.eventually("a purge", func() error {
		if c.Stats().Purges == 0 {
			return fmt.Errorf("no purge: %+v", c.Stats())
		}
		return nil
	})
	r.caughtUp()
	for i := int64(1); i <= 10; i++ {
		if s := r.state(&Account{}, i); s != "absent" {
			t.Fatalf("key %d after the slot was remade: %s", i, s)
		}
	}
}
