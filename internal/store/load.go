package store

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// A load (a SQLite file or SQL text that replaces or adds to the database)
// can be far larger than one log entry may be: a small file with long
// column names dumps to tens of megabytes of SQL. It enters the log as
// chunks of SQL text, each staged unexecuted in every node's database
// (rlog.LoadStage), then one entry runs them all in one transaction
// (rlog.LoadCommit): all of it or nothing, at one index, on every node.
// The staged chunks live in the database, so a snapshot taken mid-load
// carries them, and a change of leader mid-load loses nothing.
const (
	// LoadChunkBytes is the SQL text one load entry carries at most (a
	// longer statement goes alone, up to MaxLoadStatementBytes).
	LoadChunkBytes = 4 << 20
	// MaxLoadStatementBytes is the longest statement a load may hold: it
	// must fit one entry.
	MaxLoadStatementBytes = rlog.MaxEntryBytes - 1024
	// loadStepsPerByte is the step budget a load's commit gets for each
	// byte of its SQL text, on top of the write budget: a dump spends
	// about one step a byte (an INSERT of short values), so this bounds
	// SQL text that computes rather than stores, without ever stopping a
	// dump.
	loadStepsPerByte = 100
)

// EntryTooLargeError: a write (or a statement of a load) is larger than
// one log entry may be. It is refused before anything enters the log.
type EntryTooLargeError struct {
	Bytes int
	Load  bool // a statement of a load
}

func (e *EntryTooLargeError) Error() string {
	if e.Load {
		return fmt.Sprintf("the load holds a statement of %d bytes; the longest a load may hold is %d bytes (one log entry)", e.Bytes, MaxLoadStatementBytes)
	}
	return fmt.Sprintf("the write is %d bytes in the log; one log entry holds at most %d bytes. Split it into smaller writes", e.Bytes, rlog.MaxEntryBytes)
}

// LoadInterruptedError: a load's chunks were not all staged when it was to
// run, because another load started meanwhile (one load runs at a time).
// Nothing of it was applied.
type LoadInterruptedError struct{ ID string }

func (e *LoadInterruptedError) Error() string {
	return "another load started while this one was being sent, and replaced its staged part; nothing of this load was applied. Send it again (with a new request_id, if it had one)"
}

// LoadPlan is a load's statements cut into chunks, kept in a temporary
// file until they are sent.
type LoadPlan struct {
	// Replace: the load is a SQLite file, and replaces the whole user
	// database.
	Replace bool
	// Bytes is the SQL text of all the chunks.
	Bytes int64
	f     *os.File
	ends  []int64 // chunk i is f[ends[i-1]:ends[i]]
}

// Chunks is the number of chunks (0 for an empty SQLite file, which only
// empties the database).
func (p *LoadPlan) Chunks() int { return len(p.ends) }

// Chunk reads chunk i's SQL text.
func (p *LoadPlan) Chunk(i int) (string, error) {
	var start int64
	if i > 0 {
		start = p.ends[i-1]
	}
	b := make([]byte, p.ends[i]-start)
	if _, err := p.f.ReadAt(b, start); err != nil {
		return "", fmt.Errorf("read the load's chunk %d: %w", i, err)
	}
	return string(b), nil
}

// Close removes the plan's file.
func (p *LoadPlan) Close() error {
	p.f.Close()
	return os.Remove(p.f.Name())
}

// PlanLoad reads a load's body, saved in the file at path: a SQLite file
// (checked whole, then dumped) replaces the user database; SQL text runs
// as it is, without the statements a dump frames itself with (BEGIN,
// COMMIT, PRAGMA foreign_keys). Its chunks go to a temporary file in dir.
// Every check happens here, before anything enters the log: a damaged
// file, no statement at all, a statement too long for one entry.
func PlanLoad(path, dir string) (*LoadPlan, error) { return planLoad(path, dir, LoadChunkBytes) }

