package store

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ddbgo/ddb/internal/sqlite"
)

// Dump writes the database's user content as SQL text, the form SQLite's
// shell gives with .dump: the schema, every row, then indexes, triggers
// and views, between BEGIN TRANSACTION and COMMIT. The project's own
// tables are left out. It reads one consistent state, on a read
// connection (writes go on meanwhile), and returns its applied index.
func (s *Store) Dump(ctx context.Context, w io.Writer) (uint64, error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return 0, err
	}
	defer s.putReader(r)
	r.auth.reset(policyReplica)
	if err := r.c.Exec("BEGIN"); err != nil {
		return 0, err
	}
	defer r.c.Exec("COMMIT")
	index, err := appliedOf(r.c)
	if err != nil {
		return 0, err
	}
	stop := r.c.Watch(ctx)
	defer stop()
	return index, dumpConn(r.c, w)
}

// DumpFile writes the user content of the SQLite database file at path as
// SQL text (see Dump). The file is opened read-only and must pass SQLite's
// quick check (its pages and tables whole): a damaged file is refused, not
// half read. Its indexes are not read (rows come from the tables, NOT
// INDEXED, and the dump makes the indexes again), so the quick check, which
// does not compare them with their tables, suffices, at a fraction of the
// full check's time (a second for a 64 MiB file).
func DumpFile(path string, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	if err := dumpFile(path, writerSink{bw}); err != nil {
		return err
	}
	return bw.Flush()
}

func dumpFile(path string, out stmtSink) error {
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}, "immutable": {"1"}})
	if err != nil {
		return fmt.Errorf("open the database file: %w", err)
	}
	defer c.Close()
	row, err := c.QueryRow("PRAGMA quick_check")
	if err != nil {
		return fmt.Errorf("not a readable SQLite database: %w", err)
	}
	if ok, _ := row[0].(string); ok != "ok" {
		return fmt.Errorf("the database file fails SQLite's integrity check: %v", row[0])
	}
	if err := c.Exec("BEGIN"); err != nil {
		return err
	}
	defer c.Exec("COMMIT")
	return dumpStatements(c, out, true)
}

// stmtSink takes a dump's statements one at a time, each ending in ';'
// (the bytes are only valid during the call).
type stmtSink interface{ stmt(b []byte) error }

// writerSink writes statements one a line.
type writerSink struct{ w *bufio.Writer }

func (s writerSink) stmt(b []byte) error {
	s.w.Write(b)
	return s.w.WriteByte('\n')
}

// IsSQLiteFile reports whether b starts with a SQLite database header.
func IsSQLiteFile(b []byte) bool {
	return strings.HasPrefix(string(b), "SQLite format 3\x00")
}

// internalObject reports whether a schema object belongs to the project or
// to SQLite itself rather than to the user.
func internalObject(name string) bool {
	n := strings.ToLower(name)
	return strings.HasPrefix(n, "_ddb_") || strings.HasPrefix(n, "sqlite_")
}

func dumpConn(c *sqlite.Conn, out io.Writer) error {
	w := bufio.NewWriterSize(out, 64<<10)
	if err := dumpStatements(c, writerSink{w}, false); err != nil {
		return err
	}
	return w.Flush()
}

