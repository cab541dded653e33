package writethrough

import (
	"fmt"

	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// registerer is where a callback goes in one of GORM's chains: what
// db.Callback().Create().Before(...) and its kind return.
type registerer interface {
	Register(name string, fn func(*gorm.DB)) error
}

// replacing registers by replacing the callback of that name.
type replacing struct {
	p interface {
		Replace(name string, fn func(*gorm.DB)) error
	}
}

// Register replaces the callback name with fn.
func (r replacing) Register(name string, fn func(*gorm.DB)) error { return r.p.Replace(name, fn) }

// hook is one callback: its name, where it goes in its chain, and what runs.
type hook struct {
	name string
	at   registerer
	fn   func(*gorm.DB)
}

// registerCallbacks hooks the plugin into GORM's chains. Write callbacks run
// after the model's After* hooks and before GORM commits its implicit
// transaction; the query callback decorates gorm:query.
func (p *Plugin) registerCallbacks(db *gorm.DB) error {
	cb := db.Callback()
	orig := cb.Query().Get("gorm:query")
	if orig == nil {
		return fmt.Errorf("gorm:query callback not found")
	}
	hooks := []hook{
		{Name + ":bind_create", cb.Create().Before("gorm:begin_transaction"), p.bind},
		{Name + ":bind_update", cb.Update().Before("gorm:begin_transaction"), p.bind},
		{Name + ":bind_delete", cb.Delete().Before("gorm:begin_transaction"), p.bind},
		{Name + ":before_create", cb.Create().Before("gorm:create"), p.beforeWrite(kindCreate)},
		{Name + ":after_create", cb.Create().After("gorm:after_create").Before("gorm:commit_or_rollback_transaction"), p.afterWrite(kindCreate)},
		{Name + ":returned_create", cb.Create().After("gorm:create").Before("gorm:save_after_associations"), restoreReturning},
		{Name + ":before_update", cb.Update().Before("gorm:update"), p.beforeWrite(kindUpdate)},
		{Name + ":after_update", cb.Update().After("gorm:after_update").Before("gorm:commit_or_rollback_transaction"), p.afterWrite(kindUpdate)},
		{Name + ":returned_update", cb.Update().After("gorm:update").Before("gorm:save_after_associations"), restoreReturning},
		{Name + ":before_delete", cb.Delete().Before("gorm:delete"), p.beforeWrite(kindDelete)},
		{Name + ":returned_delete", cb.Delete().After("gorm:delete").Before("gorm:after_delete"), restoreReturning},
		{Name + ":after_delete", cb.Delete().After("gorm:after_delete").Before("gorm:commit_or_rollback_transaction"), p.afterWrite(kindDelete)},
		{Name + ":savepoint", cb.Raw().Before("gorm:raw"), sniffRaw},
		{"gorm:query", replacing{cb.Query()}, p.query(orig)},
	}
	if p.cfg.CDC {
		// Only a marked transaction needs to know it ran raw SQL.
		hooks = append(hooks,
			hook{Name + ":raw", cb.Raw().Before("gorm:raw"), taintRaw},
			hook{Name + ":row", cb.Row().Before("gorm:row"), taintRaw},
			// db.Raw(sql).Scan/Find/First run the caller's SQL through the
			// query callbacks: the statement's SQL is already set.
			hook{Name + ":raw_query", cb.Query().Before("gorm:query"), taintRawQuery})
	}
	for _, h := range hooks {
		if err := h.at.Register(h.name, h.fn); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
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
func sniffRaw(db *gorm.DB) {
	if db.DryRun || db.Error != nil {
		return
	}
	txhook.SniffPrepared(db.Statement.ConnPool, db.Statement.SQL.String())
}

// taintRaw marks a transaction that runs raw SQL (db.Exec, db.Raw, Row,
// Rows) other than savepoints: the plugin does not follow what it writes,
// so the transaction is not marked for change data capture (Config.CDC),
// and the consumer invalidates every key it changed. The plugin's own
// statements (reads of the catalog and of rows) write nothing.
func taintRaw(db *gorm.DB) {
	if db.DryRun || db.Error != nil {
		return
	}
	if _, own := db.Get(ownKey); own {
		return
	}
	tx, ok := txhook.Of(db.Statement.ConnPool)
	// tx is nil in a transaction the plugin did not begin: nothing to mark.
	if !ok || tx == nil || txhook.IsSavepointSQL(db.Statement.SQL.String()) {
		return
	}
	tx.Taint()
}

// taintRawQuery is taintRaw for the query callbacks, which run the
// caller's SQL when db.Raw set it, and build their own otherwise.
func taintRawQuery(db *gorm.DB) {
	if db.Statement.SQL.Len() > 0 {
		taintRaw(db)
	}
}
