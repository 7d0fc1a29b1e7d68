package replication

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ddb/internal/inspect"
	"ddb/internal/rlog"
	"ddb/internal/sqlite"
	"ddb/internal/store"
)

const masterURL = "mem://master"

func slaveURL(i int) string { return fmt.Sprintf("mem://slave%d", i) }

// harness is a master and slaves in one process, over a MemNetwork, with
// a fake clock: every message and timer is under the test's control.
type harness struct {
	t      *testing.T
	dir    string
	net    *MemNetwork
	clock  *FakeClock
	master *Master
	mstore *store.Store
	slaves map[int]*Slave
	stores map[int]*store.Store
}

func newHarness(t *testing.T, slaves int, logKeep uint64) *harness {
	h := &harness{t: t, dir: t.TempDir(), net: NewMemNetwork(), clock: NewFakeClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)),
		slaves: map[int]*Slave{}, stores: map[int]*store.Store{}}
	var err error
	h.mstore, err = store.Open(store.Options{Path: filepath.Join(h.dir, "slave0.db")})
	if err != nil {
		t.Fatal(err)
	}
	urls := map[int]string{}
	for i := 1; i <= slaves; i++ {
		urls[i] = slaveURL(i)
		h.startSlave(i)
	}
	quiet := func(string, ...any) {}
	h.master = NewMaster(MasterConfig{URL: masterURL, Slaves: urls, AckTimeout: 2 * time.Second, LogKeep: logKeep, TempDir: h.dir, ShipBatch: 64, Logf: quiet}, h.mstore, h.net, h.clock)
	h.net.AddMaster(masterURL, h.master)
	// The fake clock runs at five times real speed unless a test moves it
	// itself: retries and ack timeouts happen quickly, and only when the
	// harness lets time pass.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				h.clock.Advance(5 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		h.master.Close()
		for i, s := range h.slaves {
			s.Close()
			h.stores[i].Close()
		}
		h.mstore.Close()
	})
	return h
}

func (h *harness) startSlave(i int) {
	st, err := store.Open(store.Options{Path: filepath.Join(h.dir, fmt.Sprintf("slave%d.db", i))})
	if err != nil {
		h.t.Fatal(err)
	}
	s := NewSlave(SlaveConfig{ID: i, URL: slaveURL(i), MasterURL: masterURL, AckTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, TempDir: h.dir, Logf: func(string, ...any) {}}, st, h.net, h.clock)
	h.slaves[i], h.stores[i] = s, st
	h.net.AddSlave(slaveURL(i), s)
}

// crashSlave closes slave i's store as a crash would leave it (nothing
// beyond what was committed survives) and takes it off the network.
func (h *harness) crashSlave(i int) {
	h.net.Remove(slaveURL(i))
	h.slaves[i].Close()
	h.stores[i].Close()
	delete(h.slaves, i)
}

func (h *harness) write(node int, sql string, args ...any) (store.Outcome, error) {
	req := &store.Request{Ctx: context.Background(), Stmts: []rlog.Statement{{SQL: sql, Pos: args}}, AllowSchema: node == 0}
	if node == 0 {
		return h.master.Write(context.Background(), req, "quorum")
	}
	return h.slaves[node].Write(context.Background(), req, "quorum")
}

func (h *harness) mustWrite(node int, sql string, args ...any) store.Outcome {
	h.t.Helper()
	out, err := h.write(node, sql, args...)
	if err != nil {
		h.t.Fatalf("write %q at node %d: %v", sql, node, err)
	}
	return out
}

// eventually polls cond, advancing the fake clock so retries and
// heartbeats happen, for up to 10 real seconds.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		h.clock.Advance(100 * time.Millisecond)
		time.Sleep(2 * time.Millisecond)
	}
}

