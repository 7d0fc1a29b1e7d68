package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// The change stream: every row change an entry makes, kept with the entry's
// index in the database itself (docs/CHANGES.md; why it is captured this
// way: its "Limits, and why").
//
// Capture happens where entries are applied, so every node records the
// same changes for the same index. It is a setting of the whole cluster,
// changed by a log entry (rlog.Write.SetChanges), never of one node: the
// capture triggers run inside the entries' statements, count against their
// step budgets and may make a write fail (MaxCapturedBytes), so every node
// must run them or none.
//
// While it is on, the writer connection holds TEMP triggers, AFTER INSERT,
// UPDATE and DELETE on every ordinary user table, whose bodies call
// _ddb_change() and _ddb_vals() (internal/sqlite/changes.c) with the row
// before and after the change, typed exactly. They are made again after
// every schema change (dropped before it: a trigger naming a column would
// stop ALTER TABLE from dropping it). What they capture is cut back when a
// savepoint rolls back, and stored with the entry when it is applied.

// Change operations, as the capture records them.
const (
	opInsert = 1
	opUpdate = 2
	opDelete = 3
	opSchema = 4 // a schema change: its SQL
	opLoad   = 5 // a load: its rows are not captured one by one
)

// captureTrigger starts the name of every capture trigger.
const captureTrigger = "_ddb_cdc_"

// changesSQL makes the table the change stream is kept in: one row per
// entry that changed a row or the schema.
const changesSQL = `CREATE TABLE IF NOT EXISTS _ddb_changes (idx INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, events BLOB NOT NULL)`

// changesFormat starts every stored entry's events.
const changesFormat = 1

// shape is a table as the capture triggers made for it saw it: the
// columns of its rows, and which of them are its primary key.
type shape struct {
	table string
	cols  []string
	pk    []int // positions in cols of the primary key (none: the rowid is the key)
}

// capture is the writer's state of the change stream (under wmu).
type capture struct {
	on   bool  // the cluster's setting, as of the last applied entry
	keep int64 // log indexes kept (while on)
	from uint64
	// madeAt is the schema version the triggers were made for (-1: not
	// known): they are made again when the schema differs. made: some may
	// exist (a connection starts with none). recursive: the writer's
	// recursive_triggers is on (it starts off; setting it expires every
	// prepared statement, so it is set only when it changes).
	madeAt          int64
	made, recursive bool
	// shapes are every table shape triggers were made for since the
	// store opened, by number (0 is unused); never reused, so what a
	// rolled back schema change's triggers captured still decodes.
	shapes []shape
	// mark is the capture's length when the running entry began.
	mark int
	// stale: an entry that changes the setting ran, and its transaction
	// may roll back; the setting is read again from the database then.
	stale bool
}

// loadChangeSetting reads the cluster's setting of the change stream
// (writer, under wmu or at open).
func (s *Store) loadChangeSetting() error {
	s.wconn.auth.reset(policyReplica)
	rows, err := s.w.All("SELECT key, value FROM _ddb_meta WHERE key IN ('changes_keep', 'changes_from')")
	if err != nil {
		return fmt.Errorf("read the change stream's setting: %w", err)
	}
	s.cap.on, s.cap.keep, s.cap.from, s.cap.madeAt, s.cap.stale = false, 0, 0, -1, false
	if len(s.cap.shapes) == 0 {
		s.cap.shapes = []shape{{}}
	}
	for _, r := range rows {
		v, _ := r[1].(int64)
		switch r[0] {
		case "changes_keep":
			s.cap.keep = v
			s.cap.on = v > 0
		case "changes_from":
			s.cap.from = uint64(v)
		}
	}
	return nil
}

