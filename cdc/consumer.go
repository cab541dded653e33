package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// State is what a [Consumer] is doing.
type State int32

// The states of a Consumer.
const (
	StateStopped   State = iota // Run has not started or has returned
	StateStarting               // connecting, checking the publication and slot
	StateStandby                // another consumer holds the slot: waiting to take it
	StatePurging                // removing every key of the published tables
	StateStreaming              // applying changes
	StateRetrying               // waiting out a backoff after a failure
)

func (s State) String() string {
	switch s {
	case StateStopped:
		return "stopped"
	case StateStarting:
		return "starting"
	case StateStandby:
		return "standby"
	case StatePurging:
		return "purging"
	case StateStreaming:
		return "streaming"
	case StateRetrying:
		return "retrying"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Stats is a snapshot of a consumer's counters.
type Stats struct {
	State        State
	Transactions uint64 // committed transactions that changed a followed table
	KeysApplied  uint64 // invalidations applied in Redis
	KeysSkipped  uint64 // keys the plugin's own write had already installed
	Truncates    uint64 // tables whose every key was removed for a TRUNCATE
	Purges       uint64 // full purges after a new or invalidated slot
	PurgedKeys   uint64 // keys removed by purges and truncates
	Reconnects   uint64 // replication sessions started after the first
	Errors       uint64 // failures that led to a backoff
	// VisibilityWaits counts waits for a commit that had reached the stream
	// but was not yet visible to new snapshots (see the package doc).
	VisibilityWaits uint64
	Lag             time.Duration // commit time to invalidation applied, last transaction
	MaxLag          time.Duration // the longest Lag since the consumer was made
	ConfirmedLSN    string        // last position known applied
	LastError       string        // the last failure, "" when none
}

// Consumer follows the logical replication stream and invalidates the cache.
// Create it with [New] and start it with [Consumer.Run].
type Consumer struct {
	cfg     Config
	connCfg *pgconn.Config
	tables  map[string]*table // by "schema.table" once resolved (Run)
	wanted  []*table
	scripts entry.Scripts

	running atomic.Bool
	state   atomic.Int32
	stats   *counters

	mu      sync.Mutex // protects lastErr
	lastErr string

	db *gorm.DB // as given to New, for Sync; may be nil

	streamed atomic.Bool // a session has streamed: a missing slot was dropped

	hook func(point string) // tests: called at named points of the stream
}

func (c *Consumer) at(point string) {
	if c.hook != nil {
		c.hook(point)
	}
}

type counters struct {
	transactions, keysApplied, keysSkipped, truncates, purges, purgedKeys,
	reconnects, errors, visibilityWaits atomic.Uint64
	lagNanos     atomic.Int64
	maxLagNanos  atomic.Int64
	confirmedLSN atomic.Uint64

	mu       sync.Mutex    // protects advanced
	advanced chan struct{} // closed when confirmedLSN moves
}

// confirm records that every change before lsn is applied in Redis.
func (s *counters) confirm(lsn pglogrepl.LSN) {
	s.confirmedLSN.Store(uint64(lsn))
	s.mu.Lock()
	if s.advanced != nil {
		close(s.advanced)
		s.advanced = nil
	}
	s.mu.Unlock()
}

// moved returns a channel closed when confirmedLSN next moves.
func (s *counters) moved() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.advanced == nil {
		s.advanced = make(chan struct{})
	}
	return s.advanced
}

// table is one followed table and the cached models stored from it.
type table struct {
	name   string // as the model gives it (maybe unqualified)
	ref    string // "schema.table", resolved against the database
	models []*model
	byName *Table // a Config.Tables entry: its model is built from the catalog
}

// New prepares a consumer for the tables of cfg.Models, parsed with db's
// naming strategy, and of cfg.Tables. db may be nil: models are then parsed
// with GORM's default naming, and cfg.ConnString is required. New does not
// connect; [Consumer.Run] does.
func New(db *gorm.DB, cfg Config) (*Consumer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	conn := cfg.ConnString
	if conn == "" {
		if d, ok := dialector(db).(*postgres.Dialector); ok && d.Config != nil {
			conn = d.Config.DSN
		}
	}
	if conn == "" {
		return nil, fmt.Errorf("%w: ConnString: required when db was not opened with a postgres DSN", ErrInvalidConfig)
	}
	pcfg, err := pgconn.ParseConfig(conn)
	if err != nil {
		return nil, fmt.Errorf("%w: ConnString: %w", ErrInvalidConfig, err)
	}
	pcfg.RuntimeParams["replication"] = "database"
	c := &Consumer{cfg: cfg, connCfg: pcfg, stats: &counters{}, db: db}
	byName := map[string]*table{}
	for _, m := range cfg.Models {
		if m == nil || reflect.TypeOf(m).Kind() != reflect.Pointer {
			return nil, fmt.Errorf("%w: Models: want pointers to structs, got %T", ErrInvalidConfig, m)
		}
		sch, err := parseModel(db, m)
		if err != nil {
			return nil, fmt.Errorf("cdc: parse model %T: %w", m, err)
		}
		mk, err := newModel(sch, cfg.Prefix)
		if err != nil {
			return nil, err
		}
		t := byName[sch.Table]
		if t == nil {
			t = &table{name: sch.Table}
			byName[t.name] = t
			c.wanted = append(c.wanted, t)
		}
		t.models = append(t.models, mk)
	}
	for i := range cfg.Tables {
		ct := &cfg.Tables[i]
		if byName[ct.Name] != nil {
			return nil, fmt.Errorf("%w: Tables: %s is also a model's table", ErrInvalidConfig, ct.Name)
		}
		t := &table{name: ct.Name, byName: ct}
		byName[t.name] = t
		c.wanted = append(c.wanted, t)
	}
	return c, nil
}

// Run streams changes until ctx ends, reconnecting with backoff after
// failures. It returns nil when ctx ended, or an error only for a problem
// retrying cannot fix (a Config PostgreSQL refuses). Run may be called once
// at a time.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("cdc: Run is already running")
	}
	defer c.running.Store(false)
	defer c.setState(StateStopped)
	backoff := c.cfg.RetryMin
	first := true
	for ctx.Err() == nil {
		if !first {
			c.stats.reconnects.Add(1)
		}
		first = false
		streamed, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errStandby) {
			c.setState(StateStandby)
			if !sleep(ctx, c.cfg.StandbyPoll) {
				return nil
			}
			first = true // waiting for the slot is not a reconnect
			continue
		}
		if err == nil {
			continue
		}
		if fatal(err) {
			c.fail(err)
			return err
		}
		c.fail(err)
		if streamed {
			backoff = c.cfg.RetryMin
		}
		c.setState(StateRetrying)
		c.log(slog.LevelInfo, "cdc: retrying", "after", backoff.String())
		if !sleep(ctx, backoff) {
			return nil
		}
		backoff = min(2*backoff, c.cfg.RetryMax)
	}
	return nil
}

