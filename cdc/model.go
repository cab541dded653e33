package cdc

import (
	"context"
	"fmt"
	"reflect"

	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/keyspec"
)

// model is one cached model stored from a followed table: how its keys are
// named from a row image, and the SCAN pattern that covers all of them.
type model struct {
	name    string
	pkCols  []string // the key columns, in the order spec takes them
	bytes   []bool   // the key column is a bytea (Tables only)
	spec    *keyspec.Spec
	pattern string // SCAN MATCH pattern of every key of the model
}

// newModel reads the model's cache tag as the plugin does, so that its keys
// are the plugin's.
func newModel(sch *schema.Schema, prefix string) (*model, error) {
	tag, err := keyspec.ParseTag(sch)
	if err != nil {
		return nil, fmt.Errorf("cdc: %w", err)
	}
	if tag == nil {
		return nil, fmt.Errorf("%w: Models: %s has no cache tag", ErrInvalidConfig, sch.Name)
	}
	spec, err := keyspec.New(sch, prefix, tag)
	if err != nil {
		return nil, fmt.Errorf("cdc: %w", err)
	}
	m := &model{name: sch.Name, spec: spec, pattern: spec.Pattern()}
	for _, f := range spec.Fields() {
		m.pkCols = append(m.pkCols, f.DBName)
		m.bytes = append(m.bytes, f.FieldType == reflect.TypeFor[[]byte]())
	}
	return m, nil
}

// key names the cache key of the row image vals (column to its text, as
// pgoutput sends it). ok is false when a key column is missing or its text
// does not fit the field.
func (m *model) key(vals map[string]string) (string, bool) {
	args := make([]any, len(m.pkCols))
	for i, c := range m.pkCols {
		v, ok := vals[c]
		if !ok {
			return "", false
		}
		args[i] = v
		if i < len(m.bytes) && m.bytes[i] {
			b, ok := byteaText(v)
			if !ok {
				return "", false
			}
			args[i] = b
		}
	}
	return m.spec.Lookup(context.Background(), args...)
}