// setChanges applies a SetChanges entry at index (inside its savepoint):
// turning the stream on starts it after this entry, with nothing before;
// turning it off forgets what it kept.
func (s *Store) setChanges(index uint64, keep int64) error {
	s.wconn.auth.reset(policyReplica)
	if keep > 0 {
		if err := s.w.Exec(changesSQL); err != nil {
			return err
		}
		if !s.cap.on {
			if err := s.w.Exec("DELETE FROM _ddb_changes"); err != nil {
				return err
			}
			if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_meta(key, value) VALUES ('changes_from', ?)", int64(index+1)); err != nil {
				return err
			}
			s.cap.from = index + 1
		}
		if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_meta(key, value) VALUES ('changes_keep', ?)", keep); err != nil {
			return err
		}
	} else {
		if err := s.w.Exec("DROP TABLE IF EXISTS _ddb_changes"); err != nil {
			return err
		}
		if err := s.w.Exec("DELETE FROM _ddb_meta WHERE key IN ('changes_keep', 'changes_from', 'changes_delivered')"); err != nil {
			return err
		}
	}
	s.cap.on, s.cap.keep = keep > 0, keep
	s.cap.madeAt = -1
	return s.ensureCapture()
}

// setDelivered records the webhook's delivered index (inside the entry's
// savepoint); it never goes back.
func (s *Store) setDelivered(index uint64) error {
	s.wconn.auth.reset(policyReplica)
	return s.w.Exec("INSERT INTO _ddb_meta(key, value) VALUES ('changes_delivered', ?) ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)", int64(index))
}

// ensureCapture makes the capture triggers match the schema and the
// setting (writer, inside a transaction): made for every ordinary user
// table while the stream is on, none while it is off. It does nothing
// when they were made for this schema version.
func (s *Store) ensureCapture() error {
	if !s.cap.on {
		if s.cap.made {
			if err := s.dropCaptureTriggers(); err != nil {
				return err
			}
		}
		return s.setRecursive(false)
	}
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRow("PRAGMA schema_version")
	if err != nil {
		return err
	}
	v, _ := row[0].(int64)
	if v == s.cap.madeAt {
		return nil
	}
	if err := s.dropCaptureTriggers(); err != nil {
		return err
	}
	s.cap.made = true
	tables, err := s.w.All(`SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND name NOT LIKE '\_ddb\_%' ESCAPE '\' ORDER BY name`)
	if err != nil {
		return fmt.Errorf("list tables for the change stream: %w", err)
	}
	for _, t := range tables {
		name, _ := t[0].(string)
		withoutRowid := t[1] == int64(1)
		if err := s.makeCaptureTriggers(name, withoutRowid); err != nil {
			return fmt.Errorf("capture changes of table %s: %w", name, err)
		}
	}
	// A row that INSERT OR REPLACE (or a REPLACE constraint) deletes fires
	// DELETE triggers only with recursive triggers on. They are turned on
	// only while the schema holds no trigger of the user's: it would see
	// those deletes too, and could call itself, which SQLite's default
	// forbids; with one, such deletes are not captured (see DESIGN.md).
	row, err = s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'")
	if err != nil {
		return err
	}
	if err := s.setRecursive(row[0] == int64(0)); err != nil {
		return err
	}
	s.cap.madeAt = v
	return nil
}

// setRecursive sets the writer's recursive_triggers, if it differs.
func (s *Store) setRecursive(on bool) error {
	if s.cap.recursive == on {
		return nil
	}
	v := "OFF"
	if on {
		v = "ON"
	}
	if err := s.internal("PRAGMA recursive_triggers = " + v); err != nil {
		return err
	}
	s.cap.recursive = on
	return nil
}

// dropCaptureTriggers drops every capture trigger (writer).
func (s *Store) dropCaptureTriggers() error {
	s.wconn.auth.reset(policyReplica)
	rows, err := s.w.All(`SELECT name FROM temp.sqlite_master WHERE type = 'trigger' AND name LIKE '\_ddb\_cdc\_%' ESCAPE '\'`)
	if err != nil {
		return fmt.Errorf("list the change stream's triggers: %w", err)
	}
	for _, r := range rows {
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("DROP TRIGGER IF EXISTS temp." + quoteIdent(r[0].(string))); err != nil {
			return fmt.Errorf("drop the change stream's trigger: %w", err)
		}
	}
	s.cap.madeAt, s.cap.made = -1, false
	return nil
}

