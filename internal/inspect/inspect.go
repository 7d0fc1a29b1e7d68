// Package inspect reads replica files read-only and compares them: what
// show_all prints, and what the tests use to prove replicas identical.
package inspect

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// Table is one user table's content.
type Table struct {
	Name    string
	Columns []string
	Keys    []string // per row: "rowid=N", or the whole row for WITHOUT ROWID tables
	Rows    [][]any
}

// Database is one replica file's user content.
type Database struct {
	Path    string
	Applied uint64            // log index recorded in the file
	Schema  map[string]string // user schema objects: name -> SQL
	Tables  []*Table          // sorted by name
}

// Load reads every user table of the database at path, in one read
// transaction, without writing to it (safe while a node runs).
func Load(path string) (*Database, error) {
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}, "_busy_timeout": {"5000"}})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer c.Close()
	if err := c.ExecScript("BEGIN"); err != nil {
		return nil, err
	}
	defer c.ExecScript("COMMIT")
	d := &Database{Path: path, Schema: map[string]string{}}
	if row, err := c.QueryRow("SELECT value FROM _ddb_meta WHERE key='applied'"); err == nil && row != nil {
		if v, ok := row[0].(int64); ok {
			d.Applied = uint64(v)
		}
	}
	objs, err := c.All("SELECT type, name, coalesce(sql, '') FROM sqlite_schema WHERE name NOT LIKE '\\_ddb\\_%' ESCAPE '\\' AND (name NOT LIKE 'sqlite\\_%' ESCAPE '\\' OR name IN ('sqlite_sequence', 'sqlite_stat1', 'sqlite_stat4')) ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("%s: read schema: %w", path, err)
	}
	for _, o := range objs {
		typ, name, sql := o[0].(string), o[1].(string), o[2].(string)
		d.Schema[typ+" "+name] = sql
		if typ != "table" || strings.HasPrefix(strings.ToUpper(sql), "CREATE VIRTUAL") {
			continue
		}
		where := ""
		if strings.HasPrefix(name, "sqlite_stat") {
			// SQLite's statistics, but not those of the tables the
			// project keeps for itself, whose content is the node's own.
			where = ` WHERE tbl NOT LIKE '\_ddb\_%' ESCAPE '\'`
		}
		t, err := loadTable(c, name, where)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", path, name, err)
		}
		d.Tables = append(d.Tables, t)
	}
	return d, nil
}

func quote(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

func loadTable(c *sqlite.Conn, name, where string) (*Table, error) {
	t := &Table{Name: name}
	// Statistics rows are compared by content: ANALYZE numbers them in an
	// order that counts the project's own tables too.
	withRowid := where == ""
	st, err := c.Prepare("SELECT rowid, * FROM " + quote(name) + " ORDER BY rowid")
	if err != nil || !withRowid {
		st.Close()
		withRowid = false
		if st, err = c.Prepare("SELECT * FROM " + quote(name) + where); err != nil {
			return nil, err
		}
	}
	defer st.Close()
	names, _ := st.Columns()
	if withRowid {
		names = names[1:]
	}
	t.Columns = names
	for {
		more, err := st.Step()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		row := st.Row(nil)
		if withRowid {
			t.Keys = append(t.Keys, fmt.Sprintf("rowid=%d", row[0]))
			row = row[1:]
		} else {
			t.Keys = append(t.Keys, encodeRow(row))
		}
		t.Rows = append(t.Rows, row)
	}
	if !withRowid {
		sort.Sort(byKey{t})
	}
	return t, nil
}

type byKey struct{ t *Table }

func (b byKey) Len() int           { return len(b.t.Keys) }
func (b byKey) Less(i, j int) bool { return b.t.Keys[i] < b.t.Keys[j] }
func (b byKey) Swap(i, j int) {
	b.t.Keys[i], b.t.Keys[j] = b.t.Keys[j], b.t.Keys[i]
	b.t.Rows[i], b.t.Rows[j] = b.t.Rows[j], b.t.Rows[i]
}

// SameValue reports whether two values are the same as SQLite stores
// them, type and content (1 and '1', or 1 and 1.0, are not), as rows are
// compared.
func SameValue(a, b any) bool {
	ea, erra := rlog.EncodeValue(a)
	eb, errb := rlog.EncodeValue(b)
	return erra == nil && errb == nil && string(ea) == string(eb)
}

func encodeRow(row []any) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, v := range row {
		if i > 0 {
			b.WriteByte(',')
		}
		e, _ := rlog.EncodeValue(v)
		b.Write(e)
	}
	b.WriteByte(']')
	return b.String()
}

