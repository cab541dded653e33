package writethrough_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
)

// Models for association and bulk tests. Every hook records its name and
// the receiver's values (mark is set by the test on the struct it passes,
// so a hook that runs on another struct shows mark 0).

type bkCompany struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
}

type bkOwner struct {
	ID        uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name      string
	CompanyID *uint
	Company   *bkCompany
	ManagerID *uint
	Manager   *bkOwner
	Profile   *bkProfile   `gorm:"foreignKey:OwnerID"`
	Accounts  []*bkAccount `gorm:"foreignKey:OwnerID"`
	Langs     []bkLang     `gorm:"many2many:bk_owner_langs"`
	Tags      []bkTag      `gorm:"many2many:bk_owner_tags"`
	Toys      []bkToy      `gorm:"polymorphic:Holder"`
	UpdatedAt time.Time
	mark      int `gorm:"-"`
}

type bkProfile struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	OwnerID uint
	Bio     string
}

type bkAccount struct {
	ID      uint `gorm:"primaryKey" cache:"ttl:10m"`
	OwnerID *uint
	Name    string
	Balance int
	Status  string `gorm:"default:open"`
	mark    int    `gorm:"-"`
}

// bkLang's tag differs from bkOwner's: GORM's generated join table
// bk_owner_langs copies both.
type bkLang struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:5m"`
	Code string
}

type bkTag struct {
	ID   uint   `gorm:"primaryKey" cache:"ttl:10m"`
	Name string `gorm:"uniqueIndex"`
	Uses int
}

// bkOwnerTag is a tagged join table.
type bkOwnerTag struct {
	BkOwnerID uint `gorm:"primaryKey" cache:"ttl:10m"`
	BkTagID   uint `gorm:"primaryKey"`
	Note      string
}

type bkToy struct {
	ID         uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name       string
	HolderID   uint
	HolderType string
}

// bkNote is soft-deletable.
type bkNote struct {
	ID        uint `gorm:"primaryKey" cache:"ttl:10m"`
	Body      string
	Stars     int
	DeletedAt gorm.DeletedAt
	mark      int `gorm:"-"`
}

// bkHooks records hook calls; tests that use it do not run in parallel.
var bkHooks struct {
	mu  sync.Mutex
	log []string
}

func bkRec(hook string, desc string) {
	bkHooks.mu.Lock()
	defer bkHooks.mu.Unlock()
	bkHooks.log = append(bkHooks.log, hook+" "+desc)
}

// bkTake returns the hooks recorded since the last call and resets the log.
func bkTake() []string {
	bkHooks.mu.Lock()
	defer bkHooks.mu.Unlock()
	out := bkHooks.log
	bkHooks.log = nil
	return out
}

func ptrStr(p *uint) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

func (a *bkAccount) desc() string {
	return fmt.Sprintf("account{id=%d owner=%s name=%q balance=%d status=%q mark=%d}",
		a.ID, ptrStr(a.OwnerID), a.Name, a.Balance, a.Status, a.mark)
}
func (a *bkAccount) BeforeSave(*gorm.DB) error   { bkRec("BeforeSave", a.desc()); return nil }
func (a *bkAccount) BeforeCreate(*gorm.DB) error { bkRec("BeforeCreate", a.desc()); return nil }
func (a *bkAccount) AfterCreate(*gorm.DB) error  { bkRec("AfterCreate", a.desc()); return nil }
func (a *bkAccount) BeforeUpdate(*gorm.DB) error { bkRec("BeforeUpdate", a.desc()); return nil }
func (a *bkAccount) AfterUpdate(*gorm.DB) error  { bkRec("AfterUpdate", a.desc()); return nil }
func (a *bkAccount) AfterSave(*gorm.DB) error    { bkRec("AfterSave", a.desc()); return nil }
func (a *bkAccount) BeforeDelete(*gorm.DB) error { bkRec("BeforeDelete", a.desc()); return nil }
func (a *bkAccount) AfterDelete(*gorm.DB) error  { bkRec("AfterDelete", a.desc()); return nil }

