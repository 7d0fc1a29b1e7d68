package consensus

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ddb/internal/inspect"
	"ddb/internal/rlog"
	"ddb/internal/store"
)

// sqlApply applies committed proposals to a node's database with
// store.ApplyLog. A proposal's data is the leader's time and seed for the
// entry, then the encoded write.
func sqlApply(st *store.Store) func([]Entry) []any {
	return func(ents []Entry) []any {
		log := make([]rlog.Entry, len(ents))
		for i, e := range ents {
			log[i] = rlog.Entry{Index: e.Index}
			if len(e.Data) >= 16 {
				log[i].TimeMs = int64(binary.BigEndian.Uint64(e.Data))
				log[i].Seed = int64(binary.BigEndian.Uint64(e.Data[8:]))
				log[i].Body = e.Data[16:]
			}
		}
		out, err := st.ApplyLog(log)
		if err != nil {
			panic(err) // the node's own database failed: it cannot go on
		}
		results := make([]any, len(ents))
		for _, o := range out {
			results[o.Index-ents[0].Index] = o
		}
		return results
	}
}

func sqlProposal(t *testing.T, seed int64, sql string, schema bool) []byte {
	t.Helper()
	b, err := (&rlog.Write{Stmts: []rlog.Statement{{SQL: sql}}, AllowSchema: schema}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	data := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixMilli()))
	data = binary.BigEndian.AppendUint64(data, uint64(seed))
	return append(data, b...)
}

// Three nodes replicate SQL through Raft: every node applies the same
// entries with the leader's time and seed, through a leader's loss and a
// restart, and ends with the same database, row for row.
func TestRaftReplicatesSQLToIdenticalDatabases(t *testing.T) {
	g := &group{t: t, dir: t.TempDir(), net: NewMemNetwork(), nodes: map[uint64]*Node{}, st: map[uint64]*store.Store{},
		ticks: map[uint64]chan time.Time{}, applied: map[uint64][]string{}, last: map[uint64]uint64{}}
	g.ids = []uint64{1, 2, 3}
	start := func(id uint64) {
		st, err := store.Open(store.Options{Path: filepath.Join(g.dir, fmt.Sprintf("n%d.db", id)), Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		ticks := make(chan time.Time)
		n, err := Start(context.Background(), st, g.net.Transport(id), Config{ID: id, Voters: g.ids, Ticks: ticks, Applied: st.Applied(), Apply: sqlApply(st)})
		if err != nil {
			t.Fatal(err)
		}
		g.nodes[id], g.st[id], g.ticks[id] = n, st, ticks
		g.net.Attach(id, n)
	}
	for _, id := range g.ids {
		start(id)
	}
	t.Cleanup(func() {
		for id := range g.nodes {
			g.stop(id)
		}
	})
	propose := func(id uint64, seed int64, sql string, schema bool) store.Outcome {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a, err := g.nodes[id].Propose(ctx, sqlProposal(t, seed, sql, schema))
		if err != nil {
			t.Fatalf("propose %q: %v", sql, err)
		}
		return a.Result.(store.Outcome)
	}
	leader := g.waitLeader(100)
	propose(leader, 1, "CREATE TABLE p (id INTEGER PRIMARY KEY, r, at DEFAULT CURRENT_TIMESTAMP)", true)
	propose(leader, 2, "CREATE TABLE c (id INTEGER PRIMARY KEY, p, n)", true)
	for i := 0; i < 20; i++ {
		o := propose(leader, int64(10+i), "INSERT INTO p (r) VALUES (random())", false)
		if o.Err != nil || o.Results[0].LastInsertID != int64(i+1) {
			t.Fatalf("insert %d: %+v", i, o)
		}
	}
	if o := propose(leader, 50, "INSERT INTO p (id) VALUES (1)", false); o.Err == nil || !strings.Contains(o.Err.Error(), "UNIQUE") {
		t.Fatalf("a failing write answered %+v", o)
	}
	g.stop(leader)
	next := g.waitLeader(100)
	for i := 0; i < 10; i++ {
		propose(next, int64(100+i), "INSERT INTO c (p, n) VALUES ((SELECT max(id) FROM p), changes())", false)
	}
	start(leader)
	deadline := time.Now().Add(10 * time.Second)
	for g.st[leader].Applied() < g.st[next].Applied() {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted node is at %d, the leader at %d", g.st[leader].Applied(), g.st[next].Applied())
		}
		g.tick()
	}
	var dbs []*inspect.Database
	for _, id := range g.ids {
		d, err := inspect.Load(g.st[id].Path())
		if err != nil {
			t.Fatal(err)
		}
		dbs = append(dbs, d)
	}
	if diffs := inspect.Compare(dbs, 5); len(diffs) > 0 {
		t.Fatalf("databases differ:\n%s", strings.Join(diffs, "\n"))
	}
	if dbs[0].RowCount() != 30 {
		t.Fatalf("%d rows, want 30", dbs[0].RowCount())
	}
}
