package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/testcluster"
)

const originalCreate = `{
  "command": "exec",
  "query": "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
  "is_master": false
}`

func TestOriginalReadmeFlowWorksUnchanged(t *testing.T) {
	c := testcluster.Start(t, 2)
	r, err := c.Post(0, originalCreate)
	if err != nil || r.Status != 200 || !strings.Contains(string(r.Body), `"status":"success"`) {
		t.Fatalf("create on master: %v %v", r, err)
	}
	r, _ = c.Post(1, originalCreate)
	if r.Status != 403 || !strings.Contains(string(r.Body), c.URL(0)) {
		t.Fatalf("create on slave: want 403 naming %s, got %v", c.URL(0), r)
	}
	forged := strings.Replace(originalCreate, `"is_master": false`, `"is_master": true`, 1)
	if r, _ = c.Post(2, forged); r.Status != 403 {
		t.Fatalf("is_master: true from a client must grant nothing: %v", r)
	}
	var last uint64
	for id := 0; id <= 2; id++ {
		r := c.Exec(id, "INSERT INTO users (username, email) VALUES (?, ?)", "user"+string(rune('a'+id)), "u@example.com")
		last = r.Index
		// A write answers only once the receiving node applied it, and
		// reads are local: the node that took it sees it at once.
		if rows := c.Query(id, "SELECT * FROM users WHERE username = ?", "user"+string(rune('a'+id))); len(rows) != 1 {
			t.Fatalf("node %d does not see the write it answered: %v", id, rows)
		}
	}
	for id := 0; id <= 2; id++ {
		// Every node, read at the last write's index, sees all three.
		r, err := c.Do(id, map[string]any{"command": "query", "query": "SELECT * FROM users ORDER BY id", "min_index": last})
		var rows []map[string]any
		if err != nil || r.Status != 200 || r.JSON(&rows) != nil || len(rows) != 3 {
			t.Fatalf("node %d at index %d: %v %v", id, last, r, err)
		}
	}
	c.WaitConverged(10e9, 1, 2)
	dbs := requireIdentical(t, c, 0, 1, 2)
	if ts := dbs[0].Table("users").Rows[0][3]; ts == nil {
		t.Fatal("created_at default was not filled")
	}

	// show_all, as the README runs it, prints the tables and the verdict.
	cmd := exec.Command("go", "run", filepath.Join("show_all", "main.go"), "-dir", c.Dir, "3")
	cmd.Dir = testcluster.RepoRoot()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "VERDICT: all 3 databases are identical") || !strings.Contains(string(out), "username") {
		t.Fatalf("show_all: %v\n%s", err, out)
	}
}

