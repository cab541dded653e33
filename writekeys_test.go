package writethrough_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
)

// KAccount is a cached model that tests write through its table name.
type KAccount struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	Owner   string
	Balance int64
}

func (KAccount) TableName() string { return "k_accounts" }

// KAccountRow is an uncached struct on the cached model's table.
type KAccountRow struct {
	ID      uint `gorm:"primaryKey"`
	Owner   string
	Balance int64
}

func (KAccountRow) TableName() string { return "k_accounts" }

// KProduct has a string primary key that writes change.
type KProduct struct {
	SKU       string `gorm:"primaryKey" cache:"ttl:10m"`
	Code      string `gorm:"uniqueIndex"`
	Name      string
	UpdatedAt time.Time
}

// The K* tree: organisations (not cached) own teams, teams own members
// (cascade) and leads (set null), members own badges (the constraint is
// declared on the badge's belongs-to).
type KOrg struct {
	ID    uint `gorm:"primaryKey"`
	Name  string
	Teams []KTeam `gorm:"foreignKey:OrgID;constraint:OnDelete:CASCADE,OnUpdate:CASCADE"`
}

type KTeam struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	OrgID   uint
	Name    string
	Members []KMember `gorm:"foreignKey:TeamID;constraint:OnDelete:CASCADE"`
	Leads   []KLead   `gorm:"foreignKey:TeamID;constraint:OnDelete:SET NULL"`
}

type KMember struct {
	ID     uint `gorm:"primaryKey" cache:"ttl:10m"`
	TeamID uint
	Name   string
}

type KLead struct {
	ID     uint `gorm:"primaryKey" cache:"ttl:10m"`
	TeamID *uint
	Name   string
}

type KBadge struct {
	ID       uint `gorm:"primaryKey" cache:"ttl:10m"`
	MemberID uint
	Member   *KMember `gorm:"constraint:OnDelete:CASCADE"`
	Name     string
}

// bothTxModes runs fn with GORM's default transaction on and off.
func bothTxModes(t *testing.T, fn func(t *testing.T, gcfg func() *gorm.Config)) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprintf("SkipDefaultTransaction=%v", skip), func(t *testing.T) {
			fn(t, func() *gorm.Config { return &gorm.Config{SkipDefaultTransaction: skip} })
		})
	}
}

// cachedReadsAgree reads every id through the cache on both sides and asserts the
// same result, then reads again on the cached side and asserts that the
// second pass was served from Redis.
func cachedReadsAgree[T any](t *testing.T, tw *twin, ids ...any) {
	t.Helper()
	read := func(db *gorm.DB) any {
		var out []result
		for _, id := range ids {
			var v T
			cond := "id = ?"
			if _, ok := id.(string); ok {
				cond = "sku = ?"
			}
			err := db.Scopes(writethrough.Cached).First(&v, cond, id).Error
			out = append(out, res(v, err))
		}
		return out
	}
	tw.same(t, "cached reads", read)
	before := tw.cachedSQL.Load()
	read(tw.cached)
	assert.Equal(t, before, tw.cachedSQL.Load(), "second pass of cached reads must be served from Redis")
}

// reset empties the twin's tables on both sides and its keys in Redis, so
// that one twin serves many cases.
func (tw *twin) reset(t testing.TB) {
	t.Helper()
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		var tables []string
		for _, m := range tw.models {
			tables = append(tables, `"`+tw.schema(t, db, m).Table+`"`)
		}
		require.NoError(t, db.Exec("TRUNCATE "+strings.Join(tables, ", ")+" RESTART IDENTITY CASCADE").Error)
	}
	ctx := context.Background()
	iter := tw.rdb.Scan(ctx, 0, tw.prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		require.NoError(t, tw.rdb.Del(ctx, iter.Val()).Err())
	}
	require.NoError(t, iter.Err())
}

func currentSchema(t testing.TB, db *gorm.DB) string {
	var s string
	require.NoError(t, db.Raw("SELECT current_schema()").Scan(&s).Error)
	return s
}

