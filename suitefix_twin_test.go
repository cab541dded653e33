package writethrough_test

import (
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
)

// SfBase is gorm.Model with the cache tag on its key, as GORM's own suite
// runs in the cached mode: every model embedding it is cached.
type SfBase struct {
	ID        uint `gorm:"primarykey" cache:"ttl:10m"`
	CreatedAt time.Time
	UpdatedAt time.Time
	DeletedAt gorm.DeletedAt `gorm:"index"`
}

// The models of GORM's TestForeignKeyConstraints: a has-one whose foreign
// key references members.refer.
type sfProfileHasOne struct {
	SfBase
	Name     string
	MemberID uint
}

func (sfProfileHasOne) TableName() string { return "profiles" }

type sfMemberHasOne struct {
	SfBase
	Refer   uint `gorm:"uniqueIndex"`
	Name    string
	Profile sfProfileHasOne `gorm:"Constraint:OnUpdate:CASCADE,OnDelete:CASCADE;FOREIGNKEY:MemberID;References:Refer"`
}

func (sfMemberHasOne) TableName() string { return "members" }

// The models of TestForeignKeyConstraintsBelongsTo, on the same tables: a
// belongs-to whose foreign key references profiles.refer.
type sfProfile struct {
	SfBase
	Name  string
	Refer uint `gorm:"uniqueIndex"`
}

func (sfProfile) TableName() string { return "profiles" }

type sfMember struct {
	SfBase
	Name      string
	ProfileID uint
	Profile   sfProfile `gorm:"Constraint:OnUpdate:CASCADE,OnDelete:CASCADE;FOREIGNKEY:ProfileID;References:Refer"`
}

func (sfMember) TableName() string { return "members" }

// TestCascadeReferencesNonKeyColumn: a belongs-to whose constraint
// references a column other than the parent's key cascades on update and
// delete of the parent, even when other models this process saw put
// different columns (and constraints) on the same tables.
func TestCascadeReferencesNonKeyColumn(t *testing.T) {
	for _, earlier := range []bool{false, true} {
		name := "only these models"
		if earlier {
			name = "after other models on the same tables"
		}
		t.Run(name, func(t *testing.T) {
			cfg := writethrough.Config{}
			if earlier {
				cfg.Models = []any{&sfMemberHasOne{}, &sfProfileHasOne{}}
			}
			tw := newTwin(t, twinOpts{models: []any{&sfProfile{}, &sfMember{}}, cfg: cfg})
			tw.same(t, "create", func(db *gorm.DB) any {
				m := sfMember{Name: "m", Profile: sfProfile{Name: "p", Refer: 1}}
				err := db.Create(&m).Error
				return res([]any{m.ID, m.ProfileID, m.Profile.ID}, err)
			})
			read := func(db *gorm.DB) any {
				var m sfMember
				err := db.Scopes(writethrough.Cached).First(&m, 1).Error
				return res([]any{m.ID, m.ProfileID, m.Name}, err)
			}
			tw.same(t, "read the member (fills)", read)
			tw.same(t, "update the referenced column", func(db *gorm.DB) any {
				var p sfProfile
				if err := db.First(&p, 1).Error; err != nil {
					return res(nil, err)
				}
				r := db.Model(&p).Update("Refer", 100)
				return res(r.RowsAffected, r.Error)
			})
			tw.same(t, "read the member after the cascade", read)
			tw.sameRows(t)
			tw.settled(t)
			tw.same(t, "hard-delete the parent", func(db *gorm.DB) any {
				r := db.Unscoped().Delete(&sfProfile{SfBase: SfBase{ID: 1}})
				return res(r.RowsAffected, r.Error)
			})
			tw.same(t, "read the member after the delete cascade", read)
			tw.sameRows(t)
			tw.settled(t)
		})
	}
}

// sfUser is a cached gorm.Model-style model on table users.
type sfUser struct {
	SfBase
	Name string
	Age  int
}

func (sfUser) TableName() string { return "users" }

// TestCreateMapWithoutKey: a Create of maps that leaves the primary key to
// the database runs as in plain GORM, and the keys of the rows it created
// hold no stale entry (a "not found" tombstone read before is gone).
func TestCreateMapWithoutKey(t *testing.T) {
	for _, tx := range []bool{false, true} {
		t.Run(map[bool]string{false: "SkipDefaultTransaction", true: "default transaction"}[tx], func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: []any{&sfUser{}}, gorm: func() *gorm.Config {
				return &gorm.Config{SkipDefaultTransaction: !tx}
			}})
			read := func(id uint) func(db *gorm.DB) any {
				return func(db *gorm.DB) any {
					var u sfUser
					err := db.Scopes(writethrough.Cached).First(&u, id).Error
					return res([]any{u.ID, u.Name, u.Age}, err)
				}
			}
			for id := uint(1); id <= 6; id++ {
				tw.same(t, "read an absent row (tombstone)", read(id))
			}
			tw.same(t, "Table(users).Create(map)", func(db *gorm.DB) any {
				m := map[string]any{"name": "a", "age": 1, "created_at": twinNow, "updated_at": twinNow}
				r := db.Table("users").Create(m)
				return res([]any{r.RowsAffected, m}, r.Error)
			})
			tw.same(t, "Table(users).Create([]map)", func(db *gorm.DB) any {
				ms := []map[string]any{{"name": "b", "age": 2}, {"name": "c", "age": 3}}
				r := db.Table("users").Create(ms)
				return res([]any{r.RowsAffected, ms}, r.Error)
			})
			tw.same(t, "Model(&User{}).Create(map)", func(db *gorm.DB) any {
				m := map[string]any{"Name": "d", "Age": 4}
				r := db.Model(&sfUser{}).Create(m)
				return res([]any{r.RowsAffected, m}, r.Error)
			})
			tw.same(t, "Model(&User{}).Create([]map)", func(db *gorm.DB) any {
				ms := []map[string]any{{"Name": "e", "Age": 5}, {"Name": "f", "Age": 6}}
				r := db.Model(&sfUser{}).Create(ms)
				return res([]any{r.RowsAffected, ms}, r.Error)
			})
			for id := uint(1); id <= 6; id++ {
				tw.same(t, "read the created row", read(id))
			}
			tw.sameRows(t)
			tw.settled(t)
		})
	}
}

