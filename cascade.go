package writethrough

import (
	"context"
	"fmt"
	"reflect"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
	"github.com/gorm-writethrough/writethrough/internal/txhook"
)

// Foreign keys with ON DELETE CASCADE / SET NULL / SET DEFAULT (and the
// same ON UPDATE) change rows the statement does not name: deleting a
// parent deletes its children in the database, and their cached entries
// would stay. The plugin follows the constraints GORM declares on the
// models it has seen (`gorm:"constraint:OnDelete:CASCADE"` on a has-one,
// has-many or belongs-to relation): before a hard delete of parent rows, or
// an update that assigns a referenced column, it locks the parent rows and
// then the child rows (SELECT ... FOR UPDATE, inside the statement's
// transaction), recursively for cascades of cascades, and stages the child
// keys of cached models invalidated: pending now, deleted at COMMIT or
// ROLLBACK. The parents' locks keep new children from appearing before the
// statement runs (an INSERT of a child must lock its parent's key), so the
// set is exact. A statement that turns out to write more parent rows than
// were locked (rows that began to match meanwhile) fails with
// ErrUnsupported, and its transaction cannot commit.
//
// Not followed: constraints created by raw DDL, triggers, constraints of
// models this process has not seen (list them in Config.Models), and
// statements that name their table only (db.Table("parents") without a
// model). Without a transaction (SkipDefaultTransaction) the locks end with
// the SELECT, so a child inserted between it and the statement is missed.
// Left to change-data-capture or Invalidate.

// cascadeRule is a foreign key of child rows onto parent rows.
type cascadeRule struct {
	child    *schema.Schema
	fks      []string // child columns
	refs     []string // parent columns
	onDelete bool     // ON DELETE CASCADE, SET NULL or SET DEFAULT
	onUpdate bool     // the same, ON UPDATE
	deletes  bool     // ON DELETE CASCADE: the children are deleted, and their own children follow
}

func changesRows(action string) bool {
	switch strings.ToUpper(strings.Join(strings.Fields(action), " ")) {
	case "CASCADE", "SET NULL", "SET DEFAULT":
		return true
	}
	return false
}

// noteSchema records the foreign-key actions declared on sch's relations,
// and on the relations of every model reachable from it; it returns the
// schemas it saw for the first time.
func (p *Plugin) noteSchema(sch *schema.Schema) (seen []*schema.Schema) {
	defer func() { _ = recover() }() // a relation GORM cannot describe is not followed
	p.cascMu.Lock()
	defer p.cascMu.Unlock()
	if p.cascSeen == nil {
		p.cascSeen = make(map[*schema.Schema]bool)
		p.cascades = make(map[string][]cascadeRule)
	}
	var walk func(s *schema.Schema)
	walk = func(s *schema.Schema) {
		if s == nil || p.cascSeen[s] {
			return
		}
		p.cascSeen[s] = true
		seen = append(seen, s)
		for _, rel := range s.Relationships.Relations {
			if c := rel.ParseConstraint(); c != nil && c.Schema != nil && c.ReferenceSchema != nil && len(c.ForeignKeys) > 0 {
				p.addRule(c)
			}
			walk(rel.FieldSchema)
		}
	}
	walk(sch)
	return seen
}

// addRule records one constraint (cascMu held).
func (p *Plugin) addRule(c *schema.Constraint) {
	r := cascadeRule{
		child:    c.Schema,
		onDelete: changesRows(c.OnDelete),
		onUpdate: changesRows(c.OnUpdate),
		deletes:  strings.EqualFold(strings.TrimSpace(c.OnDelete), "CASCADE"),
	}
	if !r.onDelete && !r.onUpdate {
		return
	}
	for i := range c.ForeignKeys {
		r.fks = append(r.fks, c.ForeignKeys[i].DBName)
		r.refs = append(r.refs, c.References[i].DBName)
	}
	parent := c.ReferenceSchema.Table
	for i, o := range p.cascades[parent] {
		if o.child.Table == r.child.Table && strings.Join(o.fks, ",") == strings.Join(r.fks, ",") {
			// Declared on both sides: the one with actions wins.
			p.cascades[parent][i].onDelete = o.onDelete || r.onDelete
			p.cascades[parent][i].onUpdate = o.onUpdate || r.onUpdate
			p.cascades[parent][i].deletes = o.deletes || r.deletes
			return
		}
	}
	p.cascades[parent] = append(p.cascades[parent], r)
}