func TestWritesNamingACachedTableKeepTheCache(t *testing.T) {
	type tcase struct {
		name string
		run  func(db *gorm.DB) any
	}
	cases := []tcase{
		{"TableUpdate", func(db *gorm.DB) any {
			r := db.Table("k_accounts").Where("id = ?", 1).Update("balance", 5)
			return res(r.RowsAffected, r.Error)
		}},
		{"TableUpdatesSeveralRows", func(db *gorm.DB) any {
			r := db.Table("k_accounts").Where("owner = ?", "b").Updates(map[string]any{"balance": 6})
			return res(r.RowsAffected, r.Error)
		}},
		{"TableCreateMap", func(db *gorm.DB) any {
			m := map[string]any{"id": 4, "owner": "d", "balance": 1}
			r := db.Table("k_accounts").Create(m)
			return res([]any{m, r.RowsAffected}, r.Error)
		}},
		{"TableCreateMaps", func(db *gorm.DB) any {
			ms := []map[string]any{{"id": 4, "owner": "d"}, {"id": 5, "owner": "e"}}
			r := db.Table("k_accounts").Create(&ms)
			return res([]any{ms, r.RowsAffected}, r.Error)
		}},
		{"TableDeleteModelByID", func(db *gorm.DB) any {
			r := db.Table("k_accounts").Delete(&KAccount{}, 2)
			return res(r.RowsAffected, r.Error)
		}},
		{"TableDeleteWhere", func(db *gorm.DB) any {
			r := db.Table("k_accounts").Where("id = ?", 3).Delete(map[string]any{})
			return res(r.RowsAffected, r.Error)
		}},
		{"ModelWithSchemaQualifiedTable", func(db *gorm.DB) any {
			r := db.Model(&KAccount{}).Table(currentSchema(t, db)+".k_accounts").Where("id = ?", 1).Update("balance", 7)
			return res(r.RowsAffected, r.Error)
		}},
		{"ModelKeyWithSchemaQualifiedTable", func(db *gorm.DB) any {
			a := KAccount{ID: 1}
			r := db.Model(&a).Table(currentSchema(t, db)+".k_accounts").Update("balance", 7)
			return res([]any{a, r.RowsAffected}, r.Error)
		}},
		{"TableAlias", func(db *gorm.DB) any {
			r := db.Table("k_accounts AS a").Where("a.id = ?", 1).Update("balance", 8)
			return res(r.RowsAffected, r.Error)
		}},
		{"QuotedTableAlias", func(db *gorm.DB) any {
			r := db.Table(`"k_accounts" a`).Where("a.id = ?", 2).Update("balance", 9)
			return res(r.RowsAffected, r.Error)
		}},
		{"UncachedStructOnTheTable", func(db *gorm.DB) any {
			a := KAccountRow{ID: 1}
			r := db.Model(&a).Update("balance", 10)
			return res([]any{a, r.RowsAffected}, r.Error)
		}},
		{"UncachedStructCreate", func(db *gorm.DB) any {
			a := KAccountRow{ID: 4, Owner: "d"}
			r := db.Create(&a)
			return res([]any{a, r.RowsAffected}, r.Error)
		}},
		{"UncachedStructBulkDelete", func(db *gorm.DB) any {
			r := db.Where("owner = ?", "b").Delete(&KAccountRow{})
			return res(r.RowsAffected, r.Error)
		}},
		{"OtherSchemaIsAnotherTable", func(db *gorm.DB) any {
			r := db.Table(currentSchema(t, db)+"_o.k_accounts").Where("id = ?", 1).Update("balance", 99)
			return res(r.RowsAffected, r.Error)
		}},
	}
	bothTxModes(t, func(t *testing.T, gcfg func() *gorm.Config) {
		tw := newTwin(t, twinOpts{models: []any{&KAccount{}}, gorm: gcfg})
		for _, db := range []*gorm.DB{tw.plain, tw.cached} {
			other := currentSchema(t, db) + "_o"
			require.NoError(t, db.Exec("CREATE SCHEMA "+other).Error)
			t.Cleanup(func() { _ = db.Exec("DROP SCHEMA " + other + " CASCADE").Error })
			require.NoError(t, db.Exec("CREATE TABLE "+other+".k_accounts (id bigint primary key, owner text, balance bigint)").Error)
			require.NoError(t, db.Exec("INSERT INTO "+other+".k_accounts VALUES (1, 'x', 0)").Error)
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tw.reset(t)
				for _, db := range []*gorm.DB{tw.plain, tw.cached} {
					require.NoError(t, db.Create(&[]KAccount{{ID: 1, Owner: "a"}, {ID: 2, Owner: "b"}, {ID: 3, Owner: "b"}}).Error)
				}
				cachedReadsAgree[KAccount](t, tw, 1, 2, 3, 4, 5) // 4 and 5 are "not found" in the cache
				tw.same(t, tc.name, tc.run)
				tw.sameRows(t)
				tw.settled(t)
				cachedReadsAgree[KAccount](t, tw, 1, 2, 3, 4, 5)
			})
		}
	})
}

