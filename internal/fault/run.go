package fault

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/testcluster"
	"github.com/ddbgo/ddb/internal/verify"
)

// Options configure one run.
type Options struct {
	Seed       uint64
	Duration   time.Duration // how long workloads and faults run
	FaultEvery time.Duration // mean time between faults (0: no faults)
	Faults     []string      // fault kinds to draw from (default: all)
	Workloads  []string      // default: append, bank, register, determinism, heavy
	Clients    int           // clients per workload (default 4)
	Bug        string        // DDB_INJECT_BUG for every node (tests of the checkers)
	KeepDir    string        // where a failing run's files are kept (default: the temp dir)
	Logf       func(string, ...any)
}

// AllFaults are the fault kinds.
var AllFaults = []string{"kill", "kill-master", "pause", "isolate", "isolate-slave", "split", "one-way", "delay", "wipe"}

// AllWorkloads are the workloads.
var AllWorkloads = []string{"append", "bank", "register", "determinism", "heavy"}

// Report is what a run found.
type Report struct {
	Seed      uint64
	Faults    []string // what was injected, when
	Ops       map[string]int
	Anomalies []string
	Kept      string // folder with logs, histories and databases (failing runs)
}

// run is one run's state.
type run struct {
	t       testcluster.TB
	o       Options
	c       *testcluster.Cluster
	rng     *rand.Rand
	start   time.Time
	toSlave map[int]*Link    // master -> slave i
	toMast  map[int]*Link    // slave i -> master
	between map[[2]int]*Link // slave i -> slave j
	http    *http.Client

	mu        sync.Mutex
	anomalies []string
	faults    []string
	ops       map[string]int
	appended  map[int64]verify.Outcome // append workload: id -> ok, unknown or failed
	heavy     map[[2]int]heavyOp       // heavy workload: (client, n) -> its write
	regOps    []porcupine.Operation
	regInfo   *porcupine.LinearizationInfo // of a history found not linearizable
}

// anomaly records what a checker found: at most 50 of each checker (the
// text before the first colon), so one that reports thousands leaves room
// for the others.
func (r *run) anomaly(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.anomalies, _ = verify.Record(r.anomalies, fmt.Sprintf(format, args...), 50)
}

func (r *run) count(w string) {
	r.mu.Lock()
	r.ops[w]++
	r.mu.Unlock()
}

func (r *run) logf(format string, args ...any) {
	if r.o.Logf != nil {
		r.o.Logf("[%6.1fs] "+format, append([]any{time.Since(r.start).Seconds()}, args...)...)
	}
}

