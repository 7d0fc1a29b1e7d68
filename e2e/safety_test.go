package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// rqlite's API counts the result limits for the whole request, like the
// original protocol: five statements of 60 rows each under -max-rows 100
// are refused with 400 too_large (before, each statement had a limit of
// its own and 300 rows were served), and so are eight statements of
// 25 kB each under -max-result-bytes 100000. One statement within the
// limits is served on both APIs.
func TestRqliteAPICountsResultLimitsPerRequest(t *testing.T) {
	c := testcluster.Start(t, 1, "-max-rows", "100", "-max-result-bytes", "100000")
	c.Exec(0, "CREATE TABLE rl (id INTEGER PRIMARY KEY, pad TEXT)")
	c.Exec(0, "INSERT INTO rl (pad) SELECT printf('%.*c', 400, 'x') FROM (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < 60) SELECT x FROM n)")
	c.WaitConverged(10*time.Second, 1)
	post := func(id int, path, body string) (int, string) {
		t.Helper()
		resp, err := http.Post(c.URL(id)+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	many := func(n int, q string) string {
		var b bytes.Buffer
		b.WriteString("[")
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, "%q", q)
		}
		b.WriteString("]")
		return b.String()
	}
	for _, id := range []int{0, 1} {
		for _, path := range []string{"/db/query", "/db/request"} {
			if st, body := post(id, path, many(1, "SELECT * FROM rl")); st != 200 || strings.Contains(body, "too large") {
				t.Fatalf("node %d %s, one statement of 60 rows: %d %s", id, path, st, body)
			}
			if st, body := post(id, path, many(5, "SELECT id FROM rl")); st != 400 || !strings.Contains(body, "rows") {
				t.Fatalf("node %d %s, 5 x 60 rows under -max-rows 100: %d %.300s, want 400 too large", id, path, st, body)
			}
			if st, body := post(id, path, many(8, "SELECT group_concat(pad) FROM rl")); st != 400 || !strings.Contains(body, "bytes") {
				t.Fatalf("node %d %s, 8 rows of 24 kB under -max-result-bytes 100000: %d %.300s, want 400 too large", id, path, st, body)
			}
		}
		r, err := c.Do(id, map[string]any{"command": "query", "queries": []map[string]any{{"query": "SELECT id FROM rl"}, {"query": "SELECT id FROM rl"}}})
		if err == nil && r.Status == 200 {
			t.Fatalf("node %d: the original protocol served 120 rows under -max-rows 100: %v", id, r)
		}
	}
}

// A write sent as query to a follower right after the leader acknowledged
// the CREATE of its table is routed like the same write sent as exec: the
// follower's schema may lag, so what it cannot compile goes to the leader.
// Before, 10 in 30 answered 400 "no such table".
func TestWriteSentAsQueryRightAfterASchemaChangeIsRoutedLikeExec(t *testing.T) {
	c := testcluster.Start(t, 2)
	failures := 0
	for i := 0; i < 200; i++ {
		c.Exec(0, fmt.Sprintf("CREATE TABLE q%d (id INTEGER PRIMARY KEY, v TEXT)", i))
		r, err := c.Do(1+i%2, map[string]any{"command": "query", "query": fmt.Sprintf("INSERT INTO q%d (v) VALUES ('x') RETURNING id", i)})
		if err != nil || r.Status != 200 || !strings.Contains(string(r.Body), `"id":1`) {
			failures++
			t.Errorf("try %d: %v %v", i, r, err)
		}
	}
	if failures > 0 {
		t.Fatalf("%d of 200 writes sent as query failed", failures)
	}
	// A read of a table that exists nowhere still answers 400 (from the
	// leader, which decides), and nothing was written.
	r, _ := c.Do(1, map[string]any{"command": "query", "query": "SELECT * FROM nowhere"})
	if r.Status != 400 || !strings.Contains(string(r.Body), "no such table") {
		t.Fatalf("a read of a missing table on a follower: %v", r)
	}
}

// terms is every node's Raft term and the leader it knows.
func terms(t *testing.T, c *testcluster.Cluster, ids ...int) (out []string) {
	t.Helper()
	for _, id := range ids {
		st, err := c.Status(id)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := st["raft"].(map[string]any)
		out = append(out, fmt.Sprintf("node %d: term %v, leader %v", id, r["term"], r["leader_id"]))
	}
	return out
}

