// Package entry owns the one-key state machine of the cache: the bytes of
// every value the plugin stores in Redis, the writer and reader tokens, and
// the Lua scripts that move one key from state to state, with typed builders
// for each script call and a runner that sends a batch of calls in one
// pipelined round trip.
//
// The layout is defined once, by the constants of this file; the Lua
// scripts (lua/*.lua) read it through names that a generated prelude binds
// to these constants. The format is frozen: a change to any byte of it is a
// new FormatVersion and a CHANGELOG entry.
package entry

import (
	"crypto/rand"
	"errors"
)

// Entry layout. Every value the plugin stores starts with a fixed-width
// header:
//
//	offset  size  field
//	0       1     magic 'w'
//	1       1     format version (1)
//	2       1     state: 'C' committed, 'P' pending, 'L' lease, 'T' tombstone
//	3       16    token: the writer (pending, committed) or reader (lease)
//	19      8     schema fingerprint of the model that wrote the entry
//
// A committed entry continues with the row. A pending entry continues with a
// flags byte, a count n of writers in flight, their n 16-byte tokens and,
// when the flags say so, the row to install at commit.
const (
	// Magic is the first byte of every entry.
	Magic = 'w'
	// FormatVersion is the second byte of every entry. Entries of another
	// version are foreign: never served, never overwritten by a reader.
	FormatVersion = 1
	// TokenLen is the length of a writer's or reader's token.
	TokenLen = 16
	// FingerprintLen is the length of a model's schema fingerprint.
	FingerprintLen = 8

	// Offsets (0-based) of the header's fields.
	stateAt = 2
	tokenAt = stateAt + 1
	fpAt    = tokenAt + TokenLen

	// HeaderLen is the length of the header every entry starts with.
	HeaderLen = fpAt + FingerprintLen

	// Offsets (0-based) of a pending entry's fields after the header.
	flagsAt  = HeaderLen
	countAt  = flagsAt + 1
	tokensAt = countAt + 1
)

// State is the third byte of an entry: what the key holds.
type State byte

// The states of a key. An absent key has no State.
const (
	Committed State = 'C' // a row, installed by a writer or a reader
	Pending   State = 'P' // writers in flight; never served
	Lease     State = 'L' // a reader is loading the row from the database
	Tombstone State = 'T' // the row does not exist
)

// String returns the state's letter.
func (s State) String() string { return string(rune(s)) }

// Flags is a pending entry's flags byte: what the last writer out installs,
// and whether the episode is spoiled.
type Flags byte

// The bits of Flags. A writer's intent is FlagHasRow, FlagDelete or 0
// (invalidate only); FlagOverlap is set by the scripts only.
const (
	FlagOverlap Flags = 1 // more than one writer took part, or an invalidation: never install, delete
	FlagHasRow  Flags = 2 // the entry carries the row to install
	FlagDelete  Flags = 4 // install a tombstone
)

var (
	// ErrCorrupt is returned for bytes that are not an entry of any format
	// version; the key is deleted.
	ErrCorrupt = errors.New("writethrough: corrupt cache entry")
	// ErrForeign is returned for a well-formed entry of another format
	// version; a miss, and the key is left alone.
	ErrForeign = errors.New("writethrough: cache entry from another format or schema")
)

// Entry is a parsed value. Its byte slices alias the parsed value.
type Entry struct {
	State       State
	Token       []byte // the writer (committed, pending) or reader (lease)
	Fingerprint []byte // the schema fingerprint of the model that wrote it
	// Row is a committed entry's row, or a pending entry's row to install
	// (empty unless Flags has FlagHasRow).
	Row []byte
	// Flags and Writers (the count of writers in flight) are a pending
	// entry's; zero otherwise.
	Flags   Flags
	Writers int
}

// Parse reads b as an entry. It returns an error wrapping ErrForeign for an
// entry of another format version and ErrCorrupt for anything else it
// cannot read. It never panics.
func Parse(b []byte) (Entry, error) {
	if len(b) < 2 || b[0] != Magic {
		return Entry{}, ErrCorrupt
	}
	if b[1] != FormatVersion {
		return Entry{}, ErrForeign
	}
	if len(b) < HeaderLen {
		return Entry{}, ErrCorrupt
	}
	e := Entry{State: State(b[stateAt]), Token: b[tokenAt:fpAt], Fingerprint: b[fpAt:HeaderLen]}
	switch e.State {
	case Committed:
		e.Row = b[HeaderLen:]
	case Pending:
		if len(b) < tokensAt {
			return Entry{}, ErrCorrupt
		}
		n := int(b[countAt])
		end := tokensAt + n*TokenLen
		if len(b) < end {
			return Entry{}, ErrCorrupt
		}
		e.Flags, e.Writers, e.Row = Flags(b[flagsAt]), n, b[end:]
	case Lease, Tombstone:
	default:
		return Entry{}, ErrCorrupt
	}
	return e, nil
}

// AppendHeader appends a header for state, token and fingerprint to b.
func AppendHeader(b []byte, s State, token, fp string) []byte {
	b = append(b, Magic, FormatVersion, byte(s))
	b = append(b, token...)
	return append(b, fp...)
}

// LeaseValue is the value a reader sets (SET NX) to load a key: a lease
// under its token.
func LeaseValue(token, fp string) []byte {
	return AppendHeader(make([]byte, 0, HeaderLen), Lease, token, fp)
}

// CommittedValue is a committed entry holding row.
func CommittedValue(token, fp string, row []byte) []byte {
	return append(AppendHeader(make([]byte, 0, HeaderLen+len(row)), Committed, token, fp), row...)
}

// TombstoneValue is a tombstone: the row does not exist.
func TombstoneValue(token, fp string) []byte {
	return AppendHeader(make([]byte, 0, HeaderLen), Tombstone, token, fp)
}

// NewToken returns a new random token of TokenLen bytes, naming one writer
// (a transaction, a statement) or one reader's lease.
func NewToken() string {
	var b [TokenLen]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return string(b[:])
}
