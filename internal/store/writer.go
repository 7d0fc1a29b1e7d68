package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

// Request is one client write: its statements run as one atomic unit.
type Request struct {
	Stmts       []rlog.Statement
	AllowSchema bool // false for writes that entered at a slave
	Collect     bool // return rows (a write sent as "query", e.g. RETURNING)
	Limits      Limits
	// RequestID, when set, is the write's idempotency key: a write with a
	// key already recorded is not run again, and its outcome is the first
	// one's (see Outcome.Duplicate). Every node records the key with the
	// entry, in the same transaction.
	RequestID string
	// Each and Atomic: the statements are independent; Replace: the write
	// replaces the whole user database (see rlog.Write).
	Each, Atomic, Replace bool
	// Load, when set, makes the write one step of a load sent in several
	// entries (see rlog.LoadStep and PlanLoad).
	Load *rlog.LoadStep
	// Check: the entry is a consistency check (see rlog.Write.Check).
	Check bool
	// SetChanges sets the cluster's change stream (see
	// rlog.Write.SetChanges): on, keeping ChangesKeep indexes, or off.
	SetChanges  bool
	ChangesKeep int64
	// ChangesDelivered records the webhook's delivered index (see
	// rlog.Write.ChangesDelivered).
	ChangesDelivered uint64
}

// Outcome is what happened to one Request of a batch.
type Outcome struct {
	Index   uint64 // log index; 0 when Err is set
	Results []Result
	Err     error
	Entry   rlog.Entry // the log entry written (when Err is nil and not Duplicate)
	// Duplicate: the request's RequestID was already recorded; Index and
	// Results are those of the first time, and nothing was written now.
	Duplicate bool
}

// Now is the clock a batch takes entry times from; tests replace it.
type Now func() time.Time

// beginEntries opens the writer's transaction for a run of entries and
// takes SQLite's process-wide generator for it. Before any entry runs, it
// writes a page of the transaction to the WAL: the first WAL write of a
// transaction may draw from the generator (a new WAL header's salt), and
// whether it does depends on this node's checkpoints, which differ between
// nodes. After this, nothing but the entries draws from it.
func (s *Store) beginEntries() error {
	if err := s.internal("BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	err := s.setApplied(s.applied.Load())
	if err == nil {
		err = s.w.FlushCache()
	}
	if err == nil {
		err = s.afterEntry() // a transaction rolled back after a schema change
	}
	if err == nil && s.cap.stale {
		err = s.loadChangeSetting() // a transaction that changed it rolled back
	}
	if err == nil {
		s.w.TruncateCapture(0)
		err = s.ensureCapture()
	}
	if err != nil {
		s.internal("ROLLBACK")
		return fmt.Errorf("begin: %w", err)
	}
	s.lockEntries()
	return nil
}

// runWrite runs one client write's statements inside the entry's
// savepoint, under the policy its schema consent gives, then reloads the
// schema if it changed it. Rows are kept with a request id (every node
// keeps the same, so whichever answers a retry answers it whole); the
// limits on rows are those of the client's request, with or without an id.
func (s *Store) runWrite(ctx context.Context, stmts []rlog.Statement, allowSchema, collect, hasID bool, lim Limits) ([]Result, error) {
	p := policyClient
	if !allowSchema {
		p = policyClientNoSchema
	}
	if !collect {
		lim = Limits{}
	}
	results, err := s.runRequest(ctx, stmts, p, collect || hasID, lim)
	if err == nil {
		err = s.afterEntry()
	}
	return results, err
}

// runEach runs a write whose statements are independent (rlog.Write.Each)
// inside the entry's savepoint: each statement in a savepoint of its own,
// its failure being its result. With atomic, the first failure ends the
// write, and undo tells the caller to undo the whole entry. An error is
// the entry's own failure (as for runWrite).
func (s *Store) runEach(stmts []rlog.Statement, allowSchema, collect, hasID, atomic bool, lim Limits) (results []Result, undo bool, err error) {
	p := policyClient
	if !allowSchema {
		p = policyClientNoSchema
	}
	if !collect {
		lim = Limits{}
	}
	b := &budget{lim: lim}
	for _, st := range stmts {
		if err := s.internal("SAVEPOINT stmt"); err != nil {
			return nil, false, err
		}
		mark := s.w.CaptureMark()
		s.wconn.auth.reset(p)
		r, rerr := s.run(context.Background(), s.wconn, st, collect || hasID, b)
		if rerr != nil {
			if s.machineFailure(rerr) {
				return nil, false, rerr // not the statement's failure: the entry stops (see applyOnce)
			}
			if !s.w.InTransaction() {
				return nil, false, rerr // it rolled back the whole transaction: the entry fails alone
			}
			if err := s.internal("ROLLBACK TO stmt", "RELEASE stmt"); err != nil {
				return nil, false, err
			}
			s.w.TruncateCapture(mark)
			if err := s.afterEntry(); err != nil {
				return nil, false, err
			}
			results = append(results, Result{Err: StatementErrorOf(rerr)})
			if atomic {
				return results, true, nil
			}
			continue
		}
		if err := s.internal("RELEASE stmt"); err != nil {
			return nil, false, err
		}
		results = append(results, r)
	}
	return results, false, s.afterEntry()
}

// dropUserSchema drops every user table, view and trigger (indexes go
// with their tables), and forgets AUTOINCREMENT counters: the first step
// of a write that replaces the database. Every node has the same schema
// at the same index, so every node drops the same.
func (s *Store) dropUserSchema() error {
	s.wconn.auth.reset(policyReplica)
	objs, err := s.w.All("SELECT type, name FROM sqlite_schema WHERE type IN ('view', 'trigger', 'table') ORDER BY CASE type WHEN 'view' THEN 0 WHEN 'trigger' THEN 1 ELSE 2 END, name")
	if err != nil {
		return err
	}
	for _, o := range objs {
		typ, name := o[0].(string), o[1].(string)
		if internalObject(name) {
			continue
		}
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("DROP " + strings.ToUpper(typ) + " IF EXISTS " + quoteIdent(name)); err != nil {
			return fmt.Errorf("drop %s %s: %w", typ, name, err)
		}
		s.schemaDirty = true
	}
	s.wconn.auth.reset(policyReplica)
	if row, err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'"); err == nil && row[0].(int64) > 0 {
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("DELETE FROM sqlite_sequence"); err != nil {
			return err
		}
	}
	return nil
}

