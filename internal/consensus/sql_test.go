package consensus

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// replicas is a group of Replicas over real SQLite files and a MemNetwork,
// ticked by the test (in the background while it runs).
type replicas struct {
	t     *testing.T
	dir   string
	net   *MemNetwork
	ids   []uint64
	r     map[uint64]*Replica
	st    map[uint64]*store.Store
	ticks map[uint64]chan time.Time
	stop  chan struct{}
	done  chan struct{}
	tmu   sync.Mutex                  // guards ids and ticks against the ticking goroutine
	keep  uint64                      // every node's LogKeep (0: the log is never compacted)
	bytes uint64                      // every node's LogKeepBytes (0: no bound)
	now   map[uint64]func() time.Time // a node's clock, if not the system's
}

// clock gives node id a tick channel of its own and makes it a member of
// the group (the ticking goroutine ticks every member).
func (g *replicas) clock(id uint64) chan time.Time {
	g.tmu.Lock()
	defer g.tmu.Unlock()
	if _, ok := g.ticks[id]; !ok {
		g.ticks[id] = make(chan time.Time)
		g.ids = append(g.ids, id)
	}
	return g.ticks[id]
}

func newReplicas(t *testing.T, n int, keep ...uint64) *replicas {
	g := &replicas{t: t, dir: t.TempDir(), net: NewMemNetwork(), r: map[uint64]*Replica{}, st: map[uint64]*store.Store{},
		ticks: map[uint64]chan time.Time{}, stop: make(chan struct{}), done: make(chan struct{}), now: map[uint64]func() time.Time{}}
	g.net.Dir = t.TempDir()
	if len(keep) > 0 {
		g.keep = keep[0]
	}
	for i := 1; i <= n; i++ {
		g.clock(uint64(i))
	}
	for _, id := range g.ids {
		g.start(id)
	}
	go func() {
		defer close(g.done)
		for {
			select {
			case <-g.stop:
				return
			case <-time.After(time.Millisecond):
			}
			g.tmu.Lock()
			var chans []chan time.Time
			for _, id := range g.ids {
				chans = append(chans, g.ticks[id])
			}
			g.tmu.Unlock()
			for _, ch := range chans {
				select {
				case ch <- time.Time{}:
				case <-time.After(10 * time.Millisecond): // a stopped node takes no ticks
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(g.stop)
		<-g.done
		for id := range g.r {
			g.kill(id)
		}
	})
	return g
}

func (g *replicas) start(id uint64) {
	st, err := store.Open(store.Options{Path: filepath.Join(g.dir, fmt.Sprintf("n%d.db", id)), Synchronous: "OFF"})
	if err != nil {
		g.t.Fatal(err)
	}
	voters := []uint64{1, 2, 3}
	r, err := StartReplica(context.Background(), st, g.net.Transport(id), ReplicaConfig{Now: g.now[id], Node: Config{ID: id, Voters: voters[:min(3, len(g.ids))], Ticks: g.clock(id), LogKeep: g.keep, LogKeepBytes: g.bytes}})
	if err != nil {
		g.t.Fatal(err)
	}
	g.r[id], g.st[id] = r, st
	g.net.Attach(id, r.Node())
}

func (g *replicas) kill(id uint64) {
	g.net.Attach(id, nil)
	g.r[id].Stop()
	g.st[id].Close()
	delete(g.r, id)
}

func (g *replicas) leader() uint64 {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for id, r := range g.r {
			// As writes see it (the last step's soft state): Status can
			// say leader a step before Write does.
			if _, self := r.Node().Leader(); self {
				return id
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	g.t.Fatal("no leader")
	return 0
}

// waitKnowsLeader waits until node id knows a leader.
func (g *replicas) waitKnowsLeader(id uint64) {
	g.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if lead, _ := g.r[id].Node().Leader(); lead != 0 {
			return
		}
	}
	g.t.Fatalf("node %d knows no leader", id)
}

// follower is a node other than l.
func (g *replicas) follower(l uint64) uint64 {
	if g.ids[0] != l {
		return g.ids[0]
	}
	return g.ids[1]
}

func (g *replicas) write(id uint64, rid, sql string, schema bool) (store.Outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return g.r[id].Write(ctx, &store.Request{Stmts: []rlog.Statement{{SQL: sql}}, AllowSchema: schema, RequestID: rid, Collect: true})
}

func (g *replicas) mustWrite(id uint64, sql string) store.Outcome {
	g.t.Helper()
	o, err := g.write(id, "", sql, true)
	if err != nil {
		g.t.Fatalf("%s on node %d: %v", sql, id, err)
	}
	return o
}

func (g *replicas) identical() {
	g.t.Helper()
	var dbs []*inspect.Database
	for _, id := range g.ids {
		d, err := inspect.Load(g.st[id].Path())
		if err != nil {
			g.t.Fatal(err)
		}
		dbs = append(dbs, d)
	}
	if diffs := inspect.Compare(dbs, 5); len(diffs) > 0 {
		g.t.Fatalf("databases differ:\n%s", strings.Join(diffs, "\n"))
	}
}

func (g *replicas) converge() {
	g.t.Helper()
	l := g.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for id, r := range g.r {
		if err := r.WaitApplied(ctx, g.st[l].Applied()); err != nil {
			g.t.Fatalf("node %d stays at %d, the leader is at %d", id, g.st[id].Applied(), g.st[l].Applied())
		}
	}
}

// Three nodes replicate SQL through Raft: every node applies the same
// entries with the leader's time and seed, through a leader's loss and a
// restart, and ends with the same database, row for row.
func TestReplicasReplicateSQLToIdenticalDatabases(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	g.mustWrite(l, "CREATE TABLE p (id INTEGER PRIMARY KEY, r, at DEFAULT CURRENT_TIMESTAMP)")
	g.mustWrite(l, "CREATE TABLE c (id INTEGER PRIMARY KEY, p, n)")
	for i := 0; i < 20; i++ {
		if o := g.mustWrite(l, "INSERT INTO p (r) VALUES (random())"); o.Results[0].LastInsertID != int64(i+1) {
			t.Fatalf("insert %d: %+v", i, o)
		}
	}
	if _, err := g.write(l, "", "INSERT INTO p (id) VALUES (1)", false); err == nil || !strings.Contains(err.Error(), "UNIQUE") {
		t.Fatalf("a failing write answered %v", err)
	}
	g.kill(l)
	next := g.leader()
	for i := 0; i < 10; i++ {
		g.mustWrite(next, "INSERT INTO c (p, n) VALUES ((SELECT max(id) FROM p), changes())")
	}
	g.start(l)
	g.converge()
	g.identical()
}

// The seam the HTTP layer uses: writes only on the leader (a follower
// says who leads), strong reads anywhere through ReadIndex, request ids
// applied once, and an outcome the proposer could not learn is reported
// as unknown.
func TestReplicaWritesReadsAndRetries(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	f := g.follower(l)
	g.mustWrite(l, "CREATE TABLE k (id INTEGER PRIMARY KEY, v)")
	var nl *NotLeaderError
	if _, err := g.write(f, "", "INSERT INTO k (v) VALUES (1)", false); !errors.As(err, &nl) || nl.Leader != l {
		t.Fatalf("a write at a follower: %v; want NotLeaderError naming %d", err, l)
	}
	first, err := g.write(l, "r1", "INSERT INTO k (v) VALUES (random()) RETURNING id, v", false)
	if err != nil {
		t.Fatal(err)
	}
	again, err := g.write(l, "r1", "INSERT INTO k (v) VALUES (random()) RETURNING id, v", false)
	if err != nil || !again.Duplicate || again.Index != first.Index || fmt.Sprint(again.Results) != fmt.Sprint(first.Results) {
		t.Fatalf("a retry: %+v %v; first %+v", again, err, first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	idx, err := g.r[f].ReadIndex(ctx)
	if err != nil || idx < first.Index {
		t.Fatalf("read index at a follower: %d %v", idx, err)
	}
	if err := g.r[f].WaitApplied(ctx, idx); err != nil {
		t.Fatal(err)
	}
	res, err := g.st[f].Read(ctx, []rlog.Statement{{SQL: "SELECT count(*) FROM k"}}, store.Limits{})
	if err != nil || res[0].Rows[0][0] != int64(1) {
		t.Fatalf("strong read at the follower: %v %v", res, err)
	}
	// The leader is cut off: its write's outcome is unknown, it never
	// commits, and a retry with the same id at the new leader applies once.
	for _, id := range g.ids {
		if id != l {
			g.net.Cut(l, id)
		}
	}
	short, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	_, err = g.r[l].Write(short, &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO k (v) VALUES ('cut off')"}}, RequestID: "r2"})
	var uo *UnknownOutcomeError
	if !errors.As(err, &uo) && !errors.As(err, &nl) {
		t.Fatalf("a write at a cut-off leader: %v", err)
	}
	g.net.Heal()
	var o store.Outcome
	deadline := time.Now().Add(10 * time.Second)
	for {
		o, err = g.write(g.leader(), "r2", "INSERT INTO k (v) VALUES ('cut off')", false)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g.converge()
	g.identical()
	res, _ = g.st[l].Read(context.Background(), []rlog.Statement{{SQL: "SELECT count(*) FROM k WHERE v = 'cut off'"}}, store.Limits{})
	if res[0].Rows[0][0] != int64(1) {
		t.Fatalf("the write sent twice with request id r2 is there %v times (outcome %+v)", res[0].Rows[0][0], o)
	}
}

// A write entering at a follower goes to the leader inside Raft's own
// messages. It runs with the leader's clock and seed (this follower's
// clock is 25 years off), the follower answers with the results every node
// computed alike once the leader has applied the entry too, and a proposal
// lost on its way (sent again) or arriving twice (logged twice) applies
// once.
func TestFollowerWritesGoThroughTheLeaderWithItsClock(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	f := g.follower(l)
	g.mustWrite(l, "CREATE TABLE k (id INTEGER PRIMARY KEY, v, at)")
	g.kill(f)
	g.now[f] = func() time.Time { return time.Now().AddDate(-25, 0, 0) }
	g.start(f)
	deadline := time.Now().Add(5 * time.Second)
	for !g.r[f].Node().LeaderReports(g.leader()) {
		if time.Now().After(deadline) {
			t.Fatal("the follower never heard the leader report what it applied")
		}
		time.Sleep(time.Millisecond)
	}
	l = g.leader()
	before := g.st[l].Applied()
	var props atomic.Int64
	g.net.SetCopies(func(from uint64, m pb.Message) int {
		if m.Type != pb.MsgProp {
			return 1
		}
		switch props.Add(1) {
		case 1:
			return 0 // lost
		case 2:
			return 1
		default:
			return 2 // arrives twice
		}
	})
	var outs []store.Outcome
	for i := range 11 {
		var o store.Outcome
		var err error
		for try := 0; ; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			o, err = g.r[f].WriteThroughLeader(ctx, &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO k (v, at) VALUES (random(), CURRENT_TIMESTAMP) RETURNING id, v, at"}},
				RequestID: fmt.Sprint("w", i), Collect: true})
			cancel()
			// A follower that restarted on a busy machine may not know
			// the leader yet (nothing was proposed): as a client does,
			// try again once it does.
			var nl *NotLeaderError
			if !errors.As(err, &nl) || try == 100 {
				break
			}
			g.waitKnowsLeader(f)
		}
		l = g.leader()
		if err != nil {
			t.Fatalf("write %d at the follower: %v", i, err)
		}
		if got := g.st[l].Applied(); got < o.Index {
			t.Fatalf("write %d answered at index %d; the leader has applied %d", i, o.Index, got)
		}
		outs = append(outs, o)
	}
	if n := props.Load(); n != 12 {
		t.Fatalf("%d proposals went out for 11 writes, one of them lost; want 12", n)
	}
	g.net.SetCopies(nil)
	g.converge()
	g.identical()
	if logged := g.st[l].Applied() - before; logged < 21 {
		t.Fatalf("%d entries logged for 11 writes, ten of them sent twice; want at least 21", logged)
	}
	res, err := g.st[f].Read(context.Background(), []rlog.Statement{{SQL: "SELECT id, v, at FROM k ORDER BY id"}}, store.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	rows := res[0].Rows
	if len(rows) != len(outs) {
		t.Fatalf("%d rows for %d writes", len(rows), len(outs))
	}
	year := fmt.Sprint(time.Now().Year())
	for i, o := range outs {
		got := o.Results[0].Rows[0]
		if fmt.Sprint(got) != fmt.Sprint(rows[i]) {
			t.Fatalf("write %d answered %v; the row is %v", i, got, rows[i])
		}
		if at := fmt.Sprint(got[2]); !strings.HasPrefix(at, year) && !strings.HasPrefix(at, fmt.Sprint(time.Now().Year()-1)) {
			t.Fatalf("write %d ran at %s: the follower's clock, not the leader's", i, at)
		}
	}
	// A proposal the transport certainly did not deliver (the leader's
	// end refused it) failed for sure: the write says so at once (a
	// NotLeaderError: nothing was proposed), and nothing applies.
	g.net.Cut(f, l)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = g.r[f].WriteThroughLeader(ctx, &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO k (v) VALUES ('not delivered')"}}, RequestID: "lost"})
	var nl *NotLeaderError
	if !errors.As(err, &nl) || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("a write whose proposal could not be delivered: %v after %v; want NotLeaderError at once", err, time.Since(start))
	}
	g.net.Heal()
	g.mustWrite(g.leader(), "INSERT INTO k (v) VALUES ('after')")
	g.converge()
	res, _ = g.st[f].Read(context.Background(), []rlog.Statement{{SQL: "SELECT count(*) FROM k WHERE v = 'not delivered'"}}, store.Limits{})
	if res[0].Rows[0][0] != int64(0) {
		t.Fatal("the write that was never delivered applied")
	}
}

// A node that joins a running cluster is added as a learner by a
// deliberate request: it receives the whole log, does not count toward
// the quorum, can be promoted to a voter, and removed.
func TestJoiningNodeIsALearnerUntilPromoted(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	g.mustWrite(l, "CREATE TABLE j (v)")
	g.mustWrite(l, "INSERT INTO j VALUES (1)")
	var urls sync.Map
	// Node 4 starts with no configuration: it waits to be added.
	st, err := store.Open(store.Options{Path: filepath.Join(g.dir, "n4.db"), Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	r4, err := StartReplica(context.Background(), st, g.net.Transport(4), ReplicaConfig{Node: Config{ID: 4, Ticks: g.clock(4),
		OnConfChange: func(cc pb.ConfChange) { urls.Store(cc.NodeID, string(cc.Context)) }}})
	if err != nil {
		t.Fatal(err)
	}
	g.r[4], g.st[4] = r4, st
	g.net.Attach(4, r4.Node())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var nl *NotLeaderError
	other := g.ids[0]
	if other == l {
		other = g.ids[1]
	}
	if err := g.r[other].Node().ChangeMembership(ctx, pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: 4}); !errors.As(err, &nl) {
		t.Fatalf("a membership change at a follower: %v", err)
	}
	if err := g.r[l].Node().ChangeMembership(ctx, pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: 4, Context: []byte("http://node4")}); err != nil {
		t.Fatal(err)
	}
	g.converge()
	if u, _ := urls.Load(uint64(4)); u != "http://node4" {
		t.Fatalf("the new node learned its own URL as %v", u)
	}
	cfg := g.r[l].Node().Status().Config
	if _, ok := cfg.Learners[4]; !ok {
		t.Fatalf("node 4 is not a learner: %v", cfg)
	}
	// With node 4 and one voter down, the other two voters still commit.
	down := g.ids[0]
	if down == l {
		down = g.ids[1]
	}
	g.kill(4)
	g.mustWrite(l, "INSERT INTO j VALUES (2)")
	g.kill(down)
	g.mustWrite(l, "INSERT INTO j VALUES (3)")
	g.start(down)
	// Promote node 4 once it is back, then remove it.
	st, err = store.Open(store.Options{Path: filepath.Join(g.dir, "n4.db"), Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	r4, err = StartReplica(context.Background(), st, g.net.Transport(4), ReplicaConfig{Node: Config{ID: 4, Ticks: g.clock(4)}})
	if err != nil {
		t.Fatal(err)
	}
	g.r[4], g.st[4] = r4, st
	g.net.Attach(4, r4.Node())
	l = g.leader()
	if err := g.r[l].Node().ChangeMembership(ctx, pb.ConfChange{Type: pb.ConfChangeAddNode, NodeID: 4}); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.r[l].Node().Status().Config.Voters[0][4]; !ok {
		t.Fatalf("node 4 was not promoted: %v", g.r[l].Node().Status().Config)
	}
	g.converge()
	g.identical()
	if err := g.r[l].Node().ChangeMembership(ctx, pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: 4}); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.r[l].Node().Status().Config.Voters[0][4]; ok {
		t.Fatal("node 4 is still a voter after its removal")
	}
}

func TestWaitDurableOnAllVotersWaitsForTheSlowestVoter(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	o := g.mustWrite(l, "CREATE TABLE a (v)")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := g.r[l].WaitDurableOnAllVoters(ctx, o.Index); err != nil {
		t.Fatal(err)
	}
	down := g.ids[0]
	if down == l {
		down = g.ids[1]
	}
	g.kill(down)
	o = g.mustWrite(l, "INSERT INTO a VALUES (1)") // a quorum suffices for the write
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := g.r[l].WaitDurableOnAllVoters(short, o.Index); err == nil {
		t.Fatal("a write was durable on all voters while one was down")
	}
	g.start(down)
	if err := g.r[l].WaitDurableOnAllVoters(ctx, o.Index); err != nil {
		t.Fatalf("after the voter's return: %v", err)
	}
}

// A follower that was down while the log was compacted past it catches up
// from a snapshot: a copy of the leader's database, installed in one
// transaction with the follower's own term and vote. It then applies the
// log from there, survives a restart, and can lead.
func TestFollowerBehindTheCompactedLogGetsASnapshot(t *testing.T) {
	g := newReplicas(t, 3, 20)
	l := g.leader()
	g.mustWrite(l, "CREATE TABLE t (id INTEGER PRIMARY KEY, r, b, at DEFAULT CURRENT_TIMESTAMP)")
	f := g.ids[0]
	if f == l {
		f = g.ids[1]
	}
	g.converge()
	g.kill(f)
	for i := 0; i < 150; i++ {
		g.mustWrite(l, "INSERT INTO t (r, b) VALUES (random(), randomblob(64))")
	}
	g.mustWrite(l, "CREATE INDEX t_r ON t (r)")
	first, _ := g.r[l].Node().storage.FirstIndex()
	if first <= 10 {
		t.Fatalf("the leader's log was not compacted (first index %d)", first)
	}
	g.startFromASnapshot(f)
	for i := 0; i < 10; i++ {
		g.mustWrite(l, "INSERT INTO t (r) VALUES (random())")
	}
	// The installed state survives a restart (the term, the vote and the
	// log's position were written with the data).
	g.kill(f)
	g.start(f)
	g.converge()
	g.identical()
	// And the follower can lead.
	g.kill(l)
	next := g.leader()
	g.mustWrite(next, "INSERT INTO t (r) VALUES (random())")
	g.start(l)
	g.converge()
	g.identical()
}

// A log of few but large entries (a load's chunks) is compacted by its
// bytes, though it holds far fewer entries than LogKeep: a follower that
// lost its data gets a snapshot instead of replaying them all.
func TestALogOfLargeEntriesIsCompactedByItsBytes(t *testing.T) {
	g := newReplicas(t, 3, 10_000)
	g.bytes = 64 << 10
	for _, id := range g.ids {
		g.kill(id)
		g.start(id)
	}
	l := g.leader()
	g.mustWrite(l, "CREATE TABLE t (id INTEGER PRIMARY KEY, b)")
	f := g.follower(l)
	g.converge()
	g.kill(f)
	for range 30 {
		g.mustWrite(l, "INSERT INTO t (b) VALUES (randomblob(8000) || '"+strings.Repeat("x", 8000)+"')")
	}
	first, _ := g.r[l].Node().storage.FirstIndex()
	if first <= 10 {
		t.Fatalf("30 entries of 8 KB with 64 KiB kept: the log still starts at %d", first)
	}
	applied := g.r[l].Node().applied.Load()
	if kept, _ := g.r[l].Node().storage.keptBehind(applied, 0); kept > 64<<10+64<<10/8+9000 {
		t.Fatalf("the log keeps %d bytes behind what it applied, over 64 KiB and an eighth", kept)
	}
	g.startFromASnapshot(f)
}

// startFromASnapshot starts follower f, which is behind the leader's
// compacted log, and checks that it caught up with one snapshot.
func (g *replicas) startFromASnapshot(f uint64) {
	g.t.Helper()
	g.start(f)
	g.converge()
	g.identical()
	if n := g.r[f].Node().SnapshotsInstalled(); n != 1 {
		g.t.Fatalf("the follower installed %d snapshots, want 1", n)
	}
}

// A node records the commit index only with the steps that write entries
// or a new term or vote, and applies on its own goroutine: the recorded
// commit index is often behind the applied one. The node must start again
// (Raft refuses an applied index beyond the commit index) and go on.
func TestNodeStartsWhenItsRecordedCommitIsBehindWhatItApplied(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	g.mustWrite(l, "CREATE TABLE c (v)")
	for i := 0; i < 20; i++ {
		g.mustWrite(l, "INSERT INTO c VALUES (random())")
	}
	g.converge()
	st := g.st[l]
	g.kill(l)
	s2, err := store.Open(store.Options{Path: st.Path(), Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := s2.LoadRaftState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var hs pb.HardState
	if err := hs.Unmarshal(rs.HardState); err != nil {
		t.Fatal(err)
	}
	hs.Commit = min(hs.Commit, s2.Applied()-5)
	b, _ := hs.Marshal()
	if err := s2.SaveRaft(store.RaftSave{HardState: b}); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	g.start(l)
	g.mustWrite(g.leader(), "INSERT INTO c VALUES (1)")
	g.converge()
	g.identical()
}

// A node alone commits an entry in the very step that appends it. It must
// write the entry to its log before it applies it and answers: an answer
// that came before the log held the entry could be lost with the machine,
// and a node whose database applied beyond its log cannot start again.
func TestASingleNodeAnswersOnlyWhatItsLogHolds(t *testing.T) {
	g := newReplicas(t, 1)
	g.mustWrite(g.leader(), "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	for i := range 50 {
		o := g.mustWrite(1, fmt.Sprintf("INSERT INTO t (v) VALUES ('%d')", i))
		last, err := g.st[1].RaftLastIndex(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if last < o.Index {
			t.Fatalf("write %d was answered at index %d while the log ends at %d", i, o.Index, last)
		}
	}
	g.kill(1)
	g.start(1)
	g.mustWrite(g.leader(), "INSERT INTO t (v) VALUES ('after a restart')")
}

// A node admitted without data serves nothing until it has applied what
// was committed when it was admitted: it receives the log from its start,
// so its database passes through states long gone (a table created but
// not yet filled), which local reads would show. Found by the fault suite
// (wipe, under load: a bank table read empty on a slave).
func TestANodeAdmittedWithoutDataServesOnceCaughtUp(t *testing.T) {
	g := newReplicas(t, 3)
	l := g.leader()
	g.mustWrite(l, "CREATE TABLE t (x)")
	g.mustWrite(l, "INSERT INTO t VALUES (1)")
	g.converge()
	f := g.follower(l)
	e := &Engine{st: g.st[f]}
	if err := e.caughtUp(); err != nil {
		t.Fatalf("a node never admitted without data: %v", err)
	}
	to := g.st[f].Applied() + 3
	e.catchUpTo.Store(to)
	err := e.caughtUp()
	var cu catchingUpError
	if !errors.As(err, &cu) || !errors.Is(err, replication.ErrUnavailable) {
		t.Fatalf("behind the index of its admission: %v, want a catching-up error (unavailable)", err)
	}
	for range 3 {
		g.mustWrite(l, "INSERT INTO t VALUES (2)")
	}
	g.converge()
	if err := e.caughtUp(); err != nil || e.catchUpTo.Load() != 0 {
		t.Fatalf("at the index of its admission: %v (catchUpTo %d)", err, e.catchUpTo.Load())
	}
}
