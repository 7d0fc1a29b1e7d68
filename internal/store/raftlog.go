package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/ddbgo/ddb/internal/sqlite"
)

// The consensus log lives in a file of its own beside the database
// (<database>-raft): its entries and Raft's hard state (term, vote, commit
// index), and where the log starts after a snapshot. It has its own
// connection (rl), so that saving entries, which every acknowledgement and
// vote waits for, never waits for an entry being applied on the writer:
// Raft's loop does not wait for SQL.
//
// Where the data stands in the log (the applied index, that entry's term,
// the configuration reached, the record of rejoining nodes) is written by
// the writer, in the transaction that applies the entries: it is the
// data's, and a copy of the database carries it.
//
// The two files are tied by a log id, recorded in both: a log file beside
// a database that is not its own (the database was wiped, or replaced by
// a copy) is emptied at open, and the node starts as one without Raft
// state.
//
// SQLite draws from its process-wide generator when a WAL starts afresh.
// The writer pins that generator while it runs an entry, so the log's
// connection must not draw meanwhile: it never checkpoints by itself
// (wal_autocheckpoint = 0), and checkpoints with RESTART (which draws
// then, and leaves the next write nothing to draw) only while it holds the
// generator, when no entry runs (CheckpointRaftLog).

// raftSchemaSQL is the database's own consensus table: where its data
// stands in the log.
const raftSchemaSQL = `
CREATE TABLE IF NOT EXISTS _ddb_raft_state (key TEXT PRIMARY KEY, value BLOB);
`

// raftFileSchemaSQL is the consensus log file's.
const raftFileSchemaSQL = `
CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS raft_state (key TEXT PRIMARY KEY, value BLOB);
`

// RaftLogPath is the consensus log file of the database at path.
func RaftLogPath(path string) string { return path + "-raft" }

// raftCheckpointEvery is how many transactions the log's WAL may hold
// before it is checkpointed (a step's transaction writes a few pages: the
// WAL stays within about ten MB).
const raftCheckpointEvery = 1024

