package writethrough

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
)

// EntryState is what a Redis key holds, as [Inspect] reports it. Its String
// is the word given with each constant.
type EntryState int

const (
	// EntryAbsent: the key does not exist ("absent").
	EntryAbsent EntryState = iota
	// EntryCommitted: a cached row, served to readers ("committed").
	EntryCommitted
	// EntryPending: a write is in flight; readers go to the database
	// ("pending").
	EntryPending
	// EntryLease: a reader is filling the key from the database ("lease").
	EntryLease
	// EntryTombstone: the row does not exist, served as not found
	// ("tombstone").
	EntryTombstone
	// EntryForeign: an entry of another format version or another build of
	// the model, left alone ("foreign").
	EntryForeign
	// EntryCorrupt: bytes that are not an entry, or a row that does not
	// decode; a read deletes them ("corrupt").
	EntryCorrupt
)

func (s EntryState) String() string {
	switch s {
	case EntryAbsent:
		return "absent"
	case EntryCommitted:
		return "committed"
	case EntryPending:
		return "pending"
	case EntryLease:
		return "lease"
	case EntryTombstone:
		return "tombstone"
	case EntryForeign:
		return "foreign"
	case EntryCorrupt:
		return "corrupt"
	}
	return fmt.Sprintf("EntryState(%d)", int(s))
}

// Entry describes what Redis holds for one row, for debugging and
// operations.
type Entry struct {
	Key     string
	State   EntryState
	TTL     time.Duration // remaining lifetime; 0 when absent
	Writers int           // writers in flight (pending entries)
	Row     any           // the cached row, a pointer to a new model value (committed entries)
	Size    int           // bytes stored
}

// Inspect reports what Redis holds for the row of model with the given
// primary key: a value, a model value with its key set, or for a composite
// key a []any of the key columns. A key that does not fit the primary key
// gives an error wrapping [ErrUnsupported]. It changes nothing.
//
// Like the plugin's other Redis calls it is bounded by [Config.Timeout] and
// goes through the circuit breaker: when Redis fails, or the breaker is
// open, the error wraps [ErrCacheUnavailable]. It works after
// [Plugin.Close].
func Inspect(ctx context.Context, db *gorm.DB, model any, key any) (_ Entry, err error) {
	defer recoverErr(&err, "inspect")
	p, err := pluginOf(db)
	if err != nil {
		return Entry{}, err
	}
	spec, err := p.specFor(db, model)
	if err != nil {
		return Entry{}, err
	}
	if spec == nil {
		return Entry{}, fmt.Errorf("%w: %T has no cache tag", ErrUnsupported, model)
	}
	p.resolveKeys(db, spec)
	vals, err := spec.keyValues(ctx, key, spec.keys.ModelValue)
	if err != nil {
		return Entry{}, err
	}
	k := spec.keys.Key(vals)
	out := Entry{Key: k, State: EntryAbsent}
	raw, ttl, err := p.peek(ctx, k)
	switch {
	case errors.Is(err, redis.Nil):
		return out, nil
	case err != nil:
		return out, unavailable("inspect", err)
	}
	out.Size, out.TTL = len(raw), ttl
	row := reflect.New(spec.sch.ModelType)
	state, e, _ := entryState(spec, raw, row.Elem())
	out.State = state
	switch state {
	case EntryCommitted:
		out.Row = row.Interface()
	case EntryPending:
		out.Writers = e.Writers
	}
	return out, nil
}
