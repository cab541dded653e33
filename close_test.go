package writethrough_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// TestCloseWaitsForAsyncFinalizesWhileWritersCommit runs writers that keep
// committing, with AsyncFinalize, while Close runs. Run it with -race: Close
// and Commit share the plugin's bookkeeping. Close must return only after
// every finalize that began before it was called has ended (those are held
// until Close is called, so that it has some to wait for); writes that
// commit after it finalize before their Commit returns; and afterwards Redis
// holds no pending entry and no row the database does not hold.
func TestCloseWaitsForAsyncFinalizesWhileWritersCommit(t *testing.T) {
	// A Timeout that a loaded machine does not reach: a finalize that Redis
	// answers late leaves its key pending until PendingTTL, by design, and
	// this test is about Close.
	e := setup(t, nil, writethrough.Config{AsyncFinalize: true, Timeout: 10 * time.Second})

	const writers, perWriter, beforeClose = 6, 12, 20
	var (
		mu         sync.Mutex      // protects early, earlyEnded
		early      map[string]bool // first key of each finalize -> began before Close was called
		earlyEnded int
	)
	early = make(map[string]bool)
	var closeCalled atomic.Bool
	hold := make(chan struct{}) // finalizes that begin before Close wait for it to be called
	committed := make(chan struct{}, writers*perWriter)
	writethrough.SetHook(e.p, func(point, key string) {
		switch point {
		case "write:before-finalize":
			before := !closeCalled.Load()
			mu.Lock()
			early[key] = before
			mu.Unlock()
			if before {
				<-hold
			}
		case "write:after-finalize":
			mu.Lock()
			if early[key] {
				earlyEnded++
			}
			mu.Unlock()
		}
	})

	shared := seedUsers(t, e, 4)

	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				err := e.db.Transaction(func(tx *gorm.DB) error {
					// A row of its own first: the first key a finalize
					// reports names this transaction.
					own := User{Email: fmt.Sprintf("close-%d-%d@x", w, i), Balance: int64(i)}
					if err := tx.Create(&own).Error; err != nil {
						return err
					}
					u := shared[(w+i)%len(shared)]
					return tx.Model(&User{ID: u.ID}).Update("balance", gorm.Expr("balance + ?", 1)).Error
				})
				if err != nil {
					errs <- err
				}
				committed <- struct{}{}
			}
		}(w)
	}
	for i := 0; i < beforeClose; i++ {
		<-committed
	}
	closeCalled.Store(true)
	close(hold)
	require.NoError(t, e.p.Close())
	mu.Lock()
	started := 0
	for _, b := range early {
		if b {
			started++
		}
	}
	ended := earlyEnded
	mu.Unlock()
	assert.Positive(t, started, "finalizes began before Close")
	assert.Equal(t, started, ended, "Close returned while finalizes that began before it still ran")

	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, e.p.Close(), "Close is idempotent")
	require.Zero(t, e.p.Stats().FinalizeErrors)
	assertCacheMatchesDatabase(t, e)

	// After Close a write still keeps the cache in step, and its Commit
	// returns only once its finalize has ended: nothing runs in the
	// background any more.
	late := User{Email: "late@x", Balance: 7}
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error { return tx.Create(&late).Error }))
	assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", late.ID)),
		"a Commit after Close installs before it returns")
}

// assertCacheMatchesDatabase checks every user: no pending entry or lease
// is left, and a committed entry holds the row the database holds.
func assertCacheMatchesDatabase(t *testing.T, e *env) {
	t.Helper()
	var rows []User
	require.NoError(t, e.db.Order("id").Find(&rows).Error)
	ctx := context.Background()
	for _, row := range rows {
		en, err := writethrough.Inspect(ctx, e.db, &User{}, row.ID)
		require.NoError(t, err)
		switch en.State {
		case writethrough.EntryAbsent:
		case writethrough.EntryCommitted:
			got := *en.Row.(*User)
			got.finds, row.finds = 0, 0
			assert.Equal(t, row.Balance, got.Balance, "user %d: cached balance", row.ID)
			assert.Equal(t, row.Email, got.Email, "user %d: cached email", row.ID)
		default:
			t.Errorf("user %d: Redis holds a %s entry after every write ended", row.ID, en.State)
		}
	}
}

// TestDrainerStopsWhenTheDatabaseIsClosed: an application that closes its
// *sql.DB (and not the plugin) leaves no drainer behind failing every pass:
// the drainer sees the closed database and stops, saying so once.
func TestDrainerStopsWhenTheDatabaseIsClosed(t *testing.T) {
	sink := &logSink{}
	db := testrig.Open(t, testenv.PostgresDSN(t), nil)
	rdb, prefix := testenv.Redis(t)
	p := install(t, db, rdb, writethrough.Config{Prefix: prefix, DrainInterval: 10 * time.Millisecond, Logger: slog.New(sink)})
	require.NoError(t, db.AutoMigrate(&User{}))
	require.NoError(t, db.Create(&User{Email: "closed@x", Name: "n"}).Error) // starts the drainer
	require.False(t, writethrough.DrainerStopped(p))

	sqlDB, err := db.DB()
	require.NoError(t, err)
	require.NoError(t, sqlDB.Close())
	require.NoError(t, testrig.Poll(30*time.Second, func() (bool, error) {
		return writethrough.DrainerStopped(p), nil
	}), "the drainer stops once the database is closed")
	logs := sink.take()
	assert.Equal(t, 1, strings.Count(logs, "the outbox drainer stops"), logs)
	assert.NotContains(t, logs, "outbox drain failed")
}

// TestNoDrainerWithoutACachedModel: statements on models without a cache
// tag start nothing; the first statement on a cached model starts the
// drainer.
func TestNoDrainerWithoutACachedModel(t *testing.T) {
	type plainNote struct {
		ID   uint
		Body string
	}
	db := testrig.Open(t, testenv.PostgresDSN(t), nil)
	rdb, prefix := testenv.Redis(t)
	p := install(t, db, rdb, writethrough.Config{Prefix: prefix, DrainInterval: time.Second})
	require.NoError(t, db.AutoMigrate(&plainNote{}, &User{}))
	require.NoError(t, db.Create(&plainNote{Body: "x"}).Error)
	var n plainNote
	require.NoError(t, db.First(&n).Error)
	require.NoError(t, db.Model(&n).Update("body", "y").Error)
	assert.False(t, writethrough.DrainerStarted(p), "no cached model used: no drainer")

	var u User
	_ = db.Scopes(writethrough.Cached).First(&u, 1).Error
	assert.True(t, writethrough.DrainerStarted(p), "a cached model's statement starts it")
}