// Sync returns once the consumer has applied, in Redis, every change
// committed before Sync was called: after a migration or a batch job that
// wrote around the plugin, a caller that Syncs before serving reads is
// served no row those writes changed. It needs a consumer that runs (in
// this process: it waits on this Consumer's progress) and returns ctx's
// error if ctx ends first.
func (c *Consumer) Sync(ctx context.Context) error {
	want, err := c.walPosition(ctx)
	if err != nil {
		return fmt.Errorf("cdc: sync: %w", err)
	}
	for {
		moved := c.stats.moved()
		if pglogrepl.LSN(c.stats.confirmedLSN.Load()) >= want {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return fmt.Errorf("cdc: sync to %s (applied up to %s): %w", want, pglogrepl.LSN(c.stats.confirmedLSN.Load()), ctx.Err())
		}
	}
}

// walPosition is where PostgreSQL is inserting WAL now: past the commit of
// every transaction that has returned, with synchronous_commit off too.
func (c *Consumer) walPosition(ctx context.Context) (pglogrepl.LSN, error) {
	var pos string
	if c.db != nil {
		if err := c.db.WithContext(ctx).Raw("SELECT pg_current_wal_insert_lsn()::text").Row().Scan(&pos); err != nil {
			return 0, err
		}
		return pglogrepl.ParseLSN(pos)
	}
	cfg := c.connCfg.Copy()
	delete(cfg.RuntimeParams, "replication")
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	rows, err := query(ctx, conn, "SELECT pg_current_wal_insert_lsn()::text")
	if err != nil {
		return 0, err
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return 0, errors.New("pg_current_wal_insert_lsn: no row")
	}
	return pglogrepl.ParseLSN(rows[0][0])
}