// openRaftLog opens the consensus log file, moves into it a log an earlier
// version kept in the database, and empties it if it belongs to another
// database.
func (s *Store) openRaftLog() error {
	rl, err := openConn(RaftLogPath(s.path), url.Values{
		"_journal_mode": {"WAL"}, "_synchronous": {s.sync}, "_busy_timeout": {"10000"},
	})
	if err != nil {
		return fmt.Errorf("open the consensus log %s: %w", RaftLogPath(s.path), err)
	}
	s.rl = rl
	// Its first write may start a WAL, which draws from SQLite's generator.
	sqlite.LockPRNG()
	defer sqlite.UnlockPRNG()
	if err := rl.ExecScript("PRAGMA wal_autocheckpoint = 0;" + raftFileSchemaSQL); err != nil {
		return fmt.Errorf("prepare the consensus log: %w", err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wconn.auth.reset(policyReplica)
	if err := s.migrateRaftLog(); err != nil {
		return fmt.Errorf("move the consensus log out of the database: %w", err)
	}
	own, err := s.w.QueryRow("SELECT value FROM _ddb_raft_state WHERE key = 'log_id'")
	if err != nil {
		return err
	}
	theirs, err := rl.QueryRow("SELECT value FROM raft_state WHERE key = 'log_id'")
	if err != nil {
		return err
	}
	switch {
	case own == nil:
		id := newFileID()
		if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('log_id', ?)", id); err != nil {
			return err
		}
		own = []any{id}
		fallthrough
	case theirs == nil || theirs[0] != own[0]:
		if theirs != nil {
			s.RaftLogDiscarded = true
		}
		return s.rlTx(
			stmt{"DELETE FROM raft_log", nil},
			stmt{"DELETE FROM raft_state", nil},
			rlState("log_id", own[0]),
		)
	}
	return nil
}

// migrateRaftLog moves the log and hard state that an earlier version kept
// in the database's own tables into the log file (the caller holds wmu).
// The file is written and synced first, so a crash in between only moves
// them again.
func (s *Store) migrateRaftLog() error {
	row, err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = '_ddb_raft_log'")
	if err != nil || row[0].(int64) == 0 {
		return err
	}
	ents, err := s.w.All("SELECT idx, term, type, data FROM _ddb_raft_log ORDER BY idx")
	if err != nil {
		return err
	}
	state, err := s.w.All("SELECT key, value FROM _ddb_raft_state WHERE key IN ('hard_state', 'snap_index', 'snap_term')")
	if err != nil {
		return err
	}
	id := newFileID()
	stmts := []stmt{{"DELETE FROM raft_log", nil}, {"DELETE FROM raft_state", nil}, rlState("log_id", id)}
	for _, e := range ents {
		stmts = append(stmts, stmt{"INSERT INTO raft_log(idx, term, type, data) VALUES (?, ?, ?, ?)", e})
	}
	for _, kv := range state {
		stmts = append(stmts, rlState(kv[0].(string), kv[1]))
	}
	if err := s.rlTx(stmts...); err != nil {
		return err
	}
	return s.execInTx("drop the moved consensus log",
		stmt{"DROP TABLE _ddb_raft_log", nil},
		stmt{"DELETE FROM _ddb_raft_state WHERE key IN ('hard_state', 'snap_index', 'snap_term')", nil},
		setRaftState("log_id", id),
	)
}

// rlState sets one key of the log file's state.
func rlState(key string, value any) stmt {
	return stmt{"INSERT OR REPLACE INTO raft_state(key, value) VALUES ('" + key + "', ?)", []any{value}}
}

// rlTx runs stmts on the log file in one transaction (the caller holds
// rmu, or is the only user, at open).
func (s *Store) rlTx(stmts ...stmt) error {
	if s.rl == nil {
		return ErrClosed
	}
	if err := inTx(s.rl, stmts); err != nil {
		return err
	}
	s.rlTxs++
	return nil
}

// inTx runs stmts on c in one transaction, rolled back on any error.
func inTx(c *sqlite.Conn, stmts []stmt) error {
	if err := c.Exec("BEGIN IMMEDIATE"); err != nil {
		return err
	}
	for _, q := range stmts {
		if err := c.Exec(q.sql, q.args...); err != nil {
			c.Exec("ROLLBACK")
			return err
		}
	}
	if err := c.Exec("COMMIT"); err != nil {
		c.Exec("ROLLBACK")
		return err
	}
	return nil
}

// CheckpointRaftLog copies the log file's WAL back into it and empties
// the WAL, once it has grown. It waits for SQLite's generator (see the top
// of this file), so it is called where no entry of this store runs and
// none waits on it: by the applier, between two batches.
func (s *Store) CheckpointRaftLog() error {
	s.rmu.Lock()
	due := s.rl != nil && s.rlTxs >= raftCheckpointEvery
	s.rmu.Unlock()
	if !due {
		return nil
	}
	sqlite.LockPRNG()
	defer sqlite.UnlockPRNG()
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.rl == nil {
		return ErrClosed
	}
	// RESTART, not TRUNCATE: the WAL starts again from its beginning and
	// keeps its size, so the appends after it do not grow the file (an
	// fsync of a file that grew also writes its metadata).
	if err := s.rl.Checkpoint(2); err != nil {
		return fmt.Errorf("checkpoint the consensus log: %w", err)
	}
	s.rlTxs = 0
	return nil
}

// RaftEntry is one consensus log entry as it is stored.
type RaftEntry struct {
	Index, Term uint64
	Type        int
	Data        []byte
}

// RaftState is the consensus state kept beside the log: the encoded hard
// state and configuration, and the index and term of the last entry a
// snapshot replaced (0, 0 when the log is whole).
type RaftState struct {
	HardState, ConfState []byte
	SnapIndex, SnapTerm  uint64
}

// ErrRaftCompacted: the entry asked for precedes the log's first entry.
var ErrRaftCompacted = errors.New("raft log entry compacted")

// LoadRaftState reads the consensus state: the log file's, and the
// configuration the data has reached.
func (s *Store) LoadRaftState(ctx context.Context) (RaftState, error) {
	var st RaftState
	pos, err := s.DataPosition(ctx)
	if err != nil {
		return st, err
	}
	st.ConfState = pos.Conf
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.rl == nil {
		return st, ErrClosed
	}
	rows, err := s.rl.All("SELECT key, value FROM raft_state")
	if err != nil {
		return st, fmt.Errorf("read raft state: %w", err)
	}
	for _, row := range rows {
		switch row[0] {
		case "hard_state":
			st.HardState, _ = row[1].([]byte)
		case "snap_index":
			v, _ := row[1].(int64)
			st.SnapIndex = uint64(v)
		case "snap_term":
			v, _ := row[1].(int64)
			st.SnapTerm = uint64(v)
		}
	}
	return st, nil
}

// RaftLastIndex is the index of the last entry the log holds (0 when it
// holds none: the log then ends at the snapshot's index).
func (s *Store) RaftLastIndex(ctx context.Context) (uint64, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.rl == nil {
		return 0, ErrClosed
	}
	row, err := s.rl.QueryRow("SELECT max(idx) FROM raft_log")
	if err != nil {
		return 0, err
	}
	v, _ := row[0].(int64)
	return uint64(v), nil
}

// RaftEntries returns the entries in [lo, hi), at most maxBytes of data
// (but at least one entry).
func (s *Store) RaftEntries(ctx context.Context, lo, hi, maxBytes uint64) ([]RaftEntry, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.rl == nil {
		return nil, ErrClosed
	}
	st, err := s.rl.Prepare("SELECT idx, term, type, data FROM raft_log WHERE idx >= ? AND idx < ? ORDER BY idx")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if _, err := st.Bind([]any{int64(lo), int64(hi)}, nil); err != nil {
		return nil, err
	}
	var out []RaftEntry
	var size uint64
	for {
		more, err := st.Step()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		row := st.Row(nil)
		e := RaftEntry{Index: uint64(row[0].(int64)), Term: uint64(row[1].(int64)), Type: int(row[2].(int64))}
		e.Data, _ = row[3].([]byte)
		if len(out) > 0 && maxBytes > 0 && size+uint64(len(e.Data)) > maxBytes {
			break
		}
		size += uint64(len(e.Data))
		out = append(out, e)
	}
	if len(out) > 0 && out[0].Index != lo {
		return nil, ErrRaftCompacted
	}
	return out, nil
}

// RaftSave is what one step of the consensus log makes durable: entries
// (replacing the log from the first one's index on) and the hard state
// (nil when it did not change).
type RaftSave struct {
	Entries   []RaftEntry
	HardState []byte
}

// empty reports whether save writes nothing.
func (save RaftSave) empty() bool { return len(save.Entries) == 0 && save.HardState == nil }

// SaveRaft makes entries and the hard state durable in one transaction
// of the log file. Entries replace
// whatever the log holds from their first index on (a new leader
// overwrote an uncommitted suffix). It never waits for the writer.
func (s *Store) SaveRaft(save RaftSave) error {
	if save.empty() {
		return nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.rl == nil {
		return ErrClosed
	}
	stmts := make([]stmt, 0, len(save.Entries)+2)
	if len(save.Entries) > 0 {
		stmts = append(stmts, stmt{"DELETE FROM raft_log WHERE idx >= ?", []any{int64(save.Entries[0].Index)}})
		for _, e := range save.Entries {
			data := e.Data
			if data == nil {
				data = []byte{}
			}
			stmts = append(stmts, stmt{"INSERT INTO raft_log(idx, term, type, data) VALUES (?, ?, ?, ?)", []any{int64(e.Index), int64(e.Term), int64(e.Type), data}})
		}
	}
	if save.HardState != nil {
		stmts = append(stmts, rlState("hard_state", save.HardState))
	}
	if err := s.rlTx(stmts...); err != nil {
		return fmt.Errorf("save raft log: %w", err)
	}
	return nil
}

// unsynced makes the writer's next transactions commit without an fsync
// (synchronous = NORMAL: in WAL mode a commit still reaches the file,
// and survives a crash of the process), until restore. The caller holds
// wmu.
func (s *Store) unsynced() (restore func(), err error) {
	if s.sync != "FULL" {
		return func() {}, nil
	}
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("PRAGMA synchronous = NORMAL"); err != nil {
		return nil, err
	}
	return func() { s.w.Exec("PRAGMA synchronous = FULL") }, nil
}

// SetRaftConfState records the cluster configuration the log has reached.
func (s *Store) SetRaftConfState(confState []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	return s.w.Exec("INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('conf_state', ?)", confState)
}

// CompactRaft drops the log's entries up to and including index, whose
// term is term: a snapshot at that index replaces them.
func (s *Store) CompactRaft(index, term uint64) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if err := s.rlTx(
		stmt{"DELETE FROM raft_log WHERE idx <= ?", []any{int64(index)}},
		rlState("snap_index", int64(index)),
		rlState("snap_term", int64(term)),
	); err != nil {
		return fmt.Errorf("compact raft log at %d: %w", index, err)
	}
	return nil
}

// ResetRaftLog empties the log file and starts the log after index, whose
// term is term, with the given hard state (nil: none): where the data
// stands after a snapshot, when the log file did not record it.
func (s *Store) ResetRaftLog(index, term uint64, hardState []byte) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	stmts := []stmt{
		{"DELETE FROM raft_log", nil},
		{"DELETE FROM raft_state WHERE key <> 'log_id'", nil},
	}
	if index > 0 {
		stmts = append(stmts, rlState("snap_index", int64(index)), rlState("snap_term", int64(term)))
	}
	if hardState != nil {
		stmts = append(stmts, rlState("hard_state", hardState))
	}
	if err := s.rlTx(stmts...); err != nil {
		return fmt.Errorf("reset raft log: %w", err)
	}
	return nil
}

