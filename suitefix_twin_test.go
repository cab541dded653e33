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
