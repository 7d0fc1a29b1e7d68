package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/client"
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

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		cl, err := client.New([]string{c.URL(1), c.URL(2), c.URL(0)}, client.WithRetryTimeout(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
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
				wcancel()
			}
		}()
	}
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
	close(stop)
	wg.Wait()
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
