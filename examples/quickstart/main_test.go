package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestQuickstartOnTheEmbeddedDefault runs the demo with no servers and checks
// each step's outcome.
func TestQuickstartOnTheEmbeddedDefault(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	t.Setenv("REDIS_URL", "")
	db, rdb, backend, cleanup, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	var out bytes.Buffer
	if err := run(&out, db, rdb, backend); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"1. create\n  redis demo:quickstart_users:1: committed {ID:1 Email:ada@example.com Name:Ada Balance:100 Status:active}",
		"got {Name:Ada Balance:100}; SQL statements run: 0",
		"balance + 50\n  redis demo:quickstart_users:1: committed {ID:1 Email:ada@example.com Name:Ada Balance:150 Status:active}",
		"before COMMIT (Redis untouched: readers get the committed row)\n  redis demo:quickstart_users:1: committed {ID:1 Email:ada@example.com Name:Ada Balance:150 Status:active}",
		"after ROLLBACK (nothing to undo)\n  redis demo:quickstart_users:1: committed {ID:1 Email:ada@example.com Name:Ada Balance:150 Status:active}",
		"a hit: balance 150\n  redis demo:quickstart_users:1: committed",
		"5. delete\n  redis demo:quickstart_users:1: tombstone",
		"cached read after delete: record not found; SQL statements run: 0",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q\n--- output ---\n%s", want, s)
		}
	}
}
