package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// postLoad sends a load to node id and returns the answer.
func postLoad(t *testing.T, c *testcluster.Cluster, id int, body io.Reader, requestID string) testcluster.Response {
	t.Helper()
	u := c.URL(id) + "/db/load"
	if requestID != "" {
		u += "?request_id=" + url.QueryEscape(requestID)
	}
	resp, err := c.Client.Post(u, "application/octet-stream", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return testcluster.Response{Status: resp.StatusCode, Body: b, Header: resp.Header}
}

// wideFile builds a file whose load is several entries: 20,000 rows of
// 600 random bytes (written in hex, 24 MB of SQL) in a table with a
// 4,000-character column name. (Until a load's INSERTs took 100 rows each,
// the column name alone made the 176 KB file of the same rows without
// their blobs 80 MB of SQL.)
func wideFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wide.db")
	db, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	col := strings.Repeat("c", 4000)
	if err := db.ExecScript(fmt.Sprintf(`CREATE TABLE wide (id INTEGER PRIMARY KEY, %s INTEGER, b BLOB);
		INSERT INTO wide WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT i, i * 7, randomblob(600) FROM n;`, col)); err != nil {
		t.Fatal(err)
	}
	return path
}

// A load far larger than one log entry goes through, in chunks, sent to a
// follower: every node holds the file's content, identically, at one
// index; the leader keeps its term throughout; a retry with the same
// request_id answers the same index and changes nothing. (Before loads
// went in chunks, a 176 KB file became one 80 MB entry: followers refused
// its frame, the cluster lost its leader, and the load failed.)
func TestAFileWhoseLoadIsManyEntriesLoadsOnEveryNode(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE old (x)")
	all := []int{0, 1, 2}
	before := terms(t, c, all...)
	file := wideFile(t)
	body, _ := os.ReadFile(file)
	start := c.Applied(0)
	r := postLoad(t, c, 1, bytes.NewReader(body), "wide-1")
	if r.Status != 200 {
		t.Fatalf("load: %v", r)
	}
	var ans struct {
		Index uint64 `json:"raft_index"`
	}
	json.Unmarshal(r.Body, &ans)
	if ans.Index < start+5 {
		t.Fatalf("the load took entries %d to %d: not the several chunks it is (%v)", start, ans.Index, r)
	}
	c.WaitConverged(60*time.Second, 1, 2)
	if after := terms(t, c, all...); !slices.Equal(before, after) {
		t.Fatalf("the load cost an election:\nbefore %v\nafter  %v", before, after)
	}
	dbs := requireIdentical(t, c, all...)
	want, err := inspect.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if diffs := inspect.Compare([]*inspect.Database{want, dbs[0]}, 5); len(diffs) > 0 {
		t.Fatalf("the loaded database differs from the file:\n%v", diffs)
	}
	again := postLoad(t, c, 2, bytes.NewReader(body), "wide-1")
	if again.Status != 200 || !bytes.Equal(again.Body, r.Body) {
		t.Fatalf("the same load again: %v, first %v", again, r)
	}
	c.WaitConverged(30*time.Second, 1, 2)
	requireIdentical(t, c, all...)
	if got := c.Query(0, "SELECT count(*) AS n FROM wide"); got[0]["n"] != 20000.0 {
		t.Fatalf("rows after the retry: %v", got)
	}
}

// A load survives the loss of the leader midway: the master is killed
// (SIGKILL) once part of the load is in the log; the follower that took
// the load sends the rest to the new leader, and the load applies once,
// whole, on every node, the master included once it is back.
func TestALoadSurvivesTheLeadersDeathMidway(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE old (x)")
	c.WaitConverged(10*time.Second, 1, 2)
	start := c.Applied(1)
	body, _ := os.ReadFile(wideFile(t))
	answer := make(chan testcluster.Response, 1)
	go func() { answer <- postLoad(t, c, 1, bytes.NewReader(body), "") }()
	var killedAt uint64
	for killedAt = c.Applied(1); killedAt < start+3; killedAt = c.Applied(1) {
		select {
		case r := <-answer:
			t.Fatalf("the load ended before the master was killed: %v", r)
		case <-time.After(10 * time.Millisecond):
		}
	}
	c.Node(0).Kill()
	r := <-answer
	if r.Status != 200 {
		t.Fatalf("the load after the leader died: %v", r)
	}
	var ans struct {
		Index uint64 `json:"raft_index"`
	}
	json.Unmarshal(r.Body, &ans)
	if ans.Index <= killedAt {
		t.Fatalf("committed at %d, before the kill at %d", ans.Index, killedAt)
	}
	c.StartNode(0)
	c.WaitReady()
	c.WaitConverged(60*time.Second, 1, 2)
	dbs := requireIdentical(t, c, 0, 1, 2)
	if n := len(dbs[0].Table("wide").Rows); n != 20000 {
		t.Fatalf("%d rows loaded", n)
	}
}