// makeCaptureTriggers makes the three capture triggers of one table.
func (s *Store) makeCaptureTriggers(table string, withoutRowid bool) error {
	s.wconn.auth.reset(policyReplica)
	cols, err := s.w.All("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		return err
	}
	sh := shape{table: table}
	pkAt := map[int64]int{}
	names := map[string]bool{}
	for i, c := range cols {
		name, _ := c[0].(string)
		sh.cols = append(sh.cols, name)
		names[strings.ToLower(name)] = true
		if p, _ := c[1].(int64); p > 0 {
			pkAt[p] = i
		}
	}
	for p := int64(1); p <= int64(len(pkAt)); p++ {
		sh.pk = append(sh.pk, pkAt[p])
	}
	// A rowid table's key is its rowid, by whichever of its names no
	// column took.
	rowid := "NULL"
	if !withoutRowid {
		for _, n := range []string{"rowid", "_rowid_", "oid"} {
			if !names[n] {
				rowid = n
				break
			}
		}
	}
	id := len(s.cap.shapes)
	s.cap.shapes = append(s.cap.shapes, sh)
	vals := func(row string) string {
		var b strings.Builder
		for i, c := range sh.cols {
			if i%200 == 0 {
				if i > 0 {
					b.WriteString(")")
				}
				b.WriteString(", _ddb_vals(")
			} else {
				b.WriteString(", ")
			}
			b.WriteString(row + "." + quoteIdent(c))
		}
		if len(sh.cols) > 0 {
			b.WriteString(")")
		}
		return b.String()
	}
	q := quoteIdent(table)
	name := func(op string) string { return "temp." + quoteIdent(captureTrigger+strconv.Itoa(id)+"_"+op) }
	oldID, newID := "NULL", "NULL"
	if rowid != "NULL" {
		oldID, newID = "OLD."+rowid, "NEW."+rowid
	}
	for _, t := range []string{
		fmt.Sprintf("CREATE TRIGGER %s AFTER INSERT ON main.%s BEGIN SELECT _ddb_change(%d, %d, NULL, %s)%s; END", name("i"), q, opInsert, id, newID, vals("NEW")),
		fmt.Sprintf("CREATE TRIGGER %s AFTER UPDATE ON main.%s BEGIN SELECT _ddb_change(%d, %d, %s, %s)%s%s; END", name("u"), q, opUpdate, id, oldID, newID, vals("OLD"), vals("NEW")),
		fmt.Sprintf("CREATE TRIGGER %s AFTER DELETE ON main.%s BEGIN SELECT _ddb_change(%d, %d, %s, NULL)%s; END", name("d"), q, opDelete, id, oldID, vals("OLD")),
	} {
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec(t); err != nil {
			return err
		}
	}
	return nil
}

// captureSchema records a schema change the running entry made (writer).
func (s *Store) captureSchema(sql string) error {
	rec := []byte{opSchema, 0, 0, 0} // no shape, no rowids
	rec, _ = rlog.AppendValue(rec, strings.TrimSpace(sql))
	return s.w.AppendCapture(rec)
}

// captureLoad records that the running entry loads rows in bulk, which
// are not captured one by one: a consumer reads the tables again.
func (s *Store) captureLoad() error {
	return s.w.AppendCapture([]byte{opLoad, 0, 0, 0})
}

// storeChanges stores what the entry at index captured (writer, after the
// entry's savepoint was released) and forgets what the retention no
// longer covers.
func (s *Store) storeChanges(index uint64, timeMs int64) error {
	if !s.cap.on {
		return nil
	}
	rec := s.w.Captured()
	if len(rec) > 0 {
		blob, err := s.encodeChanges(rec)
		s.w.TruncateCapture(0)
		if err != nil {
			return err
		}
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("INSERT INTO _ddb_changes(idx, time_ms, events) VALUES (?, ?, ?)", int64(index), timeMs, blob); err != nil {
			return fmt.Errorf("store the entry's changes: %w", err)
		}
	}
	if index%256 == 0 && index > uint64(s.cap.keep) {
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("DELETE FROM _ddb_changes WHERE idx <= ?", int64(index-uint64(s.cap.keep))); err != nil {
			return fmt.Errorf("forget changes past the retention: %w", err)
		}
	}
	return nil
}