func planLoad(path, dir string, chunkBytes int64) (*LoadPlan, error) {
	head := make([]byte, 16)
	in, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	n, _ := io.ReadFull(in, head)
	in.Close()
	f, err := os.CreateTemp(dir, "load-plan-*")
	if err != nil {
		return nil, err
	}
	p := &LoadPlan{Replace: IsSQLiteFile(head[:n]), f: f}
	c := &chunker{p: p, w: bufio.NewWriterSize(f, 256<<10), max: chunkBytes}
	if p.Replace {
		err = dumpFile(path, c)
		if err != nil && !errors.As(err, new(*EntryTooLargeError)) {
			err = &ParamError{Msg: "load: " + err.Error()}
		}
	} else {
		var text []byte
		if text, err = os.ReadFile(path); err == nil {
			for _, st := range sqlite.Split(string(text)) {
				if err = c.stmt([]byte(st)); err != nil {
					break
				}
			}
		}
	}
	if err == nil {
		err = c.finish()
	}
	if err == nil && len(p.ends) == 0 && !p.Replace {
		err = ErrNothingToLoad
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// chunker is the statement sink that cuts a load into chunks.
type chunker struct {
	p   *LoadPlan
	w   *bufio.Writer
	cur int64 // bytes in the chunk being filled
	max int64 // a chunk's size, unless one statement is longer
}

func (c *chunker) stmt(st []byte) error {
	if !loadKeeps(st) {
		return nil
	}
	st = bytes.TrimSpace(st)
	end := []byte("\n")
	if !bytes.HasSuffix(st, []byte(";")) {
		end = []byte("\n;\n") // the text's last statement, perhaps ending in a comment
	}
	size := int64(len(st) + len(end))
	if size > MaxLoadStatementBytes {
		return &EntryTooLargeError{Bytes: len(st), Load: true}
	}
	if c.cur > 0 && c.cur+size > c.max {
		c.p.ends = append(c.p.ends, c.p.Bytes)
		c.cur = 0
	}
	c.w.Write(st)
	c.w.Write(end)
	c.cur += size
	c.p.Bytes += size
	return nil
}

// rowsPerInsert: a load's plan takes a file's rows 100 to an INSERT.
func (c *chunker) rowsPerInsert() int { return 100 }

func (c *chunker) finish() error {
	if c.cur > 0 {
		c.p.ends = append(c.p.ends, c.p.Bytes)
	}
	return c.w.Flush()
}

// loadKeeps reports whether a load runs a statement of its text: not the
// ones a dump frames itself with (BEGIN, COMMIT, PRAGMA foreign_keys),
// since a load is one transaction of its own, nor empty ones.
func loadKeeps(st []byte) bool {
	st = skipComments(st)
	f := strings.Fields(strings.ToUpper(strings.TrimSuffix(string(st[:min(len(st), 64)]), ";")))
	switch {
	case len(f) == 0:
		return false
	case f[0] == "BEGIN" || f[0] == "COMMIT" || f[0] == "END":
		return false
	case f[0] == "PRAGMA" && strings.HasPrefix(strings.Join(f[1:], ""), "FOREIGN_KEYS"):
		return false
	}
	return true
}

// loadTableSQL is where staged chunks are kept, created by the first chunk
// (through the log, like everything a node stores).
const loadTableSQL = "CREATE TABLE IF NOT EXISTS _ddb_load (load TEXT NOT NULL, seq INTEGER NOT NULL, sql TEXT NOT NULL, PRIMARY KEY (load, seq)) WITHOUT ROWID"

// applyLoad applies one step of a load inside its entry's savepoint.
func (s *Store) applyLoad(w rlog.Write) ([]Result, error) {
	l := w.Load
	switch l.Op {
	case rlog.LoadStage:
		if len(w.Stmts) != 1 || len(w.Stmts[0].Pos)+len(w.Stmts[0].Named) > 0 {
			return nil, &ParamError{Msg: "a load chunk holds one SQL text without parameters"}
		}
		if err := s.internal(loadTableSQL); err != nil {
			return nil, fmt.Errorf("stage a load: %w", err)
		}
		s.wconn.auth.reset(policyReplica)
		if l.Seq == 0 {
			if err := s.w.Exec("DELETE FROM _ddb_load"); err != nil {
				return nil, fmt.Errorf("stage a load: %w", err)
			}
		} else {
			row, err := s.w.QueryRow("SELECT count(*) FROM _ddb_load WHERE load = ? AND seq = ?", l.ID, l.Seq-1)
			if err != nil {
				return nil, fmt.Errorf("stage a load: %w", err)
			}
			if row[0].(int64) == 0 {
				return nil, &LoadInterruptedError{ID: l.ID}
			}
		}
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("INSERT INTO _ddb_load(load, seq, sql) VALUES (?, ?, ?)", l.ID, l.Seq, w.Stmts[0].SQL); err != nil {
			return nil, fmt.Errorf("stage a load: %w", err)
		}
		return []Result{{}}, nil
	case rlog.LoadAbort:
		return []Result{{}}, s.forgetLoad(l.ID)
	case rlog.LoadCommit:
		staged, bytes, err := s.stagedLoad(l.ID)
		if err != nil {
			return nil, err
		}
		if staged != l.Seq {
			return nil, &LoadInterruptedError{ID: l.ID}
		}
		for _, st := range w.Stmts {
			bytes += int64(len(st.SQL))
		}
		if s.steps.on {
			s.steps.left += loadStepsPerByte * bytes
			s.steps.total += loadStepsPerByte * bytes
		}
		if w.Replace {
			if err := s.dropUserSchema(); err != nil {
				return nil, err
			}
		}
		for seq := int64(0); seq < staged; seq++ {
			s.wconn.auth.reset(policyReplica)
			row, err := s.w.QueryRow("SELECT sql FROM _ddb_load WHERE load = ? AND seq = ?", l.ID, seq)
			if err != nil {
				return nil, fmt.Errorf("read a staged load chunk: %w", err)
			}
			text, _ := row[0].(string)
			if _, err := s.runWrite(context.Background(), []rlog.Statement{{SQL: text}}, w.AllowSchema, false, false, Limits{}); err != nil {
				return nil, err
			}
		}
		if len(w.Stmts) > 0 {
			if _, err := s.runWrite(context.Background(), w.Stmts, w.AllowSchema, false, false, Limits{}); err != nil {
				return nil, err
			}
		}
		return []Result{{}}, s.forgetLoad(l.ID)
	}
	return nil, &ParamError{Msg: fmt.Sprintf("unknown load step %d", l.Op)}
}

// loadFailed ends a failed write that was a load's commit: a load that
// failed is over, and its staged part goes (another load's, if one
// replaced it, stays). Outside the entry's savepoint, in the batch's
// transaction, which it rolls back if it cannot.
func (s *Store) loadFailed(w rlog.Write) error {
	if w.Load == nil || w.Load.Op != rlog.LoadCommit {
		return nil
	}
	if err := s.forgetLoad(w.Load.ID); err != nil {
		s.internal("ROLLBACK")
		return err
	}
	return nil
}

// loadTableExists reports whether a load was ever staged here (the table
// is made by the first chunk).
func (s *Store) loadTableExists() (bool, error) {
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = '_ddb_load'")
	return err == nil && row[0].(int64) > 0, err
}

// stagedLoad counts load id's staged chunks and their SQL text.
func (s *Store) stagedLoad(id string) (chunks, bytes int64, err error) {
	if ok, err := s.loadTableExists(); !ok {
		return 0, 0, err
	}
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRow("SELECT count(*), coalesce(sum(octet_length(sql)), 0) FROM _ddb_load WHERE load = ?", id)
	if err != nil {
		return 0, 0, fmt.Errorf("read a load's staged chunks: %w", err)
	}
	return row[0].(int64), row[1].(int64), nil
}

// forgetLoad drops load id's staged chunks.
func (s *Store) forgetLoad(id string) error {
	if ok, err := s.loadTableExists(); !ok {
		return err
	}
	s.wconn.auth.reset(policyReplica)
	if err := s.w.Exec("DELETE FROM _ddb_load WHERE load = ?", id); err != nil {
		return fmt.Errorf("forget staged load chunks: %w", err)
	}
	return nil
}

// skipComments drops the white space and comments a statement starts with.
func skipComments(b []byte) []byte {
	for {
		b = bytes.TrimLeft(b, " \t\r\n\f")
		switch {
		case bytes.HasPrefix(b, []byte("--")):
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return nil
			}
			b = b[i+1:]
		case bytes.HasPrefix(b, []byte("/*")):
			i := bytes.Index(b[2:], []byte("*/"))
			if i < 0 {
				return nil
			}
			b = b[i+4:]
		default:
			return b
		}
	}
}