func TestCreateIntoACachedTableWithoutItsKeyLearnsTheKey(t *testing.T) {
	// The model is listed in Config.Models: no statement has used it yet,
	// and the write names only its table. The new row's key held a "not
	// found" entry; the key comes back through RETURNING and the entry goes.
	tw := newTwin(t, twinOpts{models: []any{&KAccount{}}, cfg: writethrough.Config{Models: []any{&KAccount{}}}})
	read := func(db *gorm.DB) any {
		var a KAccount
		err := db.Scopes(writethrough.Cached).First(&a, 1).Error
		return res(a, err)
	}
	tw.same(t, "read the absent row", read)
	tw.same(t, "create a map without the key", func(db *gorm.DB) any {
		r := db.Table("k_accounts").Create(map[string]any{"owner": "x"})
		return res(r.RowsAffected, r.Error)
	})
	tw.same(t, "read the created row", read)
	tw.sameRows(t)
	tw.settled(t)
}

func TestPrimaryKeyChangeMovesTheCachedRow(t *testing.T) {
	type tcase struct {
		name string
		run  func(db *gorm.DB) any
	}
	load := func(db *gorm.DB) KProduct {
		var p KProduct
		require.NoError(t, db.First(&p, "sku = ?", "A").Error)
		return p
	}
	cases := []tcase{
		{"UpdateColumnName", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Update("sku", "NEW")
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"UpdateFieldName", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Update("SKU", "NEW")
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"UpdatesMap", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Updates(map[string]any{"sku": "NEW", "name": "n"})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"UpdatesStruct", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Updates(KProduct{SKU: "NEW", Name: "n"})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"SelectUpdatesStruct", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Select("sku", "name").Updates(&KProduct{SKU: "NEW"})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"UpdateColumn", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).UpdateColumn("sku", "NEW")
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"UpdateColumns", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).UpdateColumns(map[string]any{"sku": "NEW"})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"ClauseSet", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Clauses(clause.Set{{Column: clause.Column{Name: "sku"}, Value: "NEW"}}).Updates(map[string]any{})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"ModelWithOnlyTheKey", func(db *gorm.DB) any {
			p := KProduct{SKU: "A"}
			r := db.Model(&p).Update("sku", "NEW")
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"OmittedKeyIsNotAssigned", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Omit("sku").Updates(map[string]any{"sku": "NEW", "name": "n"})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"SameKeyValue", func(db *gorm.DB) any {
			p := load(db)
			r := db.Model(&p).Updates(map[string]any{"sku": "A", "name": "n"})
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"KeyOfAMissingRow", func(db *gorm.DB) any {
			p := KProduct{SKU: "GONE"}
			r := db.Model(&p).Update("sku", "NEW")
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"SaveOfAKeyChangedInMemory", func(db *gorm.DB) any {
			p := load(db)
			p.SKU = "NEW"
			p.Code = "cn"
			r := db.Save(&p)
			return res([]any{p, r.RowsAffected}, r.Error)
		}},
		{"InATransaction", func(db *gorm.DB) any {
			p := load(db)
			err := db.Transaction(func(tx *gorm.DB) error {
				return tx.Model(&p).Update("sku", "NEW").Error
			})
			return res(p, err)
		}},
	}
	bothTxModes(t, func(t *testing.T, gcfg func() *gorm.Config) {
		tw := newTwin(t, twinOpts{models: []any{&KProduct{}}, gorm: gcfg})
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tw.reset(t)
				for _, db := range []*gorm.DB{tw.plain, tw.cached} {
					require.NoError(t, db.Create(&[]KProduct{{SKU: "A", Code: "ca"}, {SKU: "B", Code: "cb"}}).Error)
				}
				cachedReadsAgree[KProduct](t, tw, "A", "B", "NEW")
				tw.same(t, tc.name, tc.run)
				tw.sameRows(t)
				tw.settled(t)
				cachedReadsAgree[KProduct](t, tw, "A", "B", "NEW")
			})
		}
	})
}