// encodeChanges makes the stored form of one entry's capture: the format,
// the shapes its records use (table, columns, key), numbered from 1 in
// the order the records first use them, then the records with those
// numbers. The numbers the writer gave shapes depend on its history (a
// restart, a schema change rolled back); the stored form depends on the
// entry alone, so every node stores the same bytes.
func (s *Store) encodeChanges(rec []byte) ([]byte, error) {
	local := map[uint64]uint64{}
	var order []uint64
	body := make([]byte, 0, len(rec)+8)
	r := rlog.NewReader(rec)
	for r.Len() > 0 && r.Err() == nil {
		op := r.Byte()
		id := r.Uvarint()
		n := 0
		switch {
		case op == opSchema:
			n = 1
		case id == 0:
		case id >= uint64(len(s.cap.shapes)):
			return nil, fmt.Errorf("captured change of unknown table shape %d", id)
		default:
			if local[id] == 0 {
				order = append(order, id)
				local[id] = uint64(len(order))
			}
			n = len(s.cap.shapes[id].cols)
			if op == opUpdate {
				n *= 2
			}
		}
		body = appendUvarint(append(body, op), local[id])
		from := len(rec) - r.Len()
		r.Value()
		r.Value()
		for range n {
			r.Value()
		}
		body = append(body, rec[from:len(rec)-r.Len()]...)
	}
	if r.Err() != nil {
		return nil, fmt.Errorf("captured changes: %w", r.Err())
	}
	b := []byte{changesFormat}
	b = appendUvarint(b, uint64(len(order)))
	for _, id := range order {
		sh := s.cap.shapes[id]
		b = appendUvarint(b, local[id])
		b = rlog.AppendString(b, sh.table)
		b = appendUvarint(b, uint64(len(sh.cols)))
		for _, c := range sh.cols {
			b = rlog.AppendString(b, c)
		}
		b = appendUvarint(b, uint64(len(sh.pk)))
		for _, p := range sh.pk {
			b = appendUvarint(b, uint64(p))
		}
	}
	return append(b, body...), nil
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// Change is one row change (or schema change, or load) of an entry.
type Change struct {
	Op    string // "insert", "update", "delete", "schema" or "load"
	Table string // "" for "schema" and "load"
	// Columns are the row's columns; Before and After its values before
	// and after the change (nil for an insert's Before and a delete's
	// After), each in its exact SQLite type.
	Columns       []string
	Before, After []any
	// Key names the row: its primary key's columns (KeyColumns, positions
	// in Columns), or with none its rowid (OldRowID before the change,
	// NewRowID after it; nil where there is no row).
	KeyColumns         []int
	OldRowID, NewRowID *int64
	SQL                string // a schema change's statement
}

// ChangeEntry is the changes of one log entry.
type ChangeEntry struct {
	Index   uint64
	TimeMs  int64 // the leader's time for the entry
	Changes []Change
}

// ErrChangesOff: the change stream is not on.
var ErrChangesOff = errors.New("the change stream is off: turn it on with the master's -changes-keep flag (see docs/CHANGES.md)")

// ChangesGoneError: the changes asked for are no longer kept.
type ChangesGoneError struct {
	Since, Oldest uint64
}

func (e *ChangesGoneError) Error() string {
	return fmt.Sprintf("the changes from index %d are no longer kept: the oldest kept is %d", e.Since, e.Oldest)
}

// ChangeStream is the stream's state on this node.
type ChangeStream struct {
	On     bool
	Keep   int64
	Oldest uint64 // the first index whose changes are kept
	// Delivered is the index up to which the webhook received every
	// entry, as the cluster recorded it (0: none).
	Delivered uint64
}

// ChangeSetting reports the change stream's state as of the applied index.
func (s *Store) ChangeSetting(ctx context.Context) (ChangeStream, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return ChangeStream{}, err
	}
	defer s.putReader(r)
	return changeSettingOn(r)
}

func changeSettingOn(r *conn) (ChangeStream, error) {
	r.auth.reset(policyReplica)
	rows, err := r.c.All("SELECT key, value FROM _ddb_meta WHERE key IN ('changes_keep', 'changes_from', 'changes_delivered', 'applied')")
	if err != nil {
		return ChangeStream{}, err
	}
	var cs ChangeStream
	var applied uint64
	for _, row := range rows {
		v, _ := row[1].(int64)
		switch row[0] {
		case "changes_keep":
			cs.Keep, cs.On = v, v > 0
		case "changes_from":
			cs.Oldest = uint64(v)
		case "changes_delivered":
			cs.Delivered = uint64(v)
		case "applied":
			applied = uint64(v)
		}
	}
	// What the retention no longer covers is hidden even before it is
	// deleted (every 256 entries), so every node answers alike.
	if cs.On && applied+1 > uint64(cs.Keep) && applied+1-uint64(cs.Keep) > cs.Oldest {
		cs.Oldest = applied + 1 - uint64(cs.Keep)
	}
	return cs, nil
}