// Checksum is a logical checksum of the user schema and every row, with
// exact types: equal checksums mean identical content.
func (d *Database) Checksum() string {
	h := sha256.New()
	keys := make([]string, 0, len(d.Schema))
	for k := range d.Schema {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "schema %s %s\n", k, d.Schema[k])
	}
	for _, t := range d.Tables {
		fmt.Fprintf(h, "table %s %s\n", t.Name, strings.Join(t.Columns, ","))
		for i, r := range t.Rows {
			fmt.Fprintf(h, "%s %s\n", t.Keys[i], encodeRow(r))
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Checksum is a logical checksum of the table's columns and rows, with
// exact types: equal checksums mean the same rows.
func (t *Table) Checksum() string {
	h := sha256.New()
	fmt.Fprintf(h, "table %s %s\n", t.Name, strings.Join(t.Columns, ","))
	for i, r := range t.Rows {
		fmt.Fprintf(h, "%s %s\n", t.Keys[i], encodeRow(r))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// RowDiff is one row that differs between two databases: its table, its
// key, and its values in each (nil where the row is missing).
type RowDiff struct {
	Table   string
	Key     string
	Columns []string
	PathA   string
	A       []any
	PathB   string
	B       []any
}

// RowDiffs lists the rows of the tables both databases have that differ
// (at most limit per table), and how many more there are.
func RowDiffs(a, b *Database, limit int) (diffs []RowDiff, more int) {
	for _, at := range a.Tables {
		bt := b.Table(at.Name)
		if bt == nil {
			continue
		}
		ai, bi := map[string]int{}, map[string]int{}
		for i, k := range at.Keys {
			ai[k] = i
		}
		for i, k := range bt.Keys {
			bi[k] = i
		}
		n := 0
		add := func(key string, ra, rb []any) {
			if n < limit {
				diffs = append(diffs, RowDiff{Table: at.Name, Key: key, Columns: at.Columns, PathA: a.Path, A: ra, PathB: b.Path, B: rb})
			} else {
				more++
			}
			n++
		}
		for i, k := range at.Keys {
			j, ok := bi[k]
			switch {
			case !ok:
				add(k, at.Rows[i], nil)
			case encodeRow(at.Rows[i]) != encodeRow(bt.Rows[j]):
				add(k, at.Rows[i], bt.Rows[j])
			}
		}
		for j, k := range bt.Keys {
			if _, ok := ai[k]; !ok {
				add(k, nil, bt.Rows[j])
			}
		}
	}
	return diffs, more
}

// RowCount is the number of rows over all user tables.
func (d *Database) RowCount() int {
	n := 0
	for _, t := range d.Tables {
		n += len(t.Rows)
	}
	return n
}

// Table returns the named table, or nil.
func (d *Database) Table(name string) *Table {
	for _, t := range d.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// Compare lists how the databases differ from the first one (at most
// limit row differences per table). No lines means identical.
func Compare(dbs []*Database, limit int) []string {
	if len(dbs) < 2 {
		return nil
	}
	var out []string
	ref := dbs[0]
	for _, d := range dbs[1:] {
		for k, sql := range ref.Schema {
			if other, ok := d.Schema[k]; !ok {
				out = append(out, fmt.Sprintf("%s is missing in %s", k, d.Path))
			} else if other != sql {
				out = append(out, fmt.Sprintf("%s is defined differently in %s", k, d.Path))
			}
		}
		for k := range d.Schema {
			if _, ok := ref.Schema[k]; !ok {
				out = append(out, fmt.Sprintf("%s exists only in %s, not in %s", k, d.Path, ref.Path))
			}
		}
		for _, rt := range ref.Tables {
			dt := d.Table(rt.Name)
			if dt == nil {
				continue
			}
			out = append(out, compareTable(ref.Path, rt, d.Path, dt, limit)...)
		}
	}
	return out
}

func compareTable(pa string, a *Table, pb string, b *Table, limit int) []string {
	var out []string
	if len(a.Rows) != len(b.Rows) {
		out = append(out, fmt.Sprintf("table %s: %d rows in %s, %d in %s", a.Name, len(a.Rows), pa, len(b.Rows), pb))
	}
	am := map[string]string{}
	for i, k := range a.Keys {
		am[k] = encodeRow(a.Rows[i])
	}
	bm := map[string]string{}
	for i, k := range b.Keys {
		bm[k] = encodeRow(b.Rows[i])
	}
	n := 0
	report := func(s string) {
		if n < limit {
			out = append(out, s)
		}
		n++
	}
	for _, k := range a.Keys {
		if bv, ok := bm[k]; !ok {
			report(fmt.Sprintf("table %s row %s: in %s %s, missing in %s", a.Name, k, pa, am[k], pb))
		} else if bv != am[k] {
			report(fmt.Sprintf("table %s row %s: %s in %s, %s in %s", a.Name, k, am[k], pa, bv, pb))
		}
	}
	for _, k := range b.Keys {
		if _, ok := am[k]; !ok {
			report(fmt.Sprintf("table %s row %s: in %s %s, missing in %s", a.Name, k, pb, bm[k], pa))
		}
	}
	if n > limit {
		out = append(out, fmt.Sprintf("table %s: %d more differing rows", a.Name, n-limit))
	}
	return out
}