// liveColumns keeps, for one statement, the columns each table has in the
// database. Rules are recorded per table name from every model this process
// has seen, and two models may put different columns on one table (a model
// dropped and replaced, two structs on one table): a rule whose columns
// the table does not have cannot be a constraint of the database, and is
// not followed.
type liveColumns struct {
	db   *gorm.DB
	cols map[string]map[string]bool
}

// rules returns the rules of parent table whose columns exist on both sides.
func (l *liveColumns) rules(p *Plugin, table string) ([]cascadeRule, error) {
	all := p.rulesOf(table)
	if len(all) == 0 {
		return nil, nil
	}
	pcols, err := l.of(table)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, r := range all {
		ccols, err := l.of(r.child.Table)
		if err != nil {
			return nil, err
		}
		if hasAll(pcols, r.refs) && hasAll(ccols, r.fks) {
			out = append(out, r)
		}
	}
	return out, nil
}

func hasAll(cols map[string]bool, names []string) bool {
	for _, n := range names {
		if !cols[n] {
			return false
		}
	}
	return true
}

// of reads table's columns on the statement's own connection.
func (l *liveColumns) of(table string) (map[string]bool, error) {
	if c, ok := l.cols[table]; ok {
		return c, nil
	}
	if l.cols == nil {
		l.cols = make(map[string]map[string]bool)
	}
	q := ownQuery(l.db)
	c := make(map[string]bool)
	if l.db.Dialector.Name() == "postgres" {
		ref, ok := parseTableName(table, false)
		if !ok {
			ref = tableRef{rel: table}
		}
		var names []string
		err := q.Raw("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped",
			ref.quoted()).Scan(&names).Error
		if err != nil {
			return nil, fmt.Errorf("writethrough: read the columns of %s: %w", table, err)
		}
		for _, n := range names {
			c[n] = true
		}
	} else {
		types, err := q.Migrator().ColumnTypes(table)
		if err != nil {
			return nil, fmt.Errorf("writethrough: read the columns of %s: %w", table, err)
		}
		for _, t := range types {
			c[t.Name()] = true
		}
	}
	l.cols[table] = c
	return c, nil
}

func (p *Plugin) rulesOf(table string) []cascadeRule {
	p.cascMu.Lock()
	defer p.cascMu.Unlock()
	return append([]cascadeRule(nil), p.cascades[table]...)
}

// specKey is a key with the model it belongs to.
type specKey struct {
	spec *modelSpec
	key  string
}