// sfUserLocal is a second cached model on table users, as GORM's tests
// declare a local `type user struct { gorm.Model; ... }`: the same default
// key, another row encoding.
type sfUserLocal struct {
	SfBase
	Name string
}

func (sfUserLocal) TableName() string { return "users" }

// sfUserOther is a third cached model on table users, under another key
// template.
type sfUserOther struct {
	ID   uint `gorm:"primarykey" cache:"ttl:10m;key:{prefix}:u2:{id}"`
	Name string
	Age  int
}

func (sfUserOther) TableName() string { return "users" }

// TestTableSharedByCachedModels: writes naming a table that several cached
// models share run as in plain GORM, and no model serves a row the write
// changed, whichever model (or none) the write went through.
func TestTableSharedByCachedModels(t *testing.T) {
	for _, tx := range []bool{false, true} {
		t.Run(map[bool]string{false: "SkipDefaultTransaction", true: "default transaction"}[tx], func(t *testing.T) {
			tw := newTwin(t, twinOpts{models: []any{&sfUser{}, &sfUserLocal{}, &sfUserOther{}}, gorm: func() *gorm.Config {
				return &gorm.Config{SkipDefaultTransaction: !tx}
			}, setup: func(db *gorm.DB) error {
				// AutoMigrate migrates one model per table: the widest first.
				return db.AutoMigrate(&sfUser{})
			}})
			tw.same(t, "create", func(db *gorm.DB) any {
				us := []sfUser{{Name: "a", Age: 1}, {Name: "b", Age: 2}, {Name: "c", Age: 3}}
				r := db.Create(&us)
				return res(r.RowsAffected, r.Error)
			})
			readAll := func(what string) {
				t.Helper()
				for id := uint(1); id <= 3; id++ {
					tw.same(t, what+": read User", func(db *gorm.DB) any {
						var u sfUser
						err := db.Scopes(writethrough.Cached).First(&u, id).Error
						return res([]any{u.ID, u.Name, u.Age}, err)
					})
					tw.same(t, what+": read user", func(db *gorm.DB) any {
						var u sfUserLocal
						err := db.Scopes(writethrough.Cached).First(&u, id).Error
						return res([]any{u.ID, u.Name}, err)
					})
					tw.same(t, what+": read user under another key", func(db *gorm.DB) any {
						var u sfUserOther
						err := db.Scopes(writethrough.Cached).First(&u, id).Error
						return res([]any{u.ID, u.Name, u.Age}, err)
					})
				}
			}
			readAll("fill")
			readAll("fill again (hits)")
			writes := []struct {
				name string
				fn   func(db *gorm.DB) *gorm.DB
			}{
				{"Table(users).Where(name in).Updates(User)", func(db *gorm.DB) *gorm.DB {
					return db.Table("users").Where("name in ?", []string{"a", "b"}).Updates(sfUser{Name: "x"})
				}},
				{"Table(users).Where(map).Update", func(db *gorm.DB) *gorm.DB {
					return db.Table("users").Where(map[string]any{"name": "c"}).Update("age", 20)
				}},
				{"Table(users).Update with a subquery", func(db *gorm.DB) *gorm.DB {
					return db.Table("users").Where("1 = 1").Update("name", db.Session(&gorm.Session{NewDB: true}).Table("users AS u").Select("max(u.name) || '!'"))
				}},
				{"Model(&user{}) update", func(db *gorm.DB) *gorm.DB {
					return db.Model(&sfUserLocal{}).Where("id = ?", 1).Update("name", "local")
				}},
				{"Model(&User{}) update by key", func(db *gorm.DB) *gorm.DB {
					return db.Model(&sfUser{SfBase: SfBase{ID: 2}}).Update("age", 40)
				}},
				{"Table(users).Create(map)", func(db *gorm.DB) *gorm.DB {
					return db.Table("users").Create(map[string]any{"name": "n", "age": 5})
				}},
				{"Table(users) delete", func(db *gorm.DB) *gorm.DB {
					return db.Table("users").Where("id = ?", 3).Delete(nil)
				}},
			}
			for _, w := range writes {
				got := tw.same(t, w.name, func(db *gorm.DB) any {
					r := w.fn(db)
					return res(r.RowsAffected, r.Error)
				}).(result)
				if got.Err != "" || got.Value == int64(0) {
					t.Fatalf("%s: %+v, want rows written", w.name, got)
				}
				readAll("after " + w.name)
				tw.sameRows(t)
				tw.settled(t)
			}
		})
	}
}
