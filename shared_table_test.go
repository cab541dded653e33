package writethrough_test

// Interleavings a review of the write path found (two cached models on one
// table, rows that outlive their TTL, rollbacks): a reader must never be
// served a row the database never held, or one older than a promise
// allows, while or after a transaction of the caller's writes the key.

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// swappedAccount is a second cached model on table accounts, as GORM's own
// tests declare a local struct beside the exported one: the same default
// key as Account, the two string columns declared in the other order (so
// another fingerprint, and a row encoding in which Owner and Email trade
// places).
type swappedAccount struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Email   string
	Owner   string
	Balance int64
}

func (swappedAccount) TableName() string { return "accounts" }

func setupShared(t *testing.T) (*env, Account, string) {
	t.Helper()
	e := setup(t, nil, writethrough.Config{Timeout: 2 * time.Second, Models: []any{&Account{}, &swappedAccount{}}}, &Account{})
	a, key := e.account(t, "ann", 100)
	require.Equal(t, key, e.keyOf(t, &swappedAccount{}, a.ID), "both models use the same key string")
	if e.entry(t, key).state != writethrough.StateCommitted {
		_, err := e.cachedAccount(a.ID) // fill
		require.NoError(t, err)
	}
	require.Equal(t, writethrough.StateCommitted, e.entry(t, key).state)
	return e, a, key
}

// One transaction writes the key through Account, then through swappedAccount
// (another model on the same table, with another fingerprint), and a reader
// of swappedAccount reads the key before the COMMIT: it must get the committed
// row as the database holds it, never Account's bytes decoded by
// swappedAccount's codec (Owner and Email swapped).
func TestSharedTableReadDuringAWriteThroughTwoModels(t *testing.T) {
	t.Parallel()
	e, a, _ := setupShared(t)
	var served swappedAccount
	var fromCache bool
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		if err := tx.Model(&swappedAccount{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		before := e.sqls.Load()
		if err := e.db.Scopes(writethrough.Cached).First(&served, a.ID).Error; err != nil {
			return err
		}
		fromCache = e.sqls.Load() == before
		return nil
	}))
	// The write had not committed: the only row a reader may get is the
	// committed one, as the database holds it.
	want := swappedAccount{ID: a.ID, Email: "ann@example.com", Owner: "ann", Balance: 100}
	assert.Equal(t, want, served, "served from the cache: %v", fromCache)
}

// The same two statements, then COMMIT. The key was first staged through
// Account (Staged.Model), and the row that travels with the finalize
// (stagedRow) was encoded by swappedAccount's statement: it must be installed
// under swappedAccount's fingerprint (stagedRow.spec), or readers of Account
// would decode swappedAccount's bytes (Owner and Email swapped) until the TTL.
func TestSharedTableRowInstalledUnderItsOwnModelsFingerprint(t *testing.T) {
	t.Parallel()
	e, a, _ := setupShared(t)
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		return tx.Model(&swappedAccount{ID: a.ID}).Update("balance", 175).Error
	}))
	want := e.dbAccount(t, a.ID)
	require.Equal(t, Account{ID: a.ID, Owner: "ann", Email: "ann@example.com", Balance: 175}, want)
	got, err := e.cachedAccount(a.ID)
	require.NoError(t, err)
	assert.Equal(t, want, got, "a committed read must return the database's row")
}

// shortTTLAccount is a cached model with a short TTL and no jitter.
type shortTTLAccount struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:2s;jitter:0"`
	Owner   string
	Balance int64
}

// A row made stale by a write around GORM must not be served past its TTL
// while a transaction of the caller's that writes the key stays open.
func TestReadDuringATransactionNeverOutlivesTheTTL(t *testing.T) {
	t.Parallel()
	e := setup(t, nil, writethrough.Config{Timeout: 2 * time.Second}, &shortTTLAccount{})
	start := time.Now()
	r := shortTTLAccount{Owner: "ann", Balance: 100}
	require.NoError(t, e.db.Create(&r).Error)
	key := e.keyOf(t, &shortTTLAccount{}, r.ID)
	require.Equal(t, writethrough.StateCommitted, e.state(t, key), "the create installed the row, TTL 2s")
	// A write around GORM: the entry is stale, for at most its TTL.
	require.NoError(t, e.db.Exec("UPDATE short_ttl_accounts SET balance = 999 WHERE id = ?", r.ID).Error)

	var served shortTTLAccount
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&shortTTLAccount{ID: r.ID}).Update("owner", "bob").Error; err != nil {
			return err
		}
		// Well past the TTL of the entry the create installed.
		time.Sleep(time.Until(start.Add(3 * time.Second)))
		return e.db.Scopes(writethrough.Cached).First(&served, r.ID).Error
	}))
	assert.Equal(t, int64(999), served.Balance,
		"the raw write committed more than the model's TTL before the read began")
}

// The same two statements, then a rollback: readers of either model get the
// database's row afterwards.
func TestSharedTableRollbackThroughTwoModels(t *testing.T) {
	t.Parallel()
	e, a, _ := setupShared(t)
	errBack := errors.New("back")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&Account{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		if err := tx.Model(&swappedAccount{ID: a.ID}).Update("balance", 150).Error; err != nil {
			return err
		}
		return errBack
	})
	require.ErrorIs(t, err, errBack)
	var got swappedAccount
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, a.ID).Error)
	var want swappedAccount
	require.NoError(t, e.db.Take(&want, a.ID).Error)
	assert.Equal(t, want, got, "a read after the rollback must return the database's row")
}

// A row made stale by a write around GORM (P5 without a consumer: bounded
// by the model's TTL) must not outlive its TTL because a transaction of the
// caller's wrote the key and rolled back.
func TestRollbackNeverRenewsTheTTLOfAStaleRow(t *testing.T) {
	t.Parallel()
	e := setup(t, nil, writethrough.Config{Timeout: 2 * time.Second}, &shortTTLAccount{})
	start := time.Now()
	r := shortTTLAccount{Owner: "ann", Balance: 100}
	require.NoError(t, e.db.Create(&r).Error)
	key := e.keyOf(t, &shortTTLAccount{}, r.ID)
	require.Equal(t, writethrough.StateCommitted, e.state(t, key))
	require.NoError(t, e.db.Exec("UPDATE short_ttl_accounts SET balance = 999 WHERE id = ?", r.ID).Error)

	errBack := errors.New("back")
	err := e.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&shortTTLAccount{ID: r.ID}).Update("owner", "bob").Error; err != nil {
			return err
		}
		time.Sleep(time.Until(start.Add(1800 * time.Millisecond)))
		return errBack
	})
	require.ErrorIs(t, err, errBack)
	// No transaction is open; the create's entry would have expired at
	// start+2s at the latest.
	time.Sleep(time.Until(start.Add(3 * time.Second)))
	var got shortTTLAccount
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, r.ID).Error)
	assert.Equal(t, int64(999), got.Balance,
		"the raw write committed more than the model's TTL before the read began")
}