// dumpStatements gives the dump's statements to out: the schema, every
// row, then indexes, triggers and views, between BEGIN TRANSACTION and
// COMMIT, leaving out the project's own tables. strict (a file to load)
// refuses any other object of the internal namespace, naming it.
func dumpStatements(c *sqlite.Conn, out stmtSink, strict bool) error {
	objs, err := c.All("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid")
	if err != nil {
		return fmt.Errorf("read the schema: %w", err)
	}
	// A virtual table's shadow tables hold its data: CREATE VIRTUAL TABLE
	// makes them (with their first rows), then their rows are copied
	// whole, so the loaded table is the same, index and all.
	shadow := map[string]bool{}
	if rows, err := c.All("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'"); err == nil {
		for _, r := range rows {
			shadow[r[0].(string)] = true
		}
	}
	var b []byte
	emit := func(parts ...string) error {
		b = b[:0]
		for _, p := range parts {
			b = append(b, p...)
		}
		return out.stmt(append(b, ';'))
	}
	if err := emit("PRAGMA foreign_keys=OFF"); err != nil {
		return err
	}
	if err := emit("BEGIN TRANSACTION"); err != nil {
		return err
	}
	var later []string
	for _, o := range objs {
		typ, name, sql := o[0].(string), o[1].(string), o[3].(string)
		if strict && isInternal(name) && !(typ == "table" && knownInternal(name)) {
			return errInternalName(name)
		}
		if internalObject(name) {
			continue
		}
		if typ != "table" {
			later = append(later, sql) // indexes, triggers and views need their tables (and rows) first
			continue
		}
		if shadow[name] {
			if err := emit("DELETE FROM ", quoteIdent(name)); err != nil {
				return err
			}
			if err := dumpRows(c, out, name); err != nil {
				return err
			}
			continue
		}
		if err := emit(sql); err != nil {
			return err
		}
		if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(sql)), "CREATE VIRTUAL TABLE") {
			continue
		}
		if err := dumpRows(c, out, name); err != nil {
			return err
		}
	}
	if row, err := c.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'"); err == nil && row[0].(int64) > 0 {
		seqs, err := c.All("SELECT name, seq FROM sqlite_sequence")
		if err != nil {
			return err
		}
		if len(seqs) > 0 {
			if err := emit("DELETE FROM sqlite_sequence"); err != nil {
				return err
			}
		}
		for _, sq := range seqs {
			name, _ := sq[0].(string)
			if internalObject(name) {
				continue
			}
			if err := emit("INSERT INTO sqlite_sequence VALUES(", sqlLiteral(sq[0]), ",", sqlLiteral(sq[1]), ")"); err != nil {
				return err
			}
		}
	}
	for _, sql := range later {
		if err := emit(sql); err != nil {
			return err
		}
	}
	// The statistics ANALYZE gathered (they choose query plans, and so
	// the order of rows a query without ORDER BY returns), as SQLite's
	// shell dumps them: ANALYZE sqlite_schema makes the table, then its
	// rows, but those of the project's own tables.
	if row, err := c.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'"); err == nil && row[0].(int64) > 0 {
		stats, err := c.All("SELECT tbl, idx, stat FROM sqlite_stat1")
		if err != nil {
			return err
		}
		first := true
		for _, st := range stats {
			if tbl, _ := st[0].(string); isInternal(tbl) {
				continue
			}
			if first {
				if err := emit("ANALYZE sqlite_schema"); err != nil {
					return err
				}
				first = false
			}
			if err := emit("INSERT INTO sqlite_stat1 VALUES(", sqlLiteral(st[0]), ",", sqlLiteral(st[1]), ",", sqlLiteral(st[2]), ")"); err != nil {
				return err
			}
		}
	}
	return emit("COMMIT")
}