func TestNumericPrimaryKeyChangeMovesTheCachedRow(t *testing.T) {
	bothTxModes(t, func(t *testing.T, gcfg func() *gorm.Config) {
		tw := newTwin(t, twinOpts{models: []any{&KAccount{}}, gorm: gcfg})
		for _, db := range []*gorm.DB{tw.plain, tw.cached} {
			require.NoError(t, db.Create(&[]KAccount{{ID: 1, Owner: "a"}, {ID: 2, Owner: "b"}}).Error)
		}
		cachedReadsAgree[KAccount](t, tw, 1, 2, 9)
		tw.same(t, "Updates(map{id: 9})", func(db *gorm.DB) any {
			a := KAccount{ID: 1}
			r := db.Model(&a).Updates(map[string]any{"id": 9})
			return res([]any{a, r.RowsAffected}, r.Error)
		})
		tw.sameRows(t)
		tw.settled(t)
		cachedReadsAgree[KAccount](t, tw, 1, 2, 9)
	})
}

func TestPrimaryKeyChangesThatCannotBeNamedAreRefused(t *testing.T) {
	cases := []struct {
		name string
		run  func(db *gorm.DB) error
	}{
		{"Expression", func(db *gorm.DB) error {
			return db.Model(&KProduct{SKU: "A"}).Update("sku", gorm.Expr("sku || 'X'")).Error
		}},
		{"Subquery", func(db *gorm.DB) error {
			return db.Model(&KProduct{SKU: "A"}).Update("sku", db.Model(&KProduct{}).Select("max(sku)")).Error
		}},
		{"BulkUpdate", func(db *gorm.DB) error {
			return db.Model(&KProduct{}).Where("code = ?", "ca").Update("sku", "NEW").Error
		}},
		{"TableBulkUpdate", func(db *gorm.DB) error {
			return db.Table("k_products").Where("code = ?", "ca").Updates(map[string]any{"sku": "NEW"}).Error
		}},
		{"UpsertAssigningTheKey", func(db *gorm.DB) error {
			return db.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "code"}},
				DoUpdates: clause.AssignmentColumns([]string{"sku", "name"}),
			}).Create(&KProduct{SKU: "NEW", Code: "ca", Name: "n"}).Error
		}},
	}
	bothTxModes(t, func(t *testing.T, gcfg func() *gorm.Config) {
		tw := newTwin(t, twinOpts{models: []any{&KProduct{}}, gorm: gcfg})
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tw.reset(t)
				require.NoError(t, tw.cached.Create(&[]KProduct{{SKU: "A", Code: "ca"}, {SKU: "B", Code: "cb"}}).Error)
				for _, id := range []string{"A", "B", "NEW"} {
					_ = tw.cached.Scopes(writethrough.Cached).First(&KProduct{}, "sku = ?", id).Error
				}
				err := tc.run(tw.cached)
				require.ErrorIs(t, err, writethrough.ErrUnsupported)
				var skus []string
				require.NoError(t, tw.cached.Model(&KProduct{}).Order("sku").Pluck("sku", &skus).Error)
				assert.Equal(t, []string{"A", "B"}, skus, "the refused statement must not run")
				tw.settled(t)
			})
		}
	})
}