// Raft's loop never waits for SQL: a write that runs to its full step
// budget, and one whose time goes into a single SQLite instruction (a
// long instr(), which no budget counts), are applied on every node for
// seconds, and no node loses its leader or changes its term meanwhile.
// Writes sent meanwhile wait for them and succeed; local reads answer.
// The long instr() write is stored and answered so (before, the cluster
// lost its leader, and the write answered 504 "stopped" although stored).
func TestALongWriteCostsTheClusterNoElection(t *testing.T) {
	c := testcluster.Start(t, 2, "-query-timeout", "2s", "-ack-timeout", "60s")
	c.Exec(0, "CREATE TABLE lw (x)")
	c.WaitConverged(10*time.Second, 1, 2)
	all := []int{0, 1, 2}
	before := terms(t, c, all...)
	for round, w := range []struct {
		sql    string
		status int
	}{
		{"INSERT INTO lw WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n) SELECT x FROM n", 400},
		{"INSERT INTO lw VALUES (instr(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b'))", 200},
	} {
		long := make(chan testcluster.Response, 1)
		go func() {
			r, err := c.Do(1, map[string]any{"command": "exec", "query": w.sql, "request_id": fmt.Sprintf("long-%d", round)})
			if err != nil {
				t.Error(err)
			}
			long <- r
		}()
		// Writes and reads sent while it runs.
		for i := 0; i < 6; i++ {
			via := all[i%3]
			r, err := c.Do(via, map[string]any{"command": "exec", "query": "INSERT INTO lw VALUES (?)", "params": []any{i}, "request_id": fmt.Sprintf("during-%d-%d", round, i)})
			if err != nil || r.Status != 200 {
				t.Fatalf("a write through node %d during a long one: %v %v", via, r, err)
			}
			if r, err := c.Do(via, map[string]any{"command": "query", "query": "SELECT count(*) FROM lw"}); err != nil || r.Status != 200 {
				t.Fatalf("a local read on node %d during a long write: %v %v", via, r, err)
			}
		}
		if r := <-long; r.Status != w.status {
			t.Fatalf("the long write answered %v, want %d", r, w.status)
		}
		if after := terms(t, c, all...); !slices.Equal(after, before) {
			t.Fatalf("a long write changed the terms or leaders: before %v, after %v", before, after)
		}
	}
	c.WaitConverged(30*time.Second, 1, 2)
	for _, id := range all {
		if rows := c.Query(id, "SELECT count(*) AS n, sum(x = 0) AS zero FROM lw"); rows[0]["n"] != float64(13) {
			t.Fatalf("node %d holds %v", id, rows)
		}
	}
}

// What SQLite builds while a write is applied counts against memory on
// every node, slaves included: a RETURNING write of 150, 600 and 6,000
// rows of 1 MB each, over -max-result-bytes 64 MB, is refused (400
// too_large, nothing applied) with every node's peak memory under 4 x the
// limit + 128 MB. Before, SQLite kept the whole RETURNING result in memory
// before the first row was counted: 600 rows cost every node 1.5 GB or
// more. The 6,000 rows are refused after about 1,000 of them are stored,
// as what the write writes to temporary files (its RETURNING result) is
// counted against its step budget (-query-timeout 5s: 500 million steps, 2
// bytes a step): before, every node stored 6 GB, and as much again of
// temporary files, for minutes.
func TestARefusedReturningWriteCostsEveryNodeBoundedMemory(t *testing.T) {
	const limit = 64 << 20
	c := testcluster.Start(t, 2, "-ack-timeout", "60s", "-query-timeout", "5s", "-max-result-bytes", fmt.Sprint(limit))
	c.Exec(0, "CREATE TABLE p6_blob (b)")
	for _, rows := range []int{150, 600, 6000} {
		start := time.Now()
		r, err := c.Do(0, map[string]any{"command": "query", "query": fmt.Sprintf("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x < %d) INSERT INTO p6_blob SELECT zeroblob(1000000) FROM s RETURNING b", rows)})
		if err != nil || r.Status != 400 || !strings.Contains(string(r.Body), "too_large") {
			t.Fatalf("%d rows: %v %v, want 400 too_large", rows, r, err)
		}
		t.Logf("%d rows refused after %v: %s", rows, time.Since(start).Round(time.Millisecond), r.Body)
		c.WaitConverged(60*time.Second, 1, 2)
		for id := 0; id <= 2; id++ {
			peak := bench.PeakRSS(c.Node(id).Pid())
			if peak == 0 {
				t.Fatalf("node %d's peak memory cannot be read", id)
			}
			if peak > 4*limit+128<<20 {
				t.Fatalf("%d rows: node %d peaked at %d MB, over 4 x -max-result-bytes + 128 MB", rows, id, peak>>20)
			}
			if n := c.Query(id, "SELECT count(*) AS n FROM p6_blob"); n[0]["n"] != float64(0) {
				t.Fatalf("node %d holds %v rows of a refused write", id, n[0]["n"])
			}
		}
	}
}

