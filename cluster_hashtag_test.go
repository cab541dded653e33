package writethrough_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// TenantOrder keeps every order of a tenant in one Redis Cluster slot: its
// key template puts the tenant in a hash tag.
type TenantOrder struct {
	Tenant string `gorm:"primaryKey" cache:"key:order:{{{tenant}}}:{id}"`
	ID     int64  `gorm:"primaryKey;autoIncrement:false"`
	Total  int64
}

// TestClusterHashTagColocatesKeys checks a key template's hash tag on a
// real cluster: the keys of one tenant share a master (tenant names that
// hold braces included, since they are escaped), a GetMany of them is
// served from Redis, and the rows equal the database's after writes.
func TestClusterHashTagColocatesKeys(t *testing.T) {
	t.Parallel()
	c := redisproc.StartCluster(t, 3, 0)
	rdb := c.Client(t)
	db, sqls := openDB(t, nil)
	install(t, db, rdb, writethrough.Config{Prefix: "ht", DrainInterval: -1, Timeout: 2 * time.Second})
	require.NoError(t, db.AutoMigrate(&TenantOrder{}))
	ctx := context.Background()

	tenants := []string{"acme", "globex", "in}it{ial"}
	nodes := map[string]map[string]bool{}
	for _, tn := range tenants {
		nodes[tn] = map[string]bool{}
		for id := int64(1); id <= 10; id++ {
			require.NoError(t, db.Create(&TenantOrder{Tenant: tn, ID: id, Total: id}).Error)
			en, err := writethrough.Inspect(ctx, db, &TenantOrder{}, []any{tn, id})
			require.NoError(t, err)
			require.Equal(t, writethrough.EntryCommitted, en.State, en.Key)
			node, err := rdb.MasterForKey(ctx, en.Key)
			require.NoError(t, err)
			nodes[tn][node.Options().Addr] = true
		}
	}
	for _, tn := range tenants {
		assert.Len(t, nodes[tn], 1, "every key of tenant %q on one master", tn)
	}

	keysOf := func(tn string) []any {
		ks := make([]any, 10)
		for i := range ks {
			ks[i] = []any{tn, int64(i + 1)}
		}
		return ks
	}
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		return tx.Model(&TenantOrder{}).Where("tenant = ? AND id <= ?", "acme", 5).
			Update("total", gorm.Expr("total * 100")).Error
	}))
	for _, tn := range tenants {
		var want []TenantOrder
		require.NoError(t, db.Session(&gorm.Session{NewDB: true}).
			Where("tenant = ?", tn).Order("id").Find(&want).Error)
		_, _ = writethrough.GetMany[TenantOrder](ctx, db, keysOf(tn)...) // fill what the bulk update invalidated
		before := sqls.Load()
		got, err := writethrough.GetMany[TenantOrder](ctx, db, keysOf(tn)...)
		require.NoError(t, err)
		assert.Equal(t, before, sqls.Load(), "tenant %q served from Redis", tn)
		assert.Equal(t, want, got, "tenant %q", tn)
	}
}
