package redisproc_test

import (
	"testing"

	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

func TestClusterServesKeysOfEverySlot(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 1)
	if len(c.Nodes) != 6 {
		t.Fatalf("%d nodes, want 6", len(c.Nodes))
	}
	rdb := c.Client(t)
	ctx := shortly(t)
	masters := map[string]bool{}
	for i := 0; i < 64; i++ {
		key := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if err := rdb.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		node, err := rdb.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		masters[node.Options().Addr] = true
	}
	if len(masters) != 3 {
		t.Fatalf("keys landed on %d masters, want 3", len(masters))
	}
}
