package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ownPrefix is the prefix of the transactional logical message the plugin
// writes inside its own transactions; its content is the writer's token.
const ownPrefix = "writethrough"

// relation is what a Relation message says of one published table.
type relation struct {
	tbl  *table   // nil: a table no cached model uses
	cols []string // column names, in the tuple's order
}

// txn is one transaction being received: what it changed, applied at its
// Commit.
type txn struct {
	open      bool
	keys      map[string]int // changes of the row, per key
	truncated map[*table]struct{}
	token     string // the plugin's writer token, when the plugin wrote it
	commitAt  time.Time
	xid       uint32
	changes   int
	endLSN    pglogrepl.LSN // once committed
}

// Batching: committed transactions wait to be applied together while more
// of them have already arrived, up to these bounds. A commit is applied at
// once when nothing has arrived after it.
const (
	maxBatchTxns  = 256
	maxBatchKeys  = 4096
	maxBatchDelay = 5 * time.Millisecond
)

func (t *txn) reset() {
	t.open = false
	clear(t.keys)
	clear(t.truncated)
	t.token = ""
	t.changes = 0
}

// session is one replication connection streaming from the slot.
type session struct {
	c    *Consumer
	conn *pgconn.PgConn
	sql  *pgconn.PgConn // an ordinary connection, for visibility checks
	rels map[uint32]*relation
	tx   txn

	named   []string // keys the current message's row images name
	started bool     // replication started: the backoff starts over

	batch      []*txn    // committed, not yet applied, in commit order
	batchKeys  int       // keys in batch
	batchSince time.Time // when the batch's first commit arrived
	free       []*txn    // applied transactions, their maps kept for reuse

	confirmed  pglogrepl.LSN // every change before it is applied in Redis
	sent       pglogrepl.LSN // last position confirmed to PostgreSQL
	nextStatus time.Time
}

// stream reads the slot until ctx ends or something fails. It returns the
// error that ended it (nil when ctx ended).
func (s *session) stream(ctx context.Context) error {
	args := []string{
		"proto_version '1'",
		fmt.Sprintf("publication_names '%s'", s.c.cfg.Publication),
		"messages 'true'",
	}
	if err := pglogrepl.StartReplication(ctx, s.conn, s.c.cfg.Slot, 0,
		pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("start replication: %w", err)
	}
	s.c.setState(StateStreaming)
	s.started = true
	s.c.streamed.Store(true)
	s.c.log(slog.LevelInfo, "cdc: streaming", "slot", s.c.cfg.Slot, "publication", s.c.cfg.Publication)
	s.tx.keys = make(map[string]int)
	s.tx.truncated = make(map[*table]struct{})
	s.nextStatus = time.Now().Add(s.c.cfg.StatusInterval)

	// A goroutine of its own reads the stream, so that this one can tell
	// whether more has arrived without a timer (sub-millisecond timers
	// fire a millisecond late): commits are applied together while more
	// are waiting, at once when none is.
	rctx, stopReading := context.WithCancel(ctx)
	msgs := make(chan received, 1024)
	go s.read(rctx, msgs)
	// stopped returns once the reader is done with the connection (and has
	// cleared the deadline a cancelled receive leaves on it).
	stopped := func() {
		stopReading()
		for range msgs {
		}
	}
	defer stopped()
	timer := time.NewTimer(s.c.cfg.StatusInterval)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			// Confirm what was applied, so that a restart replays nothing.
			stopped()
			_ = s.status(context.Background(), false)
			return nil
		}
		if !time.Now().Before(s.nextStatus) {
			if err := s.status(ctx, false); err != nil {
				return err
			}
		}
		var r received
		if len(s.batch) > 0 {
			if time.Since(s.batchSince) >= maxBatchDelay {
				if err := s.flush(ctx); err != nil {
					return err
				}
				continue
			}
			select {
			case r = <-msgs:
			default: // nothing more on the way: apply
				if err := s.flush(ctx); err != nil {
					return err
				}
				continue
			}
		} else {
			timer.Reset(time.Until(s.nextStatus))
			select {
			case r = <-msgs:
			case <-timer.C:
				continue
			case <-ctx.Done():
				continue
			}
		}
		if r.err != nil {
			if ctx.Err() != nil {
				continue
			}
			return r.err
		}
		if err := s.copyData(ctx, r.data); err != nil {
			return err
		}
	}
}

// received is one message of the stream, or the error that ended it.
type received struct {
	data []byte
	err  error
}

// read receives the stream's messages until ctx ends or the stream fails,
// and closes msgs.
func (s *session) read(ctx context.Context, msgs chan<- received) {
	defer close(msgs)
	send := func(r received) bool {
		select {
		case msgs <- r:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		msg, err := s.conn.ReceiveMessage(ctx)
		if err != nil {
			send(received{err: fmt.Errorf("receive: %w", err)})
			return
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			// The message's bytes are reused by the next receive.
			if !send(received{data: append([]byte(nil), m.Data...)}) {
				return
			}
		case *pgproto3.ErrorResponse:
			send(received{err: fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m))})
			return
		default:
			// Notices and the like.
		}
	}
}