// Run starts a cluster of a master and two slaves behind proxies, runs the
// workloads under faults, heals everything, and checks.
func Run(t testcluster.TB, o Options) Report {
	if o.Clients == 0 {
		o.Clients = 4
	}
	if len(o.Faults) == 0 {
		o.Faults = AllFaults
	}
	if len(o.Workloads) == 0 {
		o.Workloads = AllWorkloads
	}
	r := &run{t: t, o: o, rng: rand.New(rand.NewPCG(o.Seed, o.Seed^0xfa17)), start: time.Now(),
		toSlave: map[int]*Link{}, toMast: map[int]*Link{}, between: map[[2]int]*Link{}, ops: map[string]int{}, appended: map[int64]verify.Outcome{}, heavy: map[[2]int]heavyOp{},
		http: &http.Client{Timeout: 15 * time.Second}}
	r.logf("seed %d: %v of %v with faults %v every ~%v", o.Seed, o.Workloads, o.Duration, o.Faults, o.FaultEvery)
	r.c = testcluster.New(t, 2, "-ack-timeout", "2s", "-read-timeout", "2s", "-log-keep", "3000", "-query-timeout", "500ms", "-max-result-bytes", "2000000", "-check-interval", "1s")
	if o.Bug != "" {
		r.c.Env = []string{"DDB_INJECT_BUG=" + o.Bug}
	}
	for i := 1; i <= 2; i++ {
		a, err := NewLink(fmt.Sprintf("master->slave%d", i), fmt.Sprintf("127.0.0.1:%d", r.c.Port+i))
		if err != nil {
			t.Fatalf("%v", err)
		}
		b, err := NewLink(fmt.Sprintf("slave%d->master", i), fmt.Sprintf("127.0.0.1:%d", r.c.Port))
		if err != nil {
			t.Fatalf("%v", err)
		}
		r.toSlave[i], r.toMast[i] = a, b
		t.Cleanup(a.Close)
		t.Cleanup(b.Close)
		r.c.Flags[i] = []string{"-master", b.URL(), "-advertise", a.URL()}
	}
	// Under Raft the slaves talk to each other too (votes, and a slave
	// that leads sends the log): each direction has a link of its own.
	for _, p := range [][2]int{{1, 2}, {2, 1}} {
		l, err := NewLink(fmt.Sprintf("slave%d->slave%d", p[0], p[1]), fmt.Sprintf("127.0.0.1:%d", r.c.Port+p[1]))
		if err != nil {
			t.Fatalf("%v", err)
		}
		r.between[p] = l
		t.Cleanup(l.Close)
	}
	r.c.Flags[1] = append(r.c.Flags[1], "-slaves", r.toSlave[1].URL()+","+r.between[[2]int{1, 2}].URL())
	r.c.Flags[2] = append(r.c.Flags[2], "-slaves", r.between[[2]int{2, 1}].URL()+","+r.toSlave[2].URL())
	r.c.Flags[0] = []string{"-slaves", r.toSlave[1].URL() + "," + r.toSlave[2].URL()}
	for i := 0; i <= 2; i++ {
		r.c.StartNode(i)
	}
	r.c.WaitReady()
	r.setup()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	work := map[string]func(int, <-chan struct{}){
		"append": r.appendClient, "bank": r.bankClient, "register": r.registerClient, "determinism": r.determinismClient,
		"heavy": r.heavyClient,
	}
	quiet := r.terms() // without faults, no node's term may change
	for _, w := range o.Workloads {
		clients := o.Clients
		if w == "heavy" {
			// One client: each of its writes costs every node up to a
			// second of CPU, and more would only queue up behind it.
			clients = 1
		}
		for cl := 0; cl < clients; cl++ {
			wg.Add(1)
			go func(f func(int, <-chan struct{}), cl int) { defer wg.Done(); f(cl, stop) }(work[w], cl)
		}
	}
	faultsDone := make(chan struct{})
	go func() { defer close(faultsDone); r.faultLoop(stop) }()
	time.Sleep(o.Duration)
	close(stop)
	<-faultsDone
	wg.Wait()
	if o.FaultEvery <= 0 {
		if now := r.terms(); now != quiet {
			r.anomaly("terms changed without any fault (a write cost an election?): %s, then %s", quiet, now)
		}
	}
	r.heal()
	r.check()
	rep := Report{Seed: o.Seed, Faults: r.faults, Ops: r.ops, Anomalies: r.anomalies}
	if len(rep.Anomalies) > 0 {
		rep.Kept = r.keep()
	}
	return rep
}

func (r *run) post(node int, body map[string]any) (int, []byte, error) {
	st, out, _, err := r.postIndex(node, body)
	return st, out, err
}