// maxChangesRead bounds the stored bytes one read of the stream takes
// (beyond its first entry), so that what a reader holds is bounded.
const maxChangesRead = 8 << 20

// Changes reads the changes of the entries from index since on, at most
// max entries and some 8 MiB of them (entries that changed nothing are not
// kept, so the indexes skip), and the index the next read starts from:
// past the last entry returned when it stopped short, else past the
// applied index (then next > Applied() until another entry applies).
func (s *Store) Changes(ctx context.Context, since uint64, max int) ([]ChangeEntry, uint64, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, since, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	if err := r.c.Exec("BEGIN"); err != nil {
		return nil, since, err
	}
	defer r.c.Exec("ROLLBACK")
	cs, err := changeSettingOn(r)
	if err != nil {
		return nil, since, err
	}
	if !cs.On {
		return nil, since, ErrChangesOff
	}
	if since < cs.Oldest {
		return nil, since, &ChangesGoneError{Since: since, Oldest: cs.Oldest}
	}
	row, err := r.c.QueryRow("SELECT value FROM _ddb_meta WHERE key = 'applied'")
	if err != nil {
		return nil, since, err
	}
	applied, _ := row[0].(int64)
	// At most max entries, and (but for the first) at most
	// maxChangesRead bytes of them: an entry's changes may take 32 MiB.
	st, err := r.c.Prepare("SELECT idx, time_ms, events FROM _ddb_changes WHERE idx >= ? ORDER BY idx")
	if err != nil {
		return nil, since, err
	}
	defer st.Close()
	if _, err := st.Bind([]any{int64(since)}, nil); err != nil {
		return nil, since, err
	}
	var out []ChangeEntry
	full, bytes := false, 0
	row = nil
	for {
		more, err := st.Step()
		if err != nil {
			return nil, since, err
		}
		if !more {
			break
		}
		row = st.Row(row[:0])
		idx, _ := row[0].(int64)
		t, _ := row[1].(int64)
		b, _ := row[2].([]byte)
		if len(out) > 0 && bytes+len(b) > maxChangesRead {
			full = true
			break
		}
		bytes += len(b)
		ch, err := DecodeChanges(b)
		if err != nil {
			return nil, since, fmt.Errorf("changes of index %d: %w", idx, err)
		}
		out = append(out, ChangeEntry{Index: uint64(idx), TimeMs: t, Changes: ch})
		if len(out) == max {
			full = true
			break
		}
	}
	next := uint64(applied) + 1
	if full {
		next = out[len(out)-1].Index + 1
	}
	if next < since {
		next = since
	}
	return out, next, nil
}

// DecodeChanges reads one entry's stored changes.
func DecodeChanges(b []byte) ([]Change, error) {
	if len(b) == 0 || b[0] != changesFormat {
		return nil, errors.New("unknown format of stored changes")
	}
	r := rlog.NewReader(b[1:])
	shapes := map[uint64]shape{}
	for n := r.Uvarint(); n > 0 && r.Err() == nil; n-- {
		id := r.Uvarint()
		sh := shape{table: r.String()}
		for c := r.Uvarint(); c > 0 && r.Err() == nil; c-- {
			sh.cols = append(sh.cols, r.String())
		}
		for p := r.Uvarint(); p > 0 && r.Err() == nil; p-- {
			sh.pk = append(sh.pk, int(r.Uvarint()))
		}
		shapes[id] = sh
	}
	var out []Change
	for r.Len() > 0 && r.Err() == nil {
		op := r.Byte()
		id := r.Uvarint()
		oldID, newID := r.Value(), r.Value()
		var c Change
		if v, ok := oldID.(int64); ok {
			c.OldRowID = &v
		}
		if v, ok := newID.(int64); ok {
			c.NewRowID = &v
		}
		read := func(n int) []any {
			vs := make([]any, n)
			for i := range vs {
				vs[i] = r.Value()
			}
			return vs
		}
		switch op {
		case opSchema:
			c.Op = "schema"
			c.SQL, _ = r.Value().(string)
			out = append(out, c)
			continue
		case opLoad:
			c.Op = "load"
			out = append(out, c)
			continue
		}
		sh, ok := shapes[id]
		if !ok {
			return nil, fmt.Errorf("a change names table shape %d, which the entry does not describe", id)
		}
		c.Table, c.Columns, c.KeyColumns = sh.table, sh.cols, sh.pk
		switch op {
		case opInsert:
			c.Op, c.After = "insert", read(len(sh.cols))
		case opUpdate:
			c.Op, c.Before = "update", read(len(sh.cols))
			c.After = read(len(sh.cols))
		case opDelete:
			c.Op, c.Before = "delete", read(len(sh.cols))
		default:
			return nil, fmt.Errorf("unknown change operation %d", op)
		}
		out = append(out, c)
	}
	if r.Err() != nil {
		return nil, fmt.Errorf("stored changes: %w", r.Err())
	}
	return out, nil
}