// A load that cannot fit is refused before anything enters the log: a
// statement longer than one entry (413), a damaged file (400); and so is
// an ordinary write larger than one entry, which would otherwise stop the
// stream to every follower.
func TestALoadOrWriteLargerThanAnEntryIsRefusedBeforeTheLog(t *testing.T) {
	c := testcluster.Start(t, 1, "-max-body", "100000000")
	c.Exec(0, "CREATE TABLE t (x)")
	c.WaitConverged(10*time.Second, 1)
	applied := c.Applied(0)
	long := "INSERT INTO t VALUES ('" + strings.Repeat("y", 40<<20) + "');"
	for _, id := range []int{0, 1} {
		r := postLoad(t, c, id, strings.NewReader("INSERT INTO t VALUES (1);\n"+long), "")
		if r.Status != 413 || !strings.Contains(string(r.Body), "load refused, nothing changed") {
			t.Fatalf("node %d: an over-long statement in a load: %v", id, r.String()[:min(300, len(r.String()))])
		}
		w, _ := c.Do(id, map[string]any{"command": "exec", "query": "INSERT INTO t VALUES (?)", "params": []any{strings.Repeat("z", 40<<20)}})
		if w.Status != 413 || !strings.Contains(string(w.Body), `"kind":"too_large"`) {
			t.Fatalf("node %d: a 40 MB write: %v", id, w.String()[:min(300, len(w.String()))])
		}
	}
	if r := postLoad(t, c, 1, strings.NewReader("SQLite format 3\x00 and then nothing of a database"), ""); r.Status != 400 {
		t.Fatalf("a damaged file: %v", r)
	}
	if got := c.Applied(0); got != applied {
		t.Fatalf("refused loads moved the applied index from %d to %d", applied, got)
	}
	if got := c.Query(1, "SELECT count(*) AS n FROM t"); got[0]["n"] != 0.0 {
		t.Fatalf("rows: %v", got)
	}
	c.Exec(1, "INSERT INTO t VALUES ('still writable')")
}

// A 1 GB database loads on every node (the size is DDB_BIG_LOAD_MB
// megabytes), each node's memory bounded whatever the size. It takes minutes and about 20 GB of disk, so it runs only
// when DDB_BIG_LOAD_MB is set: `DDB_BIG_LOAD_MB=1024 go test ./e2e -run
// TestAGigabyteDatabase -timeout 60m`.
func TestAGigabyteDatabaseLoadsOnEveryNode(t *testing.T) {
	mb, _ := strconv.Atoi(os.Getenv("DDB_BIG_LOAD_MB"))
	if mb <= 0 {
		t.Skip("set DDB_BIG_LOAD_MB (e.g. 1024) to load a database of that size")
	}
	path := filepath.Join(t.TempDir(), "big.db")
	db, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Rows of about 1 KB: an integer key, text, a blob, a real.
	rows := mb * 1000
	err = db.ExecScript(fmt.Sprintf(`PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
		CREATE TABLE big (id INTEGER PRIMARY KEY, t TEXT, b BLOB, r REAL);
		INSERT INTO big WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)
			SELECT i, printf('%%.*c', 300 + i %% 200, 'a'), randomblob(500 + i %% 100), i / 7.0 FROM n;
		CREATE INDEX big_r ON big (r);`, rows))
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	t.Logf("the file: %d MB, %d rows", st.Size()>>20, rows)
	c := testcluster.Start(t, 2, "-max-body", strconv.FormatInt(st.Size()+1<<20, 10))
	all := []int{0, 1, 2}
	before := terms(t, c, all...)
	f, _ := os.Open(path)
	defer f.Close()
	began := time.Now()
	short := c.Client
	c.Client = &http.Client{Timeout: 60 * time.Minute}
	r := postLoad(t, c, 1, f, "big")
	c.Client = short
	if r.Status != 200 {
		t.Fatalf("load: %v", r)
	}
	t.Logf("loaded through slave 1 in %v: %s", time.Since(began).Round(time.Second), bytes.TrimSpace(r.Body))
	c.WaitConverged(30*time.Minute, 1, 2)
	t.Logf("applied on every node after %v", time.Since(began).Round(time.Second))
	if after := terms(t, c, all...); !slices.Equal(before, after) {
		t.Fatalf("the load cost an election:\nbefore %v\nafter  %v", before, after)
	}
	// Memory does not grow with the load: its chunks are staged on disk,
	// the log keeps 64 MiB of data in memory, and nothing keeps a chunk's
	// text once it ran.
	for _, id := range all {
		peak := bench.PeakRSS(c.Node(id).Pid())
		t.Logf("node %d: peak RSS %d MB", id, peak>>20)
		if peak > 640<<20 {
			t.Errorf("node %d peaked at %d MB loading %d MB", id, peak>>20, st.Size()>>20)
		}
	}
	want, err := inspect.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dbs := requireIdentical(t, c, all...)
	if diffs := inspect.Compare([]*inspect.Database{want, dbs[0]}, 5); len(diffs) > 0 {
		t.Fatalf("the loaded database differs from the file:\n%v", diffs)
	}
}