func TestUpsertOnTheKeyIsNotRefused(t *testing.T) {
	tw := newTwin(t, twinOpts{models: []any{&KProduct{}}})
	for _, db := range []*gorm.DB{tw.plain, tw.cached} {
		require.NoError(t, db.Create(&KProduct{SKU: "A", Code: "ca"}).Error)
	}
	cachedReadsAgree[KProduct](t, tw, "A")
	tw.same(t, "upsert", func(db *gorm.DB) any {
		p := KProduct{SKU: "A", Code: "cz", Name: "n"}
		r := db.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "sku"}},
			DoUpdates: clause.AssignmentColumns([]string{"sku", "code", "name"}),
		}).Create(&p)
		return res([]any{p, r.RowsAffected}, r.Error)
	})
	tw.sameRows(t)
	tw.settled(t)
	cachedReadsAgree[KProduct](t, tw, "A")
}

// TestInvalidateInATransactionAppliesAtCommit forces the interleaving that
// made an Invalidate inside a transaction useless: a reader misses between
// the Invalidate and the COMMIT and fills the row the transaction replaces.
func TestInvalidateInATransactionAppliesAtCommit(t *testing.T) {
	for _, end := range []string{"commit", "rollback"} {
		t.Run(end, func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: []any{&KAccount{}}})
			db := tw.cached
			require.NoError(t, db.Create(&KAccount{ID: 1, Owner: "a", Balance: 5}).Error)
			var a KAccount
			require.NoError(t, db.Scopes(writethrough.Cached).First(&a, 1).Error)

			tx := db.Begin()
			require.NoError(t, tx.Error)
			require.NoError(t, tx.Exec("UPDATE k_accounts SET balance = 7 WHERE id = 1").Error)
			require.NoError(t, writethrough.Invalidate(tx, &KAccount{}, 1))

			// A reader on another connection, before the COMMIT: it sees
			// the committed row and must not put it in the cache.
			var mid KAccount
			require.NoError(t, db.Scopes(writethrough.Cached).First(&mid, 1).Error)
			assert.EqualValues(t, 5, mid.Balance)
			if end == "commit" {
				require.NoError(t, tx.Commit().Error)
			} else {
				require.NoError(t, tx.Rollback().Error)
			}

			var got KAccount
			require.NoError(t, db.Scopes(writethrough.Cached).First(&got, 1).Error)
			want := int64(7)
			if end == "rollback" {
				want = 5
			}
			assert.Equal(t, want, got.Balance, "a read after the %s must see the database's row", end)
			tw.settled(t)
		})
	}
}

func TestInvalidateInATransactionWhenRedisFails(t *testing.T) {
	for _, mode := range []writethrough.Mode{writethrough.Strict, writethrough.Soft} {
		t.Run(mode.String(), func(t *testing.T) {
			e := newEnv(t, rigOpts{own: true, cfg: writethrough.Config{Mode: mode, DrainInterval: -1, BreakerThreshold: -1}, models: []any{&KAccount{}}})
			db, srv := e.db, e.srv
			require.NoError(t, db.Create(&KAccount{ID: 1, Owner: "a", Balance: 5}).Error)
			srv.Kill()

			tx := db.Begin()
			require.NoError(t, tx.Exec("UPDATE k_accounts SET balance = 7 WHERE id = 1").Error)
			err := writethrough.Invalidate(tx, &KAccount{}, 1)
			commitErr := tx.Commit().Error
			var balance int64
			require.NoError(t, db.Model(&KAccount{}).Where("id = ?", 1).Pluck("balance", &balance).Error)
			var outboxed int64
			require.NoError(t, db.Table("writethrough_outbox").Count(&outboxed).Error)
			if mode == writethrough.Strict {
				require.ErrorIs(t, err, writethrough.ErrCacheUnavailable)
				require.ErrorIs(t, commitErr, writethrough.ErrCacheUnavailable, "Commit must refuse")
				assert.EqualValues(t, 5, balance, "the transaction must have rolled back")
				assert.Zero(t, outboxed)
				return
			}
			require.NoError(t, err)
			require.NoError(t, commitErr)
			assert.EqualValues(t, 7, balance)
			assert.EqualValues(t, 1, outboxed, "the key is recorded in the outbox with the transaction")
		})
	}
}

