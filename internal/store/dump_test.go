package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
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
	text := filepath.Join(t.TempDir(), "dump.sql")
	os.WriteFile(text, dump.Bytes(), 0o644)
	plan, err := planLoad(text, t.TempDir(), 300) // several chunks
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Close()
	if plan.Chunks() < 3 || plan.Replace {
		t.Fatalf("%d chunks (replace %v)", plan.Chunks(), plan.Replace)
	}
	ws = []rlog.Write{{Stmts: stmts("CREATE TABLE leftover (x)", "INSERT INTO leftover VALUES (1)", "CREATE TABLE v (other)"), AllowSchema: true}}
	ws = append(ws, loadWrites(t, plan, "L1")...)
	ws[len(ws)-1].Replace = true
	out, err := dst.ApplyLog(logEntries(t, ws...))
	if err != nil || out[len(out)-1].Err != nil {
		t.Fatalf("load: %v %v\n%s", err, out[len(out)-1].Err, dump.String())
	}
	sameContent(t, src, dst)
	if n := count(t, dst, "_ddb_load"); n != 0 {
		t.Fatalf("%d staged chunks left after the load", n)
	}

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

// loadWrites is the log's writes for a load plan: a stage per chunk, then
// the commit.
func loadWrites(t *testing.T, plan *LoadPlan, id string) []rlog.Write {
	t.Helper()
	var ws []rlog.Write
	for i := range plan.Chunks() {
		sql, err := plan.Chunk(i)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, rlog.Write{Stmts: stmts(sql), AllowSchema: true, Load: &rlog.LoadStep{ID: id, Op: rlog.LoadStage, Seq: int64(i)}})
	}
	return append(ws, rlog.Write{AllowSchema: true, Replace: plan.Replace, Load: &rlog.LoadStep{ID: id, Op: rlog.LoadCommit, Seq: int64(plan.Chunks())}})
}

