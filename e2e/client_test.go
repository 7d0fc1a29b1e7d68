package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/client"
	"github.com/ddbgo/ddb/client/ddbsql"
	"github.com/ddbgo/ddb/internal/testcluster"
)

func endpoints(c *testcluster.Cluster, ids ...int) []string {
	var out []string
	for _, id := range ids {
		out = append(out, c.URL(id))
	}
	return out
}

// The Go client: exact values both ways, atomic batches, read-your-writes
// on every node, and typed errors.
func TestGoClientExecQueryBatchAndTypedErrors(t *testing.T) {
	c := testcluster.Start(t, 2, "-ack-timeout", "1s")
	ctx := context.Background()
	// Given only the slaves: it finds the leader for writes by itself.
	cl, err := client.New(endpoints(c, 1, 2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Exec(ctx, "CREATE TABLE v (id INTEGER PRIMARY KEY, i, r, t, b, n)"); err != nil {
		t.Fatal(err)
	}
	values := []any{int64(math.MaxInt64), 2.0, "tëxt ✓", []byte{0, 1, 255}, nil}
	r, err := cl.Exec(ctx, "INSERT INTO v (i, r, t, b, n) VALUES (?, ?, ?, ?, ?)", values...)
	if err != nil || r.LastInsertID != 1 || r.RowsAffected != 1 || r.Index == 0 {
		t.Fatalf("insert: %+v %v", r, err)
	}
	if _, err := cl.Exec(ctx, "INSERT INTO v (i, r) VALUES (:i, @r)", client.Named{"i": math.MinInt64, "r": math.Inf(1)}); err != nil {
		t.Fatal(err)
	}
	rows, err := cl.Query(ctx, "SELECT i, r, t, b, n, typeof(r) FROM v ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	want := [][]any{append(append([]any{}, values...), "real"), {int64(math.MinInt64), math.Inf(1), nil, nil, nil, "real"}}
	if !reflect.DeepEqual(rows.Values, want) {
		t.Fatalf("values came back as\n%#v\nnot\n%#v", rows.Values, want)
	}
	if rows.Index < r.Index {
		t.Fatalf("read at index %d, before the client's own write at %d", rows.Index, r.Index)
	}

	// A batch is atomic: one failing statement and nothing applies.
	_, err = cl.ExecBatch(ctx, client.Statement{SQL: "INSERT INTO v (id) VALUES (10)"}, client.Statement{SQL: "INSERT INTO nowhere VALUES (1)"})
	var sqlErr *client.SQLError
	if !errors.As(err, &sqlErr) || !strings.Contains(sqlErr.Message, "no such table") {
		t.Fatalf("failing batch: %v", err)
	}
	res, err := cl.ExecBatch(ctx, client.Statement{SQL: "INSERT INTO v (id) VALUES (?)", Args: []any{10}}, client.Statement{SQL: "UPDATE v SET t = 'x' WHERE id < 10"})
	if err != nil || len(res) != 2 || res[0].LastInsertID != 10 || res[1].RowsAffected != 2 {
		t.Fatalf("batch: %+v %v", res, err)
	}

	// Read-your-writes on whichever node answers, with local reads.
	for i := 0; i < 30; i++ {
		w, err := cl.Exec(ctx, "INSERT INTO v (i) VALUES (?)", 100+i)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.Query(ctx, "SELECT count(*) FROM v WHERE i = ?", 100+i)
		if err != nil || got.Values[0][0] != int64(1) || got.Index < w.Index {
			t.Fatalf("read %d after its write: %v %v", i, got, err)
		}
	}

	// ack=all with a slave stopped: committed, but the ack level is not
	// reached. The outcome is known.
	c.Node(2).Pause()
	_, err = cl.With(client.Ack("all")).Exec(ctx, "INSERT INTO v (i) VALUES (-1)")
	c.Node(2).Resume()
	var te *client.TimeoutError
	if !errors.As(err, &te) || !te.OutcomeKnown || !te.Committed || te.Index == 0 {
		t.Fatalf("ack=all with a slave paused: %v", err)
	}

	// No majority: a write fails with NoLeaderError, promptly, and does
	// not apply. (Sent to a leader that has not yet noticed it lost its
	// majority, a write would be proposed, and its outcome unknown: the
	// leader may keep the entry and commit it once the others are back.
	// So the write goes to the slave that remains.)
	short, _ := client.New(endpoints(c, 0, 1), client.WithRetryTimeout(2*time.Second))
	c.Node(0).Kill()
	c.Node(2).Kill()
	start := time.Now()
	_, err = short.Exec(ctx, "INSERT INTO v (i) VALUES (-2)")
	if !errors.Is(err, client.ErrNoLeader) || time.Since(start) > 6*time.Second {
		t.Fatalf("no majority: %v after %v", err, time.Since(start))
	}
	c.StartNode(0)
	c.StartNode(2)
	c.WaitReady()
	got, err := cl.With(client.Strong()).Query(ctx, "SELECT count(*) FROM v WHERE i = -2")
	if err != nil || got.Values[0][0] != int64(0) {
		t.Fatalf("the write refused for want of a leader applied: %v %v", got, err)
	}
}

// The leader is killed while the client writes: every write the client
// was told succeeded is there exactly once, and the writes go on.
func TestGoClientWritesThroughALeaderKillExactlyOnce(t *testing.T) {
	c := testcluster.Start(t, 2)
	ctx := context.Background()
	cl, err := client.New(endpoints(c, 0, 1, 2), client.WithRetryTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Exec(ctx, "CREATE TABLE k (v TEXT)"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acked []string
	var failed []error
	load := startWorkers(4, func(w, i int) {
		v := fmt.Sprintf("%d-%d", w, i)
		_, err := cl.Exec(ctx, "INSERT INTO k VALUES (?)", v)
		mu.Lock()
		if err == nil {
			acked = append(acked, v)
		} else {
			failed = append(failed, err)
		}
		mu.Unlock()
	})
	time.Sleep(700 * time.Millisecond)
	c.Node(0).Kill()
	time.Sleep(2500 * time.Millisecond)
	c.StartNode(0)
	time.Sleep(1500 * time.Millisecond)
	load.Stop()
	if len(failed) > 0 {
		t.Fatalf("%d writes failed through the failover; first: %v", len(failed), failed[0])
	}
	rows, err := cl.With(client.Strong()).Query(ctx, "SELECT v, count(*) FROM k GROUP BY v")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]int64{}
	for _, r := range rows.Values {
		have[r[0].(string)] = r[1].(int64)
	}
	for _, v := range acked {
		if have[v] != 1 {
			t.Fatalf("acknowledged write %s is there %d times", v, have[v])
		}
	}
	t.Logf("%d writes acknowledged through a leader kill, each exactly once", len(acked))
}

// database/sql with the "ddb" driver: placeholders, typed Scan (a blob,
// a timestamp), errors, transactions as atomic batches, and what they
// refuse.
func TestDatabaseSQLDriver(t *testing.T) {
	c := testcluster.Start(t, 2)
	db, err := sql.Open("ddb", strings.Join(endpoints(c, 1, 2, 0), ",")+"?consistency=strong")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.Exec("CREATE TABLE d (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, at TIMESTAMP, ok BOOLEAN)"); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("X", 3600))
	res, err := db.Exec("INSERT INTO d (name, score, data, at, ok) VALUES (?, ?, ?, ?, ?)", "ann", 1.5, []byte("\x00bin"), at, true)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := res.LastInsertId(); id != 1 {
		t.Fatalf("last insert id %d", id)
	}
	if _, err := db.Exec("INSERT INTO d (name, score) VALUES (:n, :s)", sql.Named("n", "bob"), sql.Named("s", 2)); err != nil {
		t.Fatal(err)
	}
	var (
		name  string
		score float64
		data  []byte
		when  time.Time
		ok    bool
		null  sql.NullTime
	)
	if err := db.QueryRow("SELECT name, score, data, at, ok FROM d WHERE id = ?", 1).Scan(&name, &score, &data, &when, &ok); err != nil {
		t.Fatal(err)
	}
	if name != "ann" || score != 1.5 || !bytes.Equal(data, []byte("\x00bin")) || !when.Equal(at) || !ok {
		t.Fatalf("scanned %q %v %q %v %v", name, score, data, when, ok)
	}
	if err := db.QueryRow("SELECT at FROM d WHERE id = 2").Scan(&null); err != nil || null.Valid {
		t.Fatalf("NULL timestamp: %v %v", null, err)
	}
	types, _ := func() ([]*sql.ColumnType, error) {
		rows, err := db.Query("SELECT at, data FROM d")
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return rows.ColumnTypes()
	}()
	if len(types) != 2 || types[0].DatabaseTypeName() != "TIMESTAMP" || types[1].DatabaseTypeName() != "BLOB" {
		t.Fatalf("column types: %v", types)
	}
	_, err = db.Exec("SELEC nonsense")
	var sqlErr *client.SQLError
	if !errors.As(err, &sqlErr) || !strings.Contains(sqlErr.Message, "syntax") {
		t.Fatalf("bad statement: %v", err)
	}

	// A transaction applies all or nothing, at Commit.
	tx, _ := db.BeginTx(ctx, nil)
	tx.Exec("INSERT INTO d (name) VALUES ('t1')")
	r, _ := tx.Exec("INSERT INTO d (name) VALUES ('t2')")
	if _, err := r.LastInsertId(); !errors.Is(err, ddbsql.ErrResultBeforeCommit) {
		t.Fatalf("LastInsertId before Commit: %v", err)
	}
	if _, err := tx.Query("SELECT count(*) FROM d"); !errors.Is(err, ddbsql.ErrQueryInTx) {
		t.Fatalf("a query inside a read-write transaction: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx, _ = db.Begin()
	tx.Exec("INSERT INTO d (name) VALUES ('t3')")
	tx.Exec("INSERT INTO d (id, name) VALUES (1, 'duplicate id')")
	if err := tx.Commit(); !errors.As(err, &sqlErr) {
		t.Fatalf("a failing transaction: %v", err)
	}
	tx, _ = db.Begin()
	tx.Exec("INSERT INTO d (name) VALUES ('rolled back')")
	tx.Rollback()
	var names []string
	rows, err := db.Query("SELECT name FROM d ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	rows.Close()
	if !reflect.DeepEqual(names, []string{"ann", "bob", "t1", "t2"}) {
		t.Fatalf("rows after the transactions: %v", names)
	}
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := db.QueryContext(ctxDone, "SELECT 1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled context: %v", err)
	}
}

// The example program of docs/CLIENT.md, built and run against a live
// cluster whose leader is killed while it writes.
func TestExampleProgramLivesThroughALeaderKill(t *testing.T) {
	c := testcluster.Start(t, 2)
	bin := filepath.Join(t.TempDir(), "sqlapp")
	build := exec.Command("go", "build", "-o", bin, "./examples/sqlapp")
	build.Dir = testcluster.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}
	run := exec.Command(bin, "-nodes", strings.Join(endpoints(c, 0, 1, 2), ","), "-duration", "5s")
	var out bytes.Buffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	c.Node(0).Kill()
	if err := run.Wait(); err != nil {
		t.Fatalf("the example failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{"inserted note 1", "read back: first, score 2, 4-byte body, created 2026-11-27T09:30:00Z", "bad statement: SQL error: no such table: nowhere", "writes in the loop:"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("the example's output lacks %q:\n%s", want, out.String())
		}
	}
	t.Log(out.String())
}

// Another module imports the client by its module path (here through a
// replace, as it would once the repository is published) and builds.
func TestAnotherModuleImportsTheClient(t *testing.T) {
	root := testcluster.RepoRoot()
	out, err := exec.Command("go", "list", "-m").Output()
	if err != nil || strings.TrimSpace(string(out)) != "github.com/ddbgo/ddb" {
		t.Fatalf("module path: %q %v", out, err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/app\n\ngo 1.26\n\nrequire github.com/ddbgo/ddb v0.0.0\n\nreplace github.com/ddbgo/ddb => "+root+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(`package main

import (
	"database/sql"
	"fmt"

	"github.com/ddbgo/ddb/client"
	_ "github.com/ddbgo/ddb/client/ddbsql"
)

func main() {
	c, err := client.New([]string{"http://localhost:8080"})
	db, _ := sql.Open("ddb", "http://localhost:8080")
	fmt.Println(c != nil, err, db != nil)
}
`), 0o644)
	for _, args := range [][]string{{"mod", "tidy"}, {"build", "-o", filepath.Join(dir, "app"), "."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}
}

// The examples run in any order, any number of times, beside the tables
// the docs' snippets make: send_dummy twice within a second (its user
// names are unique), and the database/sql example after the CLIENT.md
// snippet's notes table, twice.
func TestExamplesRunInAnyOrderAnyNumberOfTimes(t *testing.T) {
	c := testcluster.Start(t, 2)
	// docs/CLIENT.md's snippet, as a user would have run it first.
	c.Exec(0, "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT, body BLOB, created TIMESTAMP)")
	c.Exec(0, "INSERT INTO notes (title, body, created) VALUES ('first', x'0102', '2026-12-07T00:00:00Z')")
	dir := t.TempDir()
	for _, b := range []struct{ name, pkg string }{{"sqlapp", "./examples/sqlapp"}, {"send_dummy", "send_dummy.go"}} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), b.pkg)
		build.Dir = testcluster.RepoRoot()
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	for run := 1; run <= 2; run++ {
		for _, cmd := range []*exec.Cmd{
			exec.Command(filepath.Join(dir, "send_dummy"), "-url", c.URL(0)),
			exec.Command(filepath.Join(dir, "sqlapp"), "-nodes", strings.Join(endpoints(c, 0, 1, 2), ","), "-duration", "500ms"),
		} {
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("run %d of %s: %v\n%s", run, filepath.Base(cmd.Path), err, out)
			}
		}
	}
	if rows := c.Query(0, "SELECT count(*) AS n FROM users"); rows[0]["n"].(float64) != 2 {
		t.Fatalf("send_dummy's users after two runs: %v", rows)
	}
}