func (o *bkOwner) desc() string {
	return fmt.Sprintf("owner{id=%d name=%q company=%s manager=%s accounts=%d mark=%d}",
		o.ID, o.Name, ptrStr(o.CompanyID), ptrStr(o.ManagerID), len(o.Accounts), o.mark)
}
func (o *bkOwner) BeforeSave(*gorm.DB) error   { bkRec("BeforeSave", o.desc()); return nil }
func (o *bkOwner) AfterCreate(*gorm.DB) error  { bkRec("AfterCreate", o.desc()); return nil }
func (o *bkOwner) AfterUpdate(*gorm.DB) error  { bkRec("AfterUpdate", o.desc()); return nil }
func (o *bkOwner) AfterDelete(*gorm.DB) error  { bkRec("AfterDelete", o.desc()); return nil }
func (o *bkOwner) BeforeDelete(*gorm.DB) error { bkRec("BeforeDelete", o.desc()); return nil }

func (n *bkNote) desc() string {
	return fmt.Sprintf("note{id=%d body=%q stars=%d deleted=%v mark=%d}", n.ID, n.Body, n.Stars, n.DeletedAt.Valid, n.mark)
}
func (n *bkNote) BeforeUpdate(*gorm.DB) error { bkRec("BeforeUpdate", n.desc()); return nil }
func (n *bkNote) AfterUpdate(*gorm.DB) error  { bkRec("AfterUpdate", n.desc()); return nil }
func (n *bkNote) BeforeDelete(*gorm.DB) error { bkRec("BeforeDelete", n.desc()); return nil }
func (n *bkNote) AfterDelete(*gorm.DB) error  { bkRec("AfterDelete", n.desc()); return nil }

func (t *bkTag) AfterCreate(*gorm.DB) error {
	bkRec("AfterCreate", fmt.Sprintf("tag{id=%d name=%q}", t.ID, t.Name))
	return nil
}

var bkModels = []any{&bkCompany{}, &bkOwner{}, &bkProfile{}, &bkAccount{}, &bkLang{}, &bkTag{}, &bkOwnerTag{}, &bkToy{}, &bkNote{}}

// bkTxModes runs fn with GORM's default transaction and without it.
func bkTxModes(t *testing.T, fn func(t *testing.T, tw *twin)) {
	for _, skip := range []bool{false, true} {
		name := "DefaultTransaction"
		if skip {
			name = "SkipDefaultTransaction"
		}
		t.Run(name, func(t *testing.T) {
			tw := newTwin(t, twinOpts{
				models: bkModels,
				gorm:   func() *gorm.Config { return &gorm.Config{SkipDefaultTransaction: skip} },
				setup: func(db *gorm.DB) error {
					return db.SetupJoinTable(&bkOwner{}, "Tags", &bkOwnerTag{})
				},
			})
			bkTake()
			fn(t, tw)
		})
	}
}

// bkOut is what a call returned on one side: the error, RowsAffected, the
// destination's contents and the hooks that ran.
type bkOut struct {
	Err   string
	Rows  int64
	Dest  any
	Hooks []string
}

func bkRes(tx *gorm.DB, dest any) bkOut {
	o := bkOut{Rows: tx.RowsAffected, Dest: dest, Hooks: bkTake()}
	if tx.Error != nil {
		o.Err = tx.Error.Error()
	}
	return o
}

func u(n uint) *uint { return &n }

// bkCheck asserts the rows and Redis at rest, then reads every cached model
// through the cache on both sides (fills, then hits) and compares.
func bkCheck(t *testing.T, tw *twin) {
	t.Helper()
	tw.sameRows(t)
	tw.settled(t)
	for i := 0; i < 2; i++ {
		tw.same(t, "cached reads after the write", func(db *gorm.DB) any {
			var out []any
			for _, read := range []func() any{
				func() any { var v []bkAccount; return bkReadAll(db, &v) },
				func() any { var v []bkOwner; return bkReadAll(db, &v) },
				func() any { var v []bkCompany; return bkReadAll(db, &v) },
				func() any { var v []bkProfile; return bkReadAll(db, &v) },
				func() any { var v []bkTag; return bkReadAll(db, &v) },
				func() any { var v []bkToy; return bkReadAll(db, &v) },
				func() any { var v []bkLang; return bkReadAll(db, &v) },
				func() any { var v []bkNote; return bkReadAll(db, &v) },
			} {
				out = append(out, read())
			}
			bkTake()
			return out
		})
	}
	tw.settled(t)
}

