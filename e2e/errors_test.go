package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/testcluster"
)

// Every error a write can meet, through every path a write takes: sent to
// the leader; to a follower, which proposes it through Raft; to a
// follower with ack "all", which forwards it over HTTP; and on rqlite's
// API, on the leader and a follower. The native protocol answers the same
// status and kind on every path; rqlite's API answers the error in the
// statement's result, with the same message. Nothing is applied, and no
// error the code knows is a 500.
func TestEveryWriteErrorKeepsItsKindOnEveryPath(t *testing.T) {
	c := testcluster.Start(t, 2, "-max-result-bytes", "100000", "-query-timeout", "300ms")
	c.Exec(0, "CREATE TABLE e (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
	c.Exec(0, "INSERT INTO e VALUES (1, 'taken')")
	c.WaitConverged(10*time.Second, 1, 2)
	applied := c.Applied(0)
	type errCase struct {
		name   string
		req    map[string]any
		status int
		kind   string
		msg    string // a part of the message, also expected on rqlite's API
	}
	cases := []errCase{
		{"constraint", map[string]any{"command": "exec", "query": "INSERT INTO e VALUES (2, 'taken')"}, 400, "sql", "UNIQUE constraint failed"},
		{"missing table", map[string]any{"command": "exec", "query": "INSERT INTO nowhere VALUES (1)"}, 400, "sql", "no such table"},
		{"forbidden", map[string]any{"command": "exec", "query": "ATTACH DATABASE 'x.db' AS x"}, 403, "forbidden", "ATTACH"},
		{"parameters", map[string]any{"command": "exec", "query": "INSERT INTO e VALUES (?, ?)", "params": []any{5}}, 400, "bad_request", "parameter"},
		{"result over the limit", map[string]any{"command": "query", "query": "INSERT INTO e (v) SELECT printf('%.*c', 200000, 'x') RETURNING v"}, 400, "too_large", "bytes"},
		{"step budget", map[string]any{"command": "exec", "query": "INSERT INTO e (v) SELECT count(*) FROM (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n)"}, 400, "too_large", "instructions"},
		{"value too big", map[string]any{"command": "exec", "query": "INSERT INTO e (v) VALUES (zeroblob(70000000))"}, 400, "sql", "too big"},
	}
	paths := []struct {
		name string
		node int
		ack  string
	}{{"leader", 0, ""}, {"follower through Raft", 1, ""}, {"follower over HTTP (ack all)", 2, "all"}}
	n := 0
	for _, tc := range cases {
		for _, p := range paths {
			req := map[string]any{}
			for k, v := range tc.req {
				req[k] = v
			}
			if p.ack != "" {
				req["ack"] = p.ack
			}
			n++
			req["request_id"] = fmt.Sprintf("err-%d", n)
			r, err := c.Do(p.node, req)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				Error string `json:"error"`
				Kind  string `json:"kind"`
			}
			json.Unmarshal(r.Body, &body)
			if r.Status != tc.status || body.Kind != tc.kind || !strings.Contains(body.Error, tc.msg) {
				t.Errorf("%s via the %s: %v, want %d %s (%q)", tc.name, p.name, r, tc.status, tc.kind, tc.msg)
			}
		}
		if tc.req["command"] != "exec" {
			continue
		}
		for _, node := range []int{0, 1} {
			q := tc.req["query"].(string)
			var stmt any = q
			if ps, ok := tc.req["params"].([]any); ok {
				stmt = append([]any{q}, ps...)
			}
			b, _ := json.Marshal([]any{stmt})
			resp, err := c.Client.Post(c.URL(node)+"/db/execute", "application/json", strings.NewReader(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 || !strings.Contains(string(out), tc.msg) {
				t.Errorf("%s on rqlite's API via node %d: %d %s", tc.name, node, resp.StatusCode, out)
			}
		}
	}
	// A request id used again for another request, on every path.
	c.Exec(0, "INSERT INTO e (v) VALUES ('first')")
	for _, p := range paths {
		req := map[string]any{"command": "exec", "query": "INSERT INTO e (v) VALUES (?)", "params": []any{p.name}, "request_id": "reused"}
		if p.ack != "" {
			req["ack"] = p.ack
		}
		r, _ := c.Do(p.node, req)
		if p.node == 0 {
			if r.Status != 200 {
				t.Fatalf("the first use of a request id: %v", r)
			}
			continue
		}
		if r.Status != 400 || !strings.Contains(string(r.Body), `"kind":"request_id_reused"`) {
			t.Errorf("a reused request id via the %s: %v", p.name, r)
		}
	}
	c.WaitConverged(10*time.Second, 1, 2)
	if got := c.Query(2, "SELECT count(*) AS n FROM e"); got[0]["n"] != 3.0 {
		t.Fatalf("rows after the refused writes: %v (applied %d before)", got, applied)
	}
}
