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
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/faults"

	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// Options configure a Store.
type Options struct {
	Path        string // database file
	ReadConns   int    // size of the read-only pool (default 4)
	Synchronous string // PRAGMA synchronous for the writer (default FULL)
	// Seeds gives each new entry its random seed (default: from the
	// operating system's generator). Tests fix it to replay a run exactly.
	Seeds func() int64
	// InjectBug: "skip-entry" (Apply and ApplyLog record every 50th entry as applied
	// without running it), "partial-apply" (they run only the first
	// statement of a multi-statement entry), "unpinned-clock" (Apply runs
	// entries with the local clock), "unpinned-prng" (SQLite's generator
	// is not seeded from the entry), "unpinned-state" (changes(),
	// last_insert_rowid() and total_changes() see the connection's past)
	// "incremental-schema" (the writer keeps SQLite's incrementally
	// updated schema after schema changes) or "stale-reader-stats" (read
	// connections keep the statistics they loaded). Only for proving that the
	// fault-injection checkers and the determinism fuzzer work.
	InjectBug string
	// DigestRate spreads a consistency check's digest over time: at most
	// this many bytes of rows read a second (0: as fast as it can).
	DigestRate int64
}

// Store is a node's database. Its zero value is not usable; call Open.
type Store struct {
	steps stepBudget // the writer's entry's (under wmu)
	path  string
	// digestRate: see Options.DigestRate.
	digestRate int64
	clock      *sqlite.Clock
	wmu        sync.Mutex // held by whoever uses w
	w          *sqlite.Conn
	wconn      *conn      // w with its state; nil once closed
	entry      entryState // the writer's per-entry connection state
	entering   bool       // lockEntries holds SQLite's generator
	// schemaDirty: a statement that changes the schema or the statistics
	// ran on the writer (and may have failed and been rolled back) since
	// the writer last loaded the schema afresh.
	schemaDirty bool
	// rl is the connection to the consensus log's own file (see
	// raftlog.go), used under rmu: the log is written there, beside the
	// data, so that saving Raft's entries never waits for an entry being
	// applied on the writer.
	rmu   sync.Mutex
	rl    *sqlite.Conn
	rlTxs int // transactions in rl's WAL since its last checkpoint
	// RaftLogDiscarded: at open, the consensus log file belonged to
	// another database than this one (the data file was wiped or
	// replaced) and was emptied.
	RaftLogDiscarded bool
	// termRecorded is the applied term the database holds, as this writer
	// last committed it (0: not known): a batch in the same term need not
	// write it again (writer only).
	termRecorded uint64
	// vtabs: the schema holds a virtual table (see isolating), as of
	// schema version vtabsAt (vtabsKnown once looked at).
	vtabs, vtabsKnown bool
	vtabsAt           int64
	// cap is the change stream's capture on the writer (see changes.go).
	cap capture
	// digests are the consistency checks' digests (see startDigest).
	digests  digests
	sync     string // the writer's PRAGMA synchronous (Options.Synchronous)
	readers  chan *conn
	nreaders int
	applied  atomic.Uint64 // last log index applied (committed) here
	// visible is at or above every index whose changes a reader may
	// have seen: it is raised just before COMMIT, and applied just
	// after. A read index or a read's token must cover what readers see,
	// so it is taken from visible (see VisibleIndex).
	visible   atomic.Uint64
	schemaGen atomic.Uint64 // bumped by every schema change; see conn.gen
	closed    atomic.Bool
	// stopDigests is raised when the database is replaced (swapIn) or
	// closed: a digest under way stops at its next rows (it holds a read
	// connection for minutes on a large database, which both wait for).
	stopDigests atomic.Uint64
	// yieldDigests is raised when a FileSnapshot needs the WAL emptied:
	// a digest under way stops (its read holds the WAL).
	yieldDigests atomic.Uint64
	bug          string // Options.InjectBug
	seeds        func() int64
	lock         *os.File // flock held on the database file while open
}

// conn is one connection with what the store keeps beside it.
type conn struct {
	c    *sqlite.Conn
	auth authState
	// gen is the schema generation the connection's statement cache was
	// built under. A schema change bumps Store.schemaGen, and the next use
	// of every connection drops its cached statements, with the statement
	// kinds learned when they were compiled.
	gen uint64
	// entry is the writer's per-entry state (nil on read connections): the
	// counters an answer reports are the statement's own, and the SQL
	// functions that expose connection state see only the entry's.
	entry *entryState
}

// entryState is what the writer connection tracks for the entry it runs,
// so that total_changes() and last_insert_rowid() depend on the entry
// alone, as if every entry ran on a fresh connection: the same on the node
// that took the write, on every replica, and on a replay. (changes() is
// reset to 0 when an entry begins, and is then SQLite's own.)
type entryState struct {
	lastID    int64 // rowid of the entry's latest insert (0: none yet)
	totalBase int64 // sqlite3_total_changes when the entry began
}

const schemaSQL = `
CREATE TABLE IF NOT EXISTS _ddb_meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS _ddb_requests (idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time_ms INTEGER NOT NULL, result BLOB NOT NULL);
INSERT OR IGNORE INTO _ddb_meta(key, value) VALUES ('applied', 0);
`