// bkReadAll reads every row of dest's model one by one through the cache.
func bkReadAll[T any](db *gorm.DB, dest *[]T) any {
	var ids []uint
	var zero T
	if err := db.Session(&gorm.Session{NewDB: true}).Model(&zero).Order("id").Pluck("id", &ids).Error; err != nil {
		return err.Error()
	}
	var out []any
	for _, id := range append(ids, 999) {
		var v T
		err := db.Scopes(writethrough.Cached).First(&v, id).Error
		out = append(out, res(v, err))
	}
	*dest = nil
	return out
}

func TestNestedAssociationWritesBehaveAsGORM(t *testing.T) {
	bkTxModes(t, func(t *testing.T, tw *twin) {
		tw.same(t, "create an owner with every kind of association", func(db *gorm.DB) any {
			o := bkOwner{
				Name:     "ann",
				mark:     1,
				Company:  &bkCompany{Name: "acme"},
				Manager:  &bkOwner{Name: "boss"},
				Profile:  &bkProfile{Bio: "hi"},
				Accounts: []*bkAccount{{Name: "a1", Balance: 10, mark: 2}, {Name: "a2", Balance: 20}},
				Langs:    []bkLang{{Code: "en"}, {Code: "fr"}},
				Tags:     []bkTag{{Name: "t1"}, {Name: "t2"}},
				Toys:     []bkToy{{Name: "ball"}},
			}
			tx := db.Create(&o)
			return bkRes(tx, o.desc())
		})
		bkCheck(t, tw)

		tw.same(t, "create a slice of pointers", func(db *gorm.DB) any {
			accs := []*bkAccount{{Name: "p1", OwnerID: u(1)}, {Name: "p2", Balance: 5}}
			tx := db.Create(&accs)
			return bkRes(tx, []string{accs[0].desc(), accs[1].desc()})
		})
		tw.same(t, "create a slice passed by value", func(db *gorm.DB) any {
			accs := []*bkAccount{{Name: "v1"}, {Name: "v2", Balance: 7}}
			tx := db.Create(accs)
			return bkRes(tx, []string{accs[0].desc(), accs[1].desc()})
		})
		tw.same(t, "create a slice of values by value", func(db *gorm.DB) any {
			accs := []bkAccount{{Name: "w1"}}
			tx := db.Create(&accs)
			return bkRes(tx, accs[0].desc())
		})
		bkCheck(t, tw)

		tw.same(t, "save a parent with an appended child", func(db *gorm.DB) any {
			var o bkOwner
			if err := db.Preload("Accounts").First(&o, 1).Error; err != nil {
				return err.Error()
			}
			bkTake()
			o.Name = "ann2"
			o.Accounts = append(o.Accounts, &bkAccount{Name: "a3", Balance: 30})
			o.Tags = append(o.Tags, bkTag{Name: "t3"})
			tx := db.Save(&o)
			return bkRes(tx, o.desc())
		})
		bkCheck(t, tw)

		tw.same(t, "upsert of existing children: DO UPDATE of the foreign key, the rest stays", func(db *gorm.DB) any {
			// Account 3 exists with another name and owner; GORM's
			// association save updates only its owner_id.
			o := bkOwner{Name: "cid", Accounts: []*bkAccount{{ID: 3, Name: "in memory only", Balance: 99}},
				Company: &bkCompany{ID: 1, Name: "not written: DO NOTHING"}}
			tx := db.Create(&o)
			return bkRes(tx, o.desc())
		})
		bkCheck(t, tw)

		tw.same(t, "FullSaveAssociations updates every column of existing children", func(db *gorm.DB) any {
			o := bkOwner{ID: 1, Name: "full", Accounts: []*bkAccount{{ID: 1, Name: "full a1", Balance: 11}},
				Company: &bkCompany{ID: 1, Name: "acme2"}}
			tx := db.Session(&gorm.Session{FullSaveAssociations: true}).Save(&o)
			return bkRes(tx, o.desc())
		})
		bkCheck(t, tw)

		tw.same(t, "Omit(clause.Associations) and Select(\"Accounts\")", func(db *gorm.DB) any {
			o := bkOwner{Name: "omit", Accounts: []*bkAccount{{Name: "not saved"}}}
			tx1 := db.Omit(clause.Associations).Create(&o)
			p := bkOwner{Name: "sel", Accounts: []*bkAccount{{Name: "saved"}}, Profile: &bkProfile{Bio: "not saved"}}
			tx2 := db.Select("Name", "Accounts").Create(&p)
			return []bkOut{bkRes(tx1, o.desc()), bkRes(tx2, p.desc())}
		})
		bkCheck(t, tw)
	})
}

