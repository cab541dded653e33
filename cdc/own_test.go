package cdc_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/cdc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// The models of an ordinary application: gorm.Model with a unique string,
// children that cascade, a uuid key filled by the database, a hook, a
// string key.
type Shopper struct {
	gorm.Model `cache:"ttl:1h"`
	Email      string `gorm:"uniqueIndex"`
	Name       string
	Baskets    []Basket `gorm:"constraint:OnUpdate:CASCADE,OnDelete:CASCADE"`
}

type Basket struct {
	ID        string `gorm:"primaryKey;type:uuid;default:gen_random_uuid()" cache:"ttl:1h"`
	ShopperID uint
	Status    string
	Touched   int
}

func (b *Basket) BeforeSave(*gorm.DB) error { b.Touched++; return nil }

type Label struct {
	Code string `gorm:"primaryKey" cache:"ttl:1h"`
	Text string
}

// TestEveryWriteOfThePluginIsItsOwn: with Config.CDC, every transaction a
// GORM write through the plugin commits carries the plugin's mark, so the
// consumer leaves the keys it installed, whatever the statement's shape:
// nested creates, saves, updates of every form, soft and hard deletes that
// cascade, key changes, upserts, bulk writes, associations. Only raw SQL
// takes the mark away.
func TestEveryWriteOfThePluginIsItsOwn(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	r := newRigWith(t, rdb, writethrough.Config{Prefix: prefix, CDC: true}, &Shopper{}, &Basket{}, &Label{})
	var mu sync.Mutex
	var applied []bool // Own, per applied transaction that changed keys
	r.cfg.OnApply = func(a cdc.Applied) {
		if a.Keys == 0 && a.Truncates == 0 {
			return
		}
		mu.Lock()
		applied = append(applied, a.Own)
		mu.Unlock()
	}
	c := r.start()
	ctx := context.Background()
	sync := func() {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.Sync(sctx); err != nil {
			t.Fatal(err)
		}
	}
	db := r.db
	var s Shopper
	steps := []struct {
		name string
		raw  bool // runs raw SQL: not the plugin's own
		run  func() error
	}{
		{"nested create", false, func() error {
			s = Shopper{Email: "a@example.com", Name: "A", Baskets: []Basket{{Status: "open"}, {Status: "new"}}}
			return db.Create(&s).Error
		}},
		{"save", false, func() error { s.Name = "A2"; return db.Save(&s).Error }},
		{"update", false, func() error { return db.Model(&s).Update("name", "A3").Error }},
		{"updates map", false, func() error { return db.Model(&s).Updates(map[string]any{"name": "A4"}).Error }},
		{"updates struct", false, func() error { return db.Model(&s).Updates(Shopper{Name: "A5"}).Error }},
		{"update column", false, func() error { return db.Model(&s).UpdateColumn("name", "A6").Error }},
		{"select updates", false, func() error {
			return db.Model(&s).Select("name").Updates(Shopper{Name: "A7"}).Error
		}},
		{"bulk update", false, func() error {
			return db.Model(&Basket{}).Where("shopper_id = ?", s.ID).Update("status", "paid").Error
		}},
		{"save child", false, func() error { b := s.Baskets[0]; b.Status = "kept"; return db.Save(&b).Error }},
		{"association append", false, func() error {
			return db.Model(&s).Association("Baskets").Append(&Basket{Status: "added"})
		}},
		{"in a transaction, nested", false, func() error {
			return db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&s).Update("name", "T1").Error; err != nil {
					return err
				}
				return tx.Transaction(func(tx2 *gorm.DB) error {
					return tx2.Model(&Basket{}).Where("id = ?", s.Baskets[1].ID).Update("status", "nested").Error
				})
			})
		}},
		{"upsert", false, func() error {
			return db.Clauses(clause.OnConflict{UpdateAll: true}).Create(&Label{Code: "x", Text: "one"}).Error
		}},
		{"upsert again", false, func() error {
			return db.Clauses(clause.OnConflict{UpdateAll: true}).Create(&Label{Code: "x", Text: "two"}).Error
		}},
		{"first or create", false, func() error {
			var l Label
			return db.Where(Label{Code: "y"}).Attrs(Label{Text: "y"}).FirstOrCreate(&l).Error
		}},
		{"key change", false, func() error {
			return db.Model(&Label{Code: "y"}).Update("code", "z").Error
		}},
		{"db.Table update", false, func() error {
			return db.Table("labels").Where("code = ?", "z").Update("text", "tabled").Error
		}},
		{"soft delete", false, func() error { return db.Delete(&s).Error }},
		{"unscoped delete that cascades", false, func() error { return db.Unscoped().Delete(&s).Error }},
		{"raw query in a transaction", true, func() error {
			return db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&Label{Code: "x"}).Update("text", "four").Error; err != nil {
					return err
				}
				var ls []Label // Find: the query callbacks, not Raw's or Row's
				return tx.Raw("UPDATE labels SET text = 'rq' WHERE code = 'x' RETURNING *").Find(&ls).Error
			})
		}},
		{"raw exec in a transaction", true, func() error {
			return db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Model(&Label{Code: "x"}).Update("text", "three").Error; err != nil {
					return err
				}
				return tx.Exec("UPDATE labels SET text = 'raw' WHERE code = 'x'").Error
			})
		}},
	}
	for _, st := range steps {
		mu.Lock()
		applied = applied[:0]
		mu.Unlock()
		if err := st.run(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		sync()
		mu.Lock()
		got := append([]bool(nil), applied...)
		mu.Unlock()
		if len(got) == 0 {
			t.Fatalf("%s: the consumer applied no transaction", st.name)
		}
		for _, own := range got {
			if own == st.raw {
				t.Errorf("%s: a transaction the consumer took for the plugin's own: %t, want %t (applied: %v)", st.name, own, !st.raw, got)
				break
			}
		}
	}
}

