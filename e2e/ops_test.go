package e2e

import (
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"ddb/internal/testcluster"
)

// get fetches an operations endpoint and returns its status and body.
func get(t *testing.T, c *testcluster.Cluster, id int, path string) (int, string) {
	t.Helper()
	resp, err := c.Client.Get(c.URL(id) + path)
	if err != nil {
		t.Fatalf("GET %s on node %d: %v", path, id, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric reads one un-labelled or labelled sample from Prometheus text.
func metric(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, line)
			}
			return v
		}
	}
	t.Fatalf("metric %s missing from:\n%s", name, text)
	return 0
}

// /status, /health and /metrics tell the truth about the cluster: the
// applied index, each slave's acknowledged index, lag and reachability,
// the request, group-commit and shipping counters; and they change when a
// slave goes away.
func TestOperationsEndpointsReportTheCluster(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE o (id INTEGER PRIMARY KEY, v TEXT)")
	const writes = 40
	for i := 0; i < writes; i++ {
		c.Exec(i%3, "INSERT INTO o (v) VALUES (?)", "row")
	}
	c.WaitConverged(10*time.Second, 1, 2)
	want := uint64(1 + writes)

	for id := 0; id <= 2; id++ {
		if code, body := get(t, c, id, "/health"); code != 200 {
			t.Fatalf("health of node %d: %d %s", id, code, body)
		}
	}
	var st struct {
		Role    string `json:"role"`
		Applied uint64 `json:"applied_index"`
		Slaves  []struct {
			ID        int    `json:"id"`
			Acked     uint64 `json:"acked_index"`
			Lag       uint64 `json:"lag"`
			Reachable bool   `json:"reachable"`
		} `json:"slaves"`
	}
	// The slaves have applied everything; their answers reach the master
	// a moment later.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, c, 0, "/status")
		if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
			t.Fatalf("master status: %d %v %s", code, err, body)
		}
		if st.Role != "master" || st.Applied != want || len(st.Slaves) != 2 {
			t.Fatalf("master status: %s", body)
		}
		current := true
		for _, s := range st.Slaves {
			if s.Acked != want || s.Lag != 0 || !s.Reachable {
				current = false
			}
		}
		if current {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("master status never showed both slaves current: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := get(t, c, 1, "/status")
	if !strings.Contains(body, `"role": "slave"`) || !strings.Contains(body, `"applied_index": `+strconv.FormatUint(want, 10)) {
		t.Fatalf("slave status: %d %s", code, body)
	}

	_, text := get(t, c, 0, "/metrics")
	if v := metric(t, text, "ddb_applied_index"); v != float64(want) {
		t.Fatalf("ddb_applied_index %v, want %d", v, want)
	}
	// Writes entering at slaves are committed by the master too.
	if v := metric(t, text, "ddb_group_commit_requests_total"); v != float64(want) {
		t.Fatalf("ddb_group_commit_requests_total %v, want %d", v, want)
	}
	if n := metric(t, text, "ddb_group_commits_total"); n < 1 || n > float64(want) {
		t.Fatalf("ddb_group_commits_total %v", n)
	}
	if v := metric(t, text, "ddb_append_entries_total"); v < float64(2*want) {
		t.Fatalf("ddb_append_entries_total %v, want at least %d (every entry to both slaves)", v, 2*want)
	}
	if v := metric(t, text, `ddb_replication_lag_entries{slave="2"}`); v != 0 {
		t.Fatalf("lag of slave 2: %v", v)
	}
	if v := metric(t, text, `ddb_requests_total{command="exec",code="200"}`); v < 1 {
		t.Fatalf("exec requests not counted:\n%s", text)
	}

	// Slave 2 goes away: the master reports it unreachable and lagging,
	// and stays healthy itself.
	c.Node(2).Kill()
	c.Exec(0, "INSERT INTO o (v) VALUES ('after')")
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, text = get(t, c, 0, "/metrics")
		if metric(t, text, `ddb_slave_reachable{slave="2"}`) == 0 && metric(t, text, `ddb_replication_lag_entries{slave="2"}`) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slave 2 still reported reachable and current after being killed:\n%s", text)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get(t, c, 0, "/health"); code != 200 {
		t.Fatalf("master health with one slave down: %d %s", code, body)
	}
}