// count is the number of rows of an internal table (0 if it does not exist).
func count(t *testing.T, s *Store, table string) int64 {
	t.Helper()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wconn.auth.reset(policyReplica)
	row, err := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = ?", table)
	if err != nil || row[0].(int64) == 0 {
		return 0
	}
	s.wconn.auth.reset(policyReplica)
	row, err = s.w.QueryRow("SELECT count(*) FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	return row[0].(int64)
}

// A database holding virtual tables (FTS4 with automerge, R-Tree: the
// modules the build holds)
// dumps and loads back into the same content, shadow tables included:
// the dump makes each virtual table, then copies its shadow tables' rows
// (it made the shadow tables twice, and the load failed).
func TestVirtualTablesDumpAndLoadBackWhole(t *testing.T) {
	src := openTemp(t, "vsrc.db")
	var ws []rlog.Write
	for _, q := range []string{
		"CREATE VIRTUAL TABLE f4 USING fts4(body)",
		"INSERT INTO f4(f4) VALUES ('automerge=8')",
		"CREATE VIRTUAL TABLE rt USING rtree(id, x0, x1, y0, y1)",
		"CREATE TABLE plain (id INTEGER PRIMARY KEY, v)",
	} {
		ws = append(ws, rlog.Write{Stmts: stmts(q), AllowSchema: true})
	}
	for i := range 60 {
		ws = append(ws, rlog.Write{Stmts: []rlog.Statement{
			{SQL: "INSERT INTO f4(body) VALUES (?)", Pos: []any{fmt.Sprintf("document %d about replicas and logs %d", i, i*7)}},
			{SQL: "INSERT INTO rt VALUES (?, ?, ?, ?, ?)", Pos: []any{int64(i), float64(i), float64(i + 1), float64(-i), float64(i * 2)}},
			{SQL: "INSERT INTO plain (v) VALUES (?)", Pos: []any{int64(i)}},
		}})
	}
	out, err := src.ApplyLog(logEntries(t, ws...))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out {
		if o.Err != nil {
			t.Fatalf("entry %d: %v", o.Index, o.Err)
		}
	}
	path, _, err := src.Snapshot(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	plan, err := PlanLoad(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Close()
	dst := openTemp(t, "vdst.db")
	res := applyNext(t, dst, loadWrites(t, plan, "V")...)
	if err := res[len(res)-1].Err; err != nil {
		t.Fatalf("load: %v", err)
	}
	sameContent(t, src, dst)
	for _, q := range []string{"SELECT count(*) FROM f4_segdir", "SELECT count(*) FROM rt_node", "SELECT count(*) FROM f4 WHERE f4 MATCH 'replicas'"} {
		if a, b := scalar(t, src, q), scalar(t, dst, q); a != b {
			t.Fatalf("%s: %v on the source, %v loaded", q, a, b)
		}
	}
}

// Backups round-trip whatever the determinism fuzzer built (tables with and
// without rowid, AUTOINCREMENT, generated columns, indexes, views,
// triggers, FTS3, FTS4 and R-Tree tables with their shadow tables): its
// final database, backed up as a SQLite file and as SQL text, loads into a
// new database through the log as /db/load does (and -restore, which
// loads a file the same way), and every table, shadow tables included,
// holds what it held; so does the consistency checker's digest.
func TestTheFuzzersFinalDatabaseRoundTripsThroughBackups(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kinds := map[string]int64{}
	checked := 0
	debugHook = func(leader *Store, _ []uint64) {
		row, err := leader.Read(ctx, stmts(`SELECT
			(SELECT count(*) FROM sqlite_schema WHERE sql LIKE 'CREATE VIRTUAL TABLE%'),
			(SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'),
			(SELECT count(*) FROM sqlite_schema WHERE type = 'view'),
			(SELECT count(*) FROM sqlite_schema WHERE sql LIKE '%WITHOUT ROWID%'),
			(SELECT count(*) FROM sqlite_schema WHERE sql LIKE '%GENERATED%' OR sql LIKE '% AS (%'),
			(SELECT count(*) FROM sqlite_schema WHERE sql LIKE '%AUTOINCREMENT%')`), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range []string{"virtual", "trigger", "view", "without rowid", "generated", "autoincrement"} {
			kinds[k] += row[0].Rows[0][i].(int64)
		}
		var sqlText bytes.Buffer
		if _, err := leader.Dump(ctx, &sqlText); err != nil {
			t.Fatal(err)
		}
		textPath := filepath.Join(dir, fmt.Sprintf("dump%d.sql", checked))
		if err := os.WriteFile(textPath, sqlText.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		filePath, _, err := leader.Snapshot(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(filePath)
		if err := Standalone(filePath); err != nil {
			t.Fatal(err)
		}
		// An empty sqlite_sequence (left by a dropped AUTOINCREMENT table)
		// is as good as none; SQLite offers no way to make one empty.
		emptySeq := false
		if r, err := leader.Read(ctx, stmts("SELECT count(*) FROM sqlite_sequence"), Limits{}); err == nil && r[0].Rows[0][0] == int64(0) {
			emptySeq = true
		}
		for _, backup := range []string{textPath, filePath} {
			plan, err := PlanLoad(backup, dir)
			if err != nil {
				t.Fatalf("%s: %v", filepath.Base(backup), err)
			}
			restored := openTemp(t, "restored.db")
			if plan.Replace {
				// A database that held something before: a file replaces it.
				applyNext(t, restored, rlog.Write{Stmts: stmts("CREATE TABLE old (x)", "INSERT INTO old VALUES (1)"), AllowSchema: true})
			}
			out := applyNext(t, restored, loadWrites(t, plan, "L")...)
			plan.Close()
			if err := out[len(out)-1].Err; err != nil {
				t.Fatalf("loading %s: %v", filepath.Base(backup), err)
			}
			var diffs []string
			for _, d := range differences(t, 8, leader, restored) {
				if !(emptySeq && strings.HasPrefix(d, "table sqlite_sequence is missing in ")) {
					diffs = append(diffs, d)
				}
			}
			if len(diffs) > 0 {
				t.Fatalf("the database loaded from %s differs:\n%s", filepath.Base(backup), strings.Join(diffs, "\n"))
			}
			var ds []*Digest
			for _, s := range []*Store{leader, restored} {
				r, err := s.getReader(ctx)
				if err != nil {
					t.Fatal(err)
				}
				r.auth.reset(policyReplica)
				d, err := digestOn(r.c, 1, newPacer(0))
				s.putReader(r)
				if err != nil {
					t.Fatal(err)
				}
				ds = append(ds, d)
			}
			if diff := ds[0].Differences(ds[1]); diff != "" {
				t.Fatalf("the digest of the database loaded from %s differs: %s", filepath.Base(backup), diff)
			}
			restored.Close()
			os.Remove(restored.Path())
		}
		checked++
	}
	defer func() { debugHook = nil }()
	for _, seed := range []uint64{20261127, 20261128} {
		if r := runDeterminism(t, seed, 250, "", true); r.diverged != "" {
			t.Fatalf("seed %d: %s", seed, r.diverged)
		}
	}
	if checked != 2 {
		t.Fatalf("%d final databases backed up", checked)
	}
	for k, n := range kinds {
		if n == 0 {
			t.Fatalf("the final databases held no %s table: the runs cover less than they should (%v)", k, kinds)
		}
	}
}

// A file's rows are read from its tables, never from its indexes: the
// quick check it must pass does not compare an index with its table, so a
// file whose index holds another table's rows (their root pages swapped)
// passes it, and reading rows through that index (which the file's own
// statistics can make SQLite prefer) would load the wrong ones.
func TestAFileIsDumpedFromItsTablesNotItsIndexes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "swapped.db")
	c, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE t (a)", "CREATE TABLE u (a)",
		"WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 500) INSERT INTO t SELECT x FROM s",
		"INSERT INTO u SELECT -a FROM t",
		"CREATE INDEX t_a ON t (a)", "CREATE INDEX u_a ON u (a)",
		// Statistics that make the indexes look far smaller than their
		// tables: a full scan would read them instead.
		"ANALYZE", "UPDATE sqlite_stat1 SET stat = stat || ' sz=1' WHERE idx IS NOT NULL",
	} {
		if err := c.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	roots, err := c.All("SELECT name, rootpage FROM sqlite_schema WHERE type = 'index' ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"PRAGMA writable_schema = ON",
		fmt.Sprintf("UPDATE sqlite_schema SET rootpage = %d WHERE name = 't_a'", roots[1][1]),
		fmt.Sprintf("UPDATE sqlite_schema SET rootpage = %d WHERE name = 'u_a'", roots[0][1]),
		"PRAGMA writable_schema = OFF",
	} {
		if err := c.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	c.Close()
	var dump strings.Builder
	if err := DumpFile(path, &dump); err != nil {
		t.Fatalf("the file fails the check a load makes: %v", err)
	}
	if strings.Contains(dump.String(), `INSERT INTO "t"(rowid,"a") VALUES(1,-1)`) || !strings.Contains(dump.String(), `INSERT INTO "t"(rowid,"a") VALUES(1,1)`) {
		t.Fatalf("the rows of t were read from another table's index:\n%.400s", dump.String())
	}
}

// A load's plan takes a file's rows many to an INSERT (each statement is
// compiled and authorized on every node: one a row cost a load most of its
// time), and loads them as they were; a row as long as a statement may be
// still loads, alone, whatever rows came before it.
func TestALoadGroupsAFilesRowsAndLoadsThemWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rows.db")
	c, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	long := (MaxLoadStatementBytes - 200) / 2 // bytes of a blob whose literal just fits
	for _, q := range []string{
		"CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
		"CREATE TABLE k (a TEXT, b REAL, c BLOB)",
		"WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 250) INSERT INTO t SELECT x, x * 3 FROM s",
		fmt.Sprintf("INSERT INTO t VALUES (251, zeroblob(%d))", long),
		"WITH RECURSIVE s(x) AS (SELECT 252 UNION ALL SELECT x + 1 FROM s WHERE x < 500) INSERT INTO t SELECT x, 'row ' || x FROM s",
		"WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 300) INSERT INTO k SELECT char(x % 50 + 40) || x, x / 7.0, randomblob(x % 5) FROM s",
	} {
		if err := c.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	c.Close()
	plan, err := PlanLoad(path, dir)
	if err != nil {
		t.Fatalf("a file with a row as long as a statement may be: %v", err)
	}
	defer plan.Close()
	inserts := 0
	for i := range plan.Chunks() {
		text, err := plan.Chunk(i)
		if err != nil {
			t.Fatal(err)
		}
		inserts += strings.Count(text, "INSERT INTO ")
	}
	if inserts > 12 {
		t.Fatalf("800 rows in %d INSERTs: rows are not grouped", inserts)
	}
	// The same file as a dump of one row a statement, loaded beside it.
	text, err := os.Create(filepath.Join(dir, "rows.sql"))
	if err != nil {
		t.Fatal(err)
	}
	if err := DumpFile(path, text); err != nil {
		t.Fatal(err)
	}
	text.Close()
	single, err := PlanLoad(text.Name(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer single.Close()
	src := openTemp(t, "src.db")
	if res := applyNext(t, src, loadWrites(t, single, "S")...); res[len(res)-1].Err != nil {
		t.Fatalf("load of the dump: %v", res[len(res)-1].Err)
	}
	if n := scalar(t, src, "SELECT count(*) FROM t"); n != int64(500) {
		t.Fatalf("%v rows of t from the dump", n)
	}
	dst := openTemp(t, "dst.db")
	res := applyNext(t, dst, loadWrites(t, plan, "G")...)
	if err := res[len(res)-1].Err; err != nil {
		t.Fatalf("load: %v", err)
	}
	sameContent(t, src, dst)
}
