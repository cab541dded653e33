package entry

import (
	"errors"
	"fmt"
	"time"
)

// Call is one script invocation on one key. Build it with Prepare, Finalize,
// FinalizeRow, Invalidate or Fill; run it with [Scripts.Run]; then read its
// outcome: Err, or the typed result of its script.
type Call struct {
	// Key is the Redis key the call is on.
	Key string
	// Err is the call's error once run: Redis's, the connection's, or one
	// set by whoever runs the calls (a breaker that refused them).
	Err error

	sc      *script
	args    []any
	res     int64
	invalid error // the call was built wrong; it is never sent
}

// PrepareArgs are a writer's arguments to Prepare.
type PrepareArgs struct {
	Token       string // the writer's token (NewToken)
	Fingerprint string // the schema fingerprint of the writer's model
	// Intent is what the writer will install when it is the only writer of
	// the episode: FlagHasRow (Row), FlagDelete (a tombstone) or 0 (nothing:
	// the key is deleted).
	Intent     Flags
	Row        []byte        // the row to install, with FlagHasRow
	PendingTTL time.Duration // the lifetime of a new episode; writers that join do not extend it
	MaxWriters int           // the writers one pending entry tracks; a writer beyond is refused
}

// Prepare registers a writer on key and makes the key pending: no reader
// fills it until the last writer leaves (Finalize). A writer already
// registered stays registered once. Its result is [Call.Prepared].
func Prepare(key string, a PrepareArgs) *Call {
	row := a.Row
	if row == nil {
		row = []byte{}
	}
	return &Call{sc: prepareScript, Key: key, args: []any{
		a.Token, a.Fingerprint, int(a.Intent), row, a.PendingTTL.Milliseconds(), a.MaxWriters,
	}}
}

// PrepareResult is what Prepare did.
type PrepareResult int64

// Prepare's results.
const (
	PrepareRefused PrepareResult = 0 // MaxWriters writers already in flight: not registered
	PrepareSole    PrepareResult = 1 // registered; the only writer of the episode so far
	PrepareOverlap PrepareResult = 2 // registered beside other writers: the episode never installs
)

// Prepared is a Prepare call's result. It is meaningful only when Err is nil.
func (c *Call) Prepared() PrepareResult { return PrepareResult(c.res) }

// FinalizeMode says what a leaving writer installs if it is the only writer
// of its episode.
type FinalizeMode string

// The finalize modes.
const (
	InstallStaged FinalizeMode = "i" // install what Prepare staged (its Intent and Row)
	InstallGiven  FinalizeMode = "r" // install the row given to FinalizeRow
	NeverInstall  FinalizeMode = "d" // install nothing: delete the key (rolled back, failed)
)

// errMode is the error of a Finalize call given InstallGiven.
var errMode = errors.New("entry: Finalize takes InstallStaged or NeverInstall; InstallGiven is FinalizeRow's")

// Finalize makes the writer of token leave key after its transaction ended,
// with mode InstallStaged or NeverInstall. The last writer out installs (a
// committed entry that lives ttl, a tombstone that lives negTTL) only when
// it was the only writer of the episode; otherwise the key is deleted.
// NeverInstall ignores ttl and negTTL. Its result is [Call.Finalized].
// Finalize only deletes or shrinks, so it runs when Redis is out of memory.
func Finalize(key, token string, mode FinalizeMode, ttl, negTTL time.Duration) *Call {
	c := &Call{sc: finalizeScript, Key: key, args: []any{
		token, string(mode), ttl.Milliseconds(), negTTL.Milliseconds(),
	}}
	if mode != InstallStaged && mode != NeverInstall {
		c.invalid = fmt.Errorf("finalize %s: mode %q: %w", key, mode, errMode)
	}
	return c
}

// FinalizeRowArgs are the arguments of FinalizeRow.
type FinalizeRowArgs struct {
	Token       string
	Intent      Flags  // FlagHasRow (Row), FlagDelete (a tombstone) or 0 (delete the key)
	Fingerprint string // the schema fingerprint of Row's model
	Row         []byte
	TTL         time.Duration // a committed entry's lifetime
	NegativeTTL time.Duration // a tombstone's lifetime
}

