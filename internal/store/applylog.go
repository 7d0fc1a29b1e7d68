package store

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// ApplyLog applies committed log entries whose bodies are rlog.Write
// encodings, in index order, exactly once, in one transaction with the
// applied index (one per entry while the schema holds a virtual table: see
// isolating): the way every node applies under consensus, where an entry
// is in the log before anything ran it.
//
// An entry's failure is its outcome, not the node's: a write whose SQL
// fails (a constraint, a forbidden statement, a result over its limits)
// is rolled back alone, on every node alike, and its error is returned in
// its Outcome. A write whose statement rolls back the whole transaction
// (ON CONFLICT ROLLBACK, RAISE(ROLLBACK)) fails alone as well: the
// entries before it are applied again in a fresh transaction, which
// gives the same results, since everything they depend on is pinned.
//
// Entries at or below Applied() are skipped; application stops at a gap.
// The outcomes are those of the entries applied, in order (a duplicate's
// Index is its first time's). The error is for the node itself (its
// database failed); the entries whose outcomes were returned are applied.
func (s *Store) ApplyLog(entries []rlog.Entry) ([]Outcome, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return nil, ErrClosed
	}
	// Applying entries that the consensus log already holds on disk needs
	// no fsync of its own: a transaction lost to a power cut is applied
	// again from the log (its applied index is lost with it). Before the
	// log drops applied entries, the data is synced (Checkpoint).
	restore, err := s.unsynced()
	if err != nil {
		return nil, err
	}
	defer restore()
	applied := s.applied.Load()
	for len(entries) > 0 && entries[0].Index <= applied {
		entries = entries[1:]
	}
	n := 0
	for n < len(entries) && entries[n].Index == applied+uint64(n)+1 {
		n++
	}
	entries = entries[:n]
	if n == 0 {
		return nil, nil
	}
	writes := make([]rlog.Write, n)
	for i, e := range entries {
		// A body no node can read holds no statement: it fails the same
		// way everywhere.
		writes[i], _ = rlog.DecodeWriteEntry(e.Body)
	}
	outs := make([]Outcome, 0, n)
	for len(entries) > 0 {
		aborting := map[int]error{}
		for {
			out, aborted, err := s.applyOnce(entries, writes, aborting)
			if err != nil {
				return outs, err
			}
			if aborted == nil {
				outs = append(outs, out...)
				entries, writes = entries[len(out):], writes[len(out):]
				break
			}
			aborting[aborted.at] = aborted.err
		}
	}
	return outs, nil
}

// isolating reports whether the schema holds a virtual table (writer
// goroutine, inside applyOnce's transaction). Entries that run while it
// does get a transaction each: a virtual table module may do work at
// COMMIT that depends on what the transaction wrote (FTS3 and FTS4 write
// their pending terms as one new segment at COMMIT, and with automerge
// merge segments in proportion to it), so which entries share a
// transaction would change what a node stores; it must follow the log,
// not how Raft batched the entries for this node. Without virtual
// tables, what a transaction stores does not depend on where it ends
// (TestTransactionBoundariesOfOrdinaryTablesChangeNothing compares them),
// and entries share transactions: a transaction per entry costs 20-30%
// of write throughput.
func (s *Store) isolating() (bool, error) {
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRowCached("PRAGMA schema_version")
	if err != nil {
		return false, fmt.Errorf("read the schema version: %w", err)
	}
	v, _ := row[0].(int64)
	if s.vtabsKnown && v == s.vtabsAt {
		return s.vtabs, nil
	}
	// A virtual table is the only table without a b-tree of its own.
	row, err = s.w.QueryRowCached("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND rootpage = 0)")
	if err != nil {
		return false, fmt.Errorf("look for virtual tables: %w", err)
	}
	s.vtabs, s.vtabsAt, s.vtabsKnown = row[0] == int64(1), v, true
	return s.vtabs, nil
}

// abortedAt is the write that rolled back the whole transaction it ran in.
type abortedAt struct {
	at  int
	err error
}

// machineFailure reports whether err is this node's machine failing (see
// sqlite.Environmental) rather than the entry: the one test for every path
// that would otherwise record a statement's failure as the entry's outcome.
func (s *Store) machineFailure(err error) bool {
	return sqlite.Environmental(err, filepath.Dir(s.Path()))
}