// connPragmas are run on every connection the store opens. Temporary
// files live in memory: SQLite names a temporary file with its process-wide
// random generator, which the writer pins while it runs an entry. (The
// writer itself uses files; see Open.)
const connPragmas = "PRAGMA temp_store = MEMORY"

func openConn(path string, params url.Values) (*sqlite.Conn, error) {
	c, err := sqlite.Open(path, params)
	if err != nil {
		return nil, err
	}
	if err := c.ExecScript(connPragmas); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Open opens (creating if needed) the database at opts.Path. It refuses a
// database that fails SQLite's integrity check, or whose replication log
// and applied index disagree, and then changes nothing.
func Open(opts Options) (*Store, error) {
	if opts.ReadConns <= 0 {
		opts.ReadConns = 4
	}
	if opts.Synchronous == "" {
		opts.Synchronous = "FULL"
	}
	sqlite.UseUTC()
	abs, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := checkFile(abs); err != nil {
		return nil, err
	}
	lock, err := lockFile(abs)
	if err != nil {
		return nil, err
	}
	clock, err := sqlite.NewClock()
	if err != nil {
		lock.Close()
		return nil, err
	}
	if opts.Seeds == nil {
		opts.Seeds = randomSeed
	}
	s := &Store{path: abs, clock: clock, lock: lock, readers: make(chan *conn, opts.ReadConns), bug: opts.InjectBug, seeds: opts.Seeds, sync: opts.Synchronous, digestRate: opts.DigestRate}
	if err := s.openWriter(); err != nil {
		clock.Close()
		lock.Close()
		return nil, err
	}
	if err := s.openRaftLog(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.openReaders(opts.ReadConns); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// openWriter opens the writer connection on the database file and sets it
// up (Open, and again after swapIn).
func (s *Store) openWriter() error {
	w, err := openConn(s.path, url.Values{
		"vfs": {s.clock.Name}, "_journal_mode": {"WAL"}, "_synchronous": {s.sync},
		"_busy_timeout": {"10000"},
	})
	if err != nil {
		return fmt.Errorf("open %s: %w", s.path, err)
	}
	s.w = w
	s.wconn = &conn{c: w, entry: &s.entry}
	// A connection starts without the change stream's triggers, and with
	// recursive_triggers off (see setRecursive).
	s.cap.made, s.cap.madeAt, s.cap.recursive = false, -1, false
	// The writer keeps what a statement builds (a RETURNING result, a
	// sort, an index being made) in temporary files, not in memory: a
	// write of a few hundred MB of blobs would otherwise cost every node
	// that much memory before any limit could count it. What it writes
	// there counts against the write's step budget as it is written (the
	// same amount on every node: sqlite.Clock.CountTempWrites), so a write
	// that builds gigabytes stops where one that runs too long does.
	// Naming such a file leaves SQLite's generator as it was
	// (sqlite.Clock), so spilling (a statement journal's depends on the
	// page cache) changes nothing an entry computes.
	// Readers keep them in memory: their results are bounded, and they must
	// not draw from the generator at all.
	if err := w.Exec("PRAGMA temp_store = FILE"); err != nil {
		s.closeWriter()
		return err
	}
	s.clock.CountTempWrites(w)
	if err := s.initWriter(); err != nil {
		s.closeWriter()
		return err
	}
	return nil
}

func (s *Store) closeWriter() {
	s.w.Close()
	s.w, s.wconn = nil, nil
}

// openReaders opens n read connections into the pool.
func (s *Store) openReaders(n int) error {
	for i := 0; i < n; i++ {
		r, err := openConn(s.path, url.Values{"mode": {"ro"}, "_busy_timeout": {"10000"}})
		if err != nil {
			return fmt.Errorf("open read connection to %s: %w", s.path, err)
		}
		rd := &conn{c: r}
		r.SetAuthorizer(rd.auth.authorize)
		// A read's random() and randomblob() are its own, unpredictable.
		seed := cryptoSeed()
		r.SeedRandom(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:16])^binary.LittleEndian.Uint64(seed[16:24]))
		s.readers <- rd
		s.nreaders++
	}
	return nil
}

// newFileID makes a database's own id (see checkFile).
func newFileID() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

// cryptoSeed is a seed from crypto/rand (32 bytes: what a reader drew
// when its generator was Go's ChaCha8, so that a simulation, which fixes
// crypto/rand to its seed, draws the same from it as before).
func cryptoSeed() (seed [32]byte) {
	_, _ = crand.Read(seed[:])
	return seed
}

// checkFile refuses to open a database that is not whole: SQLite's
// integrity check must pass, and a WAL beside the file must belong to it.
// It reads on read-only connections and changes nothing.
//
// A WAL is replayed into whatever file stands beside it. One left behind
// by another database (a file copied over a dead node's) either corrupts
// the copy, which the integrity check catches, or hides it entirely behind
// the other database's pages, which the file id catches: every database
// records a random id of its own, and the file alone (read with
// immutable=1, which ignores the WAL) must carry the same id as the file
// with its WAL.
func checkFile(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if stoppedCleanly(path) {
		return nil
	}
	restore := "Restore it from a healthy replica (docs/REPLICATION.md, \"Restoring a node\")"
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > 0 {
		// The file alone may not be readable: a node killed while it
		// copied its WAL into the file (a checkpoint) leaves pages of the
		// file half updated, which only the WAL makes whole again. Then
		// there is no id to compare, and the check below (with the WAL)
		// decides. A file copied from elsewhere is whole on its own.
		alone, aloneErr := fileID(path, url.Values{"immutable": {"1"}})
		withWAL, err := fileID(path, url.Values{"mode": {"ro"}})
		if aloneErr == nil && alone != "" && err == nil && withWAL != alone {
			return fmt.Errorf("%s-wal belongs to another database than %s (file id %q, the file's is %q): it was probably left beside a file copied from another node. The node will not start on it. Remove %s-wal and %s-shm if the file alone is what you want, or %s", path, path, withWAL, alone, path, path, restore)
		}
	}
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return fmt.Errorf("open %s to check it: %w", path, err)
	}
	defer c.Close()
	rows, err := c.All("PRAGMA quick_check")
	if err == nil && len(rows) == 1 && rows[0][0] == "ok" {
		return nil
	}
	var problems []string
	for i, r := range rows {
		if i == 5 {
			problems = append(problems, "...")
			break
		}
		problems = append(problems, fmt.Sprint(r[0]))
	}
	if err != nil {
		problems = append(problems, err.Error())
	}
	return fmt.Errorf("%s fails SQLite's integrity check (%s); the node will not start on it. If a -wal file from another database was left beside it, that is the cause. %s", path, strings.Join(problems, "; "), restore)
}