func TestAssociationModeWritesBehaveAsGORM(t *testing.T) {
	bkTxModes(t, func(t *testing.T, tw *twin) {
		tw.same(t, "seed", func(db *gorm.DB) any {
			o := bkOwner{Name: "ann", Accounts: []*bkAccount{{Name: "a1"}, {Name: "a2"}},
				Langs: []bkLang{{Code: "en"}}, Tags: []bkTag{{Name: "t1"}, {Name: "t2"}}}
			return bkRes(db.Create(&o), o.desc())
		})
		bkCheck(t, tw)
		owner := func(db *gorm.DB) *bkOwner {
			o := &bkOwner{}
			if err := db.First(o, 1).Error; err != nil {
				panic(err)
			}
			bkTake()
			return o
		}
		tw.same(t, "Append new has-many and many2many rows", func(db *gorm.DB) any {
			o := owner(db)
			e1 := db.Model(o).Association("Accounts").Append(&bkAccount{Name: "a3"}, &bkAccount{Name: "a4"})
			e2 := db.Model(o).Association("Tags").Append(&bkTag{Name: "t3"})
			e3 := db.Model(o).Association("Langs").Append([]bkLang{{Code: "de"}})
			return []any{fmt.Sprint(e1, e2, e3), bkTake()}
		})
		bkCheck(t, tw)
		tw.same(t, "Replace with new rows", func(db *gorm.DB) any {
			o := owner(db)
			e1 := db.Model(o).Association("Accounts").Replace([]*bkAccount{{Name: "r1"}, {ID: 1, Name: "a1 kept"}})
			e2 := db.Model(o).Association("Tags").Replace([]bkTag{{Name: "r-tag"}})
			return []any{fmt.Sprint(e1, e2), bkTake()}
		})
		bkCheck(t, tw)
		tw.same(t, "Delete one has-many child and one many2many link", func(db *gorm.DB) any {
			o := owner(db)
			e1 := db.Model(o).Association("Accounts").Delete(&bkAccount{ID: 1})
			e2 := db.Model(o).Association("Langs").Delete(&bkLang{ID: 1})
			return []any{fmt.Sprint(e1, e2), bkTake()}
		})
		bkCheck(t, tw)
		tw.same(t, "Clear", func(db *gorm.DB) any {
			o := owner(db)
			e1 := db.Model(o).Association("Accounts").Clear()
			e2 := db.Model(o).Association("Tags").Clear()
			return []any{fmt.Sprint(e1, e2), bkTake()}
		})
		bkCheck(t, tw)
		tw.same(t, "Unscoped Clear deletes the children", func(db *gorm.DB) any {
			o := owner(db)
			_ = db.Model(o).Association("Accounts").Append(&bkAccount{Name: "gone"})
			bkTake()
			e1 := db.Model(o).Unscoped().Association("Accounts").Clear()
			return []any{fmt.Sprint(e1), bkTake()}
		})
		bkCheck(t, tw)
	})
}