// errStandby: another consumer holds the slot.
var errStandby = errors.New("cdc: the slot is active in another consumer")

// fatal reports errors that retrying cannot fix.
func fatal(err error) bool {
	if errors.Is(err, ErrNotLogical) || errors.Is(err, ErrInvalidConfig) {
		return true
	}
	switch pgCode(err) {
	case "42501", // insufficient_privilege (no REPLICATION)
		"28000", "28P01": // invalid authorization, password
		return true
	}
	return false
}

// session runs one replication connection: setup, purge when needed, then
// streaming. streamed reports whether it got as far as streaming.
func (c *Consumer) session(ctx context.Context) (streamed bool, err error) {
	c.setState(StateStarting)
	conn, err := pgconn.ConnectConfig(ctx, c.connCfg)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	// Before anything is made: a publication left behind by a consumer
	// that cannot stream helps nobody.
	if rows, err := query(ctx, conn, "SHOW wal_level"); err != nil {
		return false, fmt.Errorf("show wal_level: %w", err)
	} else if len(rows) == 1 && len(rows[0]) == 1 && rows[0][0] != "logical" {
		return false, fmt.Errorf("%w: it is %s; set wal_level = logical and restart PostgreSQL", ErrNotLogical, rows[0][0])
	}
	if err := c.slotElsewhere(ctx, conn); err != nil {
		return false, err
	}
	if err := c.resolve(ctx, conn); err != nil {
		return false, err
	}
	added, created, err := c.ensurePublication(ctx, conn)
	if err != nil {
		return false, err
	}
	if created {
		// pgoutput cannot decode, with a slot older than its publication,
		// the changes made before the publication existed: start afresh.
		if err := c.dropSlotOn(ctx, conn); err != nil {
			return false, err
		}
	}
	why, err := c.ensureSlot(ctx, conn)
	if err != nil {
		return false, err
	}
	plain := c.connCfg.Copy()
	delete(plain.RuntimeParams, "replication")
	sqlConn, err := pgconn.ConnectConfig(ctx, plain)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer sqlConn.Close(context.Background())
	s := &session{c: c, conn: conn, sql: sqlConn, rels: map[uint32]*relation{}}
	switch {
	case why != "":
		// Changes committed before the slot existed were never seen.
		if err := c.purge(ctx, c.wanted, why); err != nil {
			return false, err
		}
	case len(added) > 0:
		if err := c.purge(ctx, added, "tables added to the publication"); err != nil {
			return false, err
		}
	}
	err = s.stream(ctx)
	if code := pgCode(err); code == "55006" {
		return false, errStandby
	} else if code == "55000" {
		// The slot was invalidated (max_slot_wal_keep_size): changes are
		// lost. The next session finds it lost, drops it, makes a new one
		// and purges (ensureSlot checks that it is this database's).
		c.log(slog.LevelWarn, "cdc: the slot cannot stream (invalidated by max_slot_wal_keep_size?)", "slot", c.cfg.Slot, "err", err)
		return false, err
	}
	return s.started, err
}