func (s *session) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("keepalive: %w", err)
		}
		// Everything sent before the keepalive has been received; when no
		// transaction is open or waiting to be applied it has all been
		// applied, so its position is safe to confirm (an idle slot then
		// keeps no WAL).
		if !s.tx.open && len(s.batch) == 0 && k.ServerWALEnd > s.confirmed {
			s.confirmed = k.ServerWALEnd
			s.c.stats.confirm(s.confirmed)
		}
		if k.ReplyRequested {
			return s.status(ctx, true)
		}
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("xlogdata: %w", err)
		}
		return s.logical(ctx, x.WALData)
	}
	return nil
}

// logical handles one pgoutput message.
func (s *session) logical(ctx context.Context, data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("pgoutput: %w", err)
	}
	st := s.c.stats
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		r := &relation{tbl: s.c.tables[m.Namespace+"."+m.RelationName]}
		for _, col := range m.Columns {
			r.cols = append(r.cols, col.Name)
		}
		s.rels[m.RelationID] = r
	case *pglogrepl.BeginMessage:
		s.tx.reset()
		s.tx.open = true
		s.tx.commitAt = m.CommitTime
		s.tx.xid = m.Xid
	case *pglogrepl.InsertMessage:
		s.tuple(m.RelationID, m.Tuple)
		s.counted()
	case *pglogrepl.UpdateMessage:
		s.tuple(m.RelationID, m.OldTuple) // a changed key: its old value
		s.tuple(m.RelationID, m.NewTuple)
		s.counted()
	case *pglogrepl.DeleteMessage:
		s.tuple(m.RelationID, m.OldTuple)
		s.counted()
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if r := s.rels[id]; r != nil && r.tbl != nil {
				s.tx.truncated[r.tbl] = struct{}{}
				s.tx.changes++
			}
		}
	case *pglogrepl.LogicalDecodingMessage:
		if m.Transactional && m.Prefix == ownPrefix && s.tx.open {
			s.tx.token = string(m.Content)
		}
	case *pglogrepl.CommitMessage:
		// Hook points (tests) count transactions that changed a followed
		// table: the stream also carries the plugin's marks of transactions
		// that changed nothing here.
		if s.tx.changes > 0 {
			s.c.at("commit:received")
		}
		if s.tx.changes == 0 && len(s.batch) == 0 {
			s.tx.reset()
			if m.TransactionEndLSN > s.confirmed {
				s.confirmed = m.TransactionEndLSN
				st.confirm(s.confirmed)
			}
			return nil
		}
		t := s.take()
		t.keys, s.tx.keys = s.tx.keys, t.keys
		t.truncated, s.tx.truncated = s.tx.truncated, t.truncated
		t.token, t.commitAt, t.xid, t.changes, t.endLSN = s.tx.token, s.tx.commitAt, s.tx.xid, s.tx.changes, m.TransactionEndLSN
		s.tx.reset()
		if len(s.batch) == 0 {
			s.batchSince = time.Now()
		}
		s.batch = append(s.batch, t)
		s.batchKeys += len(t.keys)
		if len(s.batch) >= maxBatchTxns || s.batchKeys >= maxBatchKeys {
			return s.flush(ctx)
		}
	}
	return nil
}

// take returns an empty txn, reusing an applied one's maps.
func (s *session) take() *txn {
	if n := len(s.free); n > 0 {
		t := s.free[n-1]
		s.free = s.free[:n-1]
		return t
	}
	return &txn{keys: make(map[string]int), truncated: make(map[*table]struct{})}
}

// flush applies the batch once every transaction in it is visible, then
// confirms its last commit.
func (s *session) flush(ctx context.Context) error {
	if len(s.batch) == 0 {
		return nil
	}
	if err := s.visible(ctx, s.batch); err != nil {
		return err
	}
	if err := s.c.apply(ctx, s.batch, func() { s.alive(ctx) }); err != nil {
		return err
	}
	now := time.Now()
	st := s.c.stats
	for _, t := range s.batch {
		if t.changes > 0 {
			s.c.at("commit:applied")
			lag := now.Sub(t.commitAt)
			st.transactions.Add(1)
			st.lagNanos.Store(int64(lag))
			for {
				max := st.maxLagNanos.Load()
				if int64(lag) <= max || st.maxLagNanos.CompareAndSwap(max, int64(lag)) {
					break
				}
			}
			if f := s.c.cfg.OnApply; f != nil {
				f(Applied{CommitTime: t.commitAt, AppliedAt: now, Keys: len(t.keys), Truncates: len(t.truncated), Own: t.token != ""})
			}
			if l := s.c.cfg.Logger; l != nil && l.Enabled(ctx, slog.LevelDebug) {
				l.Debug("cdc: applied", "xid", t.xid, "keys", len(t.keys), "truncates", len(t.truncated),
					"own", t.token != "", "lag", lag.String(), "end_lsn", t.endLSN.String(), "batch", len(s.batch))
			}
		}
		if t.endLSN > s.confirmed {
			s.confirmed = t.endLSN
		}
		t.reset()
		s.free = append(s.free, t)
	}
	clear(s.batch)
	s.batch, s.batchKeys = s.batch[:0], 0
	st.confirm(s.confirmed)
	return nil
}