func TestBadInputGetsAClearJSONErrorAndChangesNothing(t *testing.T) {
	c := testcluster.Start(t, 1, "-max-body", "65536")
	c.Exec(0, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	c.Exec(0, "INSERT INTO t VALUES (1, 'one')")
	huge := `{"command":"exec","query":"INSERT INTO t (v) VALUES ('` + strings.Repeat("x", 70000) + `')"}`
	// A request id used once, by a write that changes nothing.
	if r, err := c.Post(0, `{"command":"exec","query":"UPDATE t SET v = 'one' WHERE id = 1","request_id":"once"}`); err != nil || r.Status != 200 {
		t.Fatalf("a write with a request id: %v %v", r, err)
	}
	cases := []struct {
		name, body string
		node       int
		status     int
		mention    string
	}{
		{"malformed JSON", `{"command": "exec", "query": `, 0, 400, "malformed JSON"},
		{"not an object", `["exec"]`, 0, 400, "JSON"},
		{"empty body", ``, 0, 400, "empty"},
		{"unknown command", `{"command":"drop","query":"SELECT 1"}`, 0, 400, "unknown command"},
		{"missing command", `{"query":"SELECT 1"}`, 0, 400, "command"},
		{"missing query", `{"command":"query"}`, 0, 400, "query"},
		{"empty query", `{"command":"exec","query":"   "}`, 0, 400, "query"},
		{"query of wrong type", `{"command":"exec","query":42}`, 0, 400, "string"},
		{"params of wrong type", `{"command":"query","query":"SELECT ?","params":"x"}`, 0, 400, "params"},
		{"nested param", `{"command":"query","query":"SELECT ?","params":[{"a":1}]}`, 0, 400, "params"},
		{"is_master of wrong type", `{"command":"exec","query":"SELECT 1","is_master":"yes"}`, 0, 400, "is_master"},
		{"bad ack", `{"command":"exec","query":"SELECT 1","ack":"some"}`, 0, 400, "ack"},
		{"bad format", `{"command":"query","query":"SELECT 1","format":"xml"}`, 0, 400, "format"},
		{"bad min_index", `{"command":"query","query":"SELECT 1","min_index":-1}`, 0, 400, "min_index"},
		{"both query and queries", `{"command":"exec","query":"SELECT 1","queries":[{"query":"SELECT 1"}]}`, 0, 400, "either"},
		{"syntax error", `{"command":"exec","query":"INSRT INTO t VALUES (2, 'x')"}`, 0, 400, "syntax"},
		{"constraint", `{"command":"exec","query":"INSERT INTO t VALUES (1, 'dup')"}`, 0, 400, "UNIQUE"},
		{"missing parameter", `{"command":"exec","query":"INSERT INTO t VALUES (?, ?)","params":[5]}`, 0, 400, "parameter"},
		{"create database", `{"command":"exec","query":"CREATE DATABASE shop"}`, 0, 400, "one SQLite database"},
		{"drop database on a slave", `{"command":"exec","query":"DROP DATABASE shop"}`, 1, 400, "one SQLite database"},
		{"attach", `{"command":"exec","query":"ATTACH '/etc/passwd' AS p"}`, 0, 403, "ATTACH"},
		{"vacuum into", `{"command":"exec","query":"VACUUM INTO '/tmp/x.db'"}`, 0, 403, "not allowed"},
		{"writable_schema", `{"command":"exec","query":"PRAGMA writable_schema = ON"}`, 0, 403, "PRAGMA"},
		{"internal table", `{"command":"query","query":"SELECT * FROM _ddb_requests"}`, 0, 403, "internal"},
		{"write to internal table", `{"command":"exec","query":"INSERT INTO _ddb_meta VALUES ('applied', 0)"}`, 0, 403, "internal"},
		{"load_extension", `{"command":"query","query":"SELECT load_extension('/tmp/x.so')"}`, 0, 403, "load_extension"},
		{"transaction control", `{"command":"exec","query":"BEGIN; DELETE FROM t; COMMIT"}`, 0, 403, "queries"},
		{"forged replication flag", `{"command":"exec","query":"DELETE FROM t","is_replicated":true}`, 1, 403, "is_replicated"},
		{"schema on slave hidden after comment", `{"command":"exec","query":"/* x */ DROP TABLE t"}`, 1, 403, c.URL(0)},
		{"schema on slave hidden after a read", `{"command":"exec","query":"SELECT 1; drop table t"}`, 1, 403, c.URL(0)},
		{"huge body", huge, 0, 413, "larger"},
		{"NUL character in SQL (once crashed a node)", `{"command":"exec","query":"SELECT 1;\u0000 DROP TABLE t"}`, 0, 400, "NUL"},
		{"NUL character in SQL at a slave", `{"command":"query","query":"\u0000EINDEX t"}`, 1, 400, "NUL"},
		{"error mid-transaction", `{"command":"exec","queries":[{"query":"INSERT INTO t VALUES (2, 'two')"},{"query":"INSERT INTO t VALUES (3, NULL)"}]}`, 0, 400, "NOT NULL"},
		{"one key twice (a proxy reading the first would see a SELECT)", `{"command":"query","query":"SELECT * FROM t","query":"DELETE FROM t"}`, 1, 400, "appears twice"},
		{"a request id sent again with another request", `{"command":"exec","query":"DELETE FROM t","request_id":"once"}`, 1, 400, "already used for a different request"},
		{"error mid-transaction via slave", `{"command":"exec","queries":[{"query":"INSERT INTO t VALUES (2, 'two')"},{"query":"INSERT INTO t VALUES (1, 'dup')"}]}`, 1, 400, "UNIQUE"},
	}
	for _, tc := range cases {
		r, err := c.Post(tc.node, tc.body)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Status != tc.status || !bytes.HasPrefix(r.Body, []byte(`{"error":`)) || !strings.Contains(strings.ToLower(string(r.Body)), strings.ToLower(tc.mention)) {
			t.Errorf("%s: got %v, want %d mentioning %q", tc.name, r, tc.status, tc.mention)
		}
	}
	for _, m := range []string{http.MethodGet, http.MethodPut} {
		req, _ := http.NewRequest(m, c.URL(0)+"/", nil)
		resp, err := c.Client.Do(req)
		if err != nil || resp.StatusCode != 405 {
			t.Errorf("%s /: %v %v", m, resp.StatusCode, err)
		}
	}
	resp, err := c.Client.Post(c.URL(0)+"/nowhere", "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != 404 {
		t.Errorf("unknown path: %v %v", resp.StatusCode, err)
	}
	// A web page of another origin cannot have a browser write: a "simple"
	// cross-origin POST needs no CORS approval, so the node refuses what
	// browsers mark as sent for another site. Its own console's requests,
	// and programs' (which send no such headers), go through.
	browser := func(node int, path, body string, headers map[string]string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, c.URL(node)+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	evil := map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
	for _, tc := range []struct {
		node       int
		path, body string
		headers    map[string]string
		status     int
	}{
		{0, "/", `{"command":"exec","query":"DROP TABLE t"}`, evil, 403},
		{1, "/", `{"command":"exec","query":"DELETE FROM t"}`, evil, 403},
		{1, "/db/execute", `["DELETE FROM t"]`, map[string]string{"Origin": "https://evil.example"}, 403}, // an older browser: Origin alone
		{0, "/db/load", `DROP TABLE t;`, map[string]string{"Origin": "null"}, 403},
		{0, "/", `{"command":"query","query":"SELECT 1"}`, map[string]string{"Origin": c.URL(0), "Sec-Fetch-Site": "same-origin"}, 200},
		{1, "/db/request", `["SELECT 1"]`, nil, 200},
	} {
		if got := browser(tc.node, tc.path, tc.body, tc.headers); got != tc.status {
			t.Errorf("POST %s %s with %v: %d, want %d", tc.path, tc.body, tc.headers, got, tc.status)
		}
	}
	c.WaitConverged(10e9, 1)
	for id := 0; id <= 1; id++ {
		rows := c.Query(id, "SELECT id, v FROM t ORDER BY id")
		if len(rows) != 1 || rows[0]["v"] != "one" {
			t.Fatalf("node %d: bad requests changed the table: %v", id, rows)
		}
	}
	if st := c.Query(0, "SELECT count(*) AS n FROM sqlite_master WHERE name = 't'"); st[0]["n"].(float64) != 1 {
		t.Fatal("table t is gone")
	}
	// DNS rebinding: a page of evil.example whose name now points at the
	// node is same-origin to the browser, so the cross-origin check lets
	// it through; its Host header names evil.example, which the node is
	// not known by: refused before anything runs. The names the node is
	// known by, and IP addresses, go through.
	hostPost := func(node int, host, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, c.URL(node)+path, strings.NewReader(body))
		req.Host = host
		req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
		port := req.URL.Port()
		if req.Header.Get("Origin") == "" && strings.HasPrefix(host, "evil.example") {
			req.Header.Set("Origin", "http://evil.example:"+port)
			req.Header.Set("Sec-Fetch-Site", "same-origin")
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	port := strings.TrimPrefix(c.URL(0), "http://127.0.0.1:")
	for _, tc := range []struct {
		host, path, body string
		status           int
	}{
		{"evil.example:" + port, "/", `{"command":"exec","query":"DROP TABLE t"}`, 403},
		{"evil.example:" + port, "/db/execute", `["DELETE FROM t"]`, 403},
		{"EVIL.example.:" + port, "/db/query", `["SELECT * FROM t"]`, 403},
		{"localhost:" + port, "/db/query", `["SELECT 1"]`, 200},
		{"127.0.0.1:" + port, "/db/query", `["SELECT 1"]`, 200},
		{"[::1]:" + port, "/db/query", `["SELECT 1"]`, 200},
	} {
		if got := hostPost(0, tc.host, tc.path, tc.body); got != tc.status {
			t.Errorf("POST %s with Host %s: %d, want %d", tc.path, tc.host, got, tc.status)
		}
	}
	if rows := c.Query(0, "SELECT id, v FROM t ORDER BY id"); len(rows) != 1 {
		t.Fatalf("a request for another host changed the table: %v", rows)
	}
}

func TestResultFormatsAndValueEncodings(t *testing.T) {
	c := testcluster.Start(t, 1)
	c.Exec(0, "CREATE TABLE v (i INTEGER, r REAL, s TEXT, b BLOB, n, ts TIMESTAMP)")
	c.Exec(1, "INSERT INTO v VALUES (42, 1.5, 'text', x'00ff', NULL, 'not a date')")
	for id := 0; id <= 1; id++ {
		r, _ := c.Post(id, `{"command":"query","query":"SELECT i, r, s, b, n, ts, 1 AS i FROM v","format":"columns"}`)
		want := `{"columns":["i","r","s","b","n","ts","i"],"types":["INTEGER","REAL","TEXT","BLOB","","TIMESTAMP",""],"rows":[[42,1.5,"text","AP8=",null,"not a date",1]]}`
		if r.Status != 200 || strings.TrimSpace(string(r.Body)) != want {
			t.Fatalf("node %d columns: %v\nwant %s", id, r, want)
		}
		r, _ = c.Post(id, `{"command":"query","query":"SELECT s, i FROM v WHERE i = :i","params":{"i":42}}`)
		if strings.TrimSpace(string(r.Body)) != `[{"s":"text","i":42}]` {
			t.Fatalf("node %d objects keep column order: %v", id, r)
		}
	}
	r, _ := c.Post(1, `{"command":"query","query":"INSERT INTO v (i) VALUES (7) RETURNING i * 2 AS doubled"}`)
	if r.Status != 200 || strings.TrimSpace(string(r.Body)) != `[{"doubled":14}]` {
		t.Fatalf("write sent as query: %v", r)
	}
	r, _ = c.Post(1, `{"command":"exec","queries":[{"query":"INSERT INTO v (i) VALUES (?)","params":[8]},{"query":"UPDATE v SET s = 'x' WHERE i >= 7"}]}`)
	if r.Status != 200 || !strings.Contains(string(r.Body), `"results":[{"rows_affected":1,"last_insert_id":3},{"rows_affected":3,`) {
		t.Fatalf("queries: %v", r)
	}
}

// show_all's other forms: -http asks live nodes (a consistent copy of
// each), -json gives the same as JSON with per-table checksums, and when
// a replica differs the differing rows are printed side by side.
func TestShowAllAsksLiveNodesGivesJSONAndShowsDifferingRows(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE s (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
	for i := 0; i < 5; i++ {
		c.Exec(i%3, "INSERT INTO s (name, score) VALUES (?, ?)", fmt.Sprint("n", i), float64(i)/2)
	}
	bin := filepath.Join(t.TempDir(), "show_all")
	build := exec.Command("go", "build", "-o", bin, "./show_all")
	build.Dir = testcluster.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build show_all: %v\n%s", err, out)
	}
	type report struct {
		Databases []struct {
			Source   string
			Checksum string
			Tables   []struct{ Name, Checksum string }
		}
		Identical     bool
		DifferingRows []struct {
			Table, Key string
			A, B       []any
		} `json:"differing_rows"`
	}
	run := func(args ...string) (report, string, int) {
		cmd := exec.Command(bin, args...)
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var r report
		if len(args) > 0 && args[0] == "-json" {
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("show_all %v: not JSON: %v\n%s", args, err, out)
			}
		}
		return r, string(out), code
	}
	r, out, code := run("-json", "-http", strings.Join(endpoints(c, 0, 1, 2), ","))
	if code != 0 || !r.Identical || len(r.Databases) != 3 || r.Databases[0].Checksum == "" || r.Databases[0].Checksum != r.Databases[2].Checksum ||
		len(r.Databases[1].Tables) != 1 || r.Databases[1].Tables[0].Checksum != r.Databases[0].Tables[0].Checksum {
		t.Fatalf("show_all -json -http: %d\n%s", code, out)
	}

	// A replica changed behind the cluster's back.
	c.WaitConverged(10*time.Second, 1, 2)
	for id := 0; id <= 2; id++ {
		c.Node(id).Stop()
	}
	db, err := sqlite.Open(c.DBPath(2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Exec("UPDATE s SET name = 'tampered' WHERE id = 3"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, out, code = run("-dir", c.Dir, "3")
	if code != 1 || !strings.Contains(out, "VERDICT: the databases differ") || !strings.Contains(out, "table s, row rowid=3:") ||
		!strings.Contains(out, "tampered ≠") && !strings.Contains(out, "tampered") {
		t.Fatalf("show_all on a changed replica: %d\n%s", code, out)
	}
	r, out, code = run("-json", "-dir", c.Dir, "3")
	if code != 1 || r.Identical || len(r.DifferingRows) != 1 || r.DifferingRows[0].Key != "rowid=3" || r.DifferingRows[0].B[1] != "tampered" {
		t.Fatalf("show_all -json on a changed replica: %d\n%s", code, out)
	}
	if r.Databases[0].Tables[0].Checksum == r.Databases[2].Tables[0].Checksum {
		t.Fatal("the changed table's checksum did not change")
	}
	// -summary: counts, checksums and the verdict, no rows; -limit: at
	// most N rows a table.
	_, out, code = run("-summary", "-dir", c.Dir, "3")
	if code != 1 || strings.Count(out, "1 tables, 5 rows, checksum ") != 3 || !strings.Contains(out, "VERDICT: the databases differ") || strings.Contains(out, "n4") && !strings.Contains(out, "rowid=") {
		t.Fatalf("show_all -summary: %d\n%s", code, out)
	}
	_, out, _ = run("-limit", "2", "-dir", c.Dir, "3")
	if strings.Count(out, "(3 more rows: -limit 0 prints them all)") != 3 {
		t.Fatalf("show_all -limit 2:\n%s", out)
	}
	if _, out, code = run(); code != 2 {
		t.Fatalf("show_all without arguments: %d %s", code, out)
	}
	usage, _ := exec.Command(bin).CombinedOutput()
	if !strings.Contains(string(usage), "usage: show_all ") {
		t.Fatalf("the binary's usage does not name it:\n%s", usage)
	}
}