// resolve names each followed table as pgoutput will: "schema.table".
func (c *Consumer) resolve(ctx context.Context, conn *pgconn.PgConn) error {
	tables := make(map[string]*table, len(c.wanted))
	for _, t := range c.wanted {
		name := t.name
		if t.byName != nil {
			name = t.byName.lookup()
		}
		rows, err := query(ctx, conn, fmt.Sprintf(
			"SELECT n.nspname || '.' || c.relname, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
			literal(quoteTable(name))))
		if err != nil {
			return fmt.Errorf("resolve table %s: %w", name, err)
		}
		if len(rows) != 1 {
			// Maybe not migrated yet: Run retries.
			return fmt.Errorf("cdc: table %s does not exist or this role cannot see it (an unqualified name is looked up in the connection's search_path, or in Table.Schema; the role needs USAGE on the table's schema)", name)
		}
		t.ref = rows[0][0]
		tables[t.ref] = t
		if id := rows[0][1]; id == "n" || id == "i" {
			// The old row image of a delete or a key change then lacks the
			// primary key (NOTHING: PostgreSQL refuses those writes once the
			// table is published; USING INDEX: the key cannot be named).
			c.log(slog.LevelWarn, "cdc: the table's replica identity does not carry its primary key: deletes and key changes cannot be followed; use REPLICA IDENTITY DEFAULT or FULL",
				"table", t.ref, "replica_identity", map[string]string{"n": "nothing", "i": "index"}[id])
		}
		if t.byName != nil && t.models == nil {
			m, err := c.tableModel(ctx, conn, *t.byName)
			if err != nil {
				return err
			}
			t.models = []*model{m}
		}
	}
	c.tables = tables
	return nil
}

// ensurePublication creates the publication for the followed tables, or
// adds the tables it lacks; added lists those, whose earlier changes the
// slot never carried. created reports a publication made now.
func (c *Consumer) ensurePublication(ctx context.Context, conn *pgconn.PgConn) (added []*table, created bool, err error) {
	pub := c.cfg.Publication
	// Members: tables named in the publication (a partitioned table is
	// named itself, while pg_publication_tables may list its partitions),
	// and those it takes in otherwise (FOR ALL TABLES, TABLES IN SCHEMA).
	rows, err := query(ctx, conn, fmt.Sprintf(`
SELECT n.nspname || '.' || c.relname FROM pg_publication_rel pr
  JOIN pg_publication p ON p.oid = pr.prpubid
  JOIN pg_class c ON c.oid = pr.prrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE p.pubname = %[1]s
UNION SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %[1]s`, literal(pub)))
	if err != nil {
		return nil, false, fmt.Errorf("read publication %s: %w", pub, err)
	}
	pubs, err := query(ctx, conn, fmt.Sprintf("SELECT pubviaroot::text FROM pg_publication WHERE pubname = %s", literal(pub)))
	if err != nil {
		return nil, false, fmt.Errorf("read publication %s: %w", pub, err)
	}
	has := map[string]bool{}
	for _, r := range rows {
		has[r[0]] = true
	}
	var names []string
	for _, t := range c.wanted {
		if !has[t.ref] {
			added = append(added, t)
			names = append(names, quoteRef(t.ref))
		}
	}
	if len(pubs) == 0 {
		all := make([]string, len(c.wanted))
		for i, t := range c.wanted {
			all[i] = quoteRef(t.ref)
		}
		// Via the root: a partitioned table's changes then arrive under its
		// own name, not its partitions'.
		_, err := conn.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)",
			pub, strings.Join(all, ", "))).ReadAll()
		if err != nil && pgCode(err) != "42710" { // another consumer made it
			return nil, false, fmt.Errorf("create publication %s: %w", pub, err)
		}
		if err != nil {
			return nil, false, nil // another consumer made it, and its slot
		}
		c.log(slog.LevelInfo, "cdc: publication created", "publication", pub, "tables", len(all))
		return nil, true, nil
	}
	if pubs[0][0] != "true" {
		// A publication made elsewhere: its partitioned tables' changes
		// arrive under their partitions' names, which no model uses.
		parted, err := c.partitioned(ctx, conn)
		if err != nil {
			return nil, false, err
		}
		if len(parted) > 0 {
			_, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true)", pub)).ReadAll()
			if err != nil {
				return nil, false, fmt.Errorf("publication %s: publish partitioned tables via their root: %w", pub, err)
			}
			c.log(slog.LevelWarn, "cdc: publication now publishes partitioned tables via their root", "publication", pub)
			for _, t := range parted { // their changes were not followed
				if has[t.ref] {
					added = append(added, t)
				}
			}
		}
	}
	if len(names) == 0 {
		return added, false, nil
	}
	_, err = conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, strings.Join(names, ", "))).ReadAll()
	if err != nil && pgCode(err) != "42710" {
		return nil, false, fmt.Errorf("add tables to publication %s: %w", pub, err)
	}
	c.log(slog.LevelInfo, "cdc: tables added to the publication", "publication", pub, "tables", strings.Join(names, ", "))
	return added, false, nil
}