// postIndex is post that also returns the answer's X-Ddb-Index (0: none).
func (r *run) postIndex(node int, body map[string]any) (int, []byte, uint64, error) {
	b, _ := json.Marshal(body)
	resp, err := r.http.Post(r.c.URL(node)+"/", "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	index, _ := strconv.ParseUint(resp.Header.Get("X-Ddb-Index"), 10, 64)
	return resp.StatusCode, out, index, err
}

func (r *run) setup() {
	stmts := verify.Schema
	for _, q := range stmts {
		if st, b, err := r.postToLeader(map[string]any{"command": "exec", "query": q}); err != nil || st != 200 {
			r.t.Fatalf("setup %q: %d %s %v", q, st, b, err)
		}
	}
	var qs []map[string]any
	for i := 0; i < bankAccounts; i++ {
		qs = append(qs, map[string]any{"query": verify.BankInitSQL, "params": []any{i, bankTotal / bankAccounts}})
	}
	if st, b, err := r.postToLeader(map[string]any{"command": "exec", "queries": qs}); err != nil || st != 200 {
		r.t.Fatalf("setup bank: %d %s %v", st, b, err)
	}
	r.c.WaitConverged(30*time.Second, 1, 2)
}

// postToLeader sends a schema change (which only the leader accepts) to
// the node that leads, trying again while leadership moves (a loaded test
// machine can delay heartbeats past an election timeout).
func (r *run) postToLeader(body map[string]any) (int, []byte, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		node := 0
		for id := 0; id <= 2; id++ {
			if r.c.Role(id) == "leader" {
				node = id
			}
		}
		st, b, err := r.post(node, body)
		if (err == nil && st != 403 && st != 503) || time.Now().After(deadline) {
			return st, b, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// faultLoop injects one fault at a time, drawn from the seed, until stop.
func (r *run) faultLoop(stop <-chan struct{}) {
	if r.o.FaultEvery <= 0 {
		<-stop
		return
	}
	for {
		gap := r.o.FaultEvery/2 + time.Duration(r.rng.Int64N(int64(r.o.FaultEvery)))
		select {
		case <-stop:
			return
		case <-time.After(gap):
		}
		kind := r.o.Faults[r.rng.IntN(len(r.o.Faults))]
		hold := 300*time.Millisecond + time.Duration(r.rng.Int64N(int64(1700*time.Millisecond)))
		node := r.rng.IntN(3)
		slave := 1 + r.rng.IntN(2)
		desc := ""
		switch kind {
		case "kill", "kill-master":
			if kind == "kill-master" {
				node = 0
			}
			desc = fmt.Sprintf("kill -9 node %d, restart after %v", node, hold.Round(time.Millisecond))
			r.note(desc)
			r.c.Node(node).Kill()
			time.Sleep(hold)
			r.c.StartNode(node)
		case "pause":
			desc = fmt.Sprintf("SIGSTOP node %d for %v", node, hold.Round(time.Millisecond))
			r.note(desc)
			r.c.Node(node).Pause()
			time.Sleep(hold)
			r.c.Node(node).Resume()
		case "isolate", "isolate-slave":
			if kind == "isolate-slave" {
				node = slave
			}
			links := r.linksOf(node)
			desc = fmt.Sprintf("isolate node %d for %v", node, hold.Round(time.Millisecond))
			r.note(desc)
			for _, l := range links {
				l.Cut()
			}
			time.Sleep(hold)
			for _, l := range links {
				l.Heal()
			}
		case "split":
			desc = fmt.Sprintf("split the slaves from the master for %v", hold.Round(time.Millisecond))
			r.note(desc)
			r.eachMasterLink((*Link).Cut)
			time.Sleep(hold)
			r.eachMasterLink((*Link).Heal)
		case "one-way":
			l := r.toSlave[slave]
			if r.rng.IntN(2) == 0 {
				l = r.toMast[slave]
			}
			desc = fmt.Sprintf("cut %s (one way) for %v", l.Name, hold.Round(time.Millisecond))
			r.note(desc)
			l.Cut()
			time.Sleep(hold)
			l.Heal()
		case "delay":
			d := time.Duration(5+r.rng.IntN(60)) * time.Millisecond
			desc = fmt.Sprintf("delay every link by %v for %v", d, hold.Round(time.Millisecond))
			r.note(desc)
			r.eachLink(func(l *Link) { l.Delay(d) })
			time.Sleep(hold)
			r.eachLink((*Link).Heal)
		case "wipe":
			if why := r.rejoining(); why != "" {
				// One loss of data at a time: while a node that lost its
				// data is added back, the cluster runs with one voter less
				// (REPLICATION.md, "Membership"), and a second loss could
				// leave no majority holding the log.
				r.logf("no wipe now: %s", why)
				continue
			}
			desc = fmt.Sprintf("wipe slave %d (kill, delete its database) and let it rejoin", slave)
			r.note(desc)
			r.c.Node(slave).Kill()
			for _, suf := range []string{"", "-wal", "-shm"} {
				os.Remove(r.c.DBPath(slave) + suf)
			}
			time.Sleep(hold / 2)
			r.c.StartNode(slave)
		}
	}
}

// rejoining says why a node may still be being added back after it lost
// its data ("" when every node answers as a voter and none reports a node
// being added back).
func (r *run) rejoining() string {
	for i := 0; i <= 2; i++ {
		st, err := r.c.Status(i)
		if err != nil {
			return fmt.Sprintf("node %d does not answer", i)
		}
		if ai, _ := st["applied_index"].(float64); ai == 0 {
			return fmt.Sprintf("node %d holds no data yet", i)
		}
		if role := st["role"]; role == "learner" || role == "removed" {
			return fmt.Sprintf("node %d is a %v", i, role)
		}
		if rj, _ := st["rejoining"].([]any); len(rj) > 0 {
			return fmt.Sprintf("node %d reports nodes %v being added back", i, rj)
		}
		if mv, _ := st["missing_voters"].([]any); len(mv) > 0 {
			return fmt.Sprintf("node %d reports voters %v missing", i, mv)
		}
	}
	return ""
}

// terms describes every node's Raft term and known leader.
func (r *run) terms() string {
	var out []string
	for id := 0; id <= 2; id++ {
		st, err := r.c.Status(id)
		if err != nil {
			return fmt.Sprintf("node %d: %v", id, err)
		}
		rf, _ := st["raft"].(map[string]any)
		out = append(out, fmt.Sprintf("node %d term %v leader %v", id, rf["term"], rf["leader_id"]))
	}
	return strings.Join(out, ", ")
}

func (r *run) note(desc string) {
	r.logf("fault: %s", desc)
	r.mu.Lock()
	r.faults = append(r.faults, fmt.Sprintf("t=%.1fs %s", time.Since(r.start).Seconds(), desc))
	r.mu.Unlock()
}

func (r *run) linksOf(node int) []*Link {
	if node == 0 {
		return []*Link{r.toSlave[1], r.toSlave[2], r.toMast[1], r.toMast[2]}
	}
	other := 3 - node
	return []*Link{r.toSlave[node], r.toMast[node], r.between[[2]int{node, other}], r.between[[2]int{other, node}]}
}

// eachMasterLink calls f on every link between the master and a slave
// (a "split": the slaves keep talking to each other).
func (r *run) eachMasterLink(f func(*Link)) {
	for i := 1; i <= 2; i++ {
		f(r.toSlave[i])
		f(r.toMast[i])
	}
}

func (r *run) eachLink(f func(*Link)) {
	r.eachMasterLink(f)
	for _, l := range r.between {
		f(l)
	}
}

// heal undoes every fault and waits until all nodes have applied the
// master's whole log.
func (r *run) heal() {
	r.eachLink((*Link).Heal)
	for i := 0; i <= 2; i++ {
		p := r.c.Node(i)
		p.Resume()
		if p.Exited() {
			r.c.StartNode(i)
		}
	}
	// (Not WaitReady: a node the consistency checker found diverged runs
	// but serves nothing; checkConsistency reports it.)
	r.c.WaitUp()
	// A wiped node replays the whole log when the leader still holds it
	// (-log-keep 3000): with the heavy workload, a minute or more of
	// CPU on a machine the other nodes share.
	deadline := time.Now().Add(240 * time.Second)
	for {
		m := r.c.Applied(0)
		if m > 0 && r.c.Applied(1) == m && r.c.Applied(2) == m {
			r.logf("healed: every node at index %d", m)
			return
		}
		if time.Now().After(deadline) {
			r.anomaly("nodes did not converge after healing: master %d, slave1 %d, slave2 %d", m, r.c.Applied(1), r.c.Applied(2))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *run) check() {
	// The databases are compared at one index: a write a client sent
	// before the run stopped may commit after heal saw every node at one
	// index, and a node that has not applied it yet is behind, not
	// different. They are read again until they hold the same index.
	var dbs []*inspect.Database
	deadline := time.Now().Add(60 * time.Second)
	for {
		dbs = dbs[:0]
		for i := 0; i <= 2; i++ {
			d, err := inspect.Load(r.c.DBPath(i))
			if err != nil {
				r.anomaly("read node %d's database: %v", i, err)
				return
			}
			dbs = append(dbs, d)
		}
		if dbs[0].Applied == dbs[1].Applied && dbs[1].Applied == dbs[2].Applied {
			break
		}
		if time.Now().After(deadline) {
			r.anomaly("the databases did not reach one index: %d, %d, %d", dbs[0].Applied, dbs[1].Applied, dbs[2].Applied)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, d := range inspect.Compare(dbs, 10) {
		r.anomaly("replicas differ: %s", d)
	}
	r.checkConsistency()
	for _, w := range r.o.Workloads {
		switch w {
		case "append":
			r.checkAppend(dbs)
		case "bank":
			r.checkBank(dbs)
		case "register":
			r.checkRegister()
		case "heavy":
			r.checkHeavy(dbs)
		}
	}
}

// keep copies the cluster's folder (logs, databases) and the histories to a
// folder that outlives the test, and returns its path.
func (r *run) keep() string {
	for i := 0; i <= 2; i++ {
		r.c.Node(i).Kill()
	}
	base := r.o.KeepDir
	if base == "" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, fmt.Sprintf("ddb-fault-seed%d-", r.o.Seed))
	if err != nil {
		return ""
	}
	exec.Command("cp", "-r", r.c.Dir+"/.", dir).Run()
	r.mu.Lock()
	defer r.mu.Unlock()
	summary := map[string]any{"seed": r.o.Seed, "options": fmt.Sprintf("%+v", r.o), "faults": r.faults, "ops": r.ops, "anomalies": r.anomalies}
	b, _ := json.MarshalIndent(summary, "", "  ")
	os.WriteFile(filepath.Join(dir, "report.json"), b, 0o644)
	b, _ = json.MarshalIndent(r.regOps, "", " ")
	os.WriteFile(filepath.Join(dir, "register-history.json"), b, 0o644)
	if r.regInfo != nil {
		// porcupine's view of the history: the longest linearizable
		// prefixes, and where each one gets stuck.
		porcupine.VisualizePath(registerModel, *r.regInfo, filepath.Join(dir, "register-history.html"))
	}
	var ids []string
	for id, o := range r.appended {
		ids = append(ids, fmt.Sprintf("%d %s", id, o))
	}
	sort.Strings(ids)
	os.WriteFile(filepath.Join(dir, "append-history.txt"), []byte(strings.Join(ids, "\n")+"\n"), 0o644)
	return dir
}

// checkConsistency asks the cluster's own consistency checker: after a
// write made once everything healed, every node must report a check that
// covers it, and none may report a divergence (which it found while the
// run went on, or now), nor have repaired itself (a node that a check
// found diverged replaces its data with the leader's: that it had to is
// the anomaly).
func (r *run) checkConsistency() {
	for _, q := range []string{"CREATE TABLE IF NOT EXISTS fault_probe (x)", "INSERT INTO fault_probe VALUES (1)"} {
		if resp, err := r.c.Do(0, map[string]any{"command": "exec", "query": q}); err != nil || resp.Status != 200 {
			r.anomaly("consistency checker: the probe write failed: %v %v", resp, err)
			return
		}
	}
	want := r.c.Applied(0)
	deadline := time.Now().Add(90 * time.Second)
	for i := 0; i <= 2; i++ {
		for {
			st, err := r.c.Status(i)
			cs, _ := st["consistency"].(map[string]any)
			if err == nil && cs != nil {
				if n, _ := cs["repairs"].(float64); n > 0 {
					r.anomaly("consistency checker: node %d repaired itself %v times, the last at index %v (a check had found its data different from the leader's): %v", i, n, cs["repaired_index"], cs["detail"])
					break
				}
				idx, _ := cs["checked_index"].(float64)
				if state := cs["state"]; uint64(idx) >= want && (state == "ok" || state == "diverged") {
					if state == "diverged" {
						r.anomaly("consistency checker: node %d reports %v diverged at index %v: %v", i, cs["diverged_nodes"], idx, cs["detail"])
					}
					break
				}
			}
			if time.Now().After(deadline) {
				r.anomaly("consistency checker: node %d reported no check covering index %d: %v %v", i, want, cs, err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
