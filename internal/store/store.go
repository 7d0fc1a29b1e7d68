// Package store is one node's SQLite database: a single writer connection
// that runs every change, a pool of read-only connections for queries, the
// authorizer that classifies statements, the deterministic functions that
// make a log entry give the same result on every node, the replication log
// tables, and snapshots.
//
// Why one writer: SQLite allows one writer at a time anyway; funnelling all
// changes through one connection (and one goroutine at a time) means
// concurrent clients never see "database is locked", and lets the writer
// commit many requests in one transaction.
package store

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"ddb/internal/rlog"
	"ddb/internal/sqlite"
)

// Options configure a Store.
type Options struct {
	Path        string // database file
	ReadConns   int    // size of the read-only pool (default 4)
	Synchronous string // PRAGMA synchronous for the writer (default FULL)
	// InjectBug: "skip-entry" (Apply records every 50th entry as applied
	// without running it), "partial-apply" (Apply runs only the first
	// statement of a multi-statement entry) or "unpinned-clock" (Apply runs
	// entries with the local clock). Only for proving the fault-injection
	// checkers work.
	InjectBug string
}

// Store is a node's database. Its zero value is not usable; call Open.
type Store struct {
	path     string
	clock    *sqlite.Clock
	wmu      sync.Mutex // held by whoever uses w
	w        *sqlite.Conn
	wauth    authState
	rng      *rand.Rand // random()/randomblob() source while an entry runs
	readers  chan *reader
	applied  atomic.Uint64 // last log index applied (committed) here
	logStart atomic.Uint64 // oldest index kept in _ddb_log
	closed   atomic.Bool
	bug      string // Options.InjectBug
}

type reader struct {
	c    *sqlite.Conn
	auth authState
}

const schemaSQL = `
CREATE TABLE IF NOT EXISTS _ddb_meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS _ddb_log (idx INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, seed INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS _ddb_members (id INTEGER PRIMARY KEY, url TEXT NOT NULL);
INSERT OR IGNORE INTO _ddb_meta(key, value) VALUES ('applied', 0);
`

func openConn(path string, params url.Values) (*sqlite.Conn, error) { return sqlite.Open(path, params) }

// Open opens (creating if needed) the database at opts.Path.
func Open(opts Options) (*Store, error) {
	if opts.ReadConns <= 0 {
		opts.ReadConns = 4
	}
	if opts.Synchronous == "" {
		opts.Synchronous = "FULL"
	}
	abs, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	clock, err := sqlite.NewClock()
	if err != nil {
		return nil, err
	}
	s := &Store{path: abs, clock: clock, readers: make(chan *reader, opts.ReadConns), bug: opts.InjectBug}
	w, err := openConn(abs, url.Values{
		"vfs": {clock.Name}, "_journal_mode": {"WAL"}, "_synchronous": {opts.Synchronous},
		"_busy_timeout": {"10000"},
	})
	if err != nil {
		clock.Close()
		return nil, fmt.Errorf("open %s: %w", abs, err)
	}
	s.w = w
	if err := s.initWriter(); err != nil {
		s.Close()
		return nil, err
	}
	for i := 0; i < opts.ReadConns; i++ {
		r, err := openConn(abs, url.Values{"mode": {"ro"}, "_busy_timeout": {"10000"}})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("open read connection to %s: %w", abs, err)
		}
		rd := &reader{c: r}
		r.SetAuthorizer(rd.auth.authorize)
		s.readers <- rd
	}
	return s, nil
}

func (s *Store) initWriter() error {
	if err := s.w.ExecScript(schemaSQL); err != nil {
		return fmt.Errorf("create internal tables: %w", err)
	}
	row, err := s.w.QueryRow(`SELECT value FROM _ddb_meta WHERE key='applied'`)
	if err != nil {
		return fmt.Errorf("read applied index: %w", err)
	}
	if v, ok := row[0].(int64); ok {
		s.applied.Store(uint64(v))
	}
	s.logStart.Store(s.applied.Load() + 1)
	if row, err := s.w.QueryRow(`SELECT min(idx) FROM _ddb_log`); err == nil {
		if v, ok := row[0].(int64); ok {
			s.logStart.Store(uint64(v))
		}
	}
	// random() and randomblob() draw from the entry's seed, so every node
	// computes the same values. The clock VFS does the same for 'now'.
	s.rng = rand.New(rand.NewPCG(1, 2))
	if err := s.w.Driver.RegisterFunc("random", func() int64 { return int64(s.rng.Uint64()) }, false); err != nil {
		return err
	}
	if err := s.w.Driver.RegisterFunc("randomblob", func(n int64) []byte {
		if n < 1 {
			n = 1
		}
		b := make([]byte, n)
		for i := 0; i < len(b); i += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], s.rng.Uint64())
			copy(b[i:], w[:])
		}
		return b
	}, false); err != nil {
		return err
	}
	s.w.SetAuthorizer(s.wauth.authorize)
	s.wauth.reset(policyReplica)
	return nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Applied is the last log index committed to this database.
