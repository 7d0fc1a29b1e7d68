package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/testcluster"
)

// The findings of the adversarial review, each as a regression test on a
// real cluster of processes.

// Finding 1: after ALTER TABLE, answers carried the old column names, and
// nodes panicked building them.
func TestAnswersAfterAlterTableCarryTheCurrentColumnsOnEveryNode(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b, c)")
	c.Exec(0, "INSERT INTO t VALUES (1, 'A', 'B', 'C')")
	c.WaitConverged(10*time.Second, 1, 2)
	ask := func(node int, command, sql string) string {
		t.Helper()
		r, err := c.Do(node, map[string]any{"command": command, "query": sql, "format": "columns"})
		if err != nil || r.Status != 200 {
			t.Fatalf("node %d %s %q: %v %v", node, command, sql, r, err)
		}
		return string(r.Body)
	}
	// Every node compiles and caches the statements first.
	for i := 0; i < 6; i++ {
		for node := 0; node <= 2; node++ {
			ask(node, "query", "SELECT * FROM t")
			ask(node, "query", "UPDATE t SET a = a RETURNING *")
		}
	}
	c.Exec(0, "ALTER TABLE t DROP COLUMN b")
	c.Exec(0, "ALTER TABLE t ADD COLUMN z DEFAULT 'zzz'")
	c.WaitConverged(10*time.Second, 1, 2)
	for i := 0; i < 6; i++ {
		for node := 0; node <= 2; node++ {
			for _, q := range []struct{ cmd, sql string }{{"query", "SELECT * FROM t"}, {"query", "UPDATE t SET a = a RETURNING *"}} {
				var got struct {
					Columns []string `json:"columns"`
					Rows    [][]any  `json:"rows"`
				}
				json.Unmarshal([]byte(ask(node, q.cmd, q.sql)), &got)
				if !reflect.DeepEqual(got.Columns, []string{"id", "a", "c", "z"}) || len(got.Rows) != 1 || !reflect.DeepEqual(got.Rows[0], []any{1.0, "A", "C", "zzz"}) {
					t.Fatalf("node %d, %s after the change: %+v", node, q.sql, got)
				}
			}
		}
	}
}

// Finding 2: 'localtime' gave different values on a slave whose process
// runs in another time zone; changes(), last_insert_rowid() and
// total_changes() differed on every node; a rowid picked at random after
// the largest one differed on every node.
func TestReplicasAgreeAcrossTimeZonesConnectionStateAndRandomRowids(t *testing.T) {
	c := testcluster.New(t, 2)
	c.StartNode(0)
	c.StartNode(1)
	c.Env = []string{"TZ=Asia/Tokyo"} // slave 2 only
	c.StartNode(2)
	c.WaitReady()
	c.Exec(0, "CREATE TABLE parent (id INTEGER PRIMARY KEY, at TEXT DEFAULT (datetime('now', 'localtime')))")
	c.Exec(0, "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER, c INTEGER, tc INTEGER, at TEXT)")
	c.Exec(0, "CREATE TABLE big (v)")
	c.Exec(1, "INSERT INTO big (rowid, v) VALUES (9223372036854775807, 'max')")
	for i := 0; i < 9; i++ {
		node := i % 3
		r, err := c.Do(node, map[string]any{"command": "exec", "queries": []map[string]any{
			{"query": "INSERT INTO parent DEFAULT VALUES"},
			{"query": "INSERT INTO child (parent_id, c, tc, at) VALUES (last_insert_rowid(), changes(), total_changes(), time('now', 'localtime', '+1 hour'))"},
			{"query": "INSERT INTO big (v) VALUES (?)", "params": []any{i}},
		}})
		if err != nil || r.Status != 200 {
			t.Fatalf("write on node %d: %v %v", node, r, err)
		}
	}
	c.WaitConverged(10*time.Second, 1, 2)
	requireIdentical(t, c, 0, 1, 2)
	rows := c.Query(2, "SELECT count(*) AS n FROM child JOIN parent ON parent.id = child.parent_id WHERE child.c = 1 AND child.tc = 1")
	if rows[0]["n"].(float64) != 9 {
		t.Fatalf("children pointing at their parent with changes() = total_changes() = 1: %v of 9", rows[0]["n"])
	}
	// A restarted slave replaying from a snapshot or its own file agrees too.
	c.Node(1).Kill()
	os.Remove(c.DBPath(1))
	os.Remove(c.DBPath(1) + "-wal")
	os.Remove(c.DBPath(1) + "-shm")
	c.StartNode(1)
	c.WaitHealthy(1)
	c.WaitConverged(20*time.Second, 1)
	requireIdentical(t, c, 0, 1, 2)
}

