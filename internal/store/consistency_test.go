package store

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// At a check entry every node takes a digest of its database as of that
// index: two stores that applied the same log (in other groupings, one
// restarted midway) have the same digest, rows of ordinary, WITHOUT ROWID
// and virtual tables' shadow tables included; a row changed in one file by
// another program makes them differ, naming that table.
func TestDigestsAgreeAndNameTheTableThatDiffers(t *testing.T) {
	ws := []rlog.Write{{AllowSchema: true, Stmts: stmts(
		"CREATE TABLE a (id INTEGER PRIMARY KEY, v)",
		"CREATE TABLE w (k TEXT PRIMARY KEY, n) WITHOUT ROWID",
		"CREATE VIRTUAL TABLE f USING fts4(body)",
	)}}
	for i := range 40 {
		ws = append(ws, rlog.Write{Stmts: stmts(
			fmt.Sprintf("INSERT INTO a (v) VALUES (%d.5)", i),
			fmt.Sprintf("INSERT INTO w VALUES ('k%d', x'%02x')", i, i),
			fmt.Sprintf("INSERT INTO f (body) VALUES ('word%d')", i%5),
		)})
	}
	ws = append(ws, rlog.Write{Check: true})
	entries := logEntries(t, ws...)
	check := entries[len(entries)-1].Index
	dir := t.TempDir()
	digestOf := func(name string, groups ...int) (*Digest, string) {
		path := filepath.Join(dir, name)
		s, err := Open(Options{Path: path, Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *Digest, 1)
		s.OnDigest(func(d *Digest) { got <- d })
		rest := entries
		for _, k := range groups {
			if _, err := s.ApplyLog(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
			s.Close() // a restart between groups
			if s, err = Open(Options{Path: path, Synchronous: "OFF"}); err != nil {
				t.Fatal(err)
			}
			s.OnDigest(func(d *Digest) { got <- d })
		}
		if _, err := s.ApplyLog(rest); err != nil {
			t.Fatal(err)
		}
		d := <-got
		if at, ok := s.DigestAt(check); !ok || at != d {
			t.Fatalf("DigestAt(%d): %v %v", check, at, ok)
		}
		s.Close()
		if d.Err != "" || d.Index != check {
			t.Fatalf("digest: %+v", d)
		}
		return d, path
	}
	one, _ := digestOf("one.db")
	two, path := digestOf("two.db", 7, 20)
	if diff := one.Differences(two); diff != "" || one.Sum == "" {
		t.Fatalf("the same log gave other digests: %s", diff)
	}
	names := []string{}
	for _, td := range one.Tables {
		names = append(names, td.Name)
	}
	if got := strings.Join(names, " "); got != "a f_content f_docsize f_segdir f_segments f_stat w" {
		t.Fatalf("tables digested: %s", got)
	}
	// Another program changes a row of the second file: its next digest
	// names the table.
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE w SET n = x'ff' WHERE k = 'k7'"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(Options{Path: path, Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan *Digest, 1)
	s.OnDigest(func(d *Digest) { got <- d })
	next := logEntries(t, append(ws, rlog.Write{Check: true})...)
	e := next[len(next)-1]
	e.Index = check + 1
	if _, err := s.ApplyLog([]rlog.Entry{e}); err != nil {
		t.Fatal(err)
	}
	changed := <-got
	if diff := one.Differences(changed); !strings.Contains(diff, "table w differs (40 rows against 40), first difference: keys 'k0'..'k9'") || strings.Contains(diff, "table a") {
		t.Fatalf("differences: %q", diff)
	}
}

// A digest says where a table first differs: the key range of the first
// chunk of rows that differs, in tables large enough that chunks merge
// (the digest of 140,000 rows holds at most maxChunks chunks), for a
// changed row, a row only one side holds, and a WITHOUT ROWID table's
// composite key.
func TestDigestsSayWhereATableFirstDiffers(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *sqlite.Conn {
		c, err := sqlite.Open(filepath.Join(dir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a := open("a.db")
	if err := a.ExecScript(`CREATE TABLE big (id INTEGER PRIMARY KEY, v);
		WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 140000) INSERT INTO big SELECT x, x * 3 FROM s;
		CREATE TABLE pairs (a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
		WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 1000) INSERT INTO pairs SELECT 'g' || (x % 7), x, x FROM s`); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec("VACUUM INTO ?", filepath.Join(dir, "b.db")); err != nil {
		t.Fatal(err)
	}
	b := open("b.db")
	digest := func(c *sqlite.Conn) *Digest {
		d, err := digestOn(c, 1)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	da := digest(a)
	if diff := da.Differences(digest(b)); diff != "" {
		t.Fatalf("copies differ: %s", diff)
	}
	for _, td := range da.Tables {
		if td.Name == "big" && (len(td.Chunks) > maxChunks || len(td.Chunks) < maxChunks/2) {
			t.Fatalf("big's digest has %d chunks", len(td.Chunks))
		}
	}
	for _, tc := range []struct{ change, want string }{
		{"UPDATE big SET v = 0 WHERE id = 100000", "table big differs (140000 rows against 140000), first difference: keys 99841..100352"},
		{"UPDATE big SET v = 300000 WHERE id = 100000; INSERT INTO big VALUES (140001, 0)", "table big differs (140000 rows against 140001), first difference: keys 139521..140000 against 139521..140001"},
		{"DELETE FROM big WHERE id = 140001; UPDATE big SET v = 0 WHERE id = 3", "first difference: keys 1..512"},
		{"UPDATE big SET v = 9 WHERE id = 3; UPDATE pairs SET v = -1 WHERE a = 'g3' AND b = 500", "table pairs differs (1000 rows against 1000), first difference: keys ('g1', 799)..('g3', 584)"},
	} {
		if err := b.ExecScript(tc.change); err != nil {
			t.Fatal(err)
		}
		if diff := da.Differences(digest(b)); !strings.Contains(diff, tc.want) {
			t.Fatalf("after %s: %q, want %q", tc.change, diff, tc.want)
		}
	}
}

// SQLite's own tables are digested by content: sqlite_stat1 rows whose
// rowids differ (they depend on the project's own tables, analysed and
// then deleted) and rows of the project's tables in sqlite_sequence
// change nothing; a changed statistic does.
func TestDigestOfSQLitesOwnTablesIgnoresRowidsAndInternalRows(t *testing.T) {
	entries := logEntries(t,
		rlog.Write{AllowSchema: true, Stmts: stmts("CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v)", "CREATE INDEX a_v ON a(v)")},
		rlog.Write{Stmts: stmts("INSERT INTO a (v) VALUES (1), (2), (2)")},
		rlog.Write{AllowSchema: true, Stmts: stmts("ANALYZE")},
		rlog.Write{Check: true},
	)
	// digest applies the log to a new store, changes its file with tweak
	// (another program), and returns the digest of one more check.
	digest := func(tweak string) *Digest {
		path := filepath.Join(t.TempDir(), "d.db")
		s, err := Open(Options{Path: path, Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyLog(entries); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if tweak != "" {
			db, err := sql.Open("sqlite3", path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = db.Exec(tweak)
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		if s, err = Open(Options{Path: path, Synchronous: "OFF"}); err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		got := make(chan *Digest, 1)
		s.OnDigest(func(d *Digest) { got <- d })
		e := entries[len(entries)-1]
		e.Index = s.Applied() + 1
		if _, err := s.ApplyLog([]rlog.Entry{e}); err != nil {
			t.Fatal(err)
		}
		d := <-got
		if d.Err != "" {
			t.Fatalf("digest: %s", d.Err)
		}
		return d
	}
	base := digest("")
	for _, c := range []struct {
		tweak string
		same  bool
	}{
		{"UPDATE sqlite_stat1 SET rowid = rowid + 100", true},
		{"INSERT INTO sqlite_sequence VALUES ('_ddb_other', 5)", true},
		{"UPDATE sqlite_stat1 SET stat = stat || ' 1'", false},
	} {
		if diff := base.Differences(digest(c.tweak)); (diff == "") != c.same {
			t.Errorf("%s: differences %q", c.tweak, diff)
		}
	}
}
