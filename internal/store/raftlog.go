package store

import (
	"context"
	"errors"
	"fmt"
)

// The consensus log lives in the node's database, beside the data: its
// entries and its state (Raft's hard state and configuration, and where
// the log starts after a snapshot) are written by the writer connection,
// in the same kind of transaction as the changes they carry, so that one
// fsync makes both durable.

const raftSchemaSQL = `
CREATE TABLE IF NOT EXISTS _ddb_raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS _ddb_raft_state (key TEXT PRIMARY KEY, value BLOB);
`

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
	// Rejoining is the consensus package's record of the nodes taken out
	// of the configuration to be added again (replicated: every node
	// writes it with the configuration change that alters it).
	Rejoining []byte
}

// ErrRaftCompacted: the entry asked for precedes the log's first entry.
var ErrRaftCompacted = errors.New("raft log entry compacted")

// LoadRaftState reads the consensus state.
func (s *Store) LoadRaftState(ctx context.Context) (RaftState, error) {
	var st RaftState
	r, err := s.getReader(ctx)
	if err != nil {
		return st, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	rows, err := r.c.All("SELECT key, value FROM _ddb_raft_state")
	if err != nil {
		return st, fmt.Errorf("read raft state: %w", err)
	}
	for _, row := range rows {
		switch row[0] {
		case "hard_state":
			st.HardState, _ = row[1].([]byte)
		case "conf_state":
			st.ConfState, _ = row[1].([]byte)
		case "rejoining":
			st.Rejoining, _ = row[1].([]byte)
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
	r, err := s.getReader(ctx)
	if err != nil {
		return 0, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	row, err := r.c.QueryRow("SELECT max(idx) FROM _ddb_raft_log")
	if err != nil {
		return 0, err
	}
	v, _ := row[0].(int64)
	return uint64(v), nil
}

// RaftEntries returns the entries in [lo, hi), at most maxBytes of data
// (but at least one entry).
func (s *Store) RaftEntries(ctx context.Context, lo, hi, maxBytes uint64) ([]RaftEntry, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	st, err := r.c.Prepare("SELECT idx, term, type, data FROM _ddb_raft_log WHERE idx >= ? AND idx < ? ORDER BY idx")
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
	// Lazy: nothing here needs to survive a power cut (no entries, and of
	// the hard state only the commit index changed, which Raft learns again
	// from the leader), so the transaction is not synced to disk. The next
	// synced one covers it.
	Lazy bool
}

// empty reports whether save writes nothing.
func (save RaftSave) empty() bool { return len(save.Entries) == 0 && save.HardState == nil }

// check refuses a save that would skip the fsync of entries: entries are
// what a node acknowledges, so they are always synced.
func (save RaftSave) check() error {
	if save.Lazy && len(save.Entries) > 0 {
		return errors.New("raft log entries cannot be saved without an fsync")
	}
	return nil
}

// SaveRaft makes entries and the hard state durable in one transaction
// (written, not synced, if save is Lazy). Entries replace whatever the log
// holds from their first index on (a new leader overwrote an uncommitted
// suffix).
func (s *Store) SaveRaft(save RaftSave) error {
	if save.empty() {
		return nil
	}
	if err := save.check(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return ErrClosed
	}
	if save.Lazy {
		restore, err := s.unsynced()
		if err != nil {
			return err
		}
		defer restore()
	}
	return s.saveRaftTx(save.Entries, save.HardState)
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

// saveRaftTx is SaveRaft for a caller that holds wmu.
func (s *Store) saveRaftTx(entries []RaftEntry, hardState []byte) error {
	if err := s.internal("BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := s.saveRaft(entries, hardState); err != nil {
		s.internal("ROLLBACK")
		return err
	}
	if err := s.internal("COMMIT"); err != nil {
		s.internal("ROLLBACK")
		return fmt.Errorf("commit raft log: %w", err)
	}
	return nil
}

func (s *Store) saveRaft(entries []RaftEntry, hardState []byte) error {
	s.wconn.auth.reset(policyReplica)
	if len(entries) > 0 {
		if err := s.w.Exec("DELETE FROM _ddb_raft_log WHERE idx >= ?", int64(entries[0].Index)); err != nil {
			return fmt.Errorf("truncate raft log at %d: %w", entries[0].Index, err)
		}
		for _, e := range entries {
			data := e.Data
			if data == nil {
				data = []byte{}
			}
			if err := s.w.Exec("INSERT INTO _ddb_raft_log(idx, term, type, data) VALUES (?, ?, ?, ?)", int64(e.Index), int64(e.Term), int64(e.Type), data); err != nil {
				return fmt.Errorf("append raft entry %d: %w", e.Index, err)
			}
		}
	}
	if hardState != nil {
		if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('hard_state', ?)", hardState); err != nil {
			return fmt.Errorf("save raft hard state: %w", err)
		}
	}
	return nil
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
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.execInTx(fmt.Sprintf("compact raft log at %d", index),
		stmt{"DELETE FROM _ddb_raft_log WHERE idx <= ?", []any{int64(index)}},
		setRaftState("snap_index", int64(index)),
		setRaftState("snap_term", int64(term)),
	)
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
	if err := s.internal("BEGIN IMMEDIATE"); err != nil {
		return err
	}
	for _, q := range stmts {
		if err := s.w.Exec(q.sql, q.args...); err != nil {
			s.internal("ROLLBACK")
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return s.internal("COMMIT")
}

// RaftStateEmpty reports whether the database holds no consensus state at
// all (no hard state, no log, no snapshot position).
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

// SeedRaft gives a database without consensus state a log that starts
// after index (as if a snapshot at index, term, had replaced it), with
// the given hard state and configuration, in one transaction.
func (s *Store) SeedRaft(index, term uint64, hardState, confState []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.termRecorded = 0
	return s.execInTx("seed raft state",
		setRaftState("snap_index", int64(index)),
		setRaftState("snap_term", int64(term)),
		setRaftState("applied_term", int64(term)),
		setRaftState("hard_state", hardState),
		setRaftState("conf_state", confState),
	)
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
	stmts := []stmt{setRaftState("node_id", int64(id))}
	if from != 0 {
		// Where the data stands in the log (the applied entry's term and
		// the configuration) stays: it is the data's, not the node's.
		stmts = append([]stmt{{"DELETE FROM _ddb_raft_log", nil}, {"DELETE FROM _ddb_raft_state WHERE key NOT IN ('applied_term', 'conf_state', 'rejoining')", nil}}, stmts...)
	}
	return from, s.execInTx(fmt.Sprintf("claim the database for node %d", id), stmts...)
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
	rows, err := r.c.All("SELECT key, value FROM _ddb_raft_state WHERE key IN ('applied_term', 'conf_state')")
	if err != nil {
		return p, err
	}
	for _, row := range rows {
		switch row[0] {
		case "applied_term":
			v, _ := row[1].(int64)
			p.Term = uint64(v)
		case "conf_state":
			p.Conf, _ = row[1].([]byte)
		}
	}
	return p, nil
}
