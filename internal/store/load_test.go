package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
)

// applyNext applies writes at the store's next indexes and returns their
// outcomes.
func applyNext(t *testing.T, s *Store, ws ...rlog.Write) []Outcome {
	t.Helper()
	es := logEntries(t, ws...)
	for i := range es {
		es[i].Index += s.Applied()
	}
	out, err := s.ApplyLog(es)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func planText(t *testing.T, sql string, chunk int64) *LoadPlan {
	t.Helper()
	path := filepath.Join(t.TempDir(), "load.sql")
	os.WriteFile(path, []byte(sql), 0o644)
	p, err := planLoad(path, t.TempDir(), chunk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func scalar(t *testing.T, s *Store, sql string) any {
	t.Helper()
	rs, err := s.Read(context.Background(), stmts(sql), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return rs[0].Rows[0][0]
}

// A load in chunks is all or nothing, at its commit: chunks change
// nothing a client sees; a commit whose SQL fails leaves the database as
// it was and forgets the chunks; a load whose chunks another load replaced
// fails whole, and the other load still commits.
func TestAChunkedLoadIsAllOrNothingAtItsCommit(t *testing.T) {
	var b strings.Builder
	b.WriteString("BEGIN TRANSACTION;\nCREATE TABLE l (id INTEGER PRIMARY KEY, v TEXT);\n")
	for i := range 200 {
		fmt.Fprintf(&b, "INSERT INTO l VALUES (%d, 'row %d; with a semicolon');\n", i, i)
	}
	b.WriteString("COMMIT;\nSELECT 1 -- the last statement, without a semicolon")
	good := planText(t, b.String(), 500)
	if good.Chunks() < 10 {
		t.Fatalf("%d chunks", good.Chunks())
	}
	s := openTemp(t, "a.db")
	applyNext(t, s, rlog.Write{Stmts: stmts("CREATE TABLE keep (x)", "INSERT INTO keep VALUES (1)"), AllowSchema: true})

	// Staged, then a failing commit (its own statements fail at the end).
	ws := loadWrites(t, good, "A")
	out := applyNext(t, s, ws[:len(ws)-1]...)
	for _, o := range out {
		if o.Err != nil {
			t.Fatalf("stage: %v", o.Err)
		}
	}
	if n := scalar(t, s, "SELECT count(*) FROM sqlite_schema WHERE name = 'l'"); n != int64(0) {
		t.Fatal("a staged chunk ran")
	}
	commit := ws[len(ws)-1]
	commit.Stmts = stmts("INSERT INTO nowhere VALUES (1)")
	out = applyNext(t, s, commit)
	var se *SQLError
	if !errors.As(out[0].Err, &se) {
		t.Fatalf("a failing load's commit: %v", out[0].Err)
	}
	if n := scalar(t, s, "SELECT count(*) FROM sqlite_schema WHERE name = 'l'"); n != int64(0) {
		t.Fatal("a failed load left a table")
	}
	if n := count(t, s, "_ddb_load"); n != 0 {
		t.Fatalf("a failed load left %d staged chunks", n)
	}

	// Load B starts while A is being sent: A fails whole, B commits.
	a, bw := loadWrites(t, good, "A"), loadWrites(t, good, "B")
	out = applyNext(t, s, a[0], a[1], bw[0], a[2])
	var li *LoadInterruptedError
	if !errors.As(out[3].Err, &li) {
		t.Fatalf("a chunk after another load began: %v", out[3].Err)
	}
	out = applyNext(t, s, a[len(a)-1])
	if !errors.As(out[0].Err, &li) {
		t.Fatalf("the commit of a load another replaced: %v", out[0].Err)
	}
	out = applyNext(t, s, bw[1:]...)
	if err := out[len(out)-1].Err; err != nil {
		t.Fatalf("load B: %v", err)
	}
	if n := scalar(t, s, "SELECT count(*) FROM l"); n != int64(200) {
		t.Fatalf("%v rows loaded", n)
	}
	if n := scalar(t, s, "SELECT count(*) FROM keep"); n != int64(1) {
		t.Fatal("a load of SQL text replaced the database")
	}
	if n := count(t, s, "_ddb_load"); n != 0 {
		t.Fatalf("%d staged chunks left", n)
	}

	// An abort forgets its load's chunks.
	c := loadWrites(t, good, "C")
	applyNext(t, s, c[0], c[1], rlog.Write{Load: &rlog.LoadStep{ID: "C", Op: rlog.LoadAbort}})
	if n := count(t, s, "_ddb_load"); n != 0 {
		t.Fatalf("%d staged chunks left after an abort", n)
	}
}

// A load's commit runs under the write budget plus a budget per byte of
// its SQL: a dump never runs out, SQL text that computes does, and fails
// whole with the budget it had.
func TestALoadCommitRunsUnderABudgetThatGrowsWithItsSize(t *testing.T) {
	s := openTemp(t, "a.db")
	small := planText(t, "CREATE TABLE c (x);\nINSERT INTO c WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) SELECT i FROM n;\n", LoadChunkBytes)
	ws := loadWrites(t, small, "S")
	ws[len(ws)-1].MaxSteps = 1000
	out := applyNext(t, s, ws...)
	var sb *StepBudgetError
	if !errors.As(out[len(out)-1].Err, &sb) || sb.Steps != 1000+loadStepsPerByte*small.Bytes {
		t.Fatalf("a computing load: %v (budget %+v, want %d)", out[len(out)-1].Err, sb, 1000+loadStepsPerByte*small.Bytes)
	}
	var b strings.Builder
	b.WriteString("CREATE TABLE d (x, y);\n")
	for i := range 5000 {
		fmt.Fprintf(&b, "INSERT INTO d VALUES (%d, 'x');\n", i)
	}
	dump := planText(t, b.String(), 4096)
	ws = loadWrites(t, dump, "D")
	ws[len(ws)-1].MaxSteps = 1000
	out = applyNext(t, s, ws...)
	if err := out[len(out)-1].Err; err != nil {
		t.Fatalf("a dump under a small write budget: %v", err)
	}
}

// What cannot be loaded is refused before anything enters the log: a
// statement longer than one entry, SQL text without a statement, a
// damaged SQLite file. An empty SQLite file is a load that empties the
// database.
func TestPlanLoadRefusesWhatCannotBeLoaded(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	long := "INSERT INTO t VALUES ('" + strings.Repeat("x", MaxLoadStatementBytes) + "');"
	var tl *EntryTooLargeError
	if _, err := PlanLoad(write("long.sql", []byte("CREATE TABLE t (x);\n"+long)), dir); !errors.As(err, &tl) {
		t.Fatalf("a statement over the limit: %v", err)
	}
	if _, err := PlanLoad(write("empty.sql", []byte(" -- nothing\n;;BEGIN;/* c */ COMMIT;")), dir); !errors.Is(err, ErrNothingToLoad) {
		t.Fatalf("no statement: %v", err)
	}
	src := openTemp(t, "src.db")
	applyNext(t, src, rlog.Write{Stmts: stmts("CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"), AllowSchema: true})
	path, _, err := src.Snapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var pe *ParamError
	if _, err := PlanLoad(write("bad.db", b[:len(b)/2]), dir); !errors.As(err, &pe) {
		t.Fatalf("a damaged file: %v", err)
	}
	empty := openTemp(t, "empty.db")
	path, _, err = empty.Snapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := PlanLoad(path, dir)
	if err != nil || !p.Replace || p.Chunks() != 0 {
		t.Fatalf("an empty database file: %v %+v", err, p)
	}
	out := applyNext(t, src, loadWrites(t, p, "E")...)
	if out[0].Err != nil || scalar(t, src, "SELECT count(*) FROM sqlite_schema WHERE name = 't'") != int64(0) {
		t.Fatalf("loading an empty file: %v", out[0].Err)
	}
	p.Close()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "load-plan-") {
			t.Fatalf("a plan's file was left behind: %s", e.Name())
		}
	}
}
