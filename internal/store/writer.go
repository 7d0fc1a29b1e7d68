package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

// Request is one client write: its statements run as one atomic unit.
type Request struct {
	Ctx         context.Context
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

// CommitBatch runs requests in one SQLite transaction, each in its own
// savepoint so one failing request fails alone, appends one log entry per
// successful request in the same transaction, and commits once (one fsync
// for the whole batch). Entries get consecutive indexes after Applied().
func (s *Store) CommitBatch(reqs []*Request, now Now) []Outcome {
	out := make([]Outcome, len(reqs))
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		for i := range out {
			out[i].Err = ErrClosed
		}
		return out
	}
	pending := make([]int, 0, len(reqs))
	for i := range reqs {
		pending = append(pending, i)
	}
	for len(pending) > 0 {
		aborted, err := s.commitOnce(reqs, out, pending, now)
		if err != nil {
			for _, i := range pending {
				if out[i].Err == nil {
					out[i] = Outcome{Err: err}
				}
			}
			return out
		}
		if aborted < 0 {
			return out
		}
		// A statement of request `aborted` rolled back the whole
		// transaction (ON CONFLICT ROLLBACK, RAISE(ROLLBACK)). It alone
		// fails; run the others again in a fresh transaction.
		next := pending[:0:0]
		for _, i := range pending {
			if i != aborted {
				out[i] = Outcome{}
				next = append(next, i)
			}
		}
		pending = next
	}
	return out
}

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
	if err != nil {
		s.internal("ROLLBACK")
		return fmt.Errorf("begin: %w", err)
	}
	s.lockEntries()
	return nil
}

