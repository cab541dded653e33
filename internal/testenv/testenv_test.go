package testenv_test

import (
	"context"
	"strings"
	"testing"

	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

func TestPostgresGivesEachTestItsOwnSchema(t *testing.T) {
	t.Parallel()
	type row struct {
		ID   uint
		Name string
	}
	var schemas []string
	for range 2 {
		db := testenv.Postgres(t, nil)
		if err := db.AutoMigrate(&row{}); err != nil {
			t.Fatalf("AutoMigrate: %v", err)
		}
		if err := db.Create(&row{Name: "a"}).Error; err != nil {
			t.Fatalf("Create: %v", err)
		}
		var n int64
		if err := db.Model(&row{}).Count(&n).Error; err != nil {
			t.Fatalf("Count: %v", err)
		}
		if n != 1 {
			t.Errorf("rows = %d, want 1: the schema is shared", n)
		}
		var schema string
		if err := db.Raw("SELECT current_schema()").Scan(&schema).Error; err != nil {
			t.Fatalf("current_schema: %v", err)
		}
		if !strings.HasPrefix(schema, "wt_") {
			t.Errorf("current_schema() = %q, want wt_...", schema)
		}
		schemas = append(schemas, schema)
	}
	if schemas[0] == schemas[1] {
		t.Errorf("both databases use schema %q", schemas[0])
	}
}

func TestPostgresDropsSchemaWhenTestEnds(t *testing.T) {
	t.Parallel()
	var schema string
	t.Run("inner", func(t *testing.T) {
		db := testenv.Postgres(t, nil)
		if err := db.Raw("SELECT current_schema()").Scan(&schema).Error; err != nil {
			t.Fatalf("current_schema: %v", err)
		}
		// A transaction left open must not keep the schema alive.
		tx := db.Begin()
		if err := tx.Exec("CREATE TABLE t (id int)").Error; err != nil {
			t.Fatalf("CREATE TABLE: %v", err)
		}
	})

	db := testenv.Postgres(t, nil)
	var n int64
	err := db.Raw("SELECT count(*) FROM pg_namespace WHERE nspname = ?", schema).Scan(&n).Error
	if err != nil {
		t.Fatalf("query pg_namespace: %v", err)
	}
	if n != 0 {
		t.Errorf("schema %s still exists after its test ended", schema)
	}
}

func TestRedisDeletesPrefixedKeysWhenTestEnds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var prefix string
	t.Run("inner", func(t *testing.T) {
		rdb, p := testenv.Redis(t)
		prefix = p
		if !strings.HasPrefix(prefix, "wttest:") {
			t.Errorf("prefix = %q, want wttest:...", prefix)
		}
		for _, k := range []string{":a", ":b", ":c:d"} {
			if err := rdb.Set(ctx, prefix+k, "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
		}
		// Closing the client early must not stop the sweep.
		_ = rdb.Close()
	})

	rdb, _ := testenv.Redis(t)
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	if len(keys) != 0 {
		t.Errorf("keys left after the test ended: %v", keys)
	}
}