// The reproduction of a write and a read that spent seconds inside one
// SQLite instruction (instr() over 1.4 MB, which took time in the product
// of its arguments' lengths), at -query-timeout 1s: the write is stored
// and answered 200 on every node, no term changes, and the read answers
// within its deadline (200, not 504). A LIKE that compares billions of
// characters stops at a read's deadline and at a write's step budget.
// Values longer than 64 MiB and LIKE patterns longer than 100 bytes fail
// as SQL errors, nothing applied.
func TestWorkInsideOneInstructionIsBounded(t *testing.T) {
	c := testcluster.Start(t, 2, "-query-timeout", "1s")
	c.Exec(0, "CREATE TABLE ins (x)")
	c.WaitConverged(10*time.Second, 1, 2)
	all := []int{0, 1, 2}
	before := terms(t, c, all...)
	const long = "instr(printf('%.*c', 1400000, 'a'), printf('%.*c', 700000, 'a') || 'b')"
	r, err := c.Do(1, map[string]any{"command": "exec", "query": "INSERT INTO ins VALUES (" + long + ")"})
	if err != nil || r.Status != 200 {
		t.Fatalf("the long instr() write: %v %v", r, err)
	}
	for _, id := range all {
		q, err := c.Do(id, map[string]any{"command": "query", "query": "SELECT " + long + " AS n"})
		if err != nil || q.Status != 200 || !strings.Contains(string(q.Body), `"n":0`) {
			t.Fatalf("the long instr() read on node %d: %v %v", id, q, err)
		}
	}
	// LIKE over a long string, failing at the end of its pattern at each
	// of millions of places (billions of comparisons inside one
	// instruction; SQLite's own LIKE took many seconds): as a read it
	// stops at its deadline (504), as a write it runs out of its step
	// budget on every node alike (400 too_large), nothing applied.
	const like = "printf('%.*c', 40000000, 'a') LIKE '%' || printf('%.*c', 90, 'a') || 'b'"
	const longerLike = "printf('%.*c', 60000000, 'a') LIKE '%' || printf('%.*c', 98, 'a') || 'b'"
	for _, id := range all {
		start := time.Now()
		q, err := c.Do(id, map[string]any{"command": "query", "query": "SELECT " + longerLike})
		if err != nil || q.Status != 504 || !strings.Contains(string(q.Body), `"kind":"deadline"`) {
			t.Fatalf("the long LIKE read on node %d: %v %v", id, q, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("the long LIKE read on node %d answered after %v, its deadline 1 s", id, took)
		}
	}
	// A read asking for a blob past any limit fails; the node lives on.
	for _, id := range all {
		q, err := c.Do(id, map[string]any{"command": "query", "query": "SELECT length(randomblob(9223372036854775807))"})
		if err != nil || q.Status != 400 || !strings.Contains(string(q.Body), "too big") {
			t.Fatalf("a read of randomblob(9223372036854775807) on node %d: %v %v", id, q, err)
		}
	}
	r, err = c.Do(2, map[string]any{"command": "exec", "query": "INSERT INTO ins SELECT " + like})
	if err != nil || r.Status != 400 || !strings.Contains(string(r.Body), `"kind":"too_large"`) {
		t.Fatalf("the long LIKE write: %v %v", r, err)
	}
	for _, sql := range []string{
		"INSERT INTO ins VALUES (length(zeroblob(70000000)))",
		"INSERT INTO ins VALUES (length(randomblob(70000000)))",
		"INSERT INTO ins VALUES (length(randomblob(9223372036854775807)))", // once crashed every node
		"INSERT INTO ins SELECT 'a' LIKE printf('%.*c', 101, '%')",
	} {
		r, err := c.Do(0, map[string]any{"command": "exec", "query": sql})
		if err != nil || r.Status != 400 || !strings.Contains(string(r.Body), `"kind":"sql"`) {
			t.Fatalf("%s: %v %v", sql, r, err)
		}
	}
	c.WaitConverged(10*time.Second, 1, 2)
	if after := terms(t, c, all...); !slices.Equal(after, before) {
		t.Fatalf("terms or leaders changed: before %v, after %v", before, after)
	}
	for _, id := range all {
		if rows := c.Query(id, "SELECT count(*) AS n, sum(x) AS s FROM ins"); rows[0]["n"] != 1.0 || rows[0]["s"] != 0.0 {
			t.Fatalf("node %d holds %v", id, rows)
		}
	}
}