// counted counts one change of every key the message's row images named
// (an update's old and new image name the same key unless it changed).
func (s *session) counted() {
	for i, k := range s.named {
		if !slices.Contains(s.named[:i], k) {
			s.tx.keys[k]++
		}
	}
	s.named = s.named[:0]
}

// tuple adds the keys one row image names to s.named.
func (s *session) tuple(relID uint32, t *pglogrepl.TupleData) {
	if t == nil {
		return
	}
	r := s.rels[relID]
	if r == nil || r.tbl == nil {
		return
	}
	s.tx.changes++
	vals := make(map[string]string, len(t.Columns))
	null := make(map[string]bool)
	for i, col := range t.Columns {
		if i >= len(r.cols) {
			break
		}
		switch col.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			vals[r.cols[i]] = string(col.Data)
		case pglogrepl.TupleDataTypeNull:
			null[r.cols[i]] = true
		}
	}
	for _, m := range r.tbl.models {
		k, ok := m.key(vals)
		if ok {
			s.named = append(s.named, k)
			continue
		}
		// A key column missing from the image (unchanged TOAST, or a
		// replica identity that does not carry it): the key cannot be
		// named, so every key of the model goes.
		if !allNull(m.pkCols, null) {
			s.tx.truncated[r.tbl] = struct{}{}
		}
	}
}

func allNull(cols []string, null map[string]bool) bool {
	for _, c := range cols {
		if !null[c] {
			return false
		}
	}
	return len(cols) > 0
}

// status confirms s.confirmed to PostgreSQL: write, flush and apply
// positions all say "applied in Redis".
func (s *session) status(ctx context.Context, force bool) error {
	s.nextStatus = time.Now().Add(s.c.cfg.StatusInterval)
	if !force && s.confirmed == s.sent && s.tx.open {
		return nil
	}
	// Between transactions, ask for a keepalive: its position, confirmed
	// at the next status, lets the slot move past WAL that carries nothing
	// for the publication (other tables, other databases) now rather than
	// at the server's next idle keepalive (wal_sender_timeout / 2).
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: s.confirmed,
		WALFlushPosition: s.confirmed,
		WALApplyPosition: s.confirmed,
		ReplyRequested:   !s.tx.open,
	})
	if err != nil {
		return fmt.Errorf("standby status: %w", err)
	}
	s.sent = s.confirmed
	return nil
}

// pgCode is the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// alive sends PostgreSQL a status when one is due, confirming nothing new,
// while the session applies something long.
func (s *session) alive(ctx context.Context) {
	if !time.Now().Before(s.nextStatus) {
		_ = s.status(ctx, true)
	}
}

// visible waits until every transaction of txns that changed something is
// visible to new snapshots. The stream carries a commit as soon as its
// record is flushed, a moment before the committing backend leaves the
// process array: a reader that missed the cache in that moment would read
// the old row and could fill it after the invalidation. Invalidating only
// once the commit is visible leaves such a reader's lease to be removed,
// or its read to see the new row. One snapshot answers for the batch.
func (s *session) visible(ctx context.Context, txns []*txn) error {
	wait := 50 * time.Microsecond
	for {
		rows, err := query(ctx, s.sql, "SELECT pg_current_snapshot()::text")
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		if len(rows) != 1 {
			return nil
		}
		running := false
		for _, t := range txns {
			if t.changes > 0 && inProgress(rows[0][0], t.xid) {
				running = true
				break
			}
		}
		if !running {
			return nil
		}
		s.c.stats.visibilityWaits.Add(1)
		s.alive(ctx)
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// inProgress reports whether snapshot (xmin:xmax:xip,...) does not yet see
// xid as committed: xid is at or past xmax (the snapshot's horizon stops
// before it) or listed among the running ones. Only the low 32 bits of the
// snapshot's txids are compared, modulo 2^32, as xids are.
func inProgress(snapshot string, xid uint32) bool {
	parts := strings.SplitN(snapshot, ":", 3)
	if len(parts) != 3 {
		return false
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return false
	}
	if int32(xid-uint32(xmax)) >= 0 {
		return true
	}
	if parts[2] == "" {
		return false
	}
	for _, x := range strings.Split(parts[2], ",") {
		if v, err := strconv.ParseUint(x, 10, 64); err == nil && uint32(v) == xid {
			return true
		}
	}
	return false
}
