package e2e

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/testcluster"

	_ "github.com/mattn/go-sqlite3"
)

// consistency is node id's /status "consistency" object.
func consistency(t *testing.T, c *testcluster.Cluster, id int) map[string]any {
	t.Helper()
	st, err := c.Status(id)
	if err != nil {
		return nil
	}
	m, _ := st["consistency"].(map[string]any)
	return m
}

// The replicas compare digests of their databases while the cluster runs.
// A healthy cluster checks "ok" on every node. Then a row of a stopped
// slave's file is changed by another program: once it runs again, the
// next check finds it, on the leader (which names the node, the table and
// the first differing key range) and on the slave itself. Started with
// -check-repair off, the slave then serves nothing (503, with the reason)
// rather than answer from data that differs. Started again with the
// default, it keeps its diverged database beside it, replaces its data
// with a copy of the leader's, and serves again; the next check finds
// every node alike.
func TestTheConsistencyCheckerFindsAndRepairsADivergedReplica(t *testing.T) {
	c := testcluster.Start(t, 2, "-check-interval", "300ms")
	c.Exec(0, "CREATE TABLE acct (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)")
	c.Exec(0, "CREATE TABLE other (k TEXT PRIMARY KEY, v) WITHOUT ROWID")
	c.Exec(1, "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 600) INSERT INTO acct SELECT x, 'o' || x, 100 * x FROM s")
	for i := range 20 {
		c.Exec(i%3, fmt.Sprintf("INSERT INTO other VALUES ('k%d', %d)", i, i))
	}
	nudges := 0
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: master %v, slave 1 %v, slave 2 %v", what, consistency(t, c, 0), consistency(t, c, 1), consistency(t, c, 2))
			}
			// The leader checks only after writes.
			nudges++
			c.Exec(0, fmt.Sprintf("INSERT INTO other VALUES ('n%d', 0)", nudges))
		}
	}
	waitFor("a healthy cluster checks ok everywhere", func() bool {
		for id := 0; id <= 2; id++ {
			if cs := consistency(t, c, id); cs == nil || cs["state"] != "ok" || cs["checks"].(float64) < 1 {
				return false
			}
		}
		return true
	})
	if cs := consistency(t, c, 0); len(cs["diverged_nodes"].([]any)) != 0 || cs["detail"] != nil {
		t.Fatalf("a healthy cluster: %v", cs)
	}

	c.WaitConverged(30*time.Second, 1, 2)
	c.Node(2).Stop()
	db, err := sql.Open("sqlite3", c.DBPath(2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE acct SET balance = balance + 1 WHERE id = 300"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	c.StartNode(2, "-check-repair", "off")
	waitFor("the leader finds slave 2 diverged", func() bool {
		cs := consistency(t, c, 0)
		return cs != nil && cs["state"] == "diverged" && fmt.Sprint(cs["diverged_nodes"]) == "[2]"
	})
	if detail := fmt.Sprint(consistency(t, c, 0)["detail"]); !strings.Contains(detail, "node 2") || !strings.Contains(detail, "table acct differs (600 rows against 600), first difference: keys 257..512") || strings.Contains(detail, "other") {
		t.Fatalf("the leader's detail: %s", detail)
	}
	waitFor("slave 2 finds itself diverged", func() bool {
		cs := consistency(t, c, 2)
		return cs != nil && cs["state"] == "diverged"
	})
	r, err := c.Do(2, map[string]any{"command": "query", "query": "SELECT balance FROM acct WHERE id = 300"})
	if err != nil || r.Status != 503 || !strings.Contains(string(r.Body), "differs from the leader") || !strings.Contains(string(r.Body), "-check-repair off") {
		t.Fatalf("a read on the diverged slave: %v %v", r, err)
	}
	if resp, err := http.Get(c.URL(2) + "/health"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("/health on the diverged slave: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// Slave 1 is fine, and serves.
	if cs := consistency(t, c, 1); cs["state"] == "diverged" {
		t.Fatalf("slave 1: %v", cs)
	}
	if rows := c.Query(1, "SELECT balance FROM acct WHERE id = 300"); rows[0]["balance"] != 30000.0 {
		t.Fatalf("slave 1 holds %v", rows)
	}
	var console struct {
		Consistency struct{ State string }
	}
	if body, _ := fetch(t, c.URL(0)+"/console/cluster"); json.Unmarshal(body, &console) != nil || console.Consistency.State != "diverged" {
		t.Fatalf("the console's data lacks the divergence: %s", body)
	}
	text, _ := fetch(t, c.URL(0)+"/metrics")
	if v := metric(t, string(text), "ddb_consistency_diverged_nodes"); v != 1 {
		t.Fatalf("the master's metric of diverged nodes: %v", v)
	}

	// With repair (the default), slave 2 repairs itself.
	c.Node(2).Stop()
	c.StartNode(2)
	waitFor("slave 2 repairs itself, and a check after the repair finds every node alike", func() bool {
		cs2, cs0 := consistency(t, c, 2), consistency(t, c, 0)
		return cs2 != nil && cs2["repairs"] == 1.0 && cs2["state"] == "ok" && cs2["checked_index"].(float64) > cs2["repaired_index"].(float64) &&
			cs0 != nil && cs0["state"] == "ok" && cs0["checked_index"].(float64) > cs2["repaired_index"].(float64)
	})
	if rows := c.Query(2, "SELECT balance FROM acct WHERE id = 300"); rows[0]["balance"] != 30000.0 {
		t.Fatalf("the repaired slave holds %v", rows)
	}
	c.Exec(2, "INSERT INTO acct (owner, balance) VALUES ('after', 1)")
	c.WaitConverged(30*time.Second, 1, 2)
	for id := 0; id <= 2; id++ {
		if rows := c.Query(id, "SELECT count(*) AS n, sum(balance) AS s FROM acct"); rows[0]["n"] != 601.0 || rows[0]["s"] != 18030001.0 {
			t.Fatalf("node %d holds %v", id, rows)
		}
	}
	// A repaired node restarts (its data may stand past the commit index
	// it saved) and goes on.
	c.Node(2).Kill()
	c.StartNode(2)
	c.WaitHealthy(2)
	c.Exec(0, "INSERT INTO acct (owner, balance) VALUES ('after restart', 1)")
	c.WaitConverged(30*time.Second, 1, 2)
	if rows := c.Query(2, "SELECT count(*) AS n FROM acct"); rows[0]["n"] != 602.0 {
		t.Fatalf("the restarted repaired slave holds %v", rows)
	}
	kept, err := sql.Open("sqlite3", c.DBPath(2)+".diverged")
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	var balance int
	if err := kept.QueryRow("SELECT balance FROM acct WHERE id = 300").Scan(&balance); err != nil || balance != 30001 {
		t.Fatalf("the diverged database kept beside the repaired one: %v %v", balance, err)
	}
}