// fileID reads the database's own id ("" when it has none yet).
func fileID(path string, params url.Values) (string, error) {
	c, err := sqlite.Open(path, params)
	if err != nil {
		return "", err
	}
	defer c.Close()
	row, err := c.QueryRow("SELECT value FROM _ddb_meta WHERE key = 'file_id'")
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return "", nil
		}
		return "", err
	}
	if row == nil {
		return "", nil
	}
	id, _ := row[0].(string)
	return id, nil
}

// migratePreRaft is the one migration from the engine that came before
// Raft: it kept its own log of writes in the database (_ddb_log) and the
// members' URLs (_ddb_members). Raft keeps its log in a file of its own,
// and the data's applied index says where the database stands, so both
// tables go, once: a database the former engine wrote opens as one that
// holds data but no Raft state (its log starts after the data: see
// consensus.StartEngine). A former log that runs past the data means the
// file was put together from pieces: it is refused, and nothing changes.
func (s *Store) migratePreRaft() error {
	row, err := s.w.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '_ddb_log'`)
	if err != nil {
		return fmt.Errorf("look for the former engine's log: %w", err)
	}
	if n, _ := row[0].(int64); n == 0 {
		return nil
	}
	row, err = s.w.QueryRow(`SELECT max(idx) FROM _ddb_log`)
	if err != nil {
		return fmt.Errorf("read the former engine's log: %w", err)
	}
	// The log and the change it records committed together. (A log that
	// ends before the data is fine: a node that only applied entries kept
	// none.)
	if hi, ok := row[0].(int64); ok && uint64(hi) > s.applied.Load() {
		return fmt.Errorf("%s: its log ends at index %d but its data is at index %d; the file was changed outside the database or mixed with another node's. Restore it from a healthy replica (docs/REPLICATION.md)", s.path, hi, s.applied.Load())
	}
	if err := s.w.ExecScript("BEGIN; DROP TABLE _ddb_log; DROP TABLE IF EXISTS _ddb_members; COMMIT"); err != nil {
		s.w.Exec("ROLLBACK")
		return fmt.Errorf("drop the former engine's log: %w", err)
	}
	return nil
}

func (s *Store) initWriter() error {
	if err := s.w.ExecScript(schemaSQL + raftSchemaSQL); err != nil {
		return fmt.Errorf("create internal tables: %w", err)
	}
	if err := s.w.Exec("INSERT OR IGNORE INTO _ddb_meta(key, value) VALUES ('file_id', ?)", newFileID()); err != nil {
		return fmt.Errorf("record the file's id: %w", err)
	}
	row, err := s.w.QueryRow(`SELECT value FROM _ddb_meta WHERE key='applied'`)
	if err != nil {
		return fmt.Errorf("read applied index: %w", err)
	}
	if v, ok := row[0].(int64); ok {
		s.applied.Store(uint64(v))
	}
	s.visible.Store(s.applied.Load())
	if err := s.migratePreRaft(); err != nil {
		return err
	}
	// random() and randomblob() draw from the entry's seed (see enter), so
	// every node computes the same values; until the first entry, from a
	// fixed one. The clock VFS does the same for 'now'.
	s.w.SeedRandom(1, 2)
	// Connection state, pinned to the entry (see entryState and enter).
	w, e := s.w, &s.entry
	for name, f := range map[string]func() int64{
		"last_insert_rowid": func() int64 {
			if v := w.LastInsertID(); v != 0 {
				return v
			}
			return e.lastID
		},
		"total_changes": func() int64 { return w.TotalChanges() - e.totalBase },
	} {
		if err := w.Driver.RegisterFunc(name, f, false); err != nil {
			return fmt.Errorf("register %s: %w", name, err)
		}
	}
	s.w.SetAuthorizer(s.wconn.auth.authorize)
	s.wconn.auth.reset(policyReplica)
	return s.loadChangeSetting()
}

// faulty reports whether the deliberate defect name is switched on; in a
// build without the ddb_faults tag it is constantly false, and the
// defect's code is compiled out.
func (s *Store) faulty(name faults.Bug) bool { return faults.Enabled && s.bug == string(name) }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Applied is the last log index committed to this database.
func (s *Store) Applied() uint64 { return s.applied.Load() }

// VisibleIndex is at or above every log index whose changes a reader of
// this database may already have seen. It runs ahead of Applied while a
// commit is under way: SQLite shows a transaction to new readers the
// moment its COMMIT is written, before Applied can be raised. The index a
// strong read waits for, and the token a read answers with, come from
// here, so no reader elsewhere is ever sent back before what one saw.
func (s *Store) VisibleIndex() uint64 { return s.visible.Load() }

// Close closes every connection: the read connections first, then the
// writer after a checkpoint, so the last close folds the WAL into the
// database file and removes it. A cleanly stopped node leaves one
// self-contained file.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	var errs []error
	s.stopDigests.Add(1)
	for i := 0; i < s.nreaders; i++ {
		r := <-s.readers // waits for reads in progress
		errs = append(errs, r.c.Close())
	}
	s.wmu.Lock()
	if s.w != nil {
		// A TRUNCATE checkpoint salts the next WAL header from SQLite's
		// process-wide generator: not while another store's entry runs.
		sqlite.LockPRNG()
		if err := s.w.Checkpoint(3); err != nil {
			errs = append(errs, fmt.Errorf("checkpoint on close: %w", err))
		}
		sqlite.UnlockPRNG()
		errs = append(errs, s.w.Close())
		s.w, s.wconn = nil, nil
	}
	s.wmu.Unlock()
	sqlite.LockPRNG() // (before rmu, as in CheckpointRaftLog)
	s.rmu.Lock()
	if s.rl != nil {
		if err := s.rl.Checkpoint(3); err != nil {
			errs = append(errs, fmt.Errorf("checkpoint the consensus log on close: %w", err))
		}
		errs = append(errs, s.rl.Close())
		s.rl = nil
	}
	s.rmu.Unlock()
	sqlite.UnlockPRNG()
	s.clock.Close()
	if err := errors.Join(errs...); err == nil && s.nreaders > 0 {
		// (Before the lock goes: no other process writes the file yet.)
		errs = append(errs, noteCleanStop(s.path))
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
}

// A clean stop (Close with every connection closed, the WAL folded into
// the file) leaves a note beside the database (<database>-clean) naming
// the file's size and time of last change. The next start takes the note
// away and, if the file is still exactly what the note names and no WAL
// stands beside it, skips SQLite's quick check: the check reads every
// page, 2 minutes 20 seconds for a 10 GB database here, and a file that
// was whole when the node stopped and has not changed since is whole. A
// kill, a crash or a file put in place by hand leaves no note, or one
// that names another file, and the start checks the file as before.

// cleanNote is the note a clean stop leaves about the file at path.
func cleanNote(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("size %d changed %d\n", fi.Size(), fi.ModTime().UnixNano()), nil
}

// noteCleanStop writes the note of a clean stop, synced.
func noteCleanStop(path string) error {
	note, err := cleanNote(path)
	if err != nil {
		return err
	}
	f, err := os.Create(path + "-clean")
	if err != nil {
		return err
	}
	_, err = f.WriteString(note)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// stoppedCleanly takes away the note of a clean stop beside path and
// reports whether it names the file as it is, with no WAL beside it.
func stoppedCleanly(path string) bool {
	b, err := os.ReadFile(path + "-clean")
	if err != nil {
		return false
	}
	if err := os.Remove(path + "-clean"); err != nil {
		return false
	}
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > 0 {
		return false
	}
	note, err := cleanNote(path)
	return err == nil && string(b) == note
}

// ErrClosed is returned after Close.
var ErrClosed error = errkind.New(errkind.Unavailable, "database is closed")

func (s *Store) getReader(ctx context.Context) (*conn, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	select {
	case r := <-s.readers:
		if s.closed.Load() {
			s.readers <- r
			return nil, ErrClosed
		}
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Store) putReader(r *conn) { s.readers <- r }

// Result is what one client statement produced.
type Result struct {
	Columns []string
	Types   []string // declared types, "" where none
	Rows    [][]any
	HasRows bool // the statement returns columns
	// RowsBeforeLast: of a query holding several statements, the rows are
	// an earlier statement's, and the last returns none (rqlite's API
	// answers the last statement's counters then).
	RowsBeforeLast bool
	RowsAffected   int64
	LastInsertID   int64
	// Err is the statement's own failure, in a write whose statements
	// are independent (Request.Each); nil otherwise.
	Err *StatementError
}

// StatementError is one statement's failure: SQLite's message and, when
// SQLite reported it, its primary and extended result codes.
type StatementError struct {
	Message  string `json:"message"`
	Code     int    `json:"code,omitempty"`
	Extended int    `json:"extended_code,omitempty"`
}

func (e *StatementError) Error() string { return e.Message }

// StatementErrorOf describes err as a statement's failure.
func StatementErrorOf(err error) *StatementError {
	se := &StatementError{Message: err.Error()}
	var le *sqlite.Error
	if errors.As(err, &le) {
		se.Code, se.Extended = le.Code, le.Extended
	}
	return se
}

// Limits bound what one request may return.
type Limits struct {
	MaxRows  int // 0 = unlimited
	MaxBytes int // approximate size of the values; 0 = unlimited
	// MaxSteps bounds a write's instructions of SQLite's virtual machine
	// (0 = unlimited): see WriteStepBudget.
	MaxSteps int64
}

// StepsPerSecond converts a time limit into a step budget for writes: a
// write through the log runs on every node, and only a count of SQLite's
// virtual-machine instructions stops it at the same point on each (a
// clock would stop each at another). 100 million instructions take
// SQLite about a second on this project's reference machine (2 cores):
// a simple insert takes about 30, a row of a recursive CTE about 10.
const StepsPerSecond = 100_000_000

// WriteStepBudget is the step budget of a write under the query time
// limit d (-query-timeout), or 0 (none) for no limit.
func WriteStepBudget(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(d.Seconds() * StepsPerSecond)
}

// stepBudget is what the entry the writer runs may still spend of its
// step budget (rlog.Write.MaxSteps), over all its statements.
type stepBudget struct {
	on    bool
	left  int64 // below 0: a statement ran out, and the entry fails
	total int64
}

func (b stepBudget) spent() bool { return b.on && b.left < 0 }

// stepWithin steps a statement; on the writer, within what is left of its
// entry's step budget. Only the client's statements count: the project's
// own bookkeeping around them never runs under a budget, so it never
// fails for one.
func (s *Store) stepWithin(ctx context.Context, cn *conn, stmt *sqlite.Stmt, collect bool, b *budget) (Result, error) {
	if cn.entry == nil || !s.steps.on {
		return step(ctx, cn, stmt, collect, b)
	}
	if s.steps.spent() {
		return Result{}, &StepBudgetError{}
	}
	stmt.StartCounting()
	cn.c.SetStepBudget(max(s.steps.left, 1))
	r, err := step(ctx, cn, stmt, collect, b)
	s.steps.left = cn.c.StepBudgetLeft()
	cn.c.SetStepBudget(0)
	return r, err
}

// StepBudgetError: a write ran past its step budget and was stopped, at
// the same instruction on every node; nothing of it applied.
type StepBudgetError struct{ Steps int64 }

func (e *StepBudgetError) Error() string {
	return fmt.Sprintf("the write ran more than %d instructions of SQLite's virtual machine, its budget (-query-timeout turned into steps: %d a second), and was stopped on every node; nothing of it was applied. Split it into smaller writes, or raise -query-timeout on the nodes", e.Steps, StepsPerSecond)
}

// budget is what one request may still return: its limits hold for all
// its statements together, whatever path it takes (a read, a write's
// RETURNING, a transaction of several statements).
type budget struct {
	lim         Limits
	rows, bytes int
}

// spend counts one more row, or says which limit it would pass.
func (b *budget) spend(row []any) error {
	if b.lim.MaxRows > 0 && b.rows >= b.lim.MaxRows {
		return &ResultTooLargeError{What: fmt.Sprintf("more than %d rows (limit); add LIMIT or narrow the query", b.lim.MaxRows)}
	}
	b.rows++
	if b.lim.MaxBytes > 0 {
		b.bytes += rowSize(row)
		if b.bytes > b.lim.MaxBytes {
			return &ResultTooLargeError{What: fmt.Sprintf("more than %d bytes of values (limit); select fewer rows or columns", b.lim.MaxBytes)}
		}
	}
	return nil
}

// ResultTooLargeError says which result limit a query hit.
type ResultTooLargeError struct{ What string }

func (e *ResultTooLargeError) Error() string { return "result too large: " + e.What }

// run executes every statement in st.SQL on cn, in order, with its
// authorizer state (already reset to the wanted policy). The result is the
// last statement's; rows are collected when collect is set.
// maxCachedSQL is the longest statement text kept prepared.
const maxCachedSQL = 4096

// cacheKey is the key a statement text compiled under policy p is kept
// under, and whether it is kept at all (only texts of at most
// maxCachedSQL bytes).
func cacheKey(p policy, sql string) (string, bool) {
	if len(sql) > maxCachedSQL {
		return "", false
	}
	return string(rune('0'+p)) + sql, true
}

// keepable says whether a statement just compiled may be kept with the
// kind the authorizer gave it: a whole text of one statement that is not a
// schema change and fires no trigger.
func keepable(stmt *sqlite.Stmt, a *authState) bool {
	return stmt.Tail == "" && a.kind != KindSchema && len(a.triggerOn) == 0
}

// freshen empties cn's statement cache when the schema changed since it
// was filled.
func (s *Store) freshen(cn *conn) error {
	gen := s.schemaGen.Load()
	if cn.gen == gen {
		return nil
	}
	cn.c.DropCache()
	cn.gen = gen
	if cn.entry == nil && !s.faulty(faults.StaleReaderStats) {
		// A read connection also loads the schema and the statistics
		// afresh (SQLite reloads the schema when another connection
		// changes it, but not the statistics ANALYZE gathered): it
		// then plans as a connection opened now would.
		p := cn.auth.policy
		cn.auth.reset(policyReplica)
		err := cn.c.ExecScript("PRAGMA writable_schema = RESET")
		cn.auth.reset(p)
		if err != nil {
			return fmt.Errorf("reload the schema: %w", err)
		}
	}
	return nil
}

func (s *Store) run(ctx context.Context, cn *conn, st rlog.Statement, collect bool, b *budget) (Result, error) {
	var res Result
	c, a := cn.c, &cn.auth
	if err := s.freshen(cn); err != nil {
		return res, err
	}
	sql, pos := st.SQL, st.Pos
	ran := 0
	for sql != "" {
		p := a.policy
		a.reset(p)
		// Single statements are kept prepared per policy: the authorizer
		// ran when they were compiled. A schema change empties the cache
		// (see conn.gen), so a kept statement never outlives the schema it
		// was classified under.
		// Only short texts are looked up and kept: a long text of many
		// statements would be hashed and copied again for each of them
		// (quadratic in its length).
		key, cacheable := cacheKey(p, sql)
		var stmt *sqlite.Stmt
		cached := false
		if e := c.Cached(key); cacheable && e != nil {
			stmt, a.kind, cached = e.Stmt, e.Meta.(Kind), true
		} else {
			var err error
			if stmt, err = prepare(c, a, sql); err != nil {
				return res, err
			}
			if stmt == nil {
				break
			}
			if cacheable && keepable(stmt, a) {
				c.Cache(key, stmt, a.kind)
				cached = true
			}
		}
		kind := a.kind
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
		capturing := kind == KindSchema && cn.entry != nil && s.cap.on
		if capturing {
			// A capture trigger naming a column would keep ALTER TABLE
			// from dropping it: they go for the statement, and are made
			// again for the schema it leaves.
			saved := *a
			err := s.dropCaptureTriggers()
			*a = saved
			if err != nil {
				release()
				return res, err
			}
		}
		r, err := s.stepWithin(ctx, cn, stmt, collect, b)
		release()
		if capturing {
			saved := *a
			cerr := s.ensureCapture()
			if cerr == nil && err == nil {
				cerr = s.captureSchema(stmt.SQL)
			}
			*a = saved
			if cerr != nil {
				return res, cerr
			}
		}
		if kind == KindSchema {
			// Every connection drops its statements before its next use;
			// this one at once, for the rest of its transaction.
			s.schemaGen.Add(1)
			c.DropCache()
			cn.gen = s.schemaGen.Load()
			if cn.entry != nil {
				s.schemaDirty = true
			}
		}
		if err != nil {
			return res, err
		}
		if err := checkTriggerBodies(c, a); err != nil {
			return res, err
		}
		if kind == KindSchema && p != policyReplica {
			a.reset(policyReplica)
			name, err := internalNameTaken(c)
			if err != nil {
				return res, err
			}
			if name != "" {
				// The entry's savepoint undoes it, on every node alike.
				return res, errInternalName(name)
			}
			a.reset(p)
		}
		// The answer's rows are the last statement's that returns rows; its
		// counters are the last statement's, whatever it is.
		if r.HasRows || !res.HasRows {
			res = r
		} else {
			res.RowsBeforeLast = true
		}
		res.RowsAffected, res.LastInsertID = r.RowsAffected, r.LastInsertID
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
// all (VACUUM) get there, and what cannot be classified is not run. So is
// a change computed from something that differs between nodes (see
// authState.nondet).
func prepare(c *sqlite.Conn, a *authState, sql string) (*sqlite.Stmt, error) {
	stmt, err := c.Prepare(sql)
	if err != nil {
		return nil, a.prepareError(sql, err)
	}
	if stmt == nil || a.policy == policyReplica {
		return stmt, nil
	}
	if a.wrote {
		// Row changes under the read-only policy: the statement's own
		// (it is no read), or a virtual table module's, compiled along
		// with a statement that only reads.
		if !stmt.Readonly() {
			stmt.Close()
			return nil, &NotReadError{Kind: a.kind}
		}
		if a.kind == KindWrite {
			a.kind = KindRead
		}
	}
	if !stmt.Readonly() && a.kind == KindRead && !stmt.IsExplain() && schemaChangeOfNothing(stmt.SQL) {
		// DROP ... IF EXISTS of an object that does not exist, or CREATE
		// INDEX IF NOT EXISTS of one that does: SQLite asks the authorizer
		// nothing (there is nothing to do) and the statement changes
		// nothing. It is a schema change all the same, as it would be if
		// it did something.
		a.kind = KindSchema
		switch a.policy {
		case policyReadOnly:
			stmt.Close()
			return nil, &NotReadError{Kind: KindSchema}
		case policyClientNoSchema:
			stmt.Close()
			return nil, &SchemaDeniedError{Statement: abbreviate(stmt.SQL)}
		}
		return stmt, nil
	}
	if !stmt.Readonly() && a.kind == KindRead && !stmt.IsExplain() {
		stmt.Close()
		return nil, &ForbiddenError{Reason: fmt.Sprintf("statement is not allowed: %s", abbreviate(stmt.SQL))}
	}
	if a.nondet != "" && a.kind >= KindWrite {
		stmt.Close()
		return nil, nondetError("", a.nondet)
	}
	return stmt, nil
}

// schemaChangeOfNothing reports whether sql is DROP TABLE/INDEX/VIEW/
// TRIGGER IF EXISTS (which, when the authorizer saw nothing, found nothing
// to drop) or CREATE [UNIQUE] INDEX IF NOT EXISTS (which found the index
// there: SQLite looks for it before it asks the authorizer, unlike for a
// table, a view or a trigger).
func schemaChangeOfNothing(sql string) bool {
	// (A quoted name may follow EXISTS with no space.)
	f := strings.Fields(strings.NewReplacer(`"`, ` "`, "`", " `", "[", " [", "'", " '").Replace(strings.ToUpper(stripComments(sql))))
	if len(f) >= 4 && f[0] == "DROP" && f[2] == "IF" && f[3] == "EXISTS" {
		switch f[1] {
		case "TABLE", "INDEX", "VIEW", "TRIGGER":
			return true
		}
		return false
	}
	if len(f) > 0 && f[0] == "CREATE" {
		f = f[1:]
		if len(f) > 0 && f[0] == "UNIQUE" {
			f = f[1:]
		}
		return len(f) >= 4 && f[0] == "INDEX" && f[1] == "IF" && f[2] == "NOT" && f[3] == "EXISTS"
	}
	return false
}

// nondetError refuses a write that reads what (see authState.nondet).
func nondetError(where, what string) error {
	return &ForbiddenError{Reason: where + what + ": it differs from node to node, so a write may not use it (a read may)"}
}

// checkTriggerBodies compiles (never runs) an INSERT, UPDATE and DELETE on
// every table that just got a trigger. SQLite compiles a trigger's body only
// when its table is written, so this is when the authorizer sees what the
// body does; a body that touches forbidden objects, or reads something that
// differs between nodes, fails the CREATE TRIGGER.
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
			if name, ok := missingTable(err); ok && isInternal(name) {
				// A body that names a table of the internal namespace that
				// does not exist (yet): SQLite resolves no name, so the
				// authorizer hears nothing; the name is refused all the same.
				return &ForbiddenError{Reason: "trigger body: " + errInternalName(name).Reason}
			}
			if a.nondet != "" {
				return nondetError("trigger body: ", a.nondet)
			}
		}
	}
	a.reset(p)
	return nil
}

// missingTable is the table a "no such table" error names, without its
// schema.
func missingTable(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	_, name, ok := strings.Cut(err.Error(), "no such table: ")
	if !ok {
		return "", false
	}
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		name = name[i+1:]
	}
	return name, true
}

// step runs a bound statement. The column names and declared types are
// read only once SQLite has run it: a statement compiled before a schema
// change is compiled again by its first step, and only then describes the
// rows it returns. On the writer, the answer's counters are the
// statement's own: rows it changed (not its triggers', not an earlier
// statement's) and the rowid it inserted, 0 for anything else.
func step(ctx context.Context, cn *conn, stmt *sqlite.Stmt, collect bool, b *budget) (Result, error) {
	var res Result
	c := cn.c
	var total0 int64
	if cn.entry != nil {
		total0 = c.TotalChanges()
		c.SetLastInsertID(0)
	}
	stop := c.Watch(ctx)
	defer stop()
	first := true
	for {
		more, err := stmt.Step()
		if err != nil {
			if sqlite.IsCode(err, sqlite.ErrCodeInterrupt) && ctx != nil && ctx.Err() != nil {
				return res, fmt.Errorf("query stopped: %w", ctx.Err())
			}
			if cn.auth.forbidden != "" && sqlite.IsCode(err, sqlite.ErrCodeAuth) {
				return res, &ForbiddenError{Reason: cn.auth.forbidden}
			}
			return res, &SQLError{Err: err}
		}
		if first {
			first = false
			if names, decl := stmt.Columns(); len(names) > 0 {
				res.HasRows = true
				res.Columns, res.Types = names, decl
				res.Rows = [][]any{}
			}
		}
		if !more {
			break
		}
		if collect && res.HasRows {
			row := stmt.Row(make([]any, 0, len(res.Columns)))
			if err := b.spend(row); err != nil {
				return res, err
			}
			res.Rows = append(res.Rows, row)
		}
	}
	if cn.entry != nil {
		if c.TotalChanges() > total0 {
			res.RowsAffected = c.Changes()
		}
		if id := c.LastInsertID(); id != 0 {
			res.LastInsertID = id
			cn.entry.lastID = id
		}
	}
	return res, nil
}

// Spent is what results count against a request's result limits: their
// rows, and the bytes of their values (as the limits count them).
func Spent(results []Result) (rows, bytes int) {
	for _, r := range results {
		rows += len(r.Rows)
		for _, row := range r.Rows {
			bytes += rowSize(row)
		}
	}
	return rows, bytes
}

// Less is what is left of l once rows and bytes are spent (a limit of 0
// stays unlimited), and an error once either is over its limit. What is
// left is never below 1, so that the next statement stops at its first
// row past the limit.
func (l Limits) Less(rows, bytes int) (Limits, error) {
	if l.MaxRows > 0 {
		if rows > l.MaxRows {
			return l, &ResultTooLargeError{What: fmt.Sprintf("more than %d rows (limit) in all the request's statements together; add LIMIT or narrow the queries", l.MaxRows)}
		}
		l.MaxRows = max(l.MaxRows-rows, 1)
	}
	if l.MaxBytes > 0 {
		if bytes > l.MaxBytes {
			return l, &ResultTooLargeError{What: fmt.Sprintf("more than %d bytes of values (limit) in all the request's statements together; select fewer rows or columns", l.MaxBytes)}
		}
		l.MaxBytes = max(l.MaxBytes-bytes, 1)
	}
	return l, nil
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
	b := &budget{lim: lim}
	for _, st := range stmts {
		r.auth.reset(policyReadOnly)
		res, err := s.run(ctx, r, st, true, b)
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
	if err := s.freshen(r); err != nil {
		return 0, err
	}
	kind := KindRead
	for _, st := range stmts {
		sql := st.SQL
		// A text of one statement is kept compiled with its kind, as run
		// keeps it (and dropped with the cache when the schema changes):
		// a client sending the same read again is classified without
		// compiling it again.
		key, cacheable := cacheKey(policyClient, sql)
		if e := r.c.Cached(key); cacheable && e != nil {
			kind = max(kind, e.Meta.(Kind))
			continue
		}
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
			kind = max(kind, k)
			if cacheable && sql == st.SQL && keepable(stmt, &r.auth) {
				r.c.Cache(key, stmt, k)
				break
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

// resetChanges changes no row, which sets changes() to 0.
const resetChanges = "UPDATE _ddb_meta SET value = value WHERE 0"

// enter pins everything an entry's execution may depend on to the entry:
// the clock, the random seed (of random(), randomblob() and SQLite's own
// generator) and the connection state. The caller holds wmu and has called
// lockEntries.
func (s *Store) enter(timeMs, seed int64) error {
	if !s.faulty(faults.UnpinnedClock) {
		s.clock.Pin(timeMs)
	}
	s.w.SeedRandom(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15)
	if !s.faulty(faults.UnpinnedPRNG) {
		sqlite.SeedPRNG(seed)
	}
	if !s.faulty(faults.UnpinnedState) {
		// changes() is SQLite's own: a statement that changes no row
		// sets it to 0, as on a fresh connection.
		if err := s.internal(resetChanges); err != nil {
			return fmt.Errorf("reset the connection's counters: %w", err)
		}
		s.w.SetLastInsertID(0)
		s.entry = entryState{totalBase: s.w.TotalChanges()}
	}
	return nil
}

// afterEntry: after a statement that changed the schema or the statistics
// (or tried to, and was rolled back), the writer loads the schema afresh
// from the file, as a node that just started does. SQLite updates its
// in-memory schema incrementally, and resets it on a rollback, and the
// query plans it then chooses (which rows an unordered LIMIT takes, in
// what order random() is called) depend on that history; loaded afresh,
// they depend on the file's content alone, the same on every node however
// its entries were grouped into transactions, interrupted by restarts, or
// mixed with requests that failed.
func (s *Store) afterEntry() error {
	if !s.schemaDirty || s.faulty(faults.IncrementalSchema) {
		return nil
	}
	s.schemaDirty = false
	s.wconn.auth.reset(policyReplica)
	// ANALYZE also measured the project's own tables, whose content is the
	// node's own: their rows go, so the statistics are the same everywhere.
	row, err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'")
	if err != nil {
		return err
	}
	if row[0].(int64) > 0 {
		if err := s.w.Exec(`DELETE FROM sqlite_stat1 WHERE tbl LIKE '\_ddb\_%' ESCAPE '\'`); err != nil {
			return fmt.Errorf("drop the statistics of internal tables: %w", err)
		}
	}
	if err := s.w.ExecScript("PRAGMA writable_schema = RESET"); err != nil {
		return fmt.Errorf("reload the schema: %w", err)
	}
	return nil
}

// lockEntries takes SQLite's process-wide generator for this writer's
// transaction; leave gives it back.
func (s *Store) lockEntries() {
	sqlite.LockPRNG()
	s.entering = true
}

// leave unpins what enter pinned; safe to call more than once.
func (s *Store) leave() {
	s.clock.Unpin()
	if s.entering {
		s.entering = false
		sqlite.UnlockPRNG()
	}
}