// partitioned returns the followed tables that are partitioned.
func (c *Consumer) partitioned(ctx context.Context, conn *pgconn.PgConn) ([]*table, error) {
	var out []*table
	for _, t := range c.wanted {
		rows, err := query(ctx, conn, fmt.Sprintf("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)", literal(quoteRef(t.ref))))
		if err != nil {
			return nil, fmt.Errorf("read table %s: %w", t.ref, err)
		}
		if len(rows) == 1 && rows[0][0] == "p" {
			out = append(out, t)
		}
	}
	return out, nil
}

// slotElsewhere fails with ErrInvalidConfig when the slot's name is taken by
// another database's slot. Slot names are the server's: that slot belongs to
// another application, and this consumer must neither use nor drop it.
func (c *Consumer) slotElsewhere(ctx context.Context, conn *pgconn.PgConn) error {
	rows, err := query(ctx, conn, fmt.Sprintf(
		"SELECT database FROM pg_replication_slots WHERE slot_name = %s AND database IS DISTINCT FROM current_database()",
		literal(c.cfg.Slot)))
	if err != nil {
		return fmt.Errorf("read slot %s: %w", c.cfg.Slot, err)
	}
	if len(rows) > 0 {
		return fmt.Errorf("%w: Slot: %s is a slot of database %q; give this consumer a slot name of its own",
			ErrInvalidConfig, c.cfg.Slot, rows[0][0])
	}
	return nil
}

// ensureSlot makes sure the slot exists and can stream. For a slot made
// now, whose changes before it were never seen, why says why it was made.
func (c *Consumer) ensureSlot(ctx context.Context, conn *pgconn.PgConn) (why string, err error) {
	slot := c.cfg.Slot
	rows, err := query(ctx, conn, fmt.Sprintf(
		"SELECT coalesce(wal_status, ''), active::text, plugin FROM pg_replication_slots WHERE slot_name = %s", literal(slot)))
	if err != nil {
		return "", fmt.Errorf("read slot %s: %w", slot, err)
	}
	why = "new replication slot"
	if c.streamed.Load() {
		why = "replication slot disappeared (dropped?): changes may have been lost"
	}
	if len(rows) == 1 {
		if rows[0][2] != "pgoutput" {
			return "", fmt.Errorf("%w: Slot: %s uses plugin %s, not pgoutput", ErrInvalidConfig, slot, rows[0][2])
		}
		if rows[0][0] != "lost" {
			if rows[0][1] == "true" {
				return "", errStandby
			}
			return "", nil
		}
		if rows[0][1] == "true" {
			return "", errStandby
		}
		c.log(slog.LevelWarn, "cdc: replication slot was invalidated (max_slot_wal_keep_size?); making a new one", "slot", slot)
		why = "replication slot was invalidated: changes were lost"
		if err := c.dropSlotOn(ctx, conn); err != nil {
			return "", err
		}
	}
	_, err = pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if pgCode(err) == "42710" { // another consumer made it: it purges
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("create slot %s: %w", slot, err)
	}
	c.log(slog.LevelInfo, "cdc: replication slot created", "slot", slot, "why", why)
	return why, nil
}