// dumpRows gives one INSERT per row, naming the rowid and the stored
// columns (a generated column takes no value).
func dumpRows(c *sqlite.Conn, out stmtSink, table string) error {
	cols, err := c.All("SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0 ORDER BY cid", table)
	if err != nil {
		return fmt.Errorf("read the columns of %s: %w", table, err)
	}
	if len(cols) == 0 {
		return nil
	}
	names := make([]string, 0, len(cols)+1)
	taken := map[string]bool{}
	for _, col := range cols {
		taken[strings.ToLower(col[0].(string))] = true
	}
	// The rowid too, so that a table without an INTEGER PRIMARY KEY keeps
	// its rows' ids (a table WITHOUT ROWID has none).
	for _, alias := range []string{"rowid", "_rowid_", "oid"} {
		if taken[alias] {
			continue
		}
		if st, err := c.Prepare("SELECT " + alias + " FROM " + quoteIdent(table) + " LIMIT 0"); err == nil {
			st.Close()
			names = append(names, alias)
		}
		break
	}
	for _, col := range cols {
		names = append(names, quoteIdent(col[0].(string)))
	}
	list := strings.Join(names, ",")
	stmt, err := c.Prepare("SELECT " + list + " FROM " + quoteIdent(table) + " NOT INDEXED")
	if err != nil {
		return fmt.Errorf("read %s: %w", table, err)
	}
	defer stmt.Close()
	prefix := "INSERT INTO " + quoteIdent(table) + "(" + list + ") VALUES("
	per := 1
	if g, ok := out.(groupingSink); ok {
		per = g.rowsPerInsert()
	}
	row := make([]any, len(names))
	var b, r []byte
	n := 0 // rows in b
	for {
		more, err := stmt.Step()
		if err != nil {
			return fmt.Errorf("read %s: %w", table, err)
		}
		if !more {
			if n > 0 {
				return out.stmt(append(b, ");"...))
			}
			return nil
		}
		row = stmt.Row(row[:0])
		r = r[:0]
		for i, v := range row {
			if i > 0 {
				r = append(r, ',')
			}
			r = append(r, sqlLiteral(v)...)
		}
		if n > 0 && len(b)+len(r) > groupedInsertBytes {
			// A long row goes alone: it never makes a statement too long
			// that would fit on its own.
			if err := out.stmt(append(b, ");"...)); err != nil {
				return err
			}
			n = 0
		}
		if n == 0 {
			b = append(b[:0], prefix...)
		} else {
			b = append(b, "),("...)
		}
		b = append(b, r...)
		if n++; n >= per || len(b) >= groupedInsertBytes {
			if err := out.stmt(append(b, ");"...)); err != nil {
				return err
			}
			n = 0
		}
	}
}

// groupingSink is a statement sink that takes INSERTs of several rows: a
// load runs them at a fraction of the cost of one statement a row (each
// statement is compiled, authorized and run on every node). A dump a user
// reads keeps one row a statement, as sqlite3's does.
type groupingSink interface{ rowsPerInsert() int }

// groupedInsertBytes ends an INSERT of several rows once it is this long
// (a row longer than that goes alone).
const groupedInsertBytes = 64 << 10

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// sqlLiteral writes a value so that SQLite reads back the same value with
// the same type: a REAL always has a decimal point or an exponent, text
// that is not valid UTF-8 (or holds NUL) is cast from its bytes.
func sqlLiteral(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		switch {
		case math.IsNaN(x):
			return "NULL"
		case math.IsInf(x, 1):
			return "1e999"
		case math.IsInf(x, -1):
			return "-1e999"
		}
		s := strconv.FormatFloat(x, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0"
		}
		return s
	case string:
		if !utf8.ValidString(x) || strings.ContainsRune(x, 0) {
			return "CAST(X'" + hex.EncodeToString([]byte(x)) + "' AS TEXT)"
		}
		return "'" + strings.ReplaceAll(x, "'", "''") + "'"
	case []byte:
		return "X'" + hex.EncodeToString(x) + "'"
	}
	panic(fmt.Sprintf("sqlLiteral: unexpected %T", v))
}

// WriteTemp saves r to a new temporary file in dir (the caller removes it).
func WriteTemp(r io.Reader, dir, pattern string) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// Standalone turns a copy Snapshot wrote into a file that stands alone:
// rollback-journal mode instead of WAL, so that opening it later leaves
// no -wal and -shm files beside it (and moving it moves all of it).
func Standalone(path string) error {
	c, err := sqlite.Open(path, nil)
	if err != nil {
		return err
	}
	err = c.ExecScript("PRAGMA journal_mode = DELETE")
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	for _, p := range []string{path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
	return err
}

// ErrNothingToLoad: a load's body is SQL text with no statement.
var ErrNothingToLoad = errors.New("nothing to load: the body holds no SQL statement and is not a SQLite file")