func (s *Store) commitOnce(reqs []*Request, out []Outcome, pending []int, now Now) (aborted int, err error) {
	w := s.w
	if err := s.beginEntries(); err != nil {
		return -1, err
	}
	defer s.leave()
	index := s.applied.Load()
	for _, i := range pending {
		req := reqs[i]
		if req.RequestID != "" {
			first, found, err := s.recorded(req.RequestID)
			if err != nil {
				s.internal("ROLLBACK")
				return -1, err
			}
			if found {
				out[i] = first
				continue
			}
		}
		t, seed := now().UnixMilli(), s.seeds()
		if err := s.internal("SAVEPOINT req"); err != nil {
			s.internal("ROLLBACK")
			return -1, fmt.Errorf("savepoint: %w", err)
		}
		if err := s.enter(t, seed); err != nil {
			s.internal("ROLLBACK")
			return -1, err
		}
		results, err := s.runWrite(req.Ctx, req.Stmts, req.AllowSchema, req.Collect, req.RequestID != "", req.Limits)
		var body []byte
		if err == nil {
			if body, err = rlog.EncodeWrite(req.RequestID, req.Stmts); err == nil {
				err = s.insertLog(index+1, t, seed, body)
			}
		}
		if err == nil && req.RequestID != "" {
			err = s.record(req.RequestID, index+1, t, results)
		}
		if err != nil {
			if !w.InTransaction() {
				out[i] = Outcome{Err: err}
				return i, nil
			}
			if rerr := s.rollbackEntry(); rerr != nil {
				return -1, rerr
			}
			out[i] = Outcome{Err: err}
			continue
		}
		if err := s.internal("RELEASE req"); err != nil {
			s.internal("ROLLBACK")
			return -1, fmt.Errorf("release savepoint: %w", err)
		}
		index++
		if !req.Collect {
			results = dropRows(results)
		}
		out[i] = Outcome{Index: index, Results: results, Entry: rlog.Entry{Index: index, TimeMs: t, Seed: seed, Body: body}}
	}
	s.leave()
	return -1, s.commitAt(index)
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
		s.wconn.auth.reset(p)
		r, rerr := s.run(context.Background(), s.wconn, st, collect || hasID, b)
		if rerr != nil {
			if !s.w.InTransaction() {
				return nil, false, rerr // it rolled back the whole transaction: the entry fails alone
			}
			if err := s.internal("ROLLBACK TO stmt", "RELEASE stmt"); err != nil {
				return nil, false, err
			}
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
	return s.afterEntry()
}

// rollbackEntry undoes a failed entry's savepoint and reloads the schema
// if the entry touched it. On failure the whole transaction is rolled back.
func (s *Store) rollbackEntry() error {
	if err := s.internal("ROLLBACK TO req", "RELEASE req"); err != nil {
		s.internal("ROLLBACK")
		return fmt.Errorf("roll back failed entry: %w", err)
	}
	if err := s.afterEntry(); err != nil {
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

// recorded looks up a request id in the writer's transaction.
func (s *Store) recorded(id string) (Outcome, bool, error) {
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRowCached("SELECT idx, result FROM _ddb_requests WHERE id = ?", id)
	if err != nil || row == nil {
		return Outcome{}, false, err
	}
	var ws []WireResult
	b, _ := row[1].([]byte)
	if err := json.Unmarshal(b, &ws); err != nil {
		return Outcome{}, false, fmt.Errorf("request %q: decode its recorded result: %w", id, err)
	}
	results, err := DecodeResults(ws)
	if err != nil {
		return Outcome{}, false, err
	}
	return Outcome{Index: uint64(row[0].(int64)), Results: results, Duplicate: true}, true, nil
}

// record remembers a request id with its entry's index and results, and
// every 1024 entries forgets ids older than requestKeep.
func (s *Store) record(id string, index uint64, timeMs int64, results []Result) error {
	ws, err := EncodeResults(results)
	if err != nil {
		return err
	}
	b, err := json.Marshal(ws)
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

func (s *Store) insertLog(index uint64, t, seed int64, body []byte) error {
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("INSERT INTO _ddb_log(idx, time_ms, seed, body) VALUES (?, ?, ?, ?)", int64(index), t, seed, body); err != nil {
		return fmt.Errorf("append log entry %d: %w", index, err)
	}
	return nil
}

func (s *Store) setApplied(index uint64) error {
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("UPDATE _ddb_meta SET value = ? WHERE key = 'applied'", int64(index)); err != nil {
		return fmt.Errorf("record applied index %d: %w", index, err)
	}
	return nil
}

// ErrDiverged means an entry failed on this node although it succeeded on
// the master: the replica no longer matches and needs a snapshot.
var ErrDiverged = errors.New("replica diverged from the master")

// Apply applies entries in index order, exactly once: entries at or below
// Applied() are skipped, and application stops at the first gap. The
// applied index is stored in the same transaction. It returns the new
// applied index.
func (s *Store) Apply(entries []rlog.Entry) (uint64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return 0, ErrClosed
	}
	applied := s.applied.Load()
	i := 0
	for i < len(entries) && entries[i].Index <= applied {
		i++
	}
	if i == len(entries) || entries[i].Index != applied+1 {
		return applied, nil
	}
	w := s.w
	if err := s.beginEntries(); err != nil {
		return applied, err
	}
	defer s.leave()
	index := applied
	for ; i < len(entries) && entries[i].Index == index+1; i++ {
		e := entries[i]
		id, stmts, err := rlog.DecodeWrite(e.Body)
		if err != nil {
			s.internal("ROLLBACK")
			return applied, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		if err := s.enter(e.TimeMs, e.Seed); err != nil {
			s.internal("ROLLBACK")
			return applied, err
		}
		if s.bug == "skip-entry" && e.Index%50 == 0 {
			stmts = nil
		}
		if s.bug == "partial-apply" && len(stmts) > 1 {
			stmts = stmts[:1]
		}
		s.wconn.auth.reset(policyReplica)
		results, err := s.runRequest(context.Background(), stmts, policyReplica, id != "", Limits{})
		if err == nil {
			err = s.afterEntry()
		}
		if err == nil && id != "" {
			err = s.record(id, e.Index, e.TimeMs, results)
		}
		if err != nil {
			if w.InTransaction() {
				s.internal("ROLLBACK")
			}
			return applied, fmt.Errorf("apply entry %d: %v: %w", e.Index, err, ErrDiverged)
		}
		index++
	}
	s.leave()
	if err := s.commitAt(index); err != nil {
		return applied, err
	}
	return index, nil
}

// LogRange returns up to max entries starting at index from (fewer when the
// log ends, or when maxBytes of bodies is reached).
func (s *Store) LogRange(ctx context.Context, from uint64, max, maxBytes int) ([]rlog.Entry, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	st, err := r.c.Prepare("SELECT idx, time_ms, seed, body FROM _ddb_log WHERE idx >= ? ORDER BY idx LIMIT ?")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if _, err := st.Bind([]any{int64(from), int64(max)}, nil); err != nil {
		return nil, err
	}
	var out []rlog.Entry
	size := 0
	row := make([]any, 0, 4)
	for {
		more, err := st.Step()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		row = st.Row(row)
		body, _ := row[3].([]byte)
		if s, ok := row[3].(string); ok {
			body = []byte(s)
		}
		out = append(out, rlog.Entry{Index: uint64(row[0].(int64)), TimeMs: row[1].(int64), Seed: row[2].(int64), Body: body})
		size += len(body)
		if maxBytes > 0 && size >= maxBytes {
			break
		}
	}
	return out, nil
}

// FirstLogIndex is the oldest index still in the log.
func (s *Store) FirstLogIndex() uint64 { return s.logStart.Load() }

// TruncateLog deletes entries below index before.
func (s *Store) TruncateLog(before uint64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("DELETE FROM _ddb_log WHERE idx < ?", int64(before)); err != nil {
		return err
	}
	if before > s.logStart.Load() {
		s.logStart.Store(before)
	}
	return nil
}

// Members returns the slaves recorded as members of the cluster, by id.
func (s *Store) Members(ctx context.Context) (map[int]string, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	rows, err := r.c.All("SELECT id, url FROM _ddb_members")
	if err != nil {
		return nil, err
	}
	m := make(map[int]string, len(rows))
	for _, row := range rows {
		m[int(row[0].(int64))], _ = row[1].(string)
	}
	return m, nil
}

// SetMember records slave id at url.
func (s *Store) SetMember(id int, url string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	st, err := s.w.Prepare("INSERT INTO _ddb_members(id, url) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET url = excluded.url")
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Bind([]any{int64(id), url}, nil); err != nil {
		return err
	}
	_, err = st.Step()
	return err
}

// RemoveMember forgets slave id.
func (s *Store) RemoveMember(id int) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	return s.w.Exec("DELETE FROM _ddb_members WHERE id = ?", int64(id))
}

// commitAt records index as applied and commits the writer's transaction.
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
	if afterCommit != nil {
		afterCommit(index)
	}
	s.applied.Store(index)
	return nil
}

// afterCommit, when set (by tests), runs between a COMMIT and the raising
// of Applied: the moment readers see what Applied does not cover yet.
var afterCommit func(index uint64)