func bkSeedAccounts(t *testing.T, tw *twin) {
	t.Helper()
	tw.same(t, "seed", func(db *gorm.DB) any {
		o := bkOwner{Name: "ann"}
		if err := db.Create(&o).Error; err != nil {
			return err.Error()
		}
		accs := []bkAccount{{Name: "a", Balance: 1, OwnerID: &o.ID}, {Name: "b", Balance: 2, OwnerID: &o.ID},
			{Name: "c", Balance: 3}, {Name: "d", Balance: 4}}
		notes := []bkNote{{Body: "n1", Stars: 1}, {Body: "n2", Stars: 2}, {Body: "n3", Stars: 3}}
		return []bkOut{bkRes(db.Create(&accs), nil), bkRes(db.Create(&notes), nil)}
	})
	bkCheck(t, tw) // fills every key, so stale entries would show
}

func TestBulkWritesRunHooksAsGORM(t *testing.T) {
	bkTxModes(t, func(t *testing.T, tw *twin) {
		bkSeedAccounts(t, tw)
		tw.same(t, "bulk Update: the model receives the value, hooks run once on it", func(db *gorm.DB) any {
			m := bkAccount{mark: 5}
			tx := db.Model(&m).Where("balance >= ?", 2).Update("name", "bulk")
			return bkRes(tx, m.desc())
		})
		tw.same(t, "bulk Update that matches nothing still runs the hooks once", func(db *gorm.DB) any {
			m := bkAccount{mark: 6}
			tx := db.Model(&m).Where("balance > ?", 100).Updates(map[string]any{"name": "none"})
			return bkRes(tx, m.desc())
		})
		tw.same(t, "bulk Updates with a struct", func(db *gorm.DB) any {
			m := bkAccount{mark: 7}
			tx := db.Model(&m).Where("name = ?", "bulk").Updates(bkAccount{Balance: 50, mark: 8})
			return bkRes(tx, m.desc())
		})
		tw.same(t, "bulk UpdateColumn skips hooks", func(db *gorm.DB) any {
			m := bkAccount{}
			tx := db.Model(&m).Where("balance = ?", 50).UpdateColumn("balance", gorm.Expr("balance + 1"))
			return bkRes(tx, m.desc())
		})
		bkCheck(t, tw)
		tw.same(t, "bulk Delete runs the hooks once on the model", func(db *gorm.DB) any {
			m := bkAccount{mark: 9}
			tx := db.Where("balance = ?", 1).Delete(&m)
			return bkRes(tx, m.desc())
		})
		tw.same(t, "bulk soft Delete: the model gets deleted_at, hooks once", func(db *gorm.DB) any {
			m := bkNote{mark: 10}
			tx := db.Where("stars >= ?", 2).Delete(&m)
			return bkRes(tx, m.desc())
		})
		tw.same(t, "bulk Delete that matches nothing", func(db *gorm.DB) any {
			m := bkNote{mark: 11}
			tx := db.Where("stars > ?", 100).Delete(&m)
			return bkRes(tx, m.desc())
		})
		tw.same(t, "bulk Delete into a slice model", func(db *gorm.DB) any {
			var ms []bkAccount
			tx := db.Model(&bkAccount{}).Where("balance = ?", 2).Delete(&ms)
			return bkRes(tx, len(ms))
		})
		bkCheck(t, tw)
	})
}