// Finding 3: writes answered 503 while the master was being killed were
// committed nevertheless. Now a write whose outcome is unknown answers 504,
// a 503 means it was not applied, and a retry with the same request_id
// applies at most once.
func TestWritesDuringAMasterKillAreAnsweredTruthfullyAndRetriedOnce(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE w (rid TEXT PRIMARY KEY, n INTEGER)")
	c.Exec(0, "CREATE TABLE hits (rid TEXT)")
	c.WaitConverged(10*time.Second, 1, 2)
	var mu sync.Mutex
	answered := map[string]int{} // request id -> status of its first attempt
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for client := 0; client < 4; client++ {
		wg.Add(1)
		go func(client int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rid := fmt.Sprintf("c%d-%d", client, i)
				r, err := c.Do(1+client%2, map[string]any{"command": "exec", "request_id": rid, "queries": []map[string]any{
					{"query": "INSERT INTO w VALUES (?, 1) ON CONFLICT(rid) DO UPDATE SET n = n + 1", "params": []any{rid}},
					{"query": "INSERT INTO hits VALUES (?)", "params": []any{rid}},
				}})
				status := 0
				if err == nil {
					status = r.Status
				}
				mu.Lock()
				answered[rid] = status
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}(client)
	}
	time.Sleep(300 * time.Millisecond)
	c.Node(0).Kill()
	time.Sleep(400 * time.Millisecond)
	c.StartNode(0)
	c.WaitHealthy(0)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	// Retry every request whose outcome was not a success, with its id.
	for rid, status := range answered {
		if status == 200 {
			continue
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			r, err := c.Do(1, map[string]any{"command": "exec", "request_id": rid, "queries": []map[string]any{
				{"query": "INSERT INTO w VALUES (?, 1) ON CONFLICT(rid) DO UPDATE SET n = n + 1", "params": []any{rid}},
				{"query": "INSERT INTO hits VALUES (?)", "params": []any{rid}},
			}})
			if err == nil && r.Status == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("retry of %s: %v %v", rid, r, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	c.WaitConverged(20*time.Second, 1, 2)
	requireIdentical(t, c, 0, 1, 2)
	rows := c.Query(0, "SELECT count(*) AS n, coalesce(max(n), 0) AS most FROM w")
	if int(rows[0]["n"].(float64)) != len(answered) || rows[0]["most"].(float64) != 1 {
		t.Fatalf("%d requests, w holds %v rows, most applied %v times (want each once)", len(answered), rows[0]["n"], rows[0]["most"])
	}
	var bad []string
	for rid, status := range answered {
		if status == 503 {
			bad = append(bad, rid) // a 503 promised it was not applied; the retry applied it once
		}
	}
	t.Logf("%d requests; first answers: %v; 503s were retried: %d", len(answered), statusCounts(answered), len(bad))
}

func statusCounts(m map[string]int) map[int]int {
	out := map[int]int{}
	for _, s := range m {
		out[s]++
	}
	return out
}

// Finding 4: a second slave with an id already in use took it over; a stray
// node joined the membership for good and broke the quorum when it left.
func TestMembershipRefusesATakenIDAndLearnersDoNotCount(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE m (v)")
	// Another slave 1, in another directory, on another port.
	port, err := testcluster.FreeBasePort(1)
	if err != nil {
		t.Fatal(err)
	}
	dup := c.Spawn(1, "-dir", t.TempDir(), "-secret", c.Secret(), "-listen", fmt.Sprintf("127.0.0.1:%d", port))
	deadline := time.Now().Add(15 * time.Second)
	for !dup.Exited() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !dup.Exited() || dup.ExitCode() == 0 {
		t.Fatalf("the duplicate slave 1 did not stop with an error (exited %v, code %d)", dup.Exited(), dup.ExitCode())
	}
	if b, _ := os.ReadFile(dup.Log); !strings.Contains(string(b), "already held by the live node") {
		t.Fatalf("the duplicate's log does not say why:\n%s", b)
	}
	c.Exec(1, "INSERT INTO m VALUES ('through the real slave 1')") // untouched

	// A stray slave 5 joins as a learner, then goes away: the master and
	// slave 1 are still 2 of the 3 voters, and writes go on.
	port5, err := testcluster.FreeBasePort(1)
	if err != nil {
		t.Fatal(err)
	}
	stray := c.Spawn(5, "-listen", fmt.Sprintf("127.0.0.1:%d", port5))
	waitFor(t, 15*time.Second, "slave 5 to join as a learner", func() bool {
		st, _ := c.Status(0)
		r, _ := st["raft"].(map[string]any)
		nodes, _ := r["nodes"].([]any)
		for _, s := range nodes {
			m := s.(map[string]any)
			if m["id"].(float64) == 5 && m["reachable"] == true && m["voter"] == false {
				return true
			}
		}
		return false
	})
	stray.Kill()
	c.Node(2).Kill()
	c.Exec(1, "INSERT INTO m VALUES ('quorum of master and slave 1')")
	// The learner is removed by a deliberate request.
	resp, err := c.Client.Post(c.URL(0)+"/remove", "application/json", strings.NewReader(`{"id": 5}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("remove slave 5: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, _ = c.Client.Post(c.URL(0)+"/remove", "application/json", strings.NewReader(`{"id": 0}`))
	if resp.StatusCode != 400 {
		t.Fatalf("the leader removing itself answered %d, want 400", resp.StatusCode)
	}
	resp.Body.Close()
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Finding 5: files and answers a user trusts.
func TestCleanStopLeavesWholeFilesAndAnswersAreTheStatementsOwn(t *testing.T) {
	c := testcluster.Start(t, 2)
	r := c.Exec(0, "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
	if r.RowsAffected != 0 || r.LastInsertID != 0 || r.Index == 0 {
		t.Fatalf("CREATE TABLE answered %+v; want rows_affected 0, last_insert_id 0 and an index", r)
	}
	for i := 0; i < 65; i++ {
		c.Exec(i%3, "INSERT INTO users (username) VALUES (?)", fmt.Sprintf("u%d", i))
	}
	// A write sent as "query" answers its index.
	resp, err := c.Do(2, map[string]any{"command": "query", "query": "INSERT INTO users (username) VALUES ('r') RETURNING id"})
	if err != nil || resp.Status != 200 || resp.Header.Get("X-Ddb-Index") == "" {
		t.Fatalf("INSERT ... RETURNING as query: %v %v, index header %q", resp, err, resp.Header.Get("X-Ddb-Index"))
	}
	c.WaitConverged(10*time.Second, 1, 2)
	for id := 0; id <= 2; id++ {
		c.Node(id).Stop() // SIGTERM
		if code := c.Node(id).ExitCode(); code != 0 {
			t.Fatalf("node %d exited %d", id, code)
		}
	}
	for id := 0; id <= 2; id++ {
		for _, suffix := range []string{"-wal", "-shm"} {
			if _, err := os.Stat(c.DBPath(id) + suffix); err == nil {
				t.Errorf("%s%s left after a clean stop", filepath.Base(c.DBPath(id)), suffix)
			}
		}
	}
	dbs := requireIdentical(t, c, 0, 1, 2)
	if n := dbs[1].RowCount(); n != 66 {
		t.Fatalf("slave1.db alone holds %d rows, want 66", n)
	}
}

// Finding 5: /health said ok on a master whose writes nobody could
// acknowledge, and on a slave whose master was down.
func TestHealthIsReadinessAndLivezIsLiveness(t *testing.T) {
	c := testcluster.Start(t, 2)
	// notReady waits until node id's /health answers 503 naming why, while
	// its /livez still answers 200.
	notReady := func(id int, why string) {
		t.Helper()
		waitFor(t, 20*time.Second, fmt.Sprintf("node %d to say %q", id, why), func() bool {
			code, body := get(t, c, id, "/health")
			return code == 503 && strings.Contains(body, why)
		})
		if code, _ := get(t, c, id, "/livez"); code != 200 {
			t.Fatalf("livez of node %d: %d", id, code)
		}
	}
	ready := func(id int) {
		t.Helper()
		waitFor(t, 10*time.Second, "readiness", func() bool { code, _ := get(t, c, id, "/health"); return code == 200 })
	}
	for id := 0; id <= 2; id++ {
		ready(id)
	}
	c.Node(1).Kill()
	c.Node(2).Kill()
	notReady(0, "no leader is known") // the master steps down without a quorum
	c.StartNode(1)
	c.WaitHealthy(1)
	ready(1)
	c.Node(0).Kill()
	notReady(1, "no leader is known")
}

// Finding 6: limits applied on the master's own clients only; slow body
// senders locked everyone out; lone surrogates were stored as U+FFFD.
func TestLimitsHoldOnEveryPathAndSlowSendersAreCutOff(t *testing.T) {
	c := testcluster.Start(t, 2, "-max-rows", "100", "-max-concurrent", "8", "-body-timeout", "1s")
	c.Exec(0, "CREATE TABLE l (v)")
	c.WaitConverged(10*time.Second, 1, 2)
	for node := 0; node <= 2; node++ {
		r, _ := c.Do(node, map[string]any{"command": "query", "query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 101) INSERT INTO l SELECT x FROM n RETURNING v"})
		if r.Status != 400 || !strings.Contains(string(r.Body), "more than 100 rows") {
			t.Fatalf("RETURNING 101 rows through node %d: %v", node, r)
		}
	}
	if n := count(t, c, 0, "l"); n != 0 {
		t.Fatalf("a refused write left %d rows", n)
	}
	// 40 connections send headers, then trickle their bodies.
	var conns []net.Conn
	for i := 0; i < 40; i++ {
		conn, err := net.Dial("tcp", strings.TrimPrefix(c.URL(1), "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		conns = append(conns, conn)
	}
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 20; i++ {
		r, err := c.Do(1, map[string]any{"command": "query", "query": "SELECT 1 AS one"})
		if err != nil || r.Status != 200 {
			t.Fatalf("a client with its body sent was refused while slow senders held connections: %v %v", r, err)
		}
	}
	// The slow senders are cut off with 408.
	line, err := bufio.NewReader(conns[0]).ReadString('\n')
	if err != nil || !strings.Contains(line, "408") {
		t.Fatalf("a slow sender got %q, %v; want 408", line, err)
	}
	r, _ := c.Post(0, `{"command":"exec","query":"INSERT INTO l VALUES (?)","params":["\ud800"]}`)
	if r.Status != 400 || !strings.Contains(string(r.Body), "surrogate") {
		t.Fatalf("a lone surrogate: %v", r)
	}
	r, _ = c.Post(0, "{\"command\":\"exec\",\"query\":\"INSERT INTO l VALUES ('\xff')\"}")
	if r.Status != 400 || !strings.Contains(string(r.Body), "UTF-8") {
		t.Fatalf("invalid UTF-8: %v", r)
	}
}

// A write that never ends (a recursive CTE without a bound) once held
// every node's apply loop forever: the entry was committed, so every
// restart ran it again, and SIGTERM waited on it. A clock cannot stop a
// write every node runs (each would stop it at another point); its step
// budget, -query-timeout counted in SQLite's instructions, stops it at
// the same one everywhere. It fails as a whole through every path, the
// cluster goes on, and a restarted node replays the failure.
func TestAWriteThatNeverEndsIsStoppedAtTheSameStepOnEveryNode(t *testing.T) {
	// (A long -ack-timeout: on a machine whose cores are busy with other
	// work, the budget's 30 million instructions may take seconds, which
	// the default would answer as an unknown outcome.)
	c := testcluster.Start(t, 2, "-query-timeout", "300ms", "-ack-timeout", "60s")
	c.Exec(0, "CREATE TABLE f (v)")
	forever := "INSERT INTO f WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n"
	for node := 0; node <= 2; node++ {
		r, err := c.Do(node, map[string]any{"command": "exec", "query": forever, "request_id": fmt.Sprint("forever-", node)})
		if err != nil || r.Status != 400 || !strings.Contains(string(r.Body), "stopped on every node") {
			t.Fatalf("a write that never ends, through node %d: %v %v", node, r, err)
		}
	}
	resp, err := c.Client.Post(c.URL(1)+"/db/execute", "application/json", strings.NewReader(`["`+forever+`"]`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "stopped on every node") {
		t.Fatalf("through rqlite's API: %d %s", resp.StatusCode, b)
	}
	c.Exec(2, "INSERT INTO f VALUES ('after')")
	c.Node(1).Kill()
	c.StartNode(1)
	c.WaitHealthy(1)
	c.WaitConverged(20*time.Second, 1, 2)
	requireIdentical(t, c, 0, 1, 2)
	if rows := c.Query(1, "SELECT v FROM f"); len(rows) != 1 || rows[0]["v"] != "after" {
		t.Fatalf("rows: %v", rows)
	}
}