func (s *Store) Applied() uint64 { return s.applied.Load() }

// Close closes every connection.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	var errs []error
	s.wmu.Lock()
	if s.w != nil {
		errs = append(errs, s.w.Close())
		s.w = nil
	}
	s.wmu.Unlock()
	for {
		select {
		case r := <-s.readers:
			errs = append(errs, r.c.Close())
			continue
		default:
		}
		break
	}
	s.clock.Close()
	return errors.Join(errs...)
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("database is closed")

func (s *Store) getReader(ctx context.Context) (*reader, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	select {
	case r := <-s.readers:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Store) putReader(r *reader) { s.readers <- r }

// Result is what one client statement produced.
type Result struct {
	Columns      []string
	Types        []string // declared types, "" where none
	Rows         [][]any
	HasRows      bool // the statement returns columns
	RowsAffected int64
	LastInsertID int64
}

// Limits bound what one request may return.
type Limits struct {
	MaxRows  int // 0 = unlimited
	MaxBytes int // approximate size of the values; 0 = unlimited
}

// ResultTooLargeError says which result limit a query hit.
type ResultTooLargeError struct{ What string }

func (e *ResultTooLargeError) Error() string { return "result too large: " + e.What }

// run executes every statement in st.SQL on c, in order, with the
// authorizer state a (already reset to the wanted policy). The result is
// the last statement's; rows are collected when collect is set.
func run(ctx context.Context, c *sqlite.Conn, a *authState, st rlog.Statement, collect bool, lim Limits) (Result, error) {
	var res Result
	sql, pos := st.SQL, st.Pos
	ran := 0
	for sql != "" {
		p := a.policy
		a.reset(p)
		// Single statements are kept prepared per policy: the authorizer
		// ran when they were compiled (and runs again if SQLite recompiles
		// them after a schema change).
		key := string(rune('0'+p)) + sql
		var stmt *sqlite.Stmt
		cached := false
		if e := c.Cached(key); e != nil {
			stmt, a.kind, cached = e.Stmt, e.Meta.(Kind), true
		} else {
			var err error
			if stmt, err = prepare(c, a, sql); err != nil {
				return res, err
			}
			if stmt == nil {
				break
			}
			if stmt.Tail == "" && a.kind != KindSchema && len(a.triggerOn) == 0 {
				c.Cache(key, stmt, a.kind)
				cached = true
			}
		}
		release := func() {
			if cached {
				stmt.Reset() // an unfinished statement would hold its read transaction
			} else {
				stmt.Close()
			}
		}
		used, err := stmt.Bind(pos, st.Named)
		if err != nil {
			release()
			return res, &ParamError{Msg: err.Error()}
		}
		pos = pos[used:]
		r, err := step(ctx, c, stmt, collect, lim)
		release()
		if err != nil {
			return res, err
		}
		if err := checkTriggerBodies(c, a); err != nil {
			return res, err
		}
		if r.HasRows || !res.HasRows {
			res = r
		}
		sql = stmt.Tail
		ran++
	}
	if ran == 0 {
		return res, &ParamError{Msg: "the query holds no SQL statement"}
	}
	if len(pos) > 0 {
		return res, &ParamError{Msg: fmt.Sprintf("%d positional parameters were given that no statement uses", len(pos))}
	}
	return res, nil
}

// prepare compiles the first statement of sql under the authorizer state a
// (already reset to its policy) and turns a refusal into the client's error.
// A statement that changes something although the authorizer saw no
// change is refused too: only statements the authorizer does not see at
// all (VACUUM) get there, and what cannot be classified is not run.
func prepare(c *sqlite.Conn, a *authState, sql string) (*sqlite.Stmt, error) {
	stmt, err := c.Prepare(sql)
	if err != nil {
		return nil, a.prepareError(sql, err)
	}
	if stmt != nil && a.policy != policyReplica && !stmt.Readonly() && a.kind == KindRead && !stmt.IsExplain() {
		stmt.Close()
		return nil, &ForbiddenError{Reason: fmt.Sprintf("statement is not allowed: %s", abbreviate(stmt.SQL))}
	}
	return stmt, nil
}

// checkTriggerBodies compiles (never runs) an INSERT, UPDATE and DELETE on
// every table that just got a trigger. SQLite compiles a trigger's body only
// when its table is written, so this is when the authorizer sees what the
// body does; a body that touches forbidden objects fails the CREATE TRIGGER.
func checkTriggerBodies(c *sqlite.Conn, a *authState) error {
	if a.policy == policyReplica || len(a.triggerOn) == 0 {
		return nil
	}
	tables := a.triggerOn
	p := a.policy
	for _, t := range tables {
		q := `"` + strings.ReplaceAll(t, `"`, `""`) + `"`
		for _, probe := range []string{"INSERT INTO " + q + " DEFAULT VALUES", "UPDATE " + q + " SET rowid = rowid", "DELETE FROM " + q} {
			a.reset(p)
			st, err := c.Prepare(probe)
			st.Close()
			if err != nil && a.forbidden != "" {
				return &ForbiddenError{Reason: "trigger body: " + a.forbidden}
			}
		}
	}
	a.reset(p)
	return nil
}

func step(ctx context.Context, c *sqlite.Conn, stmt *sqlite.Stmt, collect bool, lim Limits) (Result, error) {
	var res Result
	names, decl := stmt.Columns()
	if len(names) > 0 {
		res.HasRows = true
		res.Columns, res.Types = names, decl
		res.Rows = [][]any{}
	}
	stop := c.Watch(ctx)
	defer stop()
	size := 0
	for {
		more, err := stmt.Step()
		if err != nil {
			if sqlite.IsCode(err, sqlite.ErrCodeInterrupt) && ctx != nil && ctx.Err() != nil {
				return res, fmt.Errorf("query stopped: %w", ctx.Err())
			}
			return res, &SQLError{Err: err}
		}
		if !more {
			break
		}
		if collect && res.HasRows {
			row := stmt.Row(make([]any, 0, len(names)))
			if lim.MaxRows > 0 && len(res.Rows) >= lim.MaxRows {
				return res, &ResultTooLargeError{What: fmt.Sprintf("more than %d rows (limit); add LIMIT or narrow the query", lim.MaxRows)}
			}
			if lim.MaxBytes > 0 {
				size += rowSize(row)
				if size > lim.MaxBytes {
					return res, &ResultTooLargeError{What: fmt.Sprintf("more than %d bytes of values (limit); select fewer rows or columns", lim.MaxBytes)}
				}
			}
			res.Rows = append(res.Rows, row)
		}
	}
	if !stmt.Readonly() {
		res.RowsAffected = c.Changes()
		res.LastInsertID = c.LastInsertID()
	}
	return res, nil
}

func rowSize(row []any) int {
	n := 0
	for _, v := range row {
		switch x := v.(type) {
		case string:
			n += len(x)
		case []byte:
			n += len(x)
		default:
			n += 8
		}
	}
	return n
}

// ParamError is a problem with the parameters a client sent.
type ParamError struct{ Msg string }

func (e *ParamError) Error() string { return e.Msg }

// Read runs statements on a read-only connection. If any statement would
// change something it returns *NotReadError and has changed nothing; the
// caller then sends the request down the write path.
func (s *Store) Read(ctx context.Context, stmts []rlog.Statement, lim Limits) ([]Result, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	defer s.putReader(r)
	out := make([]Result, 0, len(stmts))
	for _, st := range stmts {
		r.auth.reset(policyReadOnly)
		res, err := run(ctx, r.c, &r.auth, st, true, lim)
		if err != nil {
			return nil, err
		}
		out = append(out, res)
	}
	return out, nil
}

// Classify compiles (without running) every statement and reports the
// strongest kind. A statement that cannot be compiled here (for example it
// uses a table an earlier statement of the same request creates) returns
// its *SQLError; forbidden ones return *ForbiddenError.
func (s *Store) Classify(ctx context.Context, stmts []rlog.Statement) (Kind, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return 0, err
	}
	defer s.putReader(r)
	kind := KindRead
	for _, st := range stmts {
		sql := st.SQL
		for sql != "" {
			r.auth.reset(policyClient)
			stmt, err := prepare(r.c, &r.auth, sql)
			if err != nil {
				return kind, err
			}
			if stmt == nil {
				break
			}
			k := r.auth.kind
			if k > kind {
				kind = k
			}
			sql = stmt.Tail
			stmt.Close()
		}
	}
	return kind, nil
}

func randomSeed() int64 {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return int64(binary.LittleEndian.Uint64(b[:]))
}

// enter pins the writer's clock and random source to an entry's.
func (s *Store) enter(timeMs, seed int64) {
	s.clock.Pin(timeMs)
	s.rng = rand.New(rand.NewPCG(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15))
}

func (s *Store) leave() { s.clock.Unpin() }