// undoEntry undoes everything the entry's savepoint holds, keeping the
// savepoint open (its request id is still recorded in it).
func (s *Store) undoEntry() error {
	if err := s.internal("ROLLBACK TO req"); err != nil {
		return err
	}
	s.w.TruncateCapture(s.cap.mark)
	return s.afterEntry()
}

// rollbackEntry undoes a failed entry's savepoint and reloads the schema
// if the entry touched it. On failure the whole transaction is rolled back.
func (s *Store) rollbackEntry() error {
	if err := s.internal("ROLLBACK TO req", "RELEASE req"); err != nil {
		s.internal("ROLLBACK")
		return fmt.Errorf("roll back failed entry: %w", err)
	}
	s.w.TruncateCapture(s.cap.mark)
	err := s.afterEntry()
	if err == nil && s.cap.stale {
		err = s.loadChangeSetting() // the entry that changed it failed
	}
	if err != nil {
		s.internal("ROLLBACK")
		return err
	}
	return nil
}

// dropRows forgets the rows of results a client did not ask for (they were
// collected only to be remembered with a request id).
func dropRows(rs []Result) []Result {
	for i := range rs {
		rs[i].Rows = nil
	}
	return rs
}

// requestKeep is how long a request id is remembered, by the entries' own
// clock, so that every node forgets the same ids at the same entry.
const requestKeep = 24 * time.Hour

// recordedRequest is what _ddb_requests keeps of a request id: its
// request's fingerprint (rlog.Write.Fingerprint) and its results. Ids
// recorded before fingerprints were kept hold the results alone (a JSON
// array); those match any request.
type recordedRequest struct {
	Fingerprint string       `json:"fp"`
	Results     []WireResult `json:"results"`
}

// RequestIDReusedError: a request id came back with a request other than
// the one it was first used for. That is not a retry, so it neither
// applies nor answers with the first request's results.
type RequestIDReusedError struct {
	ID    string
	Index uint64 // the log index of the request the id was first used for
}

