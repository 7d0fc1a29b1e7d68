package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// A master and two slaves in one process, each a whole node (its Engine
// with its store, its API, its transport) on loopback: so that the race
// detector sees every goroutine of the engine at once (go test -race
// ./internal/node). Writes go through every node while leadership is
// handed over and a slave is stopped and started again; every node ends
// with every acknowledged row.
func TestThreeNodesInOneProcess(t *testing.T) {
	base, err := testcluster.FreeBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logs := &testcluster.Output{}
	start := func(id int) *Node {
		role, args := cluster.Slave, []string{fmt.Sprint(id), "2"}
		if id == 0 {
			role, args = cluster.Master, []string{"2"}
		}
		args = append(args, "-port", fmt.Sprint(base), "-dir", dir, "-secret", "in-process-secret", "-host", "127.0.0.1", "-log-format", "json")
		cfg, err := cluster.ParseArgs(role, args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		n, err := Start(cfg, logs)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	nodes := []*Node{start(0), start(1), start(2)}
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Shutdown(context.Background())
			}
		}
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	}()
	defer func() { checkJSONLog(t, logs.String(), 3) }()
	client := &http.Client{Timeout: 20 * time.Second}
	url := func(id int) string { return fmt.Sprintf("http://127.0.0.1:%d", base+id) }
	post := func(id int, req map[string]any) (int, string) {
		b, _ := json.Marshal(req)
		resp, err := client.Post(url(id)+"/", "application/json", bytes.NewReader(b))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	// must sends a write until it is acknowledged (with its request id,
	// it applies once however often it is sent).
	must := func(id int, sql string, rid string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, body := post(id, map[string]any{"command": "exec", "query": sql, "request_id": rid})
			if st == 200 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s on node %d: %d %s", sql, id, st, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	must(0, "CREATE TABLE r (id INTEGER PRIMARY KEY, via INTEGER)", "create")
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				id := w*1000 + i
				must((w+i)%3, fmt.Sprintf("INSERT INTO r VALUES (%d, %d)", id, w), fmt.Sprintf("w%d", id))
			}
		}(w)
	}
	// Meanwhile: leadership goes to slave 2 (and comes back to the master
	// on its own), and slave 1 stops and starts again.
	if resp, err := client.Post(url(0)+"/transfer", "application/json", strings.NewReader(`{"id": 2}`)); err == nil {
		resp.Body.Close()
	}
	nodes[1].Shutdown(context.Background())
	nodes[1] = start(1)
	wg.Wait()
	for id := 0; id <= 2; id++ {
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, body := post(id, map[string]any{"command": "query", "query": "SELECT count(*) AS n FROM r", "consistency": "strong"})
			if st == 200 && strings.Contains(body, `"n":120`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: %d %s", id, st, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// checkJSONLog checks a JSON log: every line an object whose keys appear
// once, and nodes start-up lines, each naming everything a reader needs
// (role and id, URL, listen address, data file, users, TLS, where the
// secret came from, peers), and the leadership changes.
func checkJSONLog(t *testing.T, log string, nodes int) {
	t.Helper()
	starts, leads := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		dec := json.NewDecoder(strings.NewReader(line))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			t.Errorf("a log line is not a JSON object: %s", line)
			continue
		}
		keys := map[string]any{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				t.Errorf("a log line does not parse (%v): %s", err, line)
				break
			}
			key := tok.(string)
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Errorf("a log line does not parse (%v): %s", err, line)
				break
			}
			if _, dup := keys[key]; dup {
				t.Errorf("a log line repeats the key %q: %s", key, line)
			}
			keys[key] = v
		}
		switch keys["msg"] {
		case "serving":
			starts++
			for _, k := range []string{"node", "role", "id", "url", "listen", "database", "users", "tls", "secret", "peers"} {
				if keys[k] == nil || keys[k] == "" {
					t.Errorf("the start-up line lacks %q: %s", k, line)
				}
			}
			if keys["secret"] != "-secret" || keys["users"] != "off" || keys["tls"] != "off" || strings.Count(keys["peers"].(string), "=") != nodes-1 {
				t.Errorf("the start-up line says %s", line)
			}
		case "this node leads now":
			leads++
		}
	}
	if starts < nodes || leads == 0 {
		t.Errorf("%d start-up lines for %d nodes, %d lines of a node taking the lead", starts, nodes, leads)
	}
}

// A node listening beyond loopback without a users file says, at start,
// that anyone who can reach it can change everything; on loopback, or
// with a users file, it does not.
func TestANodeOpenToTheNetworkWithoutUsersSaysSo(t *testing.T) {
	base, err := testcluster.FreeBasePort(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		listen string
		warn   bool
	}{{fmt.Sprintf("0.0.0.0:%d", base), true}, {fmt.Sprintf("127.0.0.1:%d", base), false}} {
		logs := &testcluster.Output{}
		cfg, err := cluster.ParseArgs(cluster.Master, []string{"-listen", c.listen, "-dir", t.TempDir(), "-secret", "s", "0"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		n, err := Start(cfg, logs)
		if err != nil {
			t.Fatal(err)
		}
		n.Shutdown(context.Background())
		if got := strings.Contains(logs.String(), "anyone who can reach"); got != c.warn {
			t.Errorf("listening on %s: warned %v, want %v:\n%s", c.listen, got, c.warn, logs.String())
		}
	}
}

// A node killed while it received a snapshot leaves the partial file (up
// to the database's size) in its work directory; its next start empties
// that directory, and only its own: the nodes of a local cluster share
// the data directory.
func TestAStartRemovesWhatAKilledRunLeftInItsWorkDirectory(t *testing.T) {
	base, err := testcluster.FreeBasePort(1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plant := func(path string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mine := filepath.Join(dir, "slave0.db-tmp", "raft-snapshot-1234.db")
	theirs := filepath.Join(dir, "slave1.db-tmp", "raft-snapshot-5678.db")
	plant(mine)
	plant(theirs)
	cfg, err := cluster.ParseArgs(cluster.Master, []string{"-port", fmt.Sprint(base), "-host", "127.0.0.1", "-dir", dir, "-secret", "s", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Start(cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	if _, err := os.Stat(mine); !os.IsNotExist(err) {
		t.Errorf("the partial snapshot of the killed run is still there: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "slave0.db-tmp")); err != nil || !fi.IsDir() {
		t.Errorf("no work directory after the start: %v", err)
	}
	if _, err := os.Stat(theirs); err != nil {
		t.Errorf("another node's file was removed: %v", err)
	}
}
