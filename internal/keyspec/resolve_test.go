package keyspec_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

type (
	rText struct {
		ID string `gorm:"primaryKey" cache:""`
	}
	rVarchar struct {
		ID string `gorm:"primaryKey" cache:""`
	}
	rUUID struct {
		ID string `gorm:"primaryKey" cache:""`
	}
	rUUIDDomain struct {
		ID string `gorm:"primaryKey" cache:""`
	}
	rChar struct {
		ID string `gorm:"primaryKey" cache:""`
	}
	rNondeterministic struct {
		ID string `gorm:"primaryKey" cache:""`
	}
	rMixed struct {
		N  int64  `gorm:"primaryKey;autoIncrement:false" cache:""`
		ID string `gorm:"primaryKey"`
	}
	rMissing struct {
		ID string `gorm:"primaryKey" cache:""`
	}
)

// TestResolveLearnsHowStringKeysCompare asks a real PostgreSQL how string
// key columns compare: text and varchar under a deterministic collation are
// exact, a uuid column (or a domain over uuid) is written in its canonical
// spelling, anything else stays loose; a table that does not exist yet is
// an error and keeps the columns loose.
func TestResolveLearnsHowStringKeysCompare(t *testing.T) {
	db := testenv.Postgres(t, nil) // skips under -short
	for _, ddl := range []string{
		`CREATE TABLE r_texts (id text PRIMARY KEY)`,
		`CREATE TABLE r_varchars (id varchar(20) PRIMARY KEY)`,
		`CREATE TABLE r_uuids (id uuid PRIMARY KEY)`,
		`CREATE DOMAIN r_uuid_d AS uuid`,
		`CREATE TABLE r_uuid_domains (id r_uuid_d PRIMARY KEY)`,
		`CREATE TABLE r_chars (id char(8) PRIMARY KEY)`,
		`CREATE COLLATION r_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`,
		`CREATE TABLE r_nondeterministics (id text COLLATE r_ci PRIMARY KEY)`,
		`CREATE TABLE r_mixeds (n bigint, id text, PRIMARY KEY (n, id))`,
	} {
		require.NoError(t, db.Exec(ddl).Error, ddl)
	}
	const upper = "9B2F6A1E-3C4D-4E5F-8A9B-0C1D2E3F4A5B"
	cases := []struct {
		name  string
		model any
		loose bool
		vals  []any  // looked up after resolving
		want  string // the key of vals
	}{
		{"text", &rText{}, false, []any{"Ab:c"}, "wt:r_texts:Ab%3Ac"},
		{"varchar", &rVarchar{}, false, []any{"Ab"}, "wt:r_varchars:Ab"},
		{"uuid", &rUUID{}, false, []any{upper}, "wt:r_uuids:" + strings.ToLower(upper)},
		{"domain over uuid", &rUUIDDomain{}, false, []any{"{" + upper + "}"}, "wt:r_uuid_domains:" + strings.ToLower(upper)},
		{"char(n)", &rChar{}, true, []any{"ab "}, "wt:r_chars:ab "},
		{"non-deterministic collation", &rNondeterministic{}, true, []any{"Ab"}, "wt:r_nondeterministics:Ab"},
		{"integer and text", &rMixed{}, false, []any{"7", "x"}, "wt:r_mixeds:7:x"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := specOf(t, tc.model)
			require.True(t, s.Loose(), "a string column is loose until resolved")
			require.NoError(t, s.Resolve(db))
			assert.Equal(t, tc.loose, s.Loose())
			k, ok := s.Lookup(ctx, tc.vals...)
			require.True(t, ok)
			assert.Equal(t, tc.want, k)
			require.NoError(t, s.Resolve(db), "resolving again is a no-op")
		})
	}
	t.Run("uuid column refuses text that is no uuid", func(t *testing.T) {
		s := specOf(t, &rUUID{})
		require.NoError(t, s.Resolve(db))
		_, ok := s.Lookup(ctx, "not-a-uuid")
		assert.False(t, ok)
	})
	t.Run("a table that does not exist", func(t *testing.T) {
		s := specOf(t, &rMissing{})
		err := s.Resolve(db)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "r_missings")
		assert.True(t, s.Loose())
		require.NoError(t, db.Exec(`CREATE TABLE r_missings (id text PRIMARY KEY)`).Error)
		assert.NoError(t, s.Resolve(db), "not asked again before a minute has passed")
		assert.True(t, s.Loose())
	})
	t.Run("inside a transaction", func(t *testing.T) {
		tx := db.Begin()
		t.Cleanup(func() { tx.Rollback() })
		s := specOf(t, &rText{})
		require.NoError(t, s.Resolve(tx))
		assert.False(t, s.Loose())
		var one int
		require.NoError(t, tx.Raw("SELECT 1").Scan(&one).Error, "the transaction is still usable")
	})
}
