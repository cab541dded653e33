package writethrough

import (
	"fmt"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// registerCallbacks hooks the plugin into GORM's chains. Write callbacks run
// after the model's After* hooks and before GORM commits its implicit
// transaction; the query callback decorates gorm:query.
func (p *Plugin) registerCallbacks(db *gorm.DB) error {
	cb := db.Callback()
	orig := cb.Query().Get("gorm:query")
	if orig == nil {
		return fmt.Errorf("gorm:query callback not found")
	}
	regs := []struct {
		name string
		reg  func() error
	}{
		{"bind_create", func() error {
			return cb.Create().Before("gorm:begin_transaction").Register(Name+":bind_create", p.bind)
		}},
		{"bind_update", func() error {
			return cb.Update().Before("gorm:begin_transaction").Register(Name+":bind_update", p.bind)
		}},
		{"bind_delete", func() error {
			return cb.Delete().Before("gorm:begin_transaction").Register(Name+":bind_delete", p.bind)
		}},
		{"before_create", func() error {
			return cb.Create().Before("gorm:create").Register(Name+":before_create", p.beforeWrite(kindCreate))
		}},
		{"after_create", func() error {
			return cb.Create().After("gorm:after_create").Before("gorm:commit_or_rollback_transaction").
				Register(Name+":after_create", p.afterWrite(kindCreate))
		}},
		{"before_update", func() error {
			return cb.Update().Before("gorm:update").Register(Name+":before_update", p.beforeWrite(kindUpdate))
		}},
		{"after_update", func() error {
			return cb.Update().After("gorm:after_update").Before("gorm:commit_or_rollback_transaction").
				Register(Name+":after_update", p.afterWrite(kindUpdate))
		}},
		{"returned_update", func() error {
			return cb.Update().After("gorm:update").Before("gorm:save_after_associations").
				Register(Name+":returned_update", restoreReturning)
		}},
		{"before_delete", func() error {
			return cb.Delete().Before("gorm:delete").Register(Name+":before_delete", p.beforeWrite(kindDelete))
		}},
		{"returned_delete", func() error {
			return cb.Delete().After("gorm:delete").Before("gorm:after_delete").
				Register(Name+":returned_delete", restoreReturning)
		}},
		{"after_delete", func() error {
			return cb.Delete().After("gorm:after_delete").Before("gorm:commit_or_rollback_transaction").
				Register(Name+":after_delete", p.afterWrite(kindDelete))
		}},
		{"savepoint", func() error {
			return cb.Raw().Before("gorm:raw").Register(Name+":savepoint", p.sniffRaw)
		}},
		{"query", func() error {
			return cb.Query().Replace("gorm:query", p.query(orig))
		}},
	}
	for _, r := range regs {
		if err := r.reg(); err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	return nil
}

// bind re-wraps a pool that another plugin (dbresolver) swapped into the
// statement, so that the transaction GORM is about to begin is ours.
func (p *Plugin) bind(db *gorm.DB) {
	txhook.Bind(db.Statement, txOwner{p})
}

// sniffRaw follows savepoints that a user's own tx.Exec sends through
// GORM's prepared-statement transaction, which bypasses the wrapped
// transaction's ExecContext.
func (p *Plugin) sniffRaw(db *gorm.DB) {
	if db.DryRun || db.Error != nil {
		return
	}
	txhook.SniffPrepared(db.Statement.ConnPool, db.Statement.SQL.String())
}