// cascadeTargets finds, before a delete or update runs, the cached rows its
// foreign-key actions will change. parents is how many parent rows it
// locked (-1 when it locked none because nothing cascades).
func (p *Plugin) cascadeTargets(db *gorm.DB, kind writeKind) (keys []specKey, parents int, err error) {
	st := db.Statement
	sch := st.Schema
	if sch == nil || kind == kindCreate {
		return nil, -1, nil
	}
	live := &liveColumns{db: db}
	rules, err := live.rules(p, sch.Table)
	if err != nil || len(rules) == 0 {
		return nil, -1, err
	}
	var cols []string // parent columns whose change cascades
	for _, r := range rules {
		if kind == kindDelete && r.onDelete {
			cols = append(cols, r.refs...)
		}
		if kind == kindUpdate && r.onUpdate {
			if vals, _ := assignments(st, r.refs); len(vals) > 0 {
				cols = append(cols, r.refs...)
			}
		}
	}
	if len(cols) == 0 {
		return nil, -1, nil
	}
	if kind == kindDelete && len(sch.DeleteClauses) > 0 && !st.Unscoped {
		return nil, -1, nil // a soft delete: no row is deleted, nothing cascades
	}
	q, ok := parentQuery(db)
	if !ok {
		return nil, -1, nil // no condition: GORM refuses the statement
	}
	var rows []map[string]any
	if err := q.Select(dedupeStrings(cols)).Clauses(clause.Locking{Strength: "UPDATE"}).Find(&rows).Error; err != nil {
		return nil, 0, fmt.Errorf("writethrough: lock the rows of %s whose children cascade: %w", sch.Table, err)
	}
	seen := map[string]bool{}
	var walk func(table string, rows []map[string]any, deleted bool) error
	walk = func(table string, rows []map[string]any, deleted bool) error {
		rules, err := live.rules(p, table)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if !(deleted && r.onDelete || !deleted && kind == kindUpdate && r.onUpdate) {
				continue
			}
			vals := refValues(rows, r.refs)
			if len(vals) == 0 {
				continue
			}
			spec, err := p.specOf(r.child)
			if err != nil {
				return err
			}
			var sel []string
			if spec != nil {
				for _, f := range spec.pks {
					sel = append(sel, f.DBName)
				}
			}
			further := deleted && r.deletes
			if further {
				next, err := live.rules(p, r.child.Table)
				if err != nil {
					return err
				}
				for _, cr := range next {
					if cr.onDelete {
						sel = append(sel, cr.refs...)
					}
				}
			}
			if len(sel) == 0 {
				continue // neither cached nor cascading further
			}
			var col any
			if len(r.fks) == 1 {
				col = clause.Column{Table: clause.CurrentTable, Name: r.fks[0]}
			} else {
				cs := make([]clause.Column, len(r.fks))
				for i, n := range r.fks {
					cs[i] = clause.Column{Table: clause.CurrentTable, Name: n}
				}
				col = cs
			}
			var children []map[string]any
			err = ownQuery(db).
				Model(reflect.New(r.child.ModelType).Interface()).Unscoped().
				Select(dedupeStrings(sel)).Where(clause.IN{Column: col, Values: vals}).
				Clauses(clause.Locking{Strength: "UPDATE"}).Find(&children).Error
			if err != nil {
				return fmt.Errorf("writethrough: lock the rows of %s that %s cascades to: %w", r.child.Table, table, err)
			}
			var fresh []map[string]any
			for _, c := range children {
				id := r.child.Table + "\x00" + fmt.Sprint(pkValues(c, sel, spec))
				if spec != nil {
					pk := pkValues(c, sel, spec)
					k, ok := spec.keys.Lookup(db.Statement.Context, pk...)
					if !ok {
						continue
					}
					id = k
				}
				if seen[id] {
					continue
				}
				seen[id] = true
				fresh = append(fresh, c)
				if spec != nil {
					keys = append(keys, specKey{spec: spec, key: id})
				}
			}
			if further && len(fresh) > 0 {
				if err := walk(r.child.Table, fresh, true); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(sch.Table, rows, kind == kindDelete); err != nil {
		return nil, 0, err
	}
	return keys, len(rows), nil
}

// parentQuery builds a query for the rows the statement will write: its
// table, its conditions and the primary keys of its model. ok is false when
// the statement has no condition (GORM refuses it unless AllowGlobalUpdate).
func parentQuery(db *gorm.DB) (*gorm.DB, bool) {
	st := db.Statement
	sch := st.Schema
	q := ownQuery(db).
		Model(reflect.New(sch.ModelType).Interface())
	q.Statement.Table, q.Statement.TableExpr = st.Table, st.TableExpr
	if st.Unscoped {
		q = q.Unscoped()
	}
	conds := 0
	if w, ok := st.Clauses["WHERE"]; ok {
		if where, ok := w.Expression.(clause.Where); ok && len(where.Exprs) > 0 {
			q = q.Clauses(where)
			conds++
		}
	}
	for _, v := range []reflect.Value{st.ReflectValue, reflect.ValueOf(st.Model)} {
		if !v.IsValid() {
			continue
		}
		_, vals := schema.GetIdentityFieldValuesMap(st.Context, v, sch.PrimaryFields)
		col, qv := schema.ToQueryValues(clause.CurrentTable, sch.PrimaryFieldDBNames, vals)
		if len(qv) > 0 {
			q = q.Where(clause.IN{Column: col, Values: qv})
			conds++
		}
	}
	return q, conds > 0 || db.AllowGlobalUpdate
}

// refValues returns the values of cols in rows, as IN values (a tuple for
// several columns); rows with a NULL are left out.
func refValues(rows []map[string]any, cols []string) []any {
	var out []any
	for _, r := range rows {
		vals := make([]any, len(cols))
		null := false
		for i, c := range cols {
			vals[i] = r[c]
			null = null || vals[i] == nil
		}
		if null {
			continue
		}
		if len(cols) == 1 {
			out = append(out, vals[0])
		} else {
			out = append(out, vals)
		}
	}
	return out
}

func pkValues(row map[string]any, sel []string, spec *modelSpec) []any {
	if spec == nil {
		vals := make([]any, len(sel))
		for i, c := range sel {
			vals[i] = row[c]
		}
		return vals
	}
	vals := make([]any, len(spec.pks))
	for i, f := range spec.pks {
		vals[i] = row[f.DBName]
	}
	return vals
}

func dedupeStrings(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := ss[:0:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// stageCascade stages the keys a statement's foreign-key actions change,
// before the statement runs: in the plugin's transaction they are deleted
// at COMMIT or ROLLBACK; without one they are pending until the statement
// has run and then deleted.
func (p *Plugin) stageCascade(db *gorm.DB, ws *writeState, keys []specKey) error {
	if len(keys) == 0 {
		return nil
	}
	tx, inTx := txhook.Of(db.Statement.ConnPool)
	switch {
	case tx != nil:
		return p.stageInvalidations(db, tx, keys, "cascade")
	case inTx:
		return p.pendForeign(db.Statement.Context, keys, "cascade")
	}
	if ws.token == "" {
		ws.token = entry.NewToken()
	}
	failed, err := p.pend(db.Statement.Context, ws.token, keys, "cascade")
	for _, k := range keys {
		if !contains(failed, k.key) {
			ws.cascaded = append(ws.cascaded, k.key)
		}
	}
	ws.cascadeFailed = append(ws.cascadeFailed, failed...)
	return err
}

// pend makes keys pending under token, with no row. It returns the keys
// Redis missed that may go to the outbox (Soft), or the error of a Strict one.
func (p *Plugin) pend(ctx context.Context, token string, keys []specKey, what string) ([]string, error) {
	calls := make([]*entry.Call, len(keys))
	for i, k := range keys {
		calls[i] = p.prepareCall(k.spec, token, k.key, 0, nil)
	}
	c, cancel := p.opCtx(ctx)
	defer cancel()
	p.run(c, calls)
	var failed []string
	for i, c := range calls {
		p.stats.prepares.Add(1)
		p.flights.Forget(c.Key)
		if err := prepareErr(c); err != nil {
			p.stats.prepareErrors.Add(1)
			if keys[i].spec.mode == Strict {
				return failed, unavailable("prepare "+what, err)
			}
			p.logf("writethrough: prepare failed; the key goes to the outbox", "key", c.Key, "err", err)
			failed = append(failed, c.Key)
		}
	}
	return failed, nil
}

// pendForeign makes keys pending inside a transaction the plugin cannot see
// end: they stay uncached until PendingTTL.
func (p *Plugin) pendForeign(ctx context.Context, keys []specKey, what string) error {
	p.logf("writethrough: "+what+" in a transaction the plugin cannot see; keys stay uncached until PendingTTL", "keys", len(keys))
	_, err := p.pend(ctx, entry.NewToken(), keys, what)
	return err
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