// applyOnce applies entries from the first on in one transaction, and
// says what came of those it applied: all of them, or, while the database
// holds a virtual table, only the first (see isolating). aborting: the
// entries (by position) that rolled back the whole transaction when they
// ran before, which fail now without running.
func (s *Store) applyOnce(entries []rlog.Entry, writes []rlog.Write, aborting map[int]error) (out []Outcome, aborted *abortedAt, err error) {
	if err := s.beginEntries(); err != nil {
		return nil, nil, err
	}
	defer s.leave()
	isolate, err := s.isolating()
	if err != nil {
		s.internal("ROLLBACK")
		return nil, nil, err
	}
	out = make([]Outcome, len(entries))
	var check uint64 // a consistency check's index, which ends the transaction
	for i, e := range entries {
		if i > 0 {
			// Once the schema holds a virtual table, each entry commits
			// alone: the transaction ends before the next entry. (The
			// entry that made it may share its transaction with entries
			// before it, which touched no virtual table.)
			if !isolate {
				if isolate, err = s.isolating(); err != nil {
					s.internal("ROLLBACK")
					return nil, nil, err
				}
			}
			if isolate {
				out, entries = out[:i], entries[:i]
				break
			}
		}
		w := writes[i]
		if w.Check {
			out[i] = Outcome{Index: e.Index}
			check = e.Index
			out, entries = out[:i+1], entries[:i+1]
			break
		}
		if err, ok := aborting[i]; ok {
			if err := s.loadFailed(w); err != nil {
				return nil, nil, err
			}
			out[i] = Outcome{Index: e.Index, Err: err}
			continue
		}
		var fingerprint string
		if w.RequestID != "" {
			fp, err := w.Fingerprint()
			if err != nil {
				out[i] = Outcome{Index: e.Index, Err: &ParamError{Msg: err.Error()}}
				continue
			}
			fingerprint = hex.EncodeToString(fp[:])
			first, firstFP, found, err := s.recorded(w.RequestID)
			if err != nil {
				s.internal("ROLLBACK")
				return nil, nil, err
			}
			switch {
			case found && firstFP != "" && firstFP != fingerprint:
				out[i] = Outcome{Index: e.Index, Err: &RequestIDReusedError{ID: w.RequestID, Index: first.Index}}
				continue
			case found:
				out[i] = first
				continue
			}
		}
		if err := s.internal("SAVEPOINT req"); err != nil {
			s.internal("ROLLBACK")
			return nil, nil, fmt.Errorf("savepoint: %w", err)
		}
		s.cap.mark = s.w.CaptureMark()
		if err := s.enter(e.TimeMs, e.Seed); err != nil {
			s.internal("ROLLBACK")
			return nil, nil, err
		}
		if s.faulty(faults.SkipEntry) && e.Index%50 == 0 && len(w.Stmts) > 0 {
			w.Stmts = []rlog.Statement{{SQL: "SELECT 1"}} // succeeds, changes nothing
		}
		if s.faulty(faults.PartialApply) && len(w.Stmts) > 1 {
			w.Stmts = w.Stmts[:1]
		}
		var results []Result
		s.steps = stepBudget{on: w.MaxSteps > 0, left: w.MaxSteps, total: w.MaxSteps}
		bulk := s.cap.on && (w.Load != nil || w.Replace)
		if bulk {
			// A load's rows are not captured one by one (a load may hold
			// gigabytes): the stream says the entry loaded, and a
			// consumer reads the tables again.
			s.w.PauseCapture(true)
		}
		if w.SetChanges {
			s.cap.stale = true
			err = s.setChanges(e.Index, w.ChangesKeep)
		} else if w.ChangesDelivered > 0 {
			err = s.setDelivered(w.ChangesDelivered)
		} else if w.Load != nil {
			results, err = s.applyLoad(w)
		} else if len(w.Stmts) == 0 {
			err = &ParamError{Msg: "the log entry holds no statement"}
		} else if w.Each {
			var undo bool
			results, undo, err = s.runEach(w.Stmts, w.AllowSchema, w.Collect, w.RequestID != "", w.Atomic, Limits{MaxRows: w.MaxRows, MaxBytes: w.MaxBytes})
			if err == nil && undo {
				// An atomic write failed at a statement: none of it
				// applies, and its results (up to the failure) are its
				// answer, recorded with its request id like any other.
				err = s.undoEntry()
			}
		} else {
			err = nil
			if w.Replace {
				err = s.dropUserSchema()
			}
			if err == nil {
				results, err = s.runWrite(context.Background(), w.Stmts, w.AllowSchema, w.Collect, w.RequestID != "", Limits{MaxRows: w.MaxRows, MaxBytes: w.MaxBytes})
			}
		}
		if bulk {
			s.w.PauseCapture(false)
			if err == nil && (w.Load == nil || w.Load.Op == rlog.LoadCommit) {
				err = s.captureLoad()
			}
		}
		if s.steps.spent() {
			// Out of steps, the write fails as a whole, whichever of its
			// statements ran out.
			err = &StepBudgetError{Steps: s.steps.total}
		}
		s.steps = stepBudget{}
		if err == nil && w.RequestID != "" {
			err = s.record(w.RequestID, fingerprint, e.Index, e.TimeMs, results)
		}
		if s.machineFailure(err) {
			// The disk full, an I/O error, a damaged or locked file: this
			// node's trouble, not the entry's. Recorded as the entry's failure, it
			// would leave this node without what every other node applied.
			// The batch rolls back and the apply stops; the entry applies
			// again once the node can (after a restart).
			s.internal("ROLLBACK")
			return nil, nil, fmt.Errorf("entry %d could not be applied on this node: %w", e.Index, err)
		}
		if err != nil {
			if !s.w.InTransaction() {
				s.afterEntry()
				return nil, &abortedAt{at: i, err: err}, nil // it rolled back everything: it fails alone
			}
			if rerr := s.rollbackEntry(); rerr != nil {
				return nil, nil, fmt.Errorf("entry %d: %w", e.Index, rerr)
			}
			if err := s.loadFailed(w); err != nil {
				return nil, nil, err
			}
			out[i] = Outcome{Index: e.Index, Err: err}
			continue
		}
		if err := s.internal("RELEASE req"); err != nil {
			s.internal("ROLLBACK")
			return nil, nil, fmt.Errorf("release savepoint: %w", err)
		}
		if err := s.storeChanges(e.Index, e.TimeMs); err != nil {
			s.internal("ROLLBACK")
			return nil, nil, err
		}
		if !w.Collect {
			results = dropRows(results)
		}
		out[i] = Outcome{Index: e.Index, Results: results}
	}
	s.leave()
	last := entries[len(entries)-1].Index
	term, err := s.recordLogPosition(entries)
	if err != nil {
		s.internal("ROLLBACK")
		return nil, nil, err
	}
	if check != 0 {
		s.digests.markPending(check) // before the index counts as applied
	}
	if err := s.commitAt(last); err != nil {
		return nil, nil, err
	}
	if term > 0 {
		s.termRecorded = term
	}
	if check != 0 {
		s.startDigest(check)
	}
	return out, nil, nil
}

// recordLogPosition records, with the entries' changes, the Raft term of
// the last one and the configuration the last configuration change among
// them reached: a copy of the database then carries its own place in the
// log (see RaftPosition). The term is written only when it differs from
// the one the database holds (a page less per batch in a steady term); it
// returns the term written (0: none).
func (s *Store) recordLogPosition(entries []rlog.Entry) (term uint64, err error) {
	s.wconn.auth.reset(policyReplica)
	last := entries[len(entries)-1]
	if last.Term > 0 && last.Term != s.termRecorded {
		if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('applied_term', ?)", int64(last.Term)); err != nil {
			return 0, fmt.Errorf("record applied term: %w", err)
		}
		term = last.Term
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].Conf != nil {
			if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('conf_state', ?)", entries[i].Conf); err != nil {
				return 0, fmt.Errorf("record configuration: %w", err)
			}
			break
		}
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].Rejoining != nil {
			if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_raft_state(key, value) VALUES ('rejoining', ?)", entries[i].Rejoining); err != nil {
				return 0, fmt.Errorf("record rejoining nodes: %w", err)
			}
			break
		}
	}
	return term, nil
}