// stmt is one statement and its parameters.
type stmt struct {
	sql  string
	args []any
}

// setRaftState sets one key of _ddb_raft_state.
func setRaftState(key string, value any) stmt {
	return stmt{"INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('" + key + "', ?)", []any{value}}
}

// execInTx runs stmts on the writer in one transaction (the caller holds
// wmu); what names the work in an error.
func (s *Store) execInTx(what string, stmts ...stmt) error {
	if s.w == nil {
		return ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	if err := inTx(s.w, stmts); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// RaftStateEmpty reports whether the node holds no consensus state at all
// (no hard state, no log, no snapshot position).
func (s *Store) RaftStateEmpty(ctx context.Context) (bool, error) {
	st, err := s.LoadRaftState(ctx)
	if err != nil {
		return false, err
	}
	last, err := s.RaftLastIndex(ctx)
	if err != nil {
		return false, err
	}
	return st.HardState == nil && st.SnapIndex == 0 && last == 0, nil
}

// SeedRaft gives a node without consensus state a log that starts after
// index (as if a snapshot at index, term, had replaced it), with the given
// hard state and configuration.
func (s *Store) SeedRaft(index, term uint64, hardState, confState []byte) error {
	s.wmu.Lock()
	s.termRecorded = 0
	s.vtabsKnown = false
	err := s.execInTx("seed raft state",
		setRaftState("applied_term", int64(term)),
		setRaftState("conf_state", confState),
	)
	s.wmu.Unlock()
	if err != nil {
		return err
	}
	return s.ResetRaftLog(index, term, hardState)
}

// ClaimRaftNode records that this database belongs to consensus node id.
// A database that another node wrote (a file copied from it, as when a
// cluster is rebuilt from its best copy) loses that node's Raft state:
// its term, vote and log are that node's, and no other node may reuse
// them. Its data stays; the node then starts as one without Raft state.
// It reports the node the file came from (0: this one, or none recorded).
func (s *Store) ClaimRaftNode(id uint64) (from uint64, err error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return 0, ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRow("SELECT value FROM _ddb_raft_state WHERE key = 'node_id'")
	if err != nil {
		return 0, err
	}
	if row != nil {
		if v, _ := row[0].(int64); uint64(v) == id {
			return 0, nil
		} else {
			from = uint64(v)
		}
	}
	s.termRecorded = 0
	if err := s.execInTx(fmt.Sprintf("claim the database for node %d", id), setRaftState("node_id", int64(id))); err != nil {
		return 0, err
	}
	if from != 0 {
		// Where the data stands in the log (the applied entry's term, the
		// configuration) stays: it is the data's, not the node's.
		s.rmu.Lock()
		defer s.rmu.Unlock()
		if err := s.rlTx(stmt{"DELETE FROM raft_log", nil}, stmt{"DELETE FROM raft_state WHERE key <> 'log_id'", nil}); err != nil {
			return from, err
		}
	}
	return from, nil
}

// DataPosition is where the data stands in the consensus log, as the
// applied batches recorded it: the applied index, that entry's term (0:
// not recorded) and the configuration (nil: not recorded).
func (s *Store) DataPosition(ctx context.Context) (RaftPosition, error) {
	p := RaftPosition{Index: s.Applied()}
	r, err := s.getReader(ctx)
	if err != nil {
		return p, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	return p, positionOf(r.c, &p)
}
