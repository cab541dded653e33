package writethrough

import (
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// Canonical keys (docs/design.md, "Canonical keys"). The database may treat
// two spellings of a key as one row: a UUID in upper case, a citext key, a
// char(n) key with or without its padding, a non-deterministic collation. A
// row is cached only under the key built from the row the database returned
// (its canonical key), and a lookup is mapped to that key only when the
// plugin knows how the column compares its values.

// resolveKeys learns, once per model, how the database compares the model's
// string key columns (keyspec.Spec.Resolve), on db's connection, and never
// fails the caller: until it succeeds the columns stay loose, which is safe.
func (p *Plugin) resolveKeys(db *gorm.DB, s *modelSpec) {
	if !s.keys.WantsResolve() {
		return // the common case: nothing to learn, no statement to build
	}
	if err := s.keys.Resolve(ownQuery(db)); err != nil {
		// The table may not exist yet: stay loose, ask again later.
		p.logf("writethrough: key column types unknown; string keys stay loose", "model", s.name, "err", err)
	}
}

// canonicalTargets returns the keys, as the database spells them now, of
// the rows that targets name, for a write to a model with loose keys: the
// write must invalidate those keys, whatever spelling it was given. It reads
// on the statement's connection (inside its transaction), before the
// statement runs, so that a delete still finds its rows.
func canonicalTargets(db *gorm.DB, s *modelSpec, targets []target) ([]target, error) {
	if len(targets) == 0 || !s.keys.Loose() {
		return nil, nil
	}
	rows, err := rowsByKey(db, s, targets, true)
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(targets))
	for _, t := range targets {
		have[t.key] = true
	}
	var out []target
	ctx := db.Statement.Context
	for i := 0; i < rows.Elem().Len(); i++ {
		rv := rows.Elem().Index(i)
		pk := make([]any, len(s.pks))
		for j, f := range s.pks {
			pk[j], _ = f.ValueOf(ctx, rv)
		}
		k := s.keys.Key(pk)
		if !have[k] {
			have[k] = true
			out = append(out, target{key: k, pk: pk})
		}
	}
	return out, nil
}

// looseIntent turns a tombstone into an invalidation for a model with loose
// keys: a row inserted later under another spelling would not replace it.
func looseIntent(s *modelSpec, intent entry.Flags) entry.Flags {
	if intent&entry.FlagDelete != 0 && s.keys.Loose() {
		return 0
	}
	return intent
}
