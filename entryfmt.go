package writethrough

import "errors"

// Entry layout. Every value the plugin stores starts with a fixed-width
// header that the Lua scripts read with string.sub:
//
//	offset  size  field
//	0       1     magic 'w'
//	1       1     format version (1)
//	2       1     state: 'C' committed, 'P' pending, 'L' lease, 'T' tombstone
//	3       16    token: the writer (pending, committed) or reader (lease)
//	19      8     schema fingerprint of the model that wrote the entry
//
// A committed entry continues with the msgpack row. A pending entry continues
// with a flags byte, a count n of writers in flight, their n 16-byte tokens
// and, when the flags say so, the msgpack row to install at commit.
const (
	entryMagic    = 'w'
	formatVersion = 1
	headerLen     = 27
	tokenLen      = 16

	stateCommitted = 'C'
	statePending   = 'P'
	stateLease     = 'L'
	stateTombstone = 'T'

	// pending flags
	pendOverlap = 1 // more than one writer took part: never install, delete
	pendHasRow  = 2 // the entry carries the row to install
	pendDelete  = 4 // install a tombstone
)

var (
	// errCorrupt: the bytes are not an entry of any format version; the key
	// is deleted.
	errCorrupt = errors.New("writethrough: corrupt cache entry")
	// errForeign: a well-formed entry of another format version or another
	// build of the model; a miss, and the key is left alone.
	errForeign = errors.New("writethrough: cache entry from another format or schema")
)

type entry struct {
	state byte
	token []byte // aliases the raw value
	fp    []byte // aliases the raw value
	row   []byte // committed only
}

// parseEntry reads the header of b. It never panics on any input.
func parseEntry(b []byte) (entry, error) {
	if len(b) < 2 || b[0] != entryMagic {
		return entry{}, errCorrupt
	}
	if b[1] != formatVersion {
		return entry{}, errForeign
	}
	if len(b) < headerLen {
		return entry{}, errCorrupt
	}
	e := entry{state: b[2], token: b[3:19], fp: b[19:27]}
	switch e.state {
	case stateCommitted:
		e.row = b[headerLen:]
	case statePending:
		if len(b) < headerLen+2 || len(b) < headerLen+2+int(b[headerLen+1])*tokenLen {
			return entry{}, errCorrupt
		}
	case stateLease, stateTombstone:
	default:
		return entry{}, errCorrupt
	}
	return e, nil
}

// appendHeader appends a header for state, token and fingerprint.
func appendHeader(b []byte, state byte, token, fp string) []byte {
	b = append(b, entryMagic, formatVersion, state)
	b = append(b, token...)
	return append(b, fp...)
}
