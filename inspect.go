package writethrough

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// Entry describes what Redis holds for one row, for debugging and
// operations.
type Entry struct {
	Key     string
	State   string        // "absent", "committed", "pending", "lease", "tombstone", "foreign" or "corrupt"
	TTL     time.Duration // remaining lifetime; 0 when absent
	Writers int           // writers in flight (pending entries)
	Row     any           // the cached row, a pointer to a new model value (committed entries)
	Size    int           // bytes stored
}

// Inspect reports what Redis holds for the row of model with the given
// primary key: a value, a model value with its key set, or for a composite
// key a []any of the key columns. A key that does not fit the primary key
// gives an error wrapping [ErrUnsupported]. It changes nothing.
func Inspect(ctx context.Context, db *gorm.DB, model any, key any) (Entry, error) {
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
	out := Entry{Key: k, State: "absent"}
	raw, err := p.rdb.Get(ctx, k).Bytes()
	if errors.Is(err, redis.Nil) {
		return out, nil
	}
	if err != nil {
		return out, unavailable("inspect", err)
	}
	out.Size = len(raw)
	out.TTL, _ = p.rdb.PTTL(ctx, k).Result()
	e, err := entry.Parse(raw)
	switch {
	case errors.Is(err, entry.ErrForeign):
		out.State = "foreign"
		return out, nil
	case err != nil:
		out.State = "corrupt"
		return out, nil
	}
	switch e.State {
	case entry.Committed:
		out.State = "committed"
		if string(e.Fingerprint) != spec.codec.Fingerprint() {
			out.State = "foreign"
			return out, nil
		}
		row := reflect.New(spec.sch.ModelType)
		if err := spec.codec.Decode(e.Row, row.Elem()); err != nil {
			out.State = "corrupt"
			return out, nil
		}
		out.Row = row.Interface()
	case entry.Pending:
		out.State = "pending"
		out.Writers = e.Writers
	case entry.Lease:
		out.State = "lease"
	case entry.Tombstone:
		out.State = "tombstone"
	}
	return out, nil
}