func TestReturningOnBulkWritesGivesWhatGORMGives(t *testing.T) {
	bkTxModes(t, func(t *testing.T, tw *twin) {
		bkSeedAccounts(t, tw)
		tw.same(t, "Update with RETURNING * into a slice", func(db *gorm.DB) any {
			var back []bkAccount
			tx := db.Model(&back).Clauses(clause.Returning{}).Where("balance >= ?", 3).Update("name", "ret")
			return bkRes(tx, bkDescs(back))
		})
		tw.same(t, "Update with RETURNING of a column that is not the key", func(db *gorm.DB) any {
			var back []bkAccount
			tx := db.Model(&back).Clauses(clause.Returning{Columns: []clause.Column{{Name: "name"}}}).
				Where("balance >= ?", 3).Update("name", "ret2")
			return bkRes(tx, bkDescs(back))
		})
		tw.same(t, "Updates with RETURNING into a struct model (GORM scans one row)", func(db *gorm.DB) any {
			m := bkAccount{mark: 3}
			tx := db.Model(&m).Clauses(clause.Returning{}).Where("balance >= ?", 3).Updates(map[string]any{"balance": 40})
			return bkRes(tx, m.desc())
		})
		tw.same(t, "Updates of loaded rows with RETURNING of some columns", func(db *gorm.DB) any {
			var users []bkAccount
			if err := db.Order("id").Find(&users).Error; err != nil {
				return err.Error()
			}
			bkTake()
			tx := db.Model(&users).Clauses(clause.Returning{Columns: []clause.Column{{Name: "name"}, {Name: "balance"}}}).
				Updates(map[string]any{"status": "frozen"})
			return bkRes(tx, bkDescs(users))
		})
		bkCheck(t, tw)
		tw.same(t, "Delete with RETURNING into a slice", func(db *gorm.DB) any {
			var deleted []bkAccount
			tx := db.Clauses(clause.Returning{}).Where("balance = ?", 40).Delete(&deleted)
			return bkRes(tx, bkDescs(deleted))
		})
		tw.same(t, "soft Delete with RETURNING of some columns into a map slice", func(db *gorm.DB) any {
			var deleted []map[string]any
			tx := db.Model(&bkNote{}).Clauses(clause.Returning{Columns: []clause.Column{{Name: "body"}}}).
				Where("stars >= ?", 2).Delete(&deleted)
			return bkRes(tx, deleted)
		})
		tw.same(t, "Delete with RETURNING into a struct", func(db *gorm.DB) any {
			var one bkAccount
			tx := db.Clauses(clause.Returning{}).Where("balance > ?", 0).Delete(&one)
			return bkRes(tx, one.desc())
		})
		bkCheck(t, tw)
	})
}

func bkDescs(as []bkAccount) []string {
	var out []string
	for i := range as {
		out = append(out, as[i].desc())
	}
	return out
}

func TestBulkWritesWithFromAndJoins(t *testing.T) {
	bkTxModes(t, func(t *testing.T, tw *twin) {
		bkSeedAccounts(t, tw)
		from := clause.From{Tables: []clause.Table{{Name: "bk_owners"}}}
		tw.same(t, "UPDATE ... FROM a table that also has an id", func(db *gorm.DB) any {
			m := bkAccount{}
			tx := db.Model(&m).Clauses(from).
				Where("bk_owners.id = bk_accounts.owner_id AND bk_owners.name = ?", "ann").
				Update("name", "owned")
			return bkRes(tx, m.desc())
		})
		tw.same(t, "UPDATE ... FROM with RETURNING", func(db *gorm.DB) any {
			var back []bkAccount
			tx := db.Model(&back).Clauses(from, clause.Returning{Columns: []clause.Column{{Table: "bk_accounts", Name: "name"}}}).
				Where("bk_owners.id = bk_accounts.owner_id").
				Update("balance", 77)
			return bkRes(tx, bkDescs(back))
		})
		tw.same(t, "Update with Joins", func(db *gorm.DB) any {
			m := bkAccount{}
			tx := db.Model(&m).Joins("JOIN bk_owners ON bk_owners.id = bk_accounts.owner_id").
				Where("bk_accounts.balance = ?", 77).Update("status", "joined")
			return bkRes(tx, m.desc())
		})
		bkCheck(t, tw)
		tw.same(t, "soft Delete with FROM", func(db *gorm.DB) any {
			m := bkNote{}
			tx := db.Clauses(clause.From{Tables: []clause.Table{{Name: "bk_notes"}, {Name: "bk_owners"}}}).
				Where("bk_owners.name = ? AND bk_notes.stars = ?", "ann", 1).Delete(&m)
			return bkRes(tx, m.desc())
		})
		tw.same(t, "Delete with USING", func(db *gorm.DB) any {
			m := bkAccount{}
			tx := db.Clauses(clause.From{Tables: []clause.Table{{Name: "bk_accounts"}}, Joins: []clause.Join{{
				Type: clause.InnerJoin, Table: clause.Table{Name: "bk_owners"}, ON: clause.Where{Exprs: []clause.Expression{
					clause.Expr{SQL: "bk_owners.id = bk_accounts.owner_id"}}}}}}).
				Where("bk_owners.name = ?", "ann").Delete(&m)
			return bkRes(tx, m.desc())
		})
		bkCheck(t, tw)
	})
}

