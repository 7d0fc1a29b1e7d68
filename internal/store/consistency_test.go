package store

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
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
	if diff := one.Differences(changed); !strings.Contains(diff, "table w differs (40 rows against 40)") || strings.Contains(diff, "table a") {
		t.Fatalf("differences: %q", diff)
	}
}