func (e *RequestIDReusedError) Error() string {
	return fmt.Sprintf("request_id %q was already used for a different request (log index %d): a retry must send the same statements with the same parameters; a new request needs a new request_id", e.ID, e.Index)
}

// recorded looks up a request id in the writer's transaction: the first
// outcome of the request it was used for, and that request's fingerprint
// ("" for an id recorded without one).
func (s *Store) recorded(id string) (first Outcome, fingerprint string, found bool, err error) {
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRowCached("SELECT idx, result FROM _ddb_requests WHERE id = ?", id)
	if err != nil || row == nil {
		return Outcome{}, "", false, err
	}
	var rec recordedRequest
	b, _ := row[1].([]byte)
	if len(b) > 0 && b[0] == '[' {
		err = json.Unmarshal(b, &rec.Results)
	} else {
		err = json.Unmarshal(b, &rec)
	}
	if err != nil {
		return Outcome{}, "", false, fmt.Errorf("request %q: decode its recorded result: %w", id, err)
	}
	results, err := DecodeResults(rec.Results)
	if err != nil {
		return Outcome{}, "", false, err
	}
	return Outcome{Index: uint64(row[0].(int64)), Results: results, Duplicate: true}, rec.Fingerprint, true, nil
}

// record remembers a request id with its request's fingerprint, its
// entry's index and its results, and every 1024 entries forgets ids older
// than requestKeep.
func (s *Store) record(id, fingerprint string, index uint64, timeMs int64, results []Result) error {
	ws, err := EncodeResults(results)
	if err != nil {
		return err
	}
	b, err := json.Marshal(recordedRequest{Fingerprint: fingerprint, Results: ws})
	if err != nil {
		return err
	}
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("INSERT INTO _ddb_requests(idx, id, time_ms, result) VALUES (?, ?, ?, ?)", int64(index), id, timeMs, b); err != nil {
		return fmt.Errorf("record request %q: %w", id, err)
	}
	if index%1024 == 0 {
		// Ids are kept in index order, which is time order: looking at the
		// oldest 4096 is enough, and bounds the work.
		if err := s.w.Exec("DELETE FROM _ddb_requests WHERE idx IN (SELECT idx FROM (SELECT idx, time_ms FROM _ddb_requests ORDER BY idx LIMIT 4096) WHERE time_ms < ?)", timeMs-requestKeep.Milliseconds()); err != nil {
			return fmt.Errorf("forget old request ids: %w", err)
		}
	}
	return nil
}

// internal runs the store's own bookkeeping statements on the writer,
// through its statement cache.
func (s *Store) internal(sqls ...string) error {
	s.wconn.auth.reset(policyReplica)
	for _, q := range sqls {
		if err := s.w.Exec(q); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) runRequest(ctx context.Context, stmts []rlog.Statement, p policy, collect bool, lim Limits) ([]Result, error) {
	results := make([]Result, 0, len(stmts))
	b := &budget{lim: lim}
	for _, st := range stmts {
		s.wconn.auth.reset(p)
		r, err := s.run(ctx, s.wconn, st, collect, b)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	return results, nil
}

func (s *Store) setApplied(index uint64) error {
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("UPDATE _ddb_meta SET value = ? WHERE key = 'applied'", int64(index)); err != nil {
		return fmt.Errorf("record applied index %d: %w", index, err)
	}
	return nil
}

// SQLite shows the transaction to new readers as soon as its COMMIT is
// written, before this returns, so the visible index is raised first (see
// VisibleIndex) and lowered again if the commit fails (then nobody saw it).
func (s *Store) commitAt(index uint64) error {
	if err := s.setApplied(index); err != nil {
		s.internal("ROLLBACK")
		return err
	}
	s.visible.Store(index)
	if err := s.internal("COMMIT"); err != nil {
		s.internal("ROLLBACK")
		s.visible.Store(s.applied.Load())
		return fmt.Errorf("commit: %w", err)
	}
	s.cap.stale = false
	if afterCommit != nil {
		afterCommit(index)
	}
	s.applied.Store(index)
	return nil
}

// afterCommit, when set (by tests), runs between a COMMIT and the raising
// of Applied: the moment readers see what Applied does not cover yet.
var afterCommit func(index uint64)
