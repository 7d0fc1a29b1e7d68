package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/client"
	"github.com/ddbgo/ddb/internal/changefeed"
	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// waitChangesOn waits until node id reports the change stream on, and
// returns the first index it keeps.
func waitChangesOn(t *testing.T, c *testcluster.Cluster, id int) uint64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := c.Status(id); err == nil {
			if ch, ok := st["changes"].(map[string]any); ok && ch["on"] == true {
				return uint64(ch["oldest"].(float64))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("node %d never reported the change stream on", id)
	return 0
}

// readChanges reads the stream of one node from since to what it applied,
// without following it.
func readChanges(t *testing.T, endpoint string, since uint64) []client.ChangeEntry {
	t.Helper()
	cl, err := client.New([]string{endpoint})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out []client.ChangeEntry
	// The stream follows the log: it is read until it has been quiet for
	// a while, the cluster being idle by then.
	got := make(chan client.ChangeEntry)
	go func() {
		for e, err := range cl.Changes(ctx, since, client.ChangesFilter{}) {
			if err != nil {
				close(got)
				return
			}
			got <- e
		}
	}()
	for {
		select {
		case e, ok := <-got:
			if !ok {
				return out
			}
			out = append(out, e)
		case <-time.After(2 * time.Second):
			return out
		}
	}
}

// Three consumers follow the change stream while clients write and the
// leader is killed with SIGKILL (twice) and a follower once; each consumer
// was reading from the first node killed, and goes on at another. Each
// sees every entry's changes exactly once, in index order, the same as
// every node's stream read afterwards; and the stream replayed onto an
// empty database gives the final database, table by table.
func TestChangeConsumersSeeEveryChangeOnceThroughKills(t *testing.T) {
	c := testcluster.Start(t, 2, "-changes-keep", "1000000", "-ack-timeout", "3s")
	waitLeader(t, c, 0, 10*time.Second)
	start := waitChangesOn(t, c, 0)
	c.Exec(0, "CREATE TABLE w (id INTEGER PRIMARY KEY, rid TEXT UNIQUE, client INTEGER, n INTEGER DEFAULT 0, data BLOB)")
	c.Exec(0, "CREATE TABLE kv (k TEXT, part INTEGER, v REAL, PRIMARY KEY (k, part)) WITHOUT ROWID")

	endpoints := []string{c.URL(1), c.URL(0), c.URL(2)} // a consumer's first read goes to the second: the master
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type consumer struct {
		mu      sync.Mutex
		entries []client.ChangeEntry
		err     error
	}
	consumers := make([]*consumer, 3)
	var cwg sync.WaitGroup
	for i := range consumers {
		cs := &consumer{}
		consumers[i] = cs
		cl, err := client.New(endpoints, client.WithRetryTimeout(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for e, err := range cl.Changes(ctx, start, client.ChangesFilter{}) {
				cs.mu.Lock()
				if err != nil {
					cs.err = err
				} else {
					cs.entries = append(cs.entries, e)
				}
				cs.mu.Unlock()
			}
		}()
	}

	var writers []*client.Client
	for range 3 {
		cl, err := client.New([]string{c.URL(1), c.URL(2), c.URL(0)}, client.WithRetryTimeout(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		writers = append(writers, cl)
	}
	load := startWorkers(3, func(w, i int) {
		cl := writers[w]
		wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer wcancel()
		rid := fmt.Sprintf("w%d-%d", w, i)
		switch i % 5 {
		case 0, 1:
			cl.Exec(wctx, "INSERT INTO w(rid, client, data) VALUES (?, ?, ?)", rid, w, []byte(rid))
		case 2:
			cl.Exec(wctx, "UPDATE w SET n = n + 1 WHERE client = ? AND id % 3 = ?", w, i%3)
		case 3:
			cl.Exec(wctx, "INSERT OR REPLACE INTO kv(k, part, v) VALUES (?, ?, ?)", fmt.Sprint("k", i%7), w, float64(i)/3)
		case 4:
			cl.Exec(wctx, "DELETE FROM w WHERE client = ? AND id % 4 = ?", w, i%4)
		}
	})
	time.Sleep(time.Second)
	for k := 0; k < 2; k++ {
		c.Node(0).Kill()
		time.Sleep(1500 * time.Millisecond)
		c.Restart(0)
		time.Sleep(1500 * time.Millisecond)
	}
	c.Node(1).Kill()
	time.Sleep(time.Second)
	c.Restart(1)
	time.Sleep(time.Second)
	load.Stop()
	c.WaitConverged(30*time.Second, 0, 1, 2)

	// What every node's stream holds, read afterwards: the same on each.
	var want []client.ChangeEntry
	for id := 0; id <= 2; id++ {
		got := readChanges(t, c.URL(id), start)
		if id == 0 {
			want = got
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d's stream differs from node 0's (%d and %d entries)", id, len(got), len(want))
		}
	}
	if len(want) < 50 {
		t.Fatalf("only %d entries with changes", len(want))
	}
	last := want[len(want)-1].Index
	for i, cs := range consumers {
		deadline := time.Now().Add(30 * time.Second)
		for {
			cs.mu.Lock()
			n := len(cs.entries)
			done := n > 0 && cs.entries[n-1].Index >= last
			err := cs.err
			cs.mu.Unlock()
			if done {
				break
			}
			if err != nil || time.Now().After(deadline) {
				t.Fatalf("consumer %d stopped at %d entries of %d: %v", i, n, len(want), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cs.mu.Lock()
		got := slices.Clone(cs.entries)
		cs.mu.Unlock()
		for j := 1; j < len(got); j++ {
			if got[j].Index <= got[j-1].Index {
				t.Fatalf("consumer %d: index %d after %d", i, got[j].Index, got[j-1].Index)
			}
		}
		if !reflect.DeepEqual(got, want) {
			for j := range min(len(got), len(want)) {
				if !reflect.DeepEqual(got[j], want[j]) {
					t.Fatalf("consumer %d: entry %d is %+v, the nodes have %+v", i, j, got[j], want[j])
				}
			}
			t.Fatalf("consumer %d saw %d entries, the nodes have %d", i, len(got), len(want))
		}
	}
	cancel()
	cwg.Wait()

	replica, err := sqlite.Open(filepath.Join(t.TempDir(), "replay.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	replayEntries(t, replica, want)
	live, err := sqlite.Open(c.DBPath(2), url.Values{"mode": {"ro"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	for _, table := range []string{"w", "kv"} {
		q := "SELECT * FROM " + table + " ORDER BY 1, 2"
		a, err := live.All(q)
		if err != nil {
			t.Fatal(err)
		}
		b, err := replica.All(q)
		if err != nil {
			t.Fatal(err)
		}
		if len(a) < 10 || !reflect.DeepEqual(a, b) {
			t.Fatalf("table %s: the database has %d rows, the replayed stream %d, or they differ", table, len(a), len(b))
		}
	}
}

// replayEntries applies a change stream to c, as a consumer keeping a copy
// would.
func replayEntries(t *testing.T, c *sqlite.Conn, entries []client.ChangeEntry) {
	t.Helper()
	for _, e := range entries {
		for _, ev := range e.Events {
			var sql string
			var args []any
			where := func(key map[string]any) {
				var conds []string
				for _, k := range slices.Sorted(maps.Keys(key)) {
					conds = append(conds, fmt.Sprintf("%q IS ?", k))
					args = append(args, key[k])
				}
				sql += " WHERE " + strings.Join(conds, " AND ")
			}
			switch ev.Op {
			case "schema":
				sql = ev.SQL
			case "insert":
				cols := slices.Sorted(maps.Keys(ev.After))
				for _, k := range cols {
					args = append(args, ev.After[k])
				}
				if id, ok := ev.Key["rowid"]; ok {
					cols, args = append(cols, "rowid"), append(args, id)
				}
				sql = fmt.Sprintf("INSERT INTO %q(%s) VALUES (%s)", ev.Table, `"`+strings.Join(cols, `", "`)+`"`, strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", "))
			case "update":
				var sets []string
				for _, k := range slices.Sorted(maps.Keys(ev.After)) {
					sets, args = append(sets, fmt.Sprintf("%q = ?", k)), append(args, ev.After[k])
				}
				sql = fmt.Sprintf("UPDATE %q SET %s", ev.Table, strings.Join(sets, ", "))
				if ev.OldKey != nil {
					where(ev.OldKey)
				} else {
					where(ev.Key)
				}
			case "delete":
				sql = fmt.Sprintf("DELETE FROM %q", ev.Table)
				where(ev.Key)
			default:
				t.Fatalf("index %d: unexpected event %q", e.Index, ev.Op)
			}
			if err := c.Exec(sql, args...); err != nil {
				t.Fatalf("index %d: %s: %v", e.Index, sql, err)
			}
		}
	}
}

// receiver is a webhook endpoint that records what it is sent, and can
// refuse (503) or be gone (its port closed).
type receiver struct {
	mu       sync.Mutex
	addr     string
	ln       net.Listener
	srv      *http.Server
	refuse   bool
	messages map[uint64][]string // index -> each delivery's events, as JSON
	stamps   map[uint64]int64    // index -> commit_timestamp
	posts    int
	envs     []changefeed.Envelope
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{messages: map[uint64][]string{}, stamps: map[uint64]int64{}}
	r.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var env changefeed.Envelope
		if err := json.NewDecoder(req.Body).Decode(&env); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.refuse {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		r.posts++
		r.envs = append(r.envs, env)
		for _, m := range env.Payload {
			b, _ := json.Marshal(m.Events)
			r.messages[m.Index] = append(r.messages[m.Index], string(b))
			r.stamps[m.Index] = m.Timestamp
		}
		w.WriteHeader(http.StatusAccepted)
	})}
	r.up(t)
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *receiver) up(t *testing.T) {
	t.Helper()
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	r.addr, r.ln = ln.Addr().String(), ln
	go r.srv.Serve(ln)
}

func (r *receiver) down() { r.ln.Close() }

// The webhook gets every change at least once, through SIGKILLs of the
// leader, a receiver that refuses for a while and one that is gone for a
// while; a change sent twice is the same both times, and carries its index.
func TestTheChangeWebhookDeliversEveryChangeThroughKillsAndOutages(t *testing.T) {
	recv := newReceiver(t)
	c := testcluster.Start(t, 2, "-changes-keep", "1000000", "-changes-webhook", "http://"+recv.addr+"/cdc", "-changes-service-id", "svc1", "-ack-timeout", "3s")
	waitLeader(t, c, 0, 10*time.Second)
	start := waitChangesOn(t, c, 0)
	c.Exec(0, "CREATE TABLE w (id INTEGER PRIMARY KEY, rid TEXT UNIQUE, n INTEGER DEFAULT 0, r REAL)")
	var writers []*client.Client
	for range 2 {
		cl, err := client.New([]string{c.URL(1), c.URL(2), c.URL(0)}, client.WithRetryTimeout(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		writers = append(writers, cl)
	}
	load := startWorkers(2, func(w, i int) {
		wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer wcancel()
		if i%3 == 2 {
			writers[w].Exec(wctx, "UPDATE w SET n = n + 1, r = ? WHERE id % 5 = ?", float64(i)/7, i%5)
		} else {
			writers[w].Exec(wctx, "INSERT INTO w(rid, r) VALUES (?, ?)", fmt.Sprintf("w%d-%d", w, i), float64(i))
		}
		time.Sleep(5 * time.Millisecond)
	})
	time.Sleep(time.Second)
	c.Node(0).Kill()
	time.Sleep(1500 * time.Millisecond)
	c.Restart(0)
	recv.mu.Lock()
	recv.refuse = true
	recv.mu.Unlock()
	time.Sleep(2 * time.Second)
	recv.mu.Lock()
	recv.refuse = false
	recv.mu.Unlock()
	time.Sleep(time.Second)
	recv.down()
	time.Sleep(2 * time.Second)
	recv.up(t)
	time.Sleep(time.Second)
	c.Node(0).Kill()
	time.Sleep(1500 * time.Millisecond)
	c.Restart(0)
	time.Sleep(time.Second)
	load.Stop()
	c.WaitConverged(30*time.Second, 0, 1, 2)

	want := readChanges(t, c.URL(1), start)
	if len(want) < 50 {
		t.Fatalf("only %d entries with changes", len(want))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		recv.mu.Lock()
		missing := 0
		for _, e := range want {
			if len(recv.messages[e.Index]) == 0 {
				missing++
			}
		}
		recv.mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d entries never reached the webhook", missing, len(want))
		}
		time.Sleep(100 * time.Millisecond)
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	dups := 0
	for _, e := range want {
		got := recv.messages[e.Index]
		for _, m := range got[1:] {
			dups++
			if m != got[0] {
				t.Fatalf("index %d was delivered twice, differently:\n%s\n%s", e.Index, got[0], m)
			}
		}
		if ms := recv.stamps[e.Index]; ms != e.Time.UnixMilli() {
			t.Fatalf("index %d: commit_timestamp %d, the entry's time is %d ms", e.Index, ms, e.Time.UnixMilli())
		}
		var events []changefeed.Event
		json.Unmarshal([]byte(got[0]), &events)
		if len(events) != len(e.Events) {
			t.Fatalf("index %d: the webhook got %d events, the stream has %d", e.Index, len(events), len(e.Events))
		}
		for i, ev := range events {
			if !strings.EqualFold(ev.Op, e.Events[i].Op) || ev.Table != e.Events[i].Table {
				t.Fatalf("index %d event %d: the webhook got %s %s, the stream has %s %s", e.Index, i, ev.Op, ev.Table, e.Events[i].Op, e.Events[i].Table)
			}
		}
	}
	nodes := map[string]bool{}
	for _, env := range recv.envs {
		if env.ServiceID != "svc1" {
			t.Fatalf("service_id %q", env.ServiceID)
		}
		nodes[env.NodeID] = true
		for i := 1; i < len(env.Payload); i++ {
			if env.Payload[i].Index <= env.Payload[i-1].Index {
				t.Fatalf("an envelope out of index order: %d after %d", env.Payload[i].Index, env.Payload[i-1].Index)
			}
		}
	}
	t.Logf("%d entries, %d posts, %d entries delivered again, from nodes %v", len(want), recv.posts, dups, slices.Sorted(maps.Keys(nodes)))
	if len(nodes) < 2 {
		t.Fatalf("only node(s) %v delivered: the leader never changed hands?", nodes)
	}
}

// The stream's HTTP contract: permissions (changes or query; 401 for
// anonymous, 403 for a user without), 404 while off, 410 with the oldest
// index, 400 for bad parameters, table filters and patterns, keys only,
// and server-sent events that resume from Last-Event-ID.
func TestTheChangeStreamsHTTPContract(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`[
	  {"username": "admin", "password": "a", "perms": ["all"]},
	  {"username": "feed", "password": "f", "perms": ["changes"]},
	  {"username": "reader", "password": "r", "perms": ["query"]},
	  {"username": "ops", "password": "o", "perms": ["status"]}
	]`), 0o600)
	c := testcluster.Start(t, 2, "-auth", users)
	get := func(node int, user, path string, hdr ...string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", c.URL(node)+path, nil)
		if user != "" {
			req.SetBasicAuth(user, map[string]string{"admin": "a", "feed": "f", "reader": "r", "ops": "o"}[user])
		}
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	post := func(node int, body string) {
		t.Helper()
		req, _ := http.NewRequest("POST", c.URL(node)+"/", strings.NewReader(body))
		req.SetBasicAuth("admin", "a")
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", body, resp.StatusCode)
		}
	}
	// (With a users file, the cluster's own waits cannot see whether a
	// node serves: this one asks with credentials.)
	deadline := time.Now().Add(20 * time.Second)
	for id := 0; id <= 2; id++ {
		for st, _, _ := get(id, "admin", "/db/changes?follow=false"); st == 503 && time.Now().Before(deadline); st, _, _ = get(id, "admin", "/db/changes?follow=false") {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if st, _, body := get(1, "admin", "/db/changes?follow=false"); st != 404 || !strings.Contains(body, "-changes-keep") {
		t.Fatalf("while off: %d %s", st, body)
	}
	// Turned on from a slave's command line: through the log, for all.
	c.Node(2).Stop()
	c.StartNode(2, "-changes-keep", "500")
	var start uint64
	for deadline := time.Now().Add(20 * time.Second); start == 0; time.Sleep(50 * time.Millisecond) {
		var st struct {
			Changes struct {
				On     bool   `json:"on"`
				Oldest uint64 `json:"oldest"`
			} `json:"changes"`
		}
		_, _, body := get(0, "admin", "/status")
		if json.Unmarshal([]byte(body), &st); st.Changes.On {
			start = st.Changes.Oldest
		} else if time.Now().After(deadline) {
			t.Fatalf("the change stream is not on: %s", body)
		}
	}
	post(0, `{"command":"exec","query":"CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT)"}`)
	post(0, `{"command":"exec","query":"CREATE TABLE people (name TEXT PRIMARY KEY, age INTEGER) WITHOUT ROWID"}`)
	post(0, `{"command":"exec","query":"CREATE TABLE other (x)"}`)
	post(1, `{"command":"exec","query":"INSERT INTO pets(name) VALUES ('rex')"}`)
	post(1, `{"command":"exec","query":"INSERT INTO people VALUES ('ann', 30)"}`)
	post(2, `{"command":"exec","query":"INSERT INTO other VALUES (1)"}`)
	post(2, `{"command":"exec","query":"UPDATE people SET name = 'anne' WHERE name = 'ann'"}`)
	for id, deadline := 0, time.Now().Add(10*time.Second); id <= 2; time.Sleep(20 * time.Millisecond) {
		if _, _, body := get(id, "admin", "/db/changes?since=oldest&follow=false"); strings.Count(body, "\n") == 7 {
			id++
		} else if time.Now().After(deadline) {
			t.Fatalf("node %d's stream: %s", id, body)
		}
	}

	for _, tc := range []struct {
		user string
		want int
	}{{"", 401}, {"ops", 403}, {"feed", 200}, {"reader", 200}, {"admin", 200}} {
		if st, _, body := get(1, tc.user, "/db/changes?since=oldest&follow=false"); st != tc.want {
			t.Fatalf("user %q: %d %s, want %d", tc.user, st, body, tc.want)
		}
	}
	for path, want := range map[string]int{
		"/db/changes?since=0":                   400,
		"/db/changes?since=x":                   400,
		"/db/changes?keys_only=maybe":           400,
		"/db/changes?tables=[":                  400,
		"/db/changes?since=1&follow=false":      410,
		"/db/changes?since=oldest&follow=false": 200,
	} {
		if st, _, body := get(2, "feed", path); st != want {
			t.Fatalf("%s: %d %s, want %d", path, st, body, want)
		}
	}
	st, _, body := get(0, "feed", "/db/changes?since=1&follow=false")
	var gone struct {
		Error  string `json:"error"`
		Oldest uint64 `json:"oldest"`
	}
	if json.Unmarshal([]byte(body), &gone); st != 410 || gone.Oldest != start {
		t.Fatalf("410: %d %s, want oldest %d", st, body, start)
	}
	lines := func(body string) []map[string]any {
		var out []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("a line that is not JSON: %q", l)
			}
			out = append(out, m)
		}
		return out
	}
	_, _, body = get(1, "feed", "/db/changes?since=oldest&follow=false&tables=pe*")
	var tables []string
	for _, l := range lines(body) {
		for _, e := range l["events"].([]any) {
			ev := e.(map[string]any)
			tables = append(tables, fmt.Sprint(ev["op"], " ", ev["table"]))
		}
	}
	if want := []string{"schema <nil>", "schema <nil>", "schema <nil>", "insert pets", "insert people", "update people"}; !reflect.DeepEqual(tables, want) {
		t.Fatalf("tables=pe*: %v, want %v", tables, want)
	}
	_, _, body = get(1, "feed", "/db/changes?since=oldest&follow=false&tables=people,pets&keys_only=true")
	all := lines(body)
	upd := all[len(all)-1]["events"].([]any)[0].(map[string]any)
	if fmt.Sprint(upd["key"], upd["old_key"], upd["before"], upd["after"]) != "map[name:anne] map[name:ann] map[name:ann] map[name:anne]" {
		t.Fatalf("keys only, a key changed: %v", upd)
	}
	// Server-sent events: ids are log indexes, and a reconnection with
	// Last-Event-ID goes on after it.
	_, hdr, body := get(2, "reader", "/db/changes?since=oldest&follow=false", "Accept", "text/event-stream")
	if hdr.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
	}
	ids := regexp.MustCompile(`(?m)^id: (\d+)$`).FindAllStringSubmatch(body, -1)
	if len(ids) != 7 || !strings.Contains(body, "event: change\ndata: {") {
		t.Fatalf("server-sent events: %q", body)
	}
	third := ids[2][1]
	_, _, rest := get(2, "reader", "/db/changes?follow=false", "Accept", "text/event-stream", "Last-Event-ID", third)
	if n := strings.Count(rest, "\nid: ") + strings.Count(rest[:min(len(rest), 4)], "id: "); n != 4 || strings.Contains(rest, "id: "+third+"\n") {
		t.Fatalf("after Last-Event-ID %s: %q", third, rest)
	}
}

// A node stops cleanly while a client follows its change stream: the
// stream ends, and the node's shutdown does not wait for the client (the
// HTTP server's shutdown would, to its 15 s deadline, and then fail).
func TestANodeStopsWhileAClientFollowsItsChangeStream(t *testing.T) {
	c := testcluster.Start(t, 2, "-changes-keep", "1000")
	waitChangesOn(t, c, 1)
	resp, err := http.Get(c.URL(1) + "/db/changes?since=oldest")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		ended <- err
	}()
	c.Exec(0, "CREATE TABLE t (x)")
	stopping := time.Now()
	c.Node(1).Stop()
	t.Logf("the node stopped %v after SIGTERM", time.Since(stopping).Round(time.Millisecond))
	if code := c.Node(1).ExitCode(); code != 0 {
		b, _ := os.ReadFile(c.Node(1).Log)
		t.Fatalf("the node exited with %d:\n%s", code, b)
	}
	if b, _ := os.ReadFile(c.Node(1).Log); strings.Contains(string(b), "deadline") {
		t.Fatalf("the node's shutdown waited for its deadline:\n%s", b)
	}
	<-ended // the stream ended with the node
}
