package e2e

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rqlite/gorqlite"
	_ "github.com/rqlite/gorqlite/stdlib"

	"github.com/ddbgo/ddb/internal/testcluster"
)

// gorqlite's own test suite, unchanged, against the master and against a
// slave: rqlite's Go client and its database/sql driver work with this
// database without a change.
func TestGorqliteOwnTestSuitePassesAgainstTheMasterAndASlave(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-json", "github.com/rqlite/gorqlite").Output()
	if err != nil {
		t.Fatalf("go list gorqlite: %v", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("gorqlite's module is not downloaded (go mod download): %s", out)
	}
	suite := filepath.Join(t.TempDir(), "gorqlite")
	copyTree(t, mod.Dir, suite)
	c := testcluster.Start(t, 2)
	for _, id := range []int{0, 2} {
		cmd := exec.Command("go", "test", "-count=1", "./...")
		cmd.Dir = suite
		cmd.Env = append(os.Environ(), "GORQLITE_TEST_URL="+c.URL(id), "GOWORK=off", "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("gorqlite's suite against node %d: %v\n%s", id, err, out)
		}
		t.Logf("against node %d:\n%s", id, out)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// gorqlite as a library and through database/sql: writes, parameterised
// queries, a transaction, statement errors, consistency levels and
// cluster discovery, while the master (the leader) is killed: no
// acknowledged write is lost.
func TestGorqliteKeepsWorkingWhileTheLeaderIsKilled(t *testing.T) {
	c := testcluster.Start(t, 2)
	conn, err := gorqlite.Open(c.URL(1))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	leader, err := conn.Leader()
	if err != nil || !strings.HasSuffix(c.URL(0), leader) {
		t.Fatalf("gorqlite found leader %q (%v), want the master %s", leader, err, c.URL(0))
	}
	peers, err := conn.Peers()
	if err != nil || len(peers) != 3 {
		t.Fatalf("gorqlite found peers %v (%v)", peers, err)
	}
	if _, err := conn.WriteOne("CREATE TABLE g (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, at DATETIME)"); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	wr, err := conn.WriteOneParameterized(gorqlite.ParameterizedStatement{
		Query: "INSERT INTO g (name, score, data, at) VALUES (?, ?, ?, ?)", Arguments: []any{"ann", 1.5, []byte{0, 1, 255}, at.Unix()}})
	if err != nil || wr.LastInsertID != 1 || wr.RowsAffected != 1 {
		t.Fatalf("insert: %+v %v", wr, err)
	}
	// A transaction that fails at its second statement applies nothing.
	conn.SetExecutionWithTransaction(true)
	rs, err := conn.Write([]string{"INSERT INTO g (name) VALUES ('bob')", "INSERT INTO nope VALUES (1)", "INSERT INTO g (name) VALUES ('cy')"})
	conn.SetExecutionWithTransaction(false)
	if err == nil || len(rs) != 2 || rs[1].Err == nil || !strings.Contains(rs[1].Err.Error(), "no such table") {
		t.Fatalf("failed transaction: %+v %v", rs, err)
	}
	for _, name := range []string{"none", "weak", "linearizable", "strong"} {
		level, _ := gorqlite.ParseConsistencyLevel(name)
		conn.SetConsistencyLevel(level)
		qr, err := conn.QueryOneParameterized(gorqlite.ParameterizedStatement{Query: "SELECT name, score, data, at FROM g WHERE id = ?", Arguments: []any{1}})
		if err != nil || !qr.Next() {
			t.Fatalf("query at %v: %v", level, err)
		}
		var name string
		var score float64
		var when time.Time
		var data []byte
		if err := qr.Scan(&name, &score, &data, &when); err != nil {
			t.Fatalf("scan at %v: %v", level, err)
		}
		if name != "ann" || score != 1.5 || !when.Equal(at) || qr.NumRows() != 1 {
			t.Fatalf("at %v: %q %v %v", level, name, score, when)
		}
	}

	// database/sql through gorqlite's driver, held to one slave: the slave
	// forwards each write to whoever leads, with an idempotency key.
	db, err := sql.Open("rqlite", c.URL(2)+"?disableClusterDiscovery=true")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("INSERT INTO g (name, score) VALUES (?, ?)", "dee", 2.25); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM g").Scan(&n); err != nil || n != 2 {
		t.Fatalf("count %d, %v", n, err)
	}

	// The leader dies under a stream of writes through both clients.
	var mu sync.Mutex
	var acked []string
	var failures []error
	writer := func(name string, do func(string) error) func(_, i int) {
		return func(_, i int) {
			v := fmt.Sprintf("%s-%d", name, i)
			err := do(v)
			mu.Lock()
			if err == nil {
				acked = append(acked, v)
			} else {
				failures = append(failures, err)
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond) // a steady stream, not a flood
		}
	}
	lib := startWorkers(1, writer("lib", func(v string) error {
		_, err := conn.WriteOneParameterized(gorqlite.ParameterizedStatement{Query: "INSERT INTO g (name) VALUES (?)", Arguments: []any{v}})
		return err
	}))
	viaSQL := startWorkers(1, writer("sql", func(v string) error {
		_, err := db.Exec("INSERT INTO g (name) VALUES (?)", v)
		return err
	}))
	time.Sleep(500 * time.Millisecond)
	c.Node(0).Kill()
	time.Sleep(3 * time.Second)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	time.Sleep(time.Second)
	lib.Stop()
	viaSQL.Stop()
	if len(acked) <= before {
		t.Fatalf("no write was acknowledged in the second after failover (%d acked, %d failed; last failure %v)", len(acked), len(failures), failures[len(failures)-1])
	}
	t.Logf("%d writes acknowledged, %d failed while the leader died", len(acked), len(failures))
	conn.SetConsistencyLevel(gorqlite.ConsistencyLevelStrong)
	have := map[string]bool{}
	qr, err := conn.QueryOne("SELECT name FROM g")
	if err != nil {
		t.Fatal(err)
	}
	for qr.Next() {
		var name string
		qr.Scan(&name)
		// Writes sent through the slave apply exactly once. The library
		// client sends to the leader itself and, when the leader dies
		// under a write, sends it again to another node with nothing to
		// tell the two apart: that write may apply twice, as with rqlite
		// (docs/RQLITE.md).
		if have[name] && strings.HasPrefix(name, "sql-") {
			t.Fatalf("%q, written through a slave, applied twice", name)
		}
		have[name] = true
	}
	for _, v := range acked {
		if !have[v] {
			t.Fatalf("acknowledged write %q is missing", v)
		}
	}
}

// The rqlite shell's requests, replayed as it sends them: typed SQL to
// /db/request with no level, .tables and .schema through GET /db/query at
// level weak, .nodes and .ready, and the version header it reads at start.
func TestRqliteShellRequestsAreAnsweredAsRqliteAnswersThem(t *testing.T) {
	c := testcluster.Start(t, 2)
	base := c.URL(1)
	get := func(path string) (int, http.Header, []byte) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	post := func(path, body string) map[string]any {
		t.Helper()
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST %s %s: %d %v", path, body, resp.StatusCode, err)
		}
		return out
	}
	if _, h, _ := get("/status"); !strings.HasPrefix(h.Get("X-RQLITE-VERSION"), "ddb") {
		t.Fatalf("X-RQLITE-VERSION: %q", h.Get("X-RQLITE-VERSION"))
	}
	body := func(sql string) string { b, _ := json.Marshal([]string{sql}); return string(b) }
	r := post("/db/request?timings", body("CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT)"))
	if _, ok := r["time"]; !ok {
		t.Fatalf("no time with timings: %v", r)
	}
	r = post("/db/request", body(`INSERT INTO foo(name) VALUES("fiona")`))
	if got := r["results"].([]any)[0].(map[string]any); got["last_insert_id"] != 1.0 || got["rows_affected"] != 1.0 {
		t.Fatalf("insert: %v", r)
	}
	r = post("/db/request", body("SELECT * FROM foo"))
	if got := r["results"].([]any)[0].(map[string]any); !reflect.DeepEqual(got["values"], []any{[]any{1.0, "fiona"}}) || !reflect.DeepEqual(got["types"], []any{"integer", "text"}) {
		t.Fatalf("select: %v", r)
	}
	r = post("/db/request", body("SELECT * FROM nothere"))
	if got := r["results"].([]any)[0].(map[string]any); got["error"] != "no such table: nothere" {
		t.Fatalf("error: %v", r)
	}
	// Several statements in one string: a result for each, as rqlite
	// answers (reads, and writes through the log alike).
	r = post("/db/request", body("SELECT name FROM foo; SELECT 1 AS one"))
	if res := r["results"].([]any); len(res) != 2 || !reflect.DeepEqual(res[0].(map[string]any)["values"], []any{[]any{"fiona"}}) || !reflect.DeepEqual(res[1].(map[string]any)["values"], []any{[]any{1.0}}) {
		t.Fatalf("two reads in one string: %v", r)
	}
	r = post("/db/request", body(`INSERT INTO foo(name) VALUES ('a'); INSERT INTO foo(name) VALUES ('b')`))
	if res := r["results"].([]any); len(res) != 2 || res[1].(map[string]any)["last_insert_id"] != 3.0 {
		t.Fatalf("two writes in one string: %v", r)
	}
	// A write sent to /db/query fails alone, per statement, and changes
	// nothing; the reads around it answer (a schema change too, and one
	// that would change nothing).
	r = post("/db/query?level=none", `["SELECT count(*) FROM foo", "INSERT INTO foo(name) VALUES ('q')", "DROP TABLE IF EXISTS nothere", "CREATE TABLE q (x)", "SELECT name FROM foo WHERE id = 1"]`)
	res := r["results"].([]any)
	for _, i := range []int{1, 2, 3} {
		if len(res) != 5 || res[i].(map[string]any)["error"] != "attempt to change database via query operation" {
			t.Fatalf("writes in /db/query: %v", r)
		}
	}
	if !reflect.DeepEqual(res[0].(map[string]any)["values"], []any{[]any{3.0}}) || !reflect.DeepEqual(res[4].(map[string]any)["values"], []any{[]any{"fiona"}}) {
		t.Fatalf("reads around writes in /db/query: %v", r)
	}
	if r = post("/db/query", `["SELECT count(*) FROM foo WHERE name = 'q'", "SELECT count(*) FROM sqlite_master WHERE name = 'q'"]`); !reflect.DeepEqual(r["results"].([]any)[0].(map[string]any)["values"], []any{[]any{0.0}}) || !reflect.DeepEqual(r["results"].([]any)[1].(map[string]any)["values"], []any{[]any{0.0}}) {
		t.Fatalf("a write in /db/query changed something: %v", r)
	}
	status, _, b := get("/db/query?level=weak&q=" + url.QueryEscape(`SELECT name FROM sqlite_master WHERE type="table"`))
	if status != 200 || !strings.Contains(string(b), `["foo"]`) {
		t.Fatalf(".tables: %d %s", status, b)
	}
	status, _, b = get("/db/query?level=weak&q=" + url.QueryEscape("SELECT sql FROM sqlite_master"))
	if status != 200 || !strings.Contains(string(b), "CREATE TABLE foo (id INTEGER NOT NULL PRIMARY KEY, name TEXT)") {
		t.Fatalf(".schema: %d %s", status, b)
	}
	status, _, b = get("/nodes")
	var nodes map[string]struct {
		APIAddr   string `json:"api_addr"`
		Leader    bool   `json:"leader"`
		Reachable bool   `json:"reachable"`
	}
	if status != 200 || json.Unmarshal(b, &nodes) != nil || len(nodes) != 3 || !nodes["0"].Leader || nodes["0"].APIAddr != c.URL(0) || !nodes["2"].Reachable {
		t.Fatalf(".nodes: %d %s", status, b)
	}
	status, _, b = get("/readyz")
	if status != 200 || string(b) != "[+]node ok\n[+]leader ok\n[+]store ok\n" {
		t.Fatalf(".ready: %d %q", status, b)
	}
	// Without a leader /readyz says so, unless asked not to look.
	c.Node(0).Kill()
	c.Node(2).Kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, _, b = get("/readyz")
		if status == 503 && strings.Contains(string(b), "[-]leader not ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with no leader: %d %q", status, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status, _, b = get("/readyz?noleader"); status != 200 {
		t.Fatalf("/readyz?noleader: %d %q", status, b)
	}
}

// The same statements give the same results through both APIs: a script
// run through the original protocol on one table and through rqlite's
// on a twin table, compared value by value, errors included.
func TestTheSameStatementsGiveTheSameResultsThroughBothAPIs(t *testing.T) {
	c := testcluster.Start(t, 2)
	script := []struct {
		sql    string
		params []any
		exec   bool // a write, though it starts with SELECT
	}{
		{"CREATE TABLE %s (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT UNIQUE, b BLOB, n NUMERIC)", nil, false},
		{"INSERT INTO %s (i, r, t, b, n) VALUES (?, ?, ?, x'00ff', ?)", []any{9007199254740993, 0.1, "a", "12"}, false},
		{"INSERT INTO %s (i, r, t) VALUES (-9223372036854775808, 1e300, 'b')", nil, false},
		{"INSERT INTO %s (t) VALUES ('a')", nil, false}, // UNIQUE fails
		{"UPDATE %s SET r = r * 2 WHERE i > 0", nil, false},
		{"SELECT id, i, r, t, b, n, typeof(n), i + 1, length(b) FROM %s ORDER BY id", nil, false},
		{"SELECT * FROM %s WHERE t = ?", []any{"nothing"}, false},
		{"DELETE FROM %s WHERE t = 'b'", nil, false},
		{"SELECT count(*), sum(i), avg(r) FROM %s", nil, false},
		{"SELECT * FROM nothere_%s", nil, false},
		// Several statements in one string: the last one's counters.
		{"SELECT 1; INSERT INTO %s (t) VALUES ('m')", nil, true},
		{"INSERT INTO %s (t) VALUES ('n') RETURNING id; UPDATE %[1]s SET i = 1 WHERE t = 'm'", nil, false},
	}
	type outcome struct {
		Err          bool
		Columns      []string
		Rows         [][]any
		RowsAffected int64
		LastInsertID int64
	}
	norm := func(v any) any {
		// Both APIs answer JSON; compare values as JSON numbers and text.
		b, _ := json.Marshal(v)
		var out any
		d := json.NewDecoder(strings.NewReader(string(b)))
		d.UseNumber()
		d.Decode(&out)
		return out
	}
	var orig, rq []outcome
	for _, st := range script {
		// The original protocol, on table o.
		sqlO := fmt.Sprintf(st.sql, "o")
		cmd := "exec"
		if strings.HasPrefix(sqlO, "SELECT") && !st.exec {
			cmd = "query"
		}
		resp, err := c.Do(0, map[string]any{"command": cmd, "query": sqlO, "params": st.params, "format": "columns"})
		if err != nil {
			t.Fatal(err)
		}
		var o outcome
		var body struct {
			Error        string
			Columns      []string
			Rows         [][]any
			RowsAffected int64 `json:"rows_affected"`
			LastInsertID int64 `json:"last_insert_id"`
		}
		resp.JSON(&body)
		o.Err = resp.Status != 200
		o.Columns, o.RowsAffected, o.LastInsertID = body.Columns, body.RowsAffected, body.LastInsertID
		for _, r := range body.Rows {
			o.Rows = append(o.Rows, norm(r).([]any))
		}
		orig = append(orig, o)

		// rqlite's API, on table q, at a slave.
		sqlQ := fmt.Sprintf(st.sql, "q")
		stmt, _ := json.Marshal(append([]any{sqlQ}, st.params...))
		endpoint := "/db/execute"
		if cmd == "query" {
			endpoint = "/db/query?level=strong"
		}
		hr, err := http.Post(c.URL(1)+endpoint, "application/json", strings.NewReader("["+string(stmt)+"]"))
		if err != nil {
			t.Fatal(err)
		}
		var rb struct {
			Results []struct {
				Error        string
				Columns      []string
				Values       [][]any
				RowsAffected int64 `json:"rows_affected"`
				LastInsertID int64 `json:"last_insert_id"`
			}
		}
		json.NewDecoder(hr.Body).Decode(&rb)
		hr.Body.Close()
		if hr.StatusCode != 200 || len(rb.Results) != 1 {
			t.Fatalf("%s: %d %+v", sqlQ, hr.StatusCode, rb)
		}
		res := rb.Results[0]
		q := outcome{Err: res.Error != "", Columns: res.Columns, RowsAffected: res.RowsAffected, LastInsertID: res.LastInsertID}
		for _, r := range res.Values {
			q.Rows = append(q.Rows, norm(r).([]any))
		}
		rq = append(rq, q)
	}
	for i := range script {
		o, q := orig[i], rq[i]
		if !q.Err && len(q.Columns) == 0 {
			// rqlite's execute answer has no columns; the original's
			// query answers name none either for a write.
			o.Columns = nil
		}
		if !reflect.DeepEqual(o, q) {
			t.Errorf("statement %d %q:\noriginal %+v\nrqlite   %+v", i, script[i].sql, o, q)
		}
	}
}

// Queued writes (?queue) apply in the order they were queued, on the
// leader and through a slave, as rqlite's queue does: the n-th queued
// insert gets row n, and waiting for the last one waits for them all.
func TestQueuedWritesApplyInTheOrderQueued(t *testing.T) {
	c := testcluster.Start(t, 2)
	for node, table := range map[int]string{0: "qm", 1: "qs"} {
		c.Exec(0, "CREATE TABLE "+table+" (id INTEGER PRIMARY KEY, n INTEGER)")
		for i := 1; i <= 100; i++ {
			q := "?queue"
			if i == 100 {
				q += "&wait&timeout=20s"
			}
			body := fmt.Sprintf(`[["INSERT INTO %s (n) VALUES (?)", %d]]`, table, i)
			resp, err := c.Client.Post(c.URL(node)+"/db/execute"+q, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), "sequence_number") {
				t.Fatalf("queued insert %d on node %d: %d %s", i, node, resp.StatusCode, b)
			}
		}
		rows := c.Query(node, "SELECT count(*) AS c FROM "+table+" WHERE id != n")
		if n := rows[0]["c"]; fmt.Sprint(n) != "0" {
			t.Fatalf("node %d: %v queued inserts landed out of order", node, n)
		}
		if rows := c.Query(node, "SELECT count(*) AS c FROM "+table); fmt.Sprint(rows[0]["c"]) != "100" {
			t.Fatalf("node %d: %v rows after waiting for the last of 100 queued inserts", node, rows[0]["c"])
		}
	}
}

// A request sent to a node on rqlite's API after it queued writes waits
// until they are applied: a client sees its own queued writes, in order.
// (gorqlite's own suite queues a CREATE and a DROP, polls until the table
// is gone, then creates it again: on a loaded machine the poll could run
// before the queued CREATE, and the new CREATE met the old table.)
func TestARequestAfterQueuedWritesSeesThem(t *testing.T) {
	c := testcluster.Start(t, 1)
	c.Exec(0, "CREATE TABLE qa (n INTEGER)")
	for node := 0; node <= 1; node++ {
		for round := 0; round < 20; round++ {
			for _, body := range []string{`["CREATE TABLE IF NOT EXISTS qz (x)"]`, `[["INSERT INTO qa VALUES (?)", 1]]`, `["DROP TABLE qz"]`} {
				resp, err := c.Client.Post(c.URL(node)+"/db/execute?queue", "application/json", strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			resp, err := c.Client.Post(c.URL(node)+"/db/query", "application/json", strings.NewReader(`["SELECT (SELECT count(*) FROM sqlite_schema WHERE name = 'qz'), (SELECT count(*) FROM qa)"]`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := fmt.Sprintf("[[0,%d]]", node*20+round+1)
			if !strings.Contains(strings.ReplaceAll(string(b), " ", ""), want) {
				t.Fatalf("node %d round %d: %s, want values %s", node, round, b, want)
			}
		}
	}
}