// ApplyChanges applies a change stream to c, another SQLite database, as a
// consumer keeping a copy does: schema changes as they came (but the
// user's triggers: what they did is in the stream as changes of their
// own), each row change by its key. An update or delete that does not
// find exactly one row by its key is an error: the stream and the copy
// disagree. A load cannot be applied (its rows are not in the stream).
func ApplyChanges(c *sqlite.Conn, entries []ChangeEntry) error {
	for _, e := range entries {
		for _, ch := range e.Changes {
			var err error
			switch ch.Op {
			case "schema":
				if strings.HasPrefix(strings.ToUpper(ch.SQL), "CREATE TRIGGER") {
					continue
				}
				err = c.Exec(ch.SQL)
			case "insert":
				cols := append([]string(nil), ch.Columns...)
				vals := append([]any(nil), ch.After...)
				if ch.NewRowID != nil {
					cols, vals = append(cols, "rowid"), append(vals, *ch.NewRowID)
				}
				err = c.Exec(fmt.Sprintf("INSERT INTO %s(%s) VALUES (%s)", quoteIdent(ch.Table), quoteIdentList(cols), strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ")), vals...)
			case "update", "delete":
				where, args := keyCondition(ch)
				if ch.Op == "delete" {
					err = c.Exec(fmt.Sprintf("DELETE FROM %s WHERE %s", quoteIdent(ch.Table), where), args...)
					break
				}
				var sets []string
				var vals []any
				for i, col := range ch.Columns {
					sets, vals = append(sets, quoteIdent(col)+" = ?"), append(vals, ch.After[i])
				}
				if ch.NewRowID != nil {
					sets, vals = append(sets, "rowid = ?"), append(vals, *ch.NewRowID)
				}
				err = c.Exec(fmt.Sprintf("UPDATE %s SET %s WHERE %s", quoteIdent(ch.Table), strings.Join(sets, ", "), where), append(vals, args...)...)
			case "load":
				err = errors.New("a load: its rows are not in the stream")
			}
			if err == nil && (ch.Op == "update" || ch.Op == "delete") && c.Changes() != 1 {
				err = fmt.Errorf("%d rows have its key, not 1", c.Changes())
			}
			if err != nil {
				return fmt.Errorf("index %d, %s of %s (%v -> %v): %w", e.Index, ch.Op, ch.Table, ch.Before, ch.After, err)
			}
		}
	}
	return nil
}

// keyCondition is the WHERE clause that finds a change's row as it was
// before the change.
func keyCondition(ch Change) (string, []any) {
	if len(ch.KeyColumns) == 0 {
		if ch.OldRowID == nil {
			return "0", nil
		}
		return "rowid = ?", []any{*ch.OldRowID}
	}
	var conds []string
	var args []any
	for _, p := range ch.KeyColumns {
		conds, args = append(conds, quoteIdent(ch.Columns[p])+" IS ?"), append(args, ch.Before[p])
	}
	return strings.Join(conds, " AND "), args
}

func quoteIdentList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quoteIdent(n)
	}
	return strings.Join(q, ", ")
}