func (h *harness) converged() {
	h.t.Helper()
	h.eventually("every slave to apply the whole log", func() bool {
		for _, st := range h.stores {
			if st.Applied() != h.mstore.Applied() {
				return false
			}
		}
		return true
	})
	ref, err := inspect.Load(h.mstore.Path())
	if err != nil {
		h.t.Fatal(err)
	}
	for i, st := range h.stores {
		d, err := inspect.Load(st.Path())
		if err != nil {
			h.t.Fatal(err)
		}
		if diffs := inspect.Compare([]*inspect.Database{ref, d}, 5); len(diffs) > 0 {
			h.t.Fatalf("slave %d differs: %v", i, diffs)
		}
	}
}

func TestConcurrentWritesAtEveryNodeReplicateInOneOrder(t *testing.T) {
	h := newHarness(t, 2, 0)
	h.mustWrite(0, "CREATE TABLE t (id INTEGER PRIMARY KEY, node INTEGER, at TEXT DEFAULT CURRENT_TIMESTAMP, r INTEGER DEFAULT (random()))")
	var wg sync.WaitGroup
	for c := 0; c < 12; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				if _, err := h.write(c%3, "INSERT INTO t (id, node) VALUES (?, ?)", int64(c*1000+i), int64(c%3)); err != nil {
					t.Error(err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	h.converged()
	if h.mstore.Applied() != 1+12*40 {
		t.Fatalf("log has %d entries", h.mstore.Applied())
	}
	// The pipeline counters behind /metrics add up: every write went
	// through exactly one group commit, and every entry reached both slaves.
	ps := h.master.Pipeline()
	if ps.CommitRequests != 1+12*40 || ps.Commits == 0 || ps.Commits > ps.CommitRequests || ps.CommitSeconds <= 0 {
		t.Fatalf("group commit counters: %+v", ps)
	}
	// The shipper counts an append when its answer is back, a moment after
	// the slave applied it.
	h.eventually("appends of every entry to both slaves to be counted", func() bool {
		return h.master.Pipeline().AppendEntries >= 2*(1+12*40)
	})
	if ps = h.master.Pipeline(); ps.Appends == 0 || ps.Appends > ps.AppendEntries || ps.AppendSeconds <= 0 {
		t.Fatalf("append counters: %+v", ps)
	}
}

func TestReorderedDuplicatedAndGappedBatchesApplyExactlyOnce(t *testing.T) {
	h := newHarness(t, 1, 0)
	h.net.SetFaults(Faults{Drop: func(url string) bool { return url == slaveURL(1) }}) // the shipper stays out of it
	masterOnly := func(sql string, args ...any) {
		if _, err := h.master.Write(context.Background(), &store.Request{Stmts: []rlog.Statement{{SQL: sql, Pos: args}}, AllowSchema: true}, "master"); err != nil {
			t.Fatal(err)
		}
	}
	masterOnly("CREATE TABLE t (x INTEGER)")
	for i := 0; i < 200; i++ {
		masterOnly("INSERT INTO t VALUES (?)", int64(i))
	}
	entries, err := h.mstore.LogRange(context.Background(), 1, 1000, 0)
	if err != nil || len(entries) != 201 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	s := h.slaves[1]
	s.cfg.GapWait = -1 // this test sends gaps on purpose
	for round := 0; round < 400 && h.stores[1].Applied() < 201; round++ {
		// A random window of entries, sometimes shuffled, sometimes repeated.
		a := rng.IntN(len(entries))
		b := a + 1 + rng.IntN(20)
		if b > len(entries) {
			b = len(entries)
		}
		batch := append([]rlog.Entry(nil), entries[a:b]...)
		if rng.IntN(3) == 0 {
			rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
		}
		resp := s.HandleAppend(&AppendRequest{Entries: batch})
		if resp.Error != "" {
			t.Fatalf("apply: %s", resp.Error)
		}
		// Whatever arrives, the slave reports a prefix it really applied.
		if resp.Applied != h.stores[1].Applied() {
			t.Fatalf("reported %d, applied %d", resp.Applied, h.stores[1].Applied())
		}
	}
	s.HandleAppend(&AppendRequest{Entries: entries})
	h.net.SetFaults(Faults{})
	h.converged()
}

func TestLostAndDuplicatedMessagesNeverApplyTwice(t *testing.T) {
	h := newHarness(t, 2, 0)
	var n atomic.Int64
	h.net.SetFaults(Faults{
		DropReply: func(url string) bool { return n.Add(1)%3 == 0 },
		Duplicate: func(url string) bool { return n.Load()%5 == 0 },
	})
	h.mustWrite(0, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	for i := 0; i < 100; i++ {
		if _, err := h.write(0, "INSERT INTO t VALUES (?)", int64(i)); err != nil {
			var at *AckTimeoutError
			if !errors.As(err, &at) {
				t.Fatal(err)
			}
		}
	}
	h.net.SetFaults(Faults{})
	h.converged()
}

func TestSlaveRestartingMidStreamResumesFromItsAppliedIndex(t *testing.T) {
	h := newHarness(t, 2, 0)
	h.mustWrite(0, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				h.write(0, "INSERT INTO t VALUES (?)", int64(round*1000+i))
			}
		}()
		time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
		h.crashSlave(2)
		h.startSlave(2)
		wg.Wait()
	}
	h.converged()
}

func TestAckLevelsWaitForTheirNodesAndTimeOutWithTheIndex(t *testing.T) {
	h := newHarness(t, 2, 0)
	h.mustWrite(0, "CREATE TABLE t (x)")
	down := map[string]bool{}
	var mu sync.Mutex
	h.net.SetFaults(Faults{Drop: func(url string) bool { mu.Lock(); defer mu.Unlock(); return down[url] }})
	set := func(url string, d bool) { mu.Lock(); down[url] = d; mu.Unlock() }

	// One slave of two down: quorum (2 of 3) is still reached; all is not.
	set(slaveURL(2), true)
	if _, err := h.write(0, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("quorum with one slave down: %v", err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := h.master.Write(context.Background(), &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO t VALUES (2)"}}}, "all")
		res <- err
	}()
	var err error
	h.eventually("ack=all to time out", func() bool {
		select {
		case err = <-res:
			return true
		default:
			return false
		}
	})
	var at *AckTimeoutError
	if !errors.As(err, &at) || at.Index != 3 {
		t.Fatalf("ack=all with a slave down: %v", err)
	}
	// Both down: quorum times out too, and says where the write is.
	set(slaveURL(1), true)
	go func() { _, err := h.write(0, "INSERT INTO t VALUES (3)"); res <- err }()
	h.eventually("ack=quorum to time out", func() bool {
		select {
		case err = <-res:
			return true
		default:
			return false
		}
	})
	if !errors.As(err, &at) || at.Index != 4 {
		t.Fatalf("quorum with both slaves down: %v", err)
	}
	// ack=master answers from the master alone.
	if _, err := h.master.Write(context.Background(), &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO t VALUES (4)"}}}, "master"); err != nil {
		t.Fatal(err)
	}
	set(slaveURL(1), false)
	set(slaveURL(2), false)
	h.converged()
}

func TestSlaveBehindTheTruncatedLogGetsASnapshot(t *testing.T) {
	h := newHarness(t, 2, 50)
	h.mustWrite(0, "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB DEFAULT (randomblob(16)))")
	h.converged()
	h.net.SetFaults(Faults{Drop: func(url string) bool { return url == slaveURL(2) }})
	for i := 0; i < 300; i++ {
		h.mustWrite(1, "INSERT INTO t (id) VALUES (?)", int64(i))
	}
	first := h.mstore.FirstLogIndex()
	if first <= h.stores[2].Applied()+1 {
		t.Fatalf("log was not truncated past slave 2 (first %d, slave at %d)", first, h.stores[2].Applied())
	}
	h.net.SetFaults(Faults{})
	h.converged()
	// The slave may report the snapshot's index a moment before the
	// master counts the snapshot as sent.
	h.eventually("the master to count slave 2's snapshot", func() bool {
		for _, f := range h.master.Followers() {
			if f.ID == 2 {
				return f.Snapshots >= 1
			}
		}
		return false
	})
	for _, f := range h.master.Followers() {
		if f.ID == 2 && f.Snapshots != 1 {
			t.Fatalf("slave 2 got %d snapshots", f.Snapshots)
		}
		if f.ID == 1 && f.Snapshots != 0 {
			t.Fatalf("slave 1 got %d snapshots", f.Snapshots)
		}
	}
}

func TestDivergedSlaveIsRepairedWithASnapshot(t *testing.T) {
	h := newHarness(t, 1, 0)
	h.mustWrite(0, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	h.mustWrite(0, "INSERT INTO t VALUES (1)")
	h.converged()
	// Someone changes the slave's file behind the database's back.
	h.crashSlave(1)
	raw, err := sqlite.Open(filepath.Join(h.dir, "slave1.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.ExecScript("DROP TABLE t"); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	h.startSlave(1)
	h.mustWrite(0, "INSERT INTO t VALUES (2)")
	h.converged()
}

func TestForwardedWriteAnswersOnlyOnceTheSlaveHasApplied(t *testing.T) {
	h := newHarness(t, 2, 0)
	h.mustWrite(0, "CREATE TABLE t (x)")
	for i := 0; i < 20; i++ {
		out := h.mustWrite(2, "INSERT INTO t VALUES (?)", int64(i))
		if h.stores[2].Applied() < out.Index {
			t.Fatalf("slave answered at applied %d before its write's index %d", h.stores[2].Applied(), out.Index)
		}
	}
	// Schema changes from a slave are refused by the master too.
	_, err := h.write(1, "CREATE TABLE u (x)")
	var sd *store.SchemaDeniedError
	if !errors.As(err, &sd) {
		t.Fatalf("schema change through a slave: %v", err)
	}
	// With the master gone, a forward fails as unavailable.
	h.net.Remove(masterURL)
	_, err = h.write(1, "INSERT INTO t VALUES (99)")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("master gone: %v", err)
	}
}

// A write forwarded by a slave counts that slave toward its ack level (it
// answers only once it has applied the write), and nothing more: with one
// master and two slaves the master alone plus the forwarder are a quorum,
// with four slaves they are not.
func TestForwardedWriteCountsItsSlaveTowardTheQuorumAndNoOtherNode(t *testing.T) {
	h := newHarness(t, 2, 0)
	h.mustWrite(0, "CREATE TABLE t (x)")
	h.converged()
	// Slave 2 is cut off; slave 1 applies appends but the master never
	// hears back, so only the forwarder itself can vouch for its write.
	h.net.SetFaults(Faults{
		Drop:      func(url string) bool { return url == slaveURL(2) },
		DropReply: func(url string) bool { return url == slaveURL(1) },
	})
	out, err := h.write(1, "INSERT INTO t VALUES (1)")
	if err != nil {
		t.Fatalf("forwarded quorum write with master + forwarder: %v", err)
	}
	if h.stores[1].Applied() < out.Index {
		t.Fatalf("slave 1 answered at applied %d before its write's index %d", h.stores[1].Applied(), out.Index)
	}
	// Written at the master, the same write needs a slave's answer.
	var ackErr *AckTimeoutError
	if _, err := h.write(0, "INSERT INTO t VALUES (2)"); !errors.As(err, &ackErr) {
		t.Fatalf("quorum write at the master without any slave's answer: %v", err)
	}

	big := newHarness(t, 4, 0)
	big.mustWrite(0, "CREATE TABLE t (x)")
	big.converged()
	cut := map[string]bool{slaveURL(2): true, slaveURL(3): true, slaveURL(4): true}
	big.net.SetFaults(Faults{Drop: func(url string) bool { return cut[url] }})
	if _, err := big.write(1, "INSERT INTO t VALUES (1)"); !errors.As(err, &ackErr) {
		t.Fatalf("forwarded quorum write with 2 of 5 nodes: %v", err)
	}
	big.net.SetFaults(Faults{Drop: func(url string) bool { return url == slaveURL(3) || url == slaveURL(4) }})
	if _, err := big.write(1, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatalf("forwarded quorum write with 3 of 5 nodes: %v", err)
	}
}

// A write sent again with its request id (a slave resending a forward, a
// client retrying) is answered from the first time and writes no entry:
// the log the master ships stays whole (it once took the duplicate's
// empty entry into its in-memory tail and crashed the master).
func TestRetriedRequestIDsShipNoEntry(t *testing.T) {
	h := newHarness(t, 2, 1000)
	h.mustWrite(0, "CREATE TABLE r (id INTEGER PRIMARY KEY, v)")
	var first store.Outcome
	for i := 0; i < 3; i++ {
		reqs := []*store.Request{
			{Ctx: context.Background(), Stmts: []rlog.Statement{{SQL: "INSERT INTO r (v) VALUES ('once')"}}, RequestID: "same"},
			{Ctx: context.Background(), Stmts: []rlog.Statement{{SQL: "INSERT INTO r (v) VALUES (?)", Pos: []any{int64(i)}}}},
		}
		for j, req := range reqs {
			out, err := h.master.Write(context.Background(), req, "quorum")
			if err != nil {
				t.Fatalf("write %d/%d: %v", i, j, err)
			}
			if j == 0 && i == 0 {
				first = out
			} else if j == 0 && (!out.Duplicate || out.Index != first.Index) {
				t.Fatalf("retry %d answered %+v, first %+v", i, out, first)
			}
			tailIsWhole(t, h.master.tail)
		}
	}
	h.converged()
	if n := len(dumpRows(t, h.mstore, "r")); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
}

// tailIsWhole fails unless the in-memory tail of the shipped log holds
// real entries with consecutive indexes.
func tailIsWhole(t *testing.T, tl *tail) {
	t.Helper()
	tl.mu.RLock()
	defer tl.mu.RUnlock()
	live := tl.entries[tl.head:]
	for i, e := range live {
		if e.Index == 0 || (i > 0 && e.Index != live[i-1].Index+1) {
			t.Fatalf("the shipped log's tail holds entry %d at %d of %d", e.Index, i, len(live))
		}
	}
}

func dumpRows(t *testing.T, s *store.Store, table string) [][]any {
	t.Helper()
	res, err := s.Read(context.Background(), []rlog.Statement{{SQL: "SELECT * FROM " + table}}, store.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return res[0].Rows
}

// A restarted master learns where each slave is and ships from there. It
// once shipped from index 0 after every restart, so a slave that was up to
// date got a whole snapshot when the log had been truncated.
func TestRestartedMasterSendsNoSnapshotToSlavesThatAreUpToDate(t *testing.T) {
	h := newHarness(t, 2, 20)
	h.mustWrite(0, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
	for i := 0; i < 100; i++ {
		h.mustWrite(0, "INSERT INTO t (id) VALUES (?)", int64(i))
	}
	h.converged()
	if first := h.mstore.FirstLogIndex(); first <= 1 {
		t.Fatalf("the log was not truncated (first index %d)", first)
	}
	h.master.Close()
	urls := map[int]string{1: slaveURL(1), 2: slaveURL(2)}
	h.master = NewMaster(MasterConfig{URL: masterURL, Slaves: urls, AckTimeout: 2 * time.Second, LogKeep: 20, TempDir: h.dir, ShipBatch: 64, Logf: func(string, ...any) {}}, h.mstore, h.net, h.clock)
	h.net.AddMaster(masterURL, h.master)
	for i := 100; i < 110; i++ {
		h.mustWrite(0, "INSERT INTO t (id) VALUES (?)", int64(i))
	}
	h.converged()
	for _, f := range h.master.Followers() {
		if f.Snapshots != 0 {
			t.Fatalf("slave %d got %d snapshots from the restarted master; it needed none", f.ID, f.Snapshots)
		}
	}
}
