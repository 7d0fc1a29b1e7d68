package e2e

import (
	"encoding/json"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/testcluster"
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
// metric reads one sample of /metrics, parsed with Prometheus's own text
// parser (so the exposition must be valid): name, or name{label="v",...}.
func metric(t *testing.T, text, name string) float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v\n%s", err, text)
	}
	base, labels, _ := strings.Cut(name, "{")
	want := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			want[k] = strings.Trim(v, `"`)
		}
	}
	f := families[base]
	if f == nil {
		t.Fatalf("metric %s missing from:\n%s", base, text)
	}
	for _, m := range f.GetMetric() {
		match := 0
		for _, l := range m.GetLabel() {
			if want[l.GetName()] == l.GetValue() {
				match++
			}
		}
		if match != len(want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	t.Fatalf("metric %s missing from:\n%s", name, text)
	return 0
}

// /status, /health and /metrics tell the truth about the cluster: the
// leader, the term, the commit and applied index, each node's acknowledged
// index, lag and reachability, the request and Raft counters; and they
// change when a slave goes away.
func TestOperationsEndpointsReportTheCluster(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE o (id INTEGER PRIMARY KEY, v TEXT)")
	const writes = 40
	for i := 0; i < writes; i++ {
		c.Exec(i%3, "INSERT INTO o (v) VALUES (?)", "row")
	}
	c.WaitConverged(10*time.Second, 1, 2)
	want := c.Applied(0)

	for id := 0; id <= 2; id++ {
		if code, body := get(t, c, id, "/health"); code != 200 {
			t.Fatalf("health of node %d: %d %s", id, code, body)
		}
	}
	type raftStatus struct {
		ID        int    `json:"id"`
		Role      string `json:"role"`
		Preferred bool   `json:"preferred_leader"`
		LeaderID  *int   `json:"leader_id"`
		LeaderURL string `json:"leader_url"`
		Term      uint64 `json:"term"`
		Commit    uint64 `json:"commit_index"`
		Applied   uint64 `json:"applied_index"`
		Nodes     []struct {
			ID        int    `json:"id"`
			Voter     bool   `json:"voter"`
			Acked     uint64 `json:"acknowledged_index"`
			Lag       uint64 `json:"lag"`
			Reachable bool   `json:"reachable"`
		} `json:"nodes"`
	}
	var st struct {
		Role    string     `json:"role"`
		Applied uint64     `json:"applied_index"`
		Raft    raftStatus `json:"raft"`
	}
	// The slaves have applied everything; their answers reach the leader
	// a moment later.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, c, 0, "/status")
		if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
			t.Fatalf("master status: %d %v %s", code, err, body)
		}
		r := st.Raft
		if st.Role != "leader" || !r.Preferred || r.LeaderID == nil || *r.LeaderID != 0 || r.LeaderURL != c.URL(0) || r.Term < 2 ||
			st.Applied < want || r.Commit < want || len(r.Nodes) != 3 {
			t.Fatalf("master status: %s", body)
		}
		current := true
		for _, n := range r.Nodes {
			if !n.Voter || n.Acked != r.Commit || n.Lag != 0 || !n.Reachable {
				current = false
			}
		}
		if current {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("master status never showed every node current: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := get(t, c, 1, "/status")
	var fs struct {
		Role string     `json:"role"`
		Raft raftStatus `json:"raft"`
	}
	if err := json.Unmarshal([]byte(body), &fs); err != nil || fs.Role != "follower" || fs.Raft.LeaderID == nil || *fs.Raft.LeaderID != 0 || fs.Raft.Applied < want || len(fs.Raft.Nodes) != 0 {
		t.Fatalf("slave status: %d %s", code, body)
	}

	_, text := get(t, c, 0, "/metrics")
	if v := metric(t, text, "ddb_applied_index"); v < float64(want) {
		t.Fatalf("ddb_applied_index %v, want %d", v, want)
	}
	if v := metric(t, text, "ddb_sqlite_memory_bytes"); v <= 0 || v > metric(t, text, "ddb_sqlite_memory_highwater_bytes") {
		t.Fatalf("ddb_sqlite_memory_bytes %v", v)
	}
	if v := metric(t, text, "ddb_raft_is_leader"); v != 1 {
		t.Fatalf("ddb_raft_is_leader %v on the master", v)
	}
	if v := metric(t, text, "ddb_raft_term"); v < 2 {
		t.Fatalf("ddb_raft_term %v", v)
	}
	if v := metric(t, text, "ddb_raft_commit_index"); v < float64(want) {
		t.Fatalf("ddb_raft_commit_index %v, want at least %d", v, want)
	}
	if v := metric(t, text, `ddb_replication_lag_entries{node="2"}`); v != 0 {
		t.Fatalf("lag of slave 2: %v", v)
	}
	if v := metric(t, text, `ddb_requests_total{command="exec",code="200"}`); v < 1 {
		t.Fatalf("exec requests not counted:\n%s", text)
	}
	_, ftext := get(t, c, 1, "/metrics")
	if v := metric(t, ftext, "ddb_raft_is_leader"); v != 0 {
		t.Fatalf("ddb_raft_is_leader %v on a follower", v)
	}

	// Slave 2 goes away: the leader reports it unreachable and lagging,
	// and stays healthy itself.
	c.Node(2).Kill()
	deadline = time.Now().Add(10 * time.Second)
	for {
		c.Exec(0, "INSERT INTO o (v) VALUES ('after')")
		_, text = get(t, c, 0, "/metrics")
		_, body := get(t, c, 0, "/status")
		json.Unmarshal([]byte(body), &st)
		reachable := true
		for _, n := range st.Raft.Nodes {
			if n.ID == 2 {
				reachable = n.Reachable
			}
		}
		if !reachable && metric(t, text, `ddb_replication_lag_entries{node="2"}`) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slave 2 still reported reachable and current after being killed:\n%s\n%s", body, text)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, body := get(t, c, 0, "/health"); code != 200 {
		t.Fatalf("master health with one slave down: %d %s", code, body)
	}
}

// Under load the write count goes up by what was written, and the lag of
// a slave that cannot keep up (it is stopped) grows, then goes back to 0
// once it runs again: read through Prometheus's text parser.
func TestMetricsMoveUnderLoad(t *testing.T) {
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE m (v)")
	_, before := get(t, c, 0, "/metrics")
	written := metric(t, before, "ddb_writes_total")
	c.Node(2).Pause()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				c.Exec(0, "INSERT INTO m VALUES (?)", i)
			}
		}()
	}
	wg.Wait()
	_, during := get(t, c, 0, "/metrics")
	if got := metric(t, during, "ddb_writes_total") - written; got < 200 {
		t.Fatalf("ddb_writes_total went up by %v for 200 writes", got)
	}
	if lag := metric(t, during, `ddb_replication_lag_entries{node="2"}`); lag < 100 {
		t.Fatalf("the stopped slave's lag is %v after 200 writes", lag)
	}
	if lag := metric(t, during, `ddb_replication_lag_entries{node="1"}`); lag > 5 {
		t.Fatalf("the running slave's lag is %v", lag)
	}
	// Every series the Grafana dashboard in docs/ plots is served.
	dash, err := os.ReadFile(filepath.Join(testcluster.RepoRoot(), "docs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`ddb_[a-z_]+`).FindAllString(string(dash), -1)
	if len(names) < 8 {
		t.Fatalf("the dashboard plots %d series", len(names))
	}
	for _, n := range names {
		if !strings.Contains(during, "\n"+strings.TrimSuffix(n, "_bucket")) {
			t.Errorf("the dashboard plots %s, which /metrics does not serve", n)
		}
	}
	c.Node(2).Resume()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, after := get(t, c, 0, "/metrics")
		if metric(t, after, `ddb_replication_lag_entries{node="2"}`) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resumed slave still lags:\n%s", after)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
