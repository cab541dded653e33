package writethrough_test

// Review of the seal protocol (docs/design.md, "Reads of a key being
// written"): interleavings in which a reader is served a row the database
// never held, or held longer ago than a promise allows, while or after a
// transaction of the caller's wrote the key with KeepPrevious.

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// sealSwapped is a second cached model on table accounts, as GORM's own
// tests declare a local struct beside the exported one: the same default
// key as Account, the two string columns declared in the other order (so
// another fingerprint, and a row encoding in which Owner and Email trade
// places).
type sealSwapped struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Email   string
	Owner   string
	Balance int64
}

func (sealSwapped) TableName() string { return "accounts" }

func setupShared(t *testing.T) (*env, Account, string) {
	t.Helper()
	e := setup(t, nil, writethrough.Config{Timeout: 2 * time.Second, Models: []any{&Account{}, &sealSwapped{}}}, &Account{})
	a, key := e.account(t, "ann", 100)
	require.Equal(t, key, e.keyOf(t, &sealSwapped{}, a.ID), "both models use the same key string")
	if e.entry(t, key).state != writethrough.StateCommitted {
		_, err := e.cachedAccount(a.ID) // fill
		require.NoError(t, err)
	}
	require.Equal(t, writethrough.StateCommitted, e.entry(t, key).state)
	return e, a, key
}

// One transaction writes the key through Account, then through sealSwapped.
// The second keep-prepare is "the same writer again": prepare.lua keeps the
// previous row (Account's encoding) but rewrites the header's fingerprint
// to sealSwapped's, so a reader of sealSwapped decodes Account's bytes with
// its own codec and is served a row with Owner and Email swapped: a row the
// database never held.
func TestSealReviewPreviousRowOfAnotherModelServedUnderTheWritersFingerprint(t *testing.T) {
	t.Parallel()
	e, a, key := setupShared(t)
	var served sealSwapped
	var fromCache bool
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		if err := tx.Model(&sealSwapped{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		require.Equal(t, writethrough.StatePending, e.entry(t, key).state)
		before := e.sqls.Load()
		if err := e.db.Scopes(writethrough.Cached).First(&served, a.ID).Error; err != nil {
			return err
		}
		fromCache = e.sqls.Load() == before
		return nil
	}))
	// The write had not committed: the only row a reader may get is the
	// committed one, as the database holds it.
	want := sealSwapped{ID: a.ID, Email: "ann@example.com", Owner: "ann", Balance: 100}
	assert.Equal(t, want, served, "served from the cache: %v", fromCache)
}

// The same two statements, then COMMIT. The key was first staged through
// Account (Staged.Model), the row that travels with the finalize
// (stagedRow) was encoded by sealSwapped's statement, and finalize installs
// it under Account's fingerprint (write.go, finalize: FinalizeRow with
// s.Model's codec). Readers of Account then decode sealSwapped's bytes:
// Owner and Email swapped, until the TTL. Not specific to KeepPrevious: it
// comes with the row that travels with the finalize (prepareAhead).
func TestSealReviewRowOfAnotherModelInstalledUnderTheFirstModelsFingerprint(t *testing.T) {
	t.Parallel()
	e, a, _ := setupShared(t)
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		return tx.Model(&sealSwapped{ID: a.ID}).Update("balance", 175).Error
	}))
	want := e.dbAccount(t, a.ID)
	require.Equal(t, Account{ID: a.ID, Owner: "ann", Email: "ann@example.com", Balance: 175}, want)
	got, err := e.cachedAccount(a.ID)
	require.NoError(t, err)
	assert.Equal(t, want, got, "a committed read must return the database's row")
}

// sealShortTTL is a cached model with a short TTL and no jitter.
type sealShortTTL struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:2s;jitter:0"`
	Owner   string
	Balance int64
}

// P5 without a change-data-capture consumer: a write that bypasses GORM is
// bounded by the model's TTL. A keep-prepare copies the committed entry into
// a pending entry that lives PendingTTL (1m by default), so the stale row is
// served past its TTL for as long as the caller's transaction stays open.
func TestSealReviewPreviousRowOutlivesItsTTL(t *testing.T) {
	t.Parallel()
	e := setup(t, nil, writethrough.Config{Timeout: 2 * time.Second}, &sealShortTTL{})
	start := time.Now()
	r := sealShortTTL{Owner: "ann", Balance: 100}
	require.NoError(t, e.db.Create(&r).Error)
	key := e.keyOf(t, &sealShortTTL{}, r.ID)
	require.Equal(t, writethrough.StateCommitted, e.state(t, key), "the create installed the row, TTL 2s")
	// A write around GORM: the entry is stale, for at most its TTL.
	require.NoError(t, e.db.Exec("UPDATE seal_short_ttls SET balance = 999 WHERE id = ?", r.ID).Error)

	var served sealShortTTL
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&sealShortTTL{ID: r.ID}).Update("owner", "bob").Error; err != nil {
			return err
		}
		// Well past the TTL of the entry the create installed.
		time.Sleep(time.Until(start.Add(3 * time.Second)))
		return e.db.Scopes(writethrough.Cached).First(&served, r.ID).Error
	}))
	assert.Equal(t, int64(999), served.Balance,
		"the raw write committed more than the model's TTL before the read began")
}

