package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// The counters a write answers are each statement's own (PROTOCOL.md):
// rows_affected is the rows it changed (not its triggers', not an earlier
// statement's), last_insert_id the rowid it inserted, 0 for anything else;
// a string of several statements answers its last statement's. Random
// groups of statements (inserts of one and many rows, OR IGNORE, OR
// REPLACE, upserts, inserts into a WITHOUT ROWID table and through
// INSERT ... SELECT, updates and deletes that match no row or many, a
// trigger that inserts elsewhere, reads, schema changes) go to every node
// through the original protocol (a string of statements, and the queries
// array) and rqlite's API (an array, and a string of statements), and each
// answer is compared with SQLite's own changes() and last_insert_rowid()
// after each statement on a fresh SQLite database that runs the same
// statements (both reset before each: 0 for a statement that does not set
// them).
func TestCountersAreEachStatementsOwnOnBothAPIs(t *testing.T) {
	c := testcluster.Start(t, 2)
	ref, err := sqlite.Open(filepath.Join(t.TempDir(), "ref.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	schema := []string{
		"CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, n INTEGER)",
		"CREATE TABLE w (k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
		"CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT)",
		"CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN INSERT INTO audit (what) VALUES ('ins ' || NEW.k); INSERT INTO audit (what) VALUES ('again'); END",
		"CREATE TRIGGER t_del AFTER DELETE ON t BEGIN INSERT INTO audit (what) VALUES ('del ' || OLD.k); END",
	}
	for _, q := range schema {
		c.Exec(0, q)
		if err := ref.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(21, 7))
	fresh := 0
	key := func() string { fresh++; return fmt.Sprintf("k%d", fresh) }
	old := func() string { return fmt.Sprintf("k%d", 1+rng.IntN(max(fresh, 1))) }
	gen := []func() string{
		func() string { return fmt.Sprintf("INSERT INTO t (k, n) VALUES ('%s', %d)", key(), rng.IntN(10)) },
		func() string {
			return fmt.Sprintf("INSERT INTO t (k, n) VALUES ('%s', 1), ('%s', 2), ('%s', 3)", key(), key(), key())
		},
		func() string { return fmt.Sprintf("INSERT OR IGNORE INTO t (k, n) VALUES ('%s', 5)", old()) },
		func() string { return fmt.Sprintf("INSERT OR REPLACE INTO t (k, n) VALUES ('%s', 6)", old()) },
		func() string {
			return fmt.Sprintf("INSERT INTO t (k, n) VALUES ('%s', 7) ON CONFLICT (k) DO UPDATE SET n = n + 1", old())
		},
		func() string { return fmt.Sprintf("INSERT OR REPLACE INTO w VALUES ('%s', %d)", old(), rng.IntN(9)) },
		func() string {
			return fmt.Sprintf("INSERT INTO t (k, n) SELECT k || '-%d', n FROM w WHERE n < %d", rng.Int64(), rng.IntN(6))
		},
		func() string { return fmt.Sprintf("UPDATE t SET n = n + 1 WHERE n %% 3 = %d", rng.IntN(4)) },
		func() string { return fmt.Sprintf("UPDATE w SET n = 0 WHERE k = '%s'", old()) },
		func() string { return fmt.Sprintf("DELETE FROM t WHERE n = %d", rng.IntN(12)) },
		func() string { return "DELETE FROM w WHERE n > 7" },
		func() string { return "SELECT count(*) FROM t" },
		func() string { return fmt.Sprintf("CREATE INDEX IF NOT EXISTS t_n%d ON t (n)", rng.IntN(3)) }, // last
	}
	// expect runs the group on the reference database: each statement's
	// own counters.
	expect := func(group []string) [][2]int64 {
		var out [][2]int64
		for _, q := range group {
			if err := ref.Exec("UPDATE audit SET id = id WHERE 0"); err != nil { // changes() = 0
				t.Fatal(err)
			}
			ref.SetLastInsertID(0)
			if err := ref.Exec(q); err != nil {
				t.Fatalf("%s on SQLite: %v", q, err)
			}
			row, err := ref.QueryRow("SELECT changes(), last_insert_rowid()")
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, [2]int64{row[0].(int64), row[1].(int64)})
		}
		return out
	}
	post := func(node int, path string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := c.Client.Post(c.URL(node)+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %v %v", path, b, resp.StatusCode, out, err)
		}
		return out
	}
	const content = "SELECT group_concat(id || ':' || k || ':' || n, ' ') AS g FROM (SELECT * FROM t ORDER BY id)"
	counters := func(m any) [2]int64 {
		t.Helper()
		r, _ := m.(map[string]any)
		if r["error"] != nil {
			t.Fatalf("a statement failed: %v", r["error"])
		}
		a, _ := r["rows_affected"].(float64)
		l, _ := r["last_insert_id"].(float64)
		return [2]int64{int64(a), int64(l)}
	}
	for round := range 90 {
		node := round % 3
		group := make([]string, 1+rng.IntN(4))
		for i := range group {
			g := rng.IntN(len(gen))
			if node != 0 && g == len(gen)-1 {
				g = 0 // schema changes go to the master (a slave refuses them by default)
			}
			group[i] = gen[g]()
		}
		want := expect(group)
		var got [][2]int64
		var how string
		switch round % 4 {
		case 0:
			how = "the original protocol, one string"
			got = [][2]int64{counters(post(node, "/", map[string]any{"command": "exec", "query": strings.Join(group, "; ")}))}
			want = want[len(want)-1:]
		case 1:
			how = "the original protocol, queries"
			var qs []map[string]any
			for _, q := range group {
				qs = append(qs, map[string]any{"query": q})
			}
			for _, r := range post(node, "/", map[string]any{"command": "exec", "queries": qs})["results"].([]any) {
				got = append(got, counters(r))
			}
		case 2:
			how = "rqlite's API, an array"
			for _, r := range post(node, "/db/execute", group)["results"].([]any) {
				got = append(got, counters(r))
			}
		case 3:
			how = "rqlite's API, one string"
			for _, r := range post(node, "/db/execute", []string{strings.Join(group, "; ")})["results"].([]any) {
				got = append(got, counters(r))
			}
			want = want[len(want)-1:]
		}
		// The cluster's data stays SQLite's too.
		rs, err := c.Do(0, map[string]any{"command": "query", "query": content, "consistency": "strong"})
		rr, _ := ref.QueryRow(content)
		if err != nil || rs.Status != 200 || !strings.Contains(string(rs.Body), fmt.Sprintf("%q", rr[0])) {
			t.Fatalf("round %d, node %d, %s: %q: the cluster holds %s, SQLite %v (%v)", round, node, how, group, rs.Body, rr[0], err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d, node %d, %s: %q answered [rows_affected last_insert_id] %v, SQLite's own %v", round, node, how, group, got, want)
		}
	}
	c.WaitConverged(30*time.Second, 1, 2)
	for id := 0; id <= 2; id++ {
		rows := c.Query(id, "SELECT count(*) AS n, coalesce(sum(n), 0) AS s FROM t")
		want, _ := ref.QueryRow("SELECT count(*), coalesce(sum(n), 0) FROM t")
		if rows[0]["n"] != float64(want[0].(int64)) || rows[0]["s"] != float64(want[1].(int64)) {
			t.Fatalf("node %d holds %v, SQLite %v", id, rows, want)
		}
	}
}
