package writethrough

import (
	"context"
	"fmt"
	"reflect"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// The consistency tests (anomaly_test.go, consistency_test.go) compare what
// Redis holds with the database, so they need to read entries the way the
// plugin does.

// KeyOf returns the Redis key of the row of model (a cached model) with the
// given primary-key values.
func KeyOf(db *gorm.DB, p *Plugin, model any, pk ...any) (string, error) {
	spec, err := p.specFor(db, model)
	if err != nil {
		return "", err
	}
	if spec == nil {
		return "", fmt.Errorf("%T is not cached", model)
	}
	key, ok := spec.keys.Lookup(context.Background(), pk...)
	if !ok {
		return "", fmt.Errorf("%v does not fit %T's primary key", pk, model)
	}
	return key, nil
}

// DecodeRow decodes the row of a committed entry (raw, as GET returns it)
// into dst, a pointer to a struct of a cached model.
func DecodeRow(db *gorm.DB, p *Plugin, raw []byte, dst any) error {
	spec, err := p.specFor(db, dst)
	if err != nil {
		return err
	}
	if spec == nil {
		return fmt.Errorf("%T is not cached", dst)
	}
	e, err := entry.Parse(raw)
	if err != nil {
		return err
	}
	if e.State != entry.Committed {
		return fmt.Errorf("entry in state %q holds no row", e.State)
	}
	if string(e.Fingerprint) != spec.codec.Fingerprint() {
		return fmt.Errorf("entry written by another build of %T", dst)
	}
	return spec.codec.Decode(e.Row, reflect.ValueOf(dst).Elem())
}