// FinalizeRow is Finalize in mode InstallGiven: the writer installs the row
// given here instead of one staged by Prepare (a write that learned its row
// only after it committed). Its result is [Call.Finalized].
func FinalizeRow(key string, a FinalizeRowArgs) *Call {
	return &Call{sc: finalizeRowScript, Key: key, args: []any{
		a.Token, string(InstallGiven), a.TTL.Milliseconds(), a.NegativeTTL.Milliseconds(),
		int(a.Intent), a.Fingerprint, a.Row,
	}}
}

// FinalizeResult is what Finalize or FinalizeRow did.
type FinalizeResult int64

// Finalize's results.
const (
	FinalizeLeftPending   FinalizeResult = 0 // other writers are still in flight: left pending for them
	FinalizeInstalled     FinalizeResult = 1 // the row or a tombstone was installed
	FinalizeDeleted       FinalizeResult = 2 // the key was deleted
	FinalizeNotRegistered FinalizeResult = 3 // the writer was not registered: left alone, marked never to install
	FinalizeAbsent        FinalizeResult = 4 // the key was absent
)

// Finalized is a Finalize or FinalizeRow call's result. It is meaningful
// only when Err is nil.
func (c *Call) Finalized() FinalizeResult { return FinalizeResult(c.res) }

// Invalidate deletes key, unless writers are in flight on it; then it marks
// the key so that it is deleted, never installed, when the last one leaves.
// Its result is [Call.Invalidated]. It runs when Redis is out of memory.
func Invalidate(key string) *Call {
	return &Call{sc: invalidateScript, Key: key}
}

// InvalidateResult is what Invalidate did.
type InvalidateResult int64

// Invalidate's results.
const (
	InvalidateDeleted InvalidateResult = 0 // deleted, or absent
	InvalidateMarked  InvalidateResult = 1 // pending: marked never to install
)

// Invalidated is an Invalidate call's result. It is meaningful only when
// Err is nil.
func (c *Call) Invalidated() InvalidateResult { return InvalidateResult(c.res) }

// Change applies, on key, a change that a committed transaction made to
// the key's row and that the database's change stream reported: like
// Invalidate, except that the key is left alone when writerToken (the
// plugin's writer that made the transaction; "" when the plugin did not)
// already handled it: its own committed entry or tombstone is there, or it
// is a writer of the pending episode. Its result is [Call.Changed]. It runs
// when Redis is out of memory.
func Change(key, writerToken string) *Call {
	return &Call{sc: changeScript, Key: key, args: []any{writerToken}}
}

// ChangeResult is what Change did.
type ChangeResult int64

// Change's results.
const (
	ChangeDeleted ChangeResult = 0 // deleted, or absent
	ChangeMarked  ChangeResult = 1 // pending: marked never to install
	ChangeSkipped ChangeResult = 2 // the transaction's own writer handled it: left alone
)

// Changed is a Change call's result. It is meaningful only when Err is nil.
func (c *Call) Changed() ChangeResult { return ChangeResult(c.res) }

// Fill installs value (CommittedValue or TombstoneValue), to live ttl, if
// key still holds the lease of leaseToken: a reader that loaded the row
// installs what it read, unless a writer replaced its lease meanwhile. Its
// result is [Call.Filled].
func Fill(key, leaseToken string, value []byte, ttl time.Duration) *Call {
	return &Call{sc: fillScript, Key: key, args: []any{leaseToken, value, ttl.Milliseconds()}}
}

// FillResult is what Fill did.
type FillResult int64

// Fill's results.
const (
	FillLost   FillResult = 0 // the lease was gone: nothing installed
	FillFilled FillResult = 1 // installed
)

// Filled is a Fill call's result. It is meaningful only when Err is nil.
func (c *Call) Filled() FillResult { return FillResult(c.res) }
