package store

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
)

// A dump read back into another database gives the same content, value
// for value and rowid for rowid, whatever the values' types and limits;
// a load that replaces the database leaves nothing of what was there; and
// the dump of a backup file is the dump of the live database.
func TestDumpLoadsBackIntoTheSameContent(t *testing.T) {
	src := openTemp(t, "src.db")
	build := []string{
		"CREATE TABLE v (id INTEGER PRIMARY KEY AUTOINCREMENT, i INTEGER, r REAL, t TEXT, b BLOB, n, g AS (t || '!'))",
		"INSERT INTO v (i, r, t, b, n) VALUES (9223372036854775807, 1.0, 'it''s; a \"test\"', x'00ff10', NULL)",
		"INSERT INTO v (i, r, t, b, n) VALUES (-9223372036854775808, -0.0, 'ünïcødé ✓', x'', 1e308)",
		"INSERT INTO v (i, r, t, b, n) VALUES (0, 1e999, char(97, 0, 98), zeroblob(3), -1e999)",
		"INSERT INTO v (i, r, t, b, n) VALUES (1, 0.1, '', NULL, 2.5e-300)",
		"DELETE FROM v WHERE id = 2",
		"CREATE TABLE norow (a, b)",
		"INSERT INTO norow VALUES (1, 'x'), (2, 'y'), (3, 'z')",
		"DELETE FROM norow WHERE a = 2", // a gap in the rowids
		"CREATE TABLE wr (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
		"INSERT INTO wr VALUES ('b', 2), ('a', 1)",
		"CREATE TABLE \"odd \"\"name\" (rowid_ TEXT, \"rowid\" INTEGER)",
		"INSERT INTO \"odd \"\"name\" VALUES ('p', 7)",
		"CREATE INDEX vi ON v (t)",
		"CREATE VIEW vv AS SELECT i FROM v",
		"CREATE TRIGGER vt AFTER INSERT ON v BEGIN UPDATE v SET n = 'trig; gered' WHERE id = NEW.id; END",
	}
	var ws []rlog.Write
	for _, q := range build {
		ws = append(ws, rlog.Write{Stmts: stmts(q), AllowSchema: true})
	}
	if out, err := src.ApplyLog(logEntries(t, ws...)); err != nil {
		t.Fatal(err)
	} else {
		for _, o := range out {
			if o.Err != nil {
				t.Fatalf("entry %d: %v", o.Index, o.Err)
			}
		}
	}
	var dump bytes.Buffer
	index, err := src.Dump(context.Background(), &dump)
	if err != nil || index != uint64(len(build)) {
		t.Fatalf("dump at index %d: %v", index, err)
	}

	dst := openTemp(t, "dst.db")
	entries := logEntries(t,
		rlog.Write{Stmts: stmts("CREATE TABLE leftover (x)", "INSERT INTO leftover VALUES (1)", "CREATE TABLE v (other)"), AllowSchema: true},
		rlog.Write{Stmts: []rlog.Statement{{SQL: strings.Join(LoadStatements(dump.String()), "\n")}}, AllowSchema: true, Replace: true},
	)
	out, err := dst.ApplyLog(entries)
	if err != nil || out[1].Err != nil {
		t.Fatalf("load: %v %v\n%s", err, out[1].Err, dump.String())
	}
	sameContent(t, src, dst)

	// The same through a backup file.
	path, _, err := src.Snapshot(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	var fromFile bytes.Buffer
	if err := DumpFile(path, &fromFile); err != nil {
		t.Fatal(err)
	}
	if fromFile.String() != dump.String() {
		t.Fatalf("the dump of a backup differs from the live dump:\n%s\n---\n%s", fromFile.String(), dump.String())
	}
	// A damaged file is refused.
	b, _ := os.ReadFile(path)
	bad := path + ".bad"
	os.WriteFile(bad, b[:len(b)/2], 0o644)
	defer os.Remove(bad)
	if err := DumpFile(bad, &bytes.Buffer{}); err == nil {
		t.Fatal("a truncated file was dumped")
	}
}