func (c *Consumer) dropSlotOn(ctx context.Context, conn *pgconn.PgConn) error {
	err := pglogrepl.DropReplicationSlot(ctx, conn, c.cfg.Slot, pglogrepl.DropReplicationSlotOptions{})
	if err != nil && pgCode(err) != "42704" { // already gone
		return fmt.Errorf("drop slot %s: %w", c.cfg.Slot, err)
	}
	return nil
}

// Stats returns a snapshot of the consumer's counters.
func (c *Consumer) Stats() Stats {
	s := c.stats
	c.mu.Lock()
	last := c.lastErr
	c.mu.Unlock()
	return Stats{
		State:           State(c.state.Load()),
		Transactions:    s.transactions.Load(),
		KeysApplied:     s.keysApplied.Load(),
		KeysSkipped:     s.keysSkipped.Load(),
		Truncates:       s.truncates.Load(),
		Purges:          s.purges.Load(),
		PurgedKeys:      s.purgedKeys.Load(),
		Reconnects:      s.reconnects.Load(),
		Errors:          s.errors.Load(),
		VisibilityWaits: s.visibilityWaits.Load(),
		Lag:             time.Duration(s.lagNanos.Load()),
		MaxLag:          time.Duration(s.maxLagNanos.Load()),
		ConfirmedLSN:    pglogrepl.LSN(s.confirmedLSN.Load()).String(),
		LastError:       last,
	}
}

func (c *Consumer) setState(s State) { c.state.Store(int32(s)) }

func (c *Consumer) fail(err error) {
	c.stats.errors.Add(1)
	c.mu.Lock()
	c.lastErr = err.Error()
	c.mu.Unlock()
	c.log(slog.LevelWarn, "cdc: failure", "err", err)
}

func (c *Consumer) log(level slog.Level, msg string, args ...any) {
	if c.cfg.Logger != nil {
		c.cfg.Logger.Log(context.Background(), level, msg, args...)
	}
}

// query runs one simple-protocol statement (the only kind a replication
// connection takes) and returns its rows as text.
func query(ctx context.Context, conn *pgconn.PgConn, sql string) ([][]string, error) {
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, r := range res {
		for _, row := range r.Rows {
			vals := make([]string, len(row))
			for i, v := range row {
				vals[i] = string(v)
			}
			out = append(out, vals)
		}
	}
	return out, nil
}

// literal quotes s as an SQL string literal (standard_conforming_strings).
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// quoteTable quotes a model's table name ("users" or "app.users") as an
// identifier path, for to_regclass.
func quoteTable(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = quoteIdent(strings.Trim(p, `"`))
	}
	return strings.Join(parts, ".")
}

// quoteRef quotes a resolved "schema.table".
func quoteRef(ref string) string {
	schema, name, _ := strings.Cut(ref, ".")
	return quoteIdent(schema) + "." + quoteIdent(name)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func dialector(db *gorm.DB) gorm.Dialector {
	if db == nil {
		return nil
	}
	return db.Dialector
}

func parseModel(db *gorm.DB, m any) (*schema.Schema, error) {
	if db == nil {
		return schema.Parse(m, &sync.Map{}, schema.NamingStrategy{})
	}
	st := &gorm.Statement{DB: db}
	if err := st.Parse(m); err != nil {
		return nil, err
	}
	return st.Schema, nil
}