func TestGenericAssociationUpdateReachesTheCache(t *testing.T) {
	bkTxModes(t, func(t *testing.T, tw *twin) {
		tw.same(t, "seed", func(db *gorm.DB) any {
			o := bkOwner{Name: "ann", Langs: []bkLang{{Code: "en"}, {Code: "fr"}}, Accounts: []*bkAccount{{Name: "a"}}}
			return bkRes(db.Create(&o), nil)
		})
		bkCheck(t, tw)
		for _, op := range []struct {
			assoc string
			typ   clause.AssociationOpType
			set   []clause.Assignment
		}{
			{"Langs", clause.OpUpdate, []clause.Assignment{{Column: clause.Column{Name: "code"}, Value: "xx"}}},
			{"Accounts", clause.OpUpdate, []clause.Assignment{{Column: clause.Column{Name: "name"}, Value: "yy"}}},
			{"Accounts", clause.OpUnlink, nil},
			{"Langs", clause.OpUnlink, nil},
		} {
			tw.same(t, fmt.Sprintf("generic %v on %s", op.typ, op.assoc), func(db *gorm.DB) any {
				n, err := gorm.G[bkOwner](db).Where("name = ?", "ann").
					Set(clause.Association{Association: op.assoc, Type: op.typ, Set: op.set}).Update(t.Context())
				return []any{n, fmt.Sprint(err), strings.Join(bkTake(), ";")}
			})
			bkCheck(t, tw)
		}
	})
}

// An upsert whose conflict is on another column than the key updates a row
// that existed before, under a key nobody knew the statement would write.
// Without a transaction nothing orders its re-read against another writer:
// the key must be invalidated, not installed.
func TestAutocommitUpsertOnAnotherColumnInvalidates(t *testing.T) {
	tw := newTwin(t, twinOpts{
		models: bkModels,
		gorm:   func() *gorm.Config { return &gorm.Config{SkipDefaultTransaction: true} },
		setup:  func(db *gorm.DB) error { return db.SetupJoinTable(&bkOwner{}, "Tags", &bkOwnerTag{}) },
	})
	tw.same(t, "seed", func(db *gorm.DB) any { return bkRes(db.Create(&bkTag{Name: "u1"}), nil) })
	bkCheck(t, tw)

	var fired atomic.Bool
	writethrough.SetHook(tw.p, func(point, key string) {
		if point == "write:before-finalize" && strings.HasSuffix(key, ":bk_tags:1") && fired.CompareAndSwap(false, true) {
			// Another writer updates and finalizes the row between the
			// upsert's re-read and its finalize.
			require.NoError(t, tw.cached.Model(&bkTag{ID: 1}).Update("uses", 100).Error)
		}
	})
	upsert := clause.OnConflict{Columns: []clause.Column{{Name: "name"}},
		DoUpdates: clause.Assignments(map[string]any{"uses": gorm.Expr("bk_tags.uses + 1")})}
	tg := bkTag{Name: "u1"}
	require.NoError(t, tw.cached.Clauses(upsert).Create(&tg).Error)
	assert.Equal(t, uint(1), tg.ID)
	assert.True(t, fired.Load())
	writethrough.SetHook(tw.p, nil)
	tw.settled(t)
	var got bkTag
	require.NoError(t, tw.cached.Scopes(writethrough.Cached).First(&got, 1).Error)
	assert.Equal(t, 100, got.Uses)
}