// TestARowATriggerChangesLaterInTheTransactionIsInvalidated: a GORM
// transaction updates a shopper through the plugin, then creates a basket
// whose trigger changes the shopper again. The plugin installed the row it
// re-read after its update, before the trigger; the transaction is its own,
// but it changed the shopper twice, so the consumer invalidates the key.
func TestARowATriggerChangesLaterInTheTransactionIsInvalidated(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	r := newRigWith(t, rdb, writethrough.Config{Prefix: prefix, CDC: true}, &Shopper{}, &Basket{})
	r.exec(`CREATE FUNCTION basket_touches_shopper() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	UPDATE shoppers SET name = name || '+' WHERE id = NEW.shopper_id;
	RETURN NEW;
END $$`)
	r.exec(`CREATE TRIGGER basket_touches_shopper AFTER INSERT ON baskets FOR EACH ROW EXECUTE FUNCTION basket_touches_shopper()`)
	c := r.start()
	s := Shopper{Email: "t@example.com", Name: "T"}
	if err := r.db.Create(&s).Error; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The create applied first: its change must not meet the update's
	// pending entry (which it would mark, hiding what this test is about).
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	err := r.db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Model(&s).Update("name", "T2").Error; err != nil {
			return err
		}
		return tx.Create(&Basket{ShopperID: s.ID, Status: "new"}).Error
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	e, err := writethrough.Inspect(ctx, r.db, &Shopper{}, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("entry after Sync: %s %+v; consumer %+v", e.State, e.Row, c.Stats())
	var cached, db Shopper
	if err := r.db.Scopes(writethrough.Cached).First(&cached, s.ID).Error; err != nil {
		t.Fatal(err)
	}
	if err := r.db.Scopes(writethrough.Uncached).First(&db, s.ID).Error; err != nil {
		t.Fatal(err)
	}
	if db.Name != "T2+" || cached.Name != db.Name {
		t.Fatalf("after Sync the cached shopper is named %q, the database's %q", cached.Name, db.Name)
	}
}