func TestInvalidateInARolledBackTransactionLeavesNoOutboxRecord(t *testing.T) {
	e := newEnv(t, rigOpts{own: true, cfg: writethrough.Config{DrainInterval: -1, BreakerThreshold: -1}, models: []any{&KAccount{}}})
	db, srv := e.db, e.srv
	srv.Kill()
	tx := db.Begin()
	require.NoError(t, writethrough.Invalidate(tx, &KAccount{}, 1))
	require.NoError(t, tx.Rollback().Error)
	var outboxed int64
	require.NoError(t, db.Table("writethrough_outbox").Count(&outboxed).Error)
	assert.Zero(t, outboxed)
}

func seedTree(t *testing.T, db *gorm.DB) {
	t.Helper()
	one := uint(1)
	require.NoError(t, db.Create(&[]KOrg{{ID: 1, Name: "o1"}, {ID: 2, Name: "o2"}}).Error)
	require.NoError(t, db.Create(&[]KTeam{{ID: 1, OrgID: 1, Name: "t1"}, {ID: 2, OrgID: 1, Name: "t2"}, {ID: 3, OrgID: 2, Name: "t3"}}).Error)
	require.NoError(t, db.Create(&[]KMember{{ID: 1, TeamID: 1}, {ID: 2, TeamID: 1}, {ID: 3, TeamID: 2}, {ID: 4, TeamID: 3}}).Error)
	require.NoError(t, db.Create(&[]KLead{{ID: 1, TeamID: &one}}).Error)
	require.NoError(t, db.Create(&[]KBadge{{ID: 1, MemberID: 1}, {ID: 2, MemberID: 4}}).Error)
}

func readTree(t *testing.T, tw *twin) {
	t.Helper()
	cachedReadsAgree[KTeam](t, tw, 1, 2, 3)
	cachedReadsAgree[KMember](t, tw, 1, 2, 3, 4)
	cachedReadsAgree[KLead](t, tw, 1)
	cachedReadsAgree[KBadge](t, tw, 1, 2)
}

func TestForeignKeyActionsInvalidateCachedChildren(t *testing.T) {
	cases := []struct {
		name string
		run  func(db *gorm.DB) any
	}{
		{"DeleteTeam", func(db *gorm.DB) any {
			r := db.Delete(&KTeam{ID: 1})
			return res(r.RowsAffected, r.Error)
		}},
		{"DeleteOrgByID", func(db *gorm.DB) any {
			r := db.Delete(&KOrg{}, 1)
			return res(r.RowsAffected, r.Error)
		}},
		{"BulkDeleteOrgs", func(db *gorm.DB) any {
			r := db.Where("name = ?", "o1").Delete(&KOrg{})
			return res(r.RowsAffected, r.Error)
		}},
		{"DeleteMembersInATransaction", func(db *gorm.DB) any {
			return res(nil, db.Transaction(func(tx *gorm.DB) error {
				return tx.Where("team_id = ?", 1).Delete(&KMember{}).Error
			}))
		}},
		{"UpdateOrgKey", func(db *gorm.DB) any {
			r := db.Model(&KOrg{ID: 1}).Update("id", 10)
			return res(r.RowsAffected, r.Error)
		}},
	}
	bothTxModes(t, func(t *testing.T, gcfg func() *gorm.Config) {
		tw := newTwin(t, twinOpts{models: []any{&KOrg{}, &KTeam{}, &KMember{}, &KLead{}, &KBadge{}}, gorm: gcfg})
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tw.reset(t)
				seedTree(t, tw.plain)
				seedTree(t, tw.cached)
				readTree(t, tw)
				tw.same(t, tc.name, tc.run)
				tw.sameRows(t)
				tw.settled(t)
				readTree(t, tw)
			})
		}
	})
}
