package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/testcluster"
)

// leaderView is the /status of whichever node leads now (nil: none).
func leaderView(c *testcluster.Cluster, ids ...int) map[string]any {
	for _, id := range ids {
		st, err := c.Status(id)
		if err != nil {
			continue
		}
		if r, _ := st["raft"].(map[string]any); r != nil && r["role"] == "leader" {
			return r
		}
	}
	return nil
}

// voterIn says whether a leader's status lists node id as a voter.
func voterIn(r map[string]any, id int) bool {
	nodes, _ := r["nodes"].([]any)
	for _, n := range nodes {
		m, _ := n.(map[string]any)
		if v, _ := m["id"].(float64); int(v) == id {
			voter, _ := m["voter"].(bool)
			return voter
		}
	}
	return false
}

func countInLogs(c *testcluster.Cluster, ids []int, s string) int {
	n := 0
	for _, id := range ids {
		b, _ := os.ReadFile(c.Node(id).Log)
		n += strings.Count(string(b), s)
	}
	return n
}

// A slave whose disk is wiped is taken out of the configuration and added
// back. With leadership forced to move right after each step of that (the
// removal, the learner's addition, its promotion), each step is finished
// by another leader: the node ends a voter again, holding every row, and
// no voter stays missing. (Before the fix, a leader change between the
// removal and the addition left the node out for good: seed 20263301 of
// the fault suite.)
func TestWipedVoterComesBackWhenLeadershipMovesAtEveryStep(t *testing.T) {
	c := testcluster.New(t, 2, "-ack-timeout", "3s")
	c.Env = []string{"DDB_INJECT_BUG=transfer-mid-rejoin"}
	for id := 0; id <= 2; id++ {
		c.StartNode(id)
	}
	c.WaitReady()
	c.Exec(0, "CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT)")
	for i := 0; i < 50; i++ {
		c.Exec(0, "INSERT INTO r (v) VALUES (?)", fmt.Sprintf("before-%d", i))
	}
	c.WaitConverged(20*time.Second, 1, 2)

	c.Node(2).Kill()
	for _, suf := range []string{"", "-wal", "-shm"} {
		os.Remove(c.DBPath(2) + suf)
	}
	c.StartNode(2)

	all := []int{0, 1, 2}
	deadline := time.Now().Add(90 * time.Second)
	for {
		// (Until the leader learns of the wipe, it still lists the old
		// node 2 as a voter: the rejoin must have begun.)
		r := leaderView(c, all...)
		begun := countInLogs(c, all, "it is taken out of the configuration and added back") > 0
		if begun && r != nil && voterIn(r, 2) && r["rejoining"] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2 is not a voter again after 90 s; leader's view: %v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := countInLogs(c, all, "forced schedule: leadership moves"); n < 2 {
		t.Fatalf("leadership moved %d times in the middle of the rejoin, want at least 2 (after the removal and after the learner's addition)", n)
	}
	// Writes go on through the node that came back, and every node holds
	// the same rows.
	for i := 0; i < 10; i++ {
		if r, err := c.Do(2, map[string]any{"command": "exec", "query": "INSERT INTO r (v) VALUES (?)", "params": []any{fmt.Sprintf("after-%d", i)}, "request_id": fmt.Sprintf("after-%d", i)}); err != nil || r.Status != 200 {
			t.Fatalf("write through node 2 after its return: %v %v", r, err)
		}
	}
	c.WaitConverged(30*time.Second, 1, 2)
	for _, id := range all {
		rows := c.Query(id, "SELECT count(*) AS n FROM r")
		if n, _ := rows[0]["n"].(float64); n != 60 {
			t.Fatalf("node %d holds %v rows, want 60", id, rows[0]["n"])
		}
	}
	for _, id := range all {
		st, _ := c.Status(id)
		if r, _ := st["raft"].(map[string]any); r != nil && r["missing_voters"] != nil {
			t.Fatalf("node %d reports missing voters %v", id, r["missing_voters"])
		}
	}
}

// The natural mistake on a second host: a slave started in its own data
// directory without the cluster's secret makes a secret of its own. The
// others refuse it. It must serve no data (its database is empty, not the
// cluster's): reads and writes answer 503 with the reason, /health and
// /readyz say the same, and its own log says what is wrong and what to do.
func TestNodeWithWrongSecretServesNoData(t *testing.T) {
	c := testcluster.New(t, 2)
	c.StartNode(0)
	c.StartNode(1)
	c.WaitReady()
	c.Exec(0, "CREATE TABLE ws (v INTEGER)")
	c.Exec(0, "INSERT INTO ws VALUES (1)")
	p := c.StartNode(2, "-dir", t.TempDir())
	c.WaitHealthy(2)

	// Its log says why, in plain words, within seconds.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(p.Log)
		if strings.Contains(string(b), "wrong cluster secret; start it with the cluster's -secret") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node's own log does not say its secret is wrong:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, req := range []map[string]any{
		{"command": "query", "query": "SELECT 1"},
		{"command": "query", "query": "SELECT name FROM sqlite_master"},
		{"command": "exec", "query": "INSERT INTO ws VALUES (2)"},
	} {
		r, err := c.Do(2, req)
		if err != nil || r.Status != 503 || !strings.Contains(string(r.Body), "wrong cluster secret") {
			t.Fatalf("%v through the node with the wrong secret: %v %v, want 503 naming the wrong secret", req, r, err)
		}
	}
	for _, path := range []string{"/health", "/readyz", "/db/query?q=SELECT+1"} {
		resp, err := c.Client.Get(c.URL(2) + path)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4096)
		n, _ := resp.Body.Read(b)
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Fatalf("%s on the node with the wrong secret: %d %s, want 503", path, resp.StatusCode, b[:n])
		}
		if !strings.Contains(string(b[:n]), "wrong cluster secret") {
			t.Fatalf("%s does not give the reason: %s", path, b[:n])
		}
	}
	// The cluster itself is untouched.
	if rows := c.Query(1, "SELECT count(*) AS n FROM ws"); rows[0]["n"] != float64(1) {
		t.Fatalf("slave 1 holds %v rows", rows)
	}
}