// PendingTTL bounds an episode, not a transaction: writers that join keep
// the first writer's deadline. Two transactions, each shorter than
// PendingTTL as docs/design.md requires: A opens the episode (keep) and
// commits late in it; W joins while A holds the row lock. The episode
// expires while W is still in flight; a reader fills A's row; W seals (a
// committed entry: nothing to seal) and commits; until W's finalize, readers
// are served A's row. Not introduced by KeepPrevious (the seal does not
// help either).
func TestSealReviewJoinedWriterOutlivedByItsEpisode(t *testing.T) {
	t.Parallel()
	const pendingTTL = 2 * time.Second
	e := setup(t, nil, writethrough.Config{PendingTTL: pendingTTL, Timeout: 500 * time.Millisecond}, &Account{})
	pts := hookPoints(t, e.p)
	a, key := e.account(t, "ann", 100)

	aBegan := time.Now()
	txA := e.db.Begin()
	require.NoError(t, txA.Error)
	require.NoError(t, txA.Model(&Account{ID: a.ID}).Update("balance", 150).Error)
	require.Equal(t, writethrough.StatePending, e.entry(t, key).state)
	pw := pts.pauseAt("write:after-prepare", key) // W's, after its statement
	time.Sleep(time.Until(aBegan.Add(pendingTTL * 55 / 100)))

	release := make(chan struct{})
	var wBegan time.Time
	w := async(func() (struct{}, error) {
		wBegan = time.Now()
		return struct{}{}, e.db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Model(&Account{ID: a.ID}).Update("balance", 175).Error; err != nil {
				return err
			}
			<-release
			return nil
		})
	})
	// W joined the episode (its prepare ahead) and waits for A's row lock.
	require.NoError(t, pollUntil(func() bool {
		raw, err := e.rdb.Get(t.Context(), key).Bytes()
		if err != nil {
			return false
		}
		en, err := writethrough.ParseEntry(raw)
		return err == nil && en.Writers == 2
	}))
	require.NoError(t, txA.Commit().Error)
	aTook := time.Since(aBegan)
	pw.wait(t)
	pw.resume()

	// The episode expires (A's deadline) while W is in flight.
	require.NoError(t, pollUntil(func() bool { return e.state(t, key) == 0 }))
	_, err := e.cachedAccount(a.ID) // a miss: fills A's committed row
	require.NoError(t, err)
	require.Equal(t, int64(150), e.entry(t, key).row.Balance)

	pf := pts.pauseAt("write:before-finalize", key)
	close(release)
	pf.wait(t) // W committed
	wTook := time.Since(wBegan)
	got, err := e.cachedAccount(a.ID)
	pf.resume()
	require.NoError(t, err)
	require.NoError(t, await(t, w).err)
	require.Less(t, aTook, pendingTTL, "A is shorter than PendingTTL")
	require.Less(t, wTook, pendingTTL, "W is shorter than PendingTTL")
	assert.Equal(t, int64(175), got.Balance, "W committed before the read began")
}

func pollUntil(f func() bool) error {
	deadline := time.Now().Add(stepTimeout)
	for time.Now().Before(deadline) {
		if f() {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errTimeout
}

var errTimeout = errors.New("condition not reached")

// With finalize.lua's put-back (a sole writer that rolls back before its
// seal reinstalls the row it kept): the previous row of the first test,
// under the second model's fingerprint, becomes a committed entry for the
// TTL after the rollback. Readers of sealSwapped get Owner and Email
// swapped on every hit.
func TestSealReviewRollbackPutsBackAnotherModelsRowUnderTheWritersFingerprint(t *testing.T) {
	t.Parallel()
	e, a, key := setupShared(t)
	errBack := errors.New("back")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		if err := tx.Model(&sealSwapped{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		return errBack
	})
	require.ErrorIs(t, err, errBack)
	// The second model's prepare dropped the first model's kept row (the
	// fingerprints differ), so nothing is put back under either.
	assert.NotEqual(t, writethrough.StateCommitted, e.state(t, key), "no row was put back")
	var got sealSwapped
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, a.ID).Error)
	var want sealSwapped
	require.NoError(t, e.db.Take(&want, a.ID).Error)
	assert.Equal(t, want, got, "a read after the rollback must return the database's row")
}

// With the put-back, a rollback also gives the kept row a fresh TTL: a row
// made stale by a write around GORM (P5 without a consumer: bounded by the
// model's TTL) is reinstalled for another TTL, and a transaction that rolls
// back every TTL keeps it forever.
func TestSealReviewRollbackRenewsTheTTLOfAStaleRow(t *testing.T) {
	t.Parallel()
	e := setup(t, nil, writethrough.Config{Timeout: 2 * time.Second}, &sealShortTTL{})
	start := time.Now()
	r := sealShortTTL{Owner: "ann", Balance: 100}
	require.NoError(t, e.db.Create(&r).Error)
	key := e.keyOf(t, &sealShortTTL{}, r.ID)
	require.Equal(t, writethrough.StateCommitted, e.state(t, key))
	require.NoError(t, e.db.Exec("UPDATE seal_short_ttls SET balance = 999 WHERE id = ?", r.ID).Error)

	errBack := errors.New("back")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&sealShortTTL{ID: r.ID}).Update("owner", "bob").Error; err != nil {
			return err
		}
		time.Sleep(time.Until(start.Add(1800 * time.Millisecond)))
		return errBack
	})
	require.ErrorIs(t, err, errBack)
	// No transaction is open; the create's entry would have expired at
	// start+2s at the latest.
	time.Sleep(time.Until(start.Add(3 * time.Second)))
	var got sealShortTTL
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, r.ID).Error)
	assert.Equal(t, int64(999), got.Balance,
		"the raw write committed more than the model's TTL before the read began")
}
