package main

// The side-by-side comparison with rqlite (-rqlited PATH): the tool starts
// three rqlite nodes beside its own cluster and runs each workload on both,
// alternating slices of equal length, with the same client, so both see the
// same moments of a shared machine.

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// rqCluster is three rqlited processes: node 0 bootstraps and leads, 1 and
// 2 join it.
type rqCluster struct {
	urls  []string // HTTP base URLs, leader first, each ending in "/"
	procs []*exec.Cmd
	bin   string
	args  [][]string // each node's command line
	data  []string   // each node's data directory
	logs  []*os.File
}

func startRqlite(tb *testcluster.Standalone, bin string) *rqCluster {
	abs, err := filepath.Abs(bin)
	if err != nil {
		tb.Fatalf("-rqlited: %v", err)
	}
	if _, err := os.Stat(abs); err != nil {
		tb.Fatalf("-rqlited: %v", err)
	}
	base, err := testcluster.FreeBasePort(6)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	dir := tb.TempDir()
	c := &rqCluster{bin: abs}
	tb.Cleanup(c.stop)
	for i := 0; i < 3; i++ {
		httpAddr := fmt.Sprintf("127.0.0.1:%d", base+2*i)
		args := []string{"-node-id", fmt.Sprint(i + 1), "-http-addr", httpAddr,
			"-raft-addr", fmt.Sprintf("127.0.0.1:%d", base+2*i+1)}
		if i > 0 {
			args = append(args, "-join", fmt.Sprintf("127.0.0.1:%d", base+1))
		}
		data := filepath.Join(dir, fmt.Sprintf("rq%d", i+1))
		args = append(args, data)
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("rq%d.log", i+1)))
		if err != nil {
			tb.Fatalf("%v", err)
		}
		c.args, c.data, c.logs = append(c.args, args), append(c.data, data), append(c.logs, logf)
		c.procs = append(c.procs, nil)
		c.start(tb, i)
		c.urls = append(c.urls, "http://"+httpAddr+"/")
		if i == 0 {
			c.waitLeader(tb)
		}
	}
	// Every node knows the leader and is a voter once the leader lists
	// all three as reachable.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var nodes map[string]struct {
			Reachable bool `json:"reachable"`
			Voter     bool `json:"voter"`
		}
		if rqGet(c.urls[0]+"nodes", &nodes) == nil && len(nodes) == 3 {
			ok := true
			for _, n := range nodes {
				ok = ok && n.Reachable && n.Voter
			}
			if ok {
				return c
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("rqlite: three voting nodes did not come up within a minute (logs in %s)", dir)
	return nil
}

// start starts node i's process.
func (c *rqCluster) start(tb *testcluster.Standalone, i int) {
	cmd := exec.Command(c.bin, c.args[i]...)
	cmd.Stdout, cmd.Stderr = c.logs[i], c.logs[i]
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start rqlited: %v", err)
	}
	c.procs[i] = cmd
}

// restart stops node i (SIGTERM), removes its data if wipe, starts it
// again, and waits until it serves and has applied the leader's commit
// index.
func (c *rqCluster) restart(tb *testcluster.Standalone, i int, wipe bool) {
	c.restartWithin(tb, i, wipe, 2*time.Minute)
}

// restartWithin is restart, waiting up to within for the follower to
// catch up.
func (c *rqCluster) restartWithin(tb *testcluster.Standalone, i int, wipe bool, within time.Duration) {
	c.stopOne(c.procs[i])
	if wipe {
		os.RemoveAll(c.data[i])
	}
	c.start(tb, i)
	waitServes(c.urls[i])
	c.settleWithin(within)
}

func (c *rqCluster) waitLeader(tb *testcluster.Standalone) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(c.urls[0] + "readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("rqlite's first node did not become ready within a minute")
}

func (c *rqCluster) stop() {
	for _, p := range c.procs {
		if p != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range c.procs {
		if p != nil {
			c.stopOne(p)
		}
	}
}

// stopOne sends SIGTERM and waits for the process to end (SIGKILL after
// a minute).
func (c *rqCluster) stopOne(p *exec.Cmd) {
	_ = p.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = p.Process.Kill()
		<-done
	}
}

// cpu is the CPU time the three processes have used.
func (c *rqCluster) cpu() time.Duration {
	var t time.Duration
	for _, p := range c.procs {
		t += bench.CPUTime(p.Process.Pid)
	}
	return t
}

// pids are the nodes' processes.
func (c *rqCluster) pids() []int {
	var out []int
	for _, p := range c.procs {
		out = append(out, p.Process.Pid)
	}
	return out
}

// ourPids are the processes of our cluster's nodes (none if it was not
// started here).
func ourPids(c *testcluster.Cluster) []int {
	var out []int
	if c != nil {
		for i := 0; i <= c.Slaves; i++ {
			out = append(out, c.Node(i).Pid())
		}
	}
	return out
}

// settle waits (up to two minutes) until both followers have applied the
// leader's commit index.
func (c *rqCluster) settle() { c.settleWithin(2 * time.Minute) }

// settleWithin is settle, waiting up to within.
func (c *rqCluster) settleWithin(within time.Duration) {
	type raftStatus struct {
		Store struct {
			Raft struct {
				Applied uint64 `json:"applied_index"`
				Commit  uint64 `json:"commit_index"`
			} `json:"raft"`
		} `json:"store"`
	}
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var l raftStatus
		if rqGet(c.urls[0]+"status", &l) != nil {
			return
		}
		ok := true
		for _, u := range c.urls[1:] {
			var f raftStatus
			if rqGet(u+"status", &f) != nil || f.Store.Raft.Applied < l.Store.Raft.Commit {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rqGet(u string, v any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %d", u, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// rqPost posts an rqlite-API body and fails on an error in any result
// (rqlite answers 200 with the error inside).
func rqPost(hc *http.Client, u string, body []byte) error {
	b, err := bench.Post(hc, u, body)
	if err != nil {
		return err
	}
	var out struct {
		Error   string `json:"error"`
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("%v: %.200s", err, b)
	}
	if out.Error != "" {
		return fmt.Errorf("%s", out.Error)
	}
	for _, r := range out.Results {
		if r.Error != "" {
			return fmt.Errorf("%s", r.Error)
		}
	}
	return nil
}

// pair is one workload run on both systems: ours and rqlite's operation.
type pair struct {
	name    string
	clients int // 0: the -clients flag
	unit    int // rows an operation writes, for the rows/s note (0: none)
	ours    func(cl, i int) error
	rq      func(cl, i int) error
	// drain, when set, waits until the system has applied what the slice
	// sent (queued writes are answered before they are applied): its time
	// counts in the slice's.
	drainOurs, drainRq func() error
}

// sideBySide is one pair's measurement on both systems.
type sideBySide struct {
	name     string
	ours, rq bench.Result
	unit     int
}

// compare runs every pair on both systems, in slices alternating between
// them, and prints the table.
func compare(tb *testcluster.Standalone, c *testcluster.Cluster, ours []string, rqBin string, want map[string]bool, clients int, d time.Duration, md bool, loadMB, largeGB int) {
	rq := startRqlite(tb, rqBin)
	defer func() {
		if loadMB > 0 {
			bulk(tb, c, ours, rq, loadMB, md)
		}
		if largeGB > 0 {
			large(tb, c, ours, rq, largeGB, md)
		}
	}()
	hc := bench.Client(64)
	rows := 10000
	for _, u := range []string{ours[0], rq.urls[0]} {
		if err := rqPost(hc, u+"db/execute", []byte(`["CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, c INTEGER, v TEXT)"]`)); err != nil {
			tb.Fatalf("setup %s: %v", u, err)
		}
		for i := 0; i < rows; i += 500 {
			var qs []string
			for j := 0; j < 500; j++ {
				qs = append(qs, fmt.Sprintf(`["INSERT INTO bench (c, v) VALUES (-1, ?)", "seed %d"]`, i+j))
			}
			if err := rqPost(hc, u+"db/execute?transaction", []byte("["+strings.Join(qs, ",")+"]")); err != nil {
				tb.Fatalf("seed %s: %v", u, err)
			}
		}
	}
	follower := func(urls []string, cl int) string { return urls[1+cl%(len(urls)-1)] }
	rqInsert := func(cl, i int) []byte {
		return []byte(fmt.Sprintf(`[["INSERT INTO bench (c, v) VALUES (?, ?)", %d, "value %d/%d"]]`, cl, cl, i))
	}
	rqRead := func() []byte {
		return []byte(fmt.Sprintf(`[["SELECT id, c, v FROM bench WHERE id = ?", %d]]`, bench.RandomID(rows)))
	}
	nativeRead := func(consistency string) []byte {
		return []byte(fmt.Sprintf(`{"command":"query","query":"SELECT id, c, v FROM bench WHERE id = ?","params":[%d],"consistency":%q}`, bench.RandomID(rows), consistency))
	}
	tx := func(cl, i int) (native, rqBody []byte) {
		var nq, rqq []string
		for j := 0; j < 100; j++ {
			nq = append(nq, fmt.Sprintf(`{"query":"INSERT INTO bench (c, v) VALUES (?, ?)","params":[%d,"tx %d/%d"]}`, cl, i, j))
			rqq = append(rqq, fmt.Sprintf(`["INSERT INTO bench (c, v) VALUES (?, ?)", %d, "tx %d/%d"]`, cl, i, j))
		}
		return []byte(`{"command":"exec","queries":[` + strings.Join(nq, ",") + `]}`), []byte("[" + strings.Join(rqq, ",") + "]")
	}
	readLevel := func(level string) (func(cl, i int) error, func(cl, i int) error) {
		return func(cl, i int) error { return rqPost(hc, follower(ours, cl)+"db/query?level="+level, rqRead()) },
			func(cl, i int) error { return rqPost(hc, follower(rq.urls, cl)+"db/query?level="+level, rqRead()) }
	}
	pairs := []pair{
		{name: "insert via the leader (own API)",
			ours: func(cl, i int) error { _, err := bench.Post(hc, ours[0], bench.InsertBody(cl, i)); return err },
			rq:   func(cl, i int) error { return rqPost(hc, rq.urls[0]+"db/execute", rqInsert(cl, i)) }},
		{name: "insert via a follower (own API)",
			ours: func(cl, i int) error {
				_, err := bench.Post(hc, follower(ours, cl), bench.InsertBody(cl, i))
				return err
			},
			rq: func(cl, i int) error { return rqPost(hc, follower(rq.urls, cl)+"db/execute", rqInsert(cl, i)) }},
		{name: "transaction of 100 inserts via the leader", unit: 100,
			ours: func(cl, i int) error { b, _ := tx(cl, i); _, err := bench.Post(hc, ours[0], b); return err },
			rq:   func(cl, i int) error { _, b := tx(cl, i); return rqPost(hc, rq.urls[0]+"db/execute?transaction", b) }},
		{name: "queued insert via the leader (?queue, until applied)",
			ours:      func(cl, i int) error { return rqPost(hc, ours[0]+"db/execute?queue", rqInsert(cl, i)) },
			rq:        func(cl, i int) error { return rqPost(hc, rq.urls[0]+"db/execute?queue", rqInsert(cl, i)) },
			drainOurs: func() error { return rqPost(hc, ours[0]+"db/execute?queue&wait", rqInsert(-1, 0)) },
			drainRq:   func() error { return rqPost(hc, rq.urls[0]+"db/execute?queue&wait", rqInsert(-1, 0)) }},
		{name: "read on a follower: own API, local / level=none",
			ours: func(cl, i int) error { _, err := bench.Post(hc, follower(ours, cl), nativeRead("local")); return err },
			rq:   func(cl, i int) error { return rqPost(hc, follower(rq.urls, cl)+"db/query?level=none", rqRead()) }},
	}
	for _, level := range []string{"none", "weak", "linearizable"} {
		o, r := readLevel(level)
		pairs = append(pairs, pair{name: "read on a follower: level=" + level, ours: o, rq: r})
	}
	_, rqLin := readLevel("linearizable")
	pairs = append(pairs,
		pair{name: "read on a follower: consistency strong / level=linearizable",
			ours: func(cl, i int) error { _, err := bench.Post(hc, follower(ours, cl), nativeRead("strong")); return err },
			rq:   rqLin},
		pair{name: "at rest, 1 client: insert via the leader", clients: 1,
			ours: func(cl, i int) error { _, err := bench.Post(hc, ours[0], bench.InsertBody(cl, i)); return err },
			rq:   func(cl, i int) error { return rqPost(hc, rq.urls[0]+"db/execute", rqInsert(cl, i)) }},
		pair{name: "at rest, 1 client: read on a follower, level=none", clients: 1,
			ours: func(cl, i int) error { return rqPost(hc, follower(ours, 1)+"db/query?level=none", rqRead()) },
			rq:   func(cl, i int) error { return rqPost(hc, follower(rq.urls, 1)+"db/query?level=none", rqRead()) }},
		pair{name: "at rest, 1 client: read on a follower, level=linearizable", clients: 1,
			ours: func(cl, i int) error { return rqPost(hc, follower(ours, 1)+"db/query?level=linearizable", rqRead()) },
			rq:   func(cl, i int) error { return rqPost(hc, follower(rq.urls, 1)+"db/query?level=linearizable", rqRead()) }},
	)
	oursCPU := func() time.Duration {
		var t time.Duration
		if c != nil {
			for i := 0; i <= c.Slaves; i++ {
				t += bench.CPUTime(c.Node(i).Pid())
			}
		}
		return t
	}
	oursSettle := func() { settleURLs(hc, ours) }
	var out []sideBySide
	for _, p := range pairs {
		if len(want) > 0 && !want[p.name] && !want[shortName(p.name)] {
			continue
		}
		n := clients
		if p.clients > 0 {
			n = p.clients
		}
		var o, r []bench.Result
		for s := 0; s < ceilingSlices; s++ {
			o = append(o, measure(p.name, n, d/ceilingSlices, p.ours, p.drainOurs, oursCPU, oursSettle))
			r = append(r, measure(p.name, n, d/ceilingSlices, p.rq, p.drainRq, rq.cpu, rq.settle))
		}
		row := sideBySide{name: p.name, ours: bench.Merge(o...), rq: bench.Merge(r...), unit: p.unit}
		log.Printf("%-62s ours %8.0f/s  rqlite %8.0f/s  ratio %.2f  errors %d/%d", row.name, row.ours.Rate(), row.rq.Rate(), row.ours.Rate()/row.rq.Rate(), row.ours.Errors, row.rq.Errors)
		for _, e := range []string{row.ours.FirstErr, row.rq.FirstErr} {
			if e != "" {
				log.Printf("    first error: %s", e)
			}
		}
		out = append(out, row)
	}
	printComparison(out, clients, md)
	fmt.Printf("\nresident memory per node after the run: ours %s, rqlite %s\n", bench.Memory(ourPids(c)), bench.Memory(rq.pids()))
}

// shortName is a pair's name as -workloads can give it: its words joined
// by dashes, lower case ("insert-via-the-leader-own-api").
func shortName(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
		} else {
			dash = true
		}
	}
	return b.String()
}

// measure runs one slice and the CPU time the cluster spent on it, then
// lets the cluster settle.
func measure(name string, clients int, d time.Duration, op func(cl, i int) error, drain func() error, cpu func() time.Duration, settle func()) bench.Result {
	before := cpu()
	r := bench.Run(name, clients, d, op)
	if drain != nil {
		t := time.Now()
		if err := drain(); err != nil {
			r.Errors++
			r.FirstErr = "waiting for the queue: " + err.Error()
		}
		r.Duration += time.Since(t)
	}
	r.NodeCPU = cpu() - before
	settle()
	return r
}

// settleURLs waits (up to two minutes) until every node has applied the
// first node's index.
func settleURLs(hc *http.Client, nodes []string) { settleURLsWithin(hc, nodes, 2*time.Minute) }

// settleURLsWithin is settleURLs, waiting up to within.
func settleURLsWithin(hc *http.Client, nodes []string, within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		want := applied(hc, nodes[0])
		ok := true
		for _, n := range nodes[1:] {
			if applied(hc, n) < want {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func printComparison(rows []sideBySide, clients int, md bool) {
	fmt.Printf("\nSide by side with rqlite (3 nodes each, %d clients unless the row says otherwise), in alternating slices.\n\n", clients)
	if md {
		fmt.Println("| workload | ours ops/s | rqlite ops/s | ratio | ours p50 / p99 | rqlite p50 / p99 | ours CPU/op | rqlite CPU/op |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	} else {
		fmt.Printf("%-62s %9s %9s %6s %21s %21s %9s %9s\n", "workload", "ours/s", "rqlite/s", "ratio", "ours p50/p99", "rqlite p50/p99", "ours CPU", "rq CPU")
	}
	lat := func(r bench.Result) string {
		return fmt.Sprintf("%v / %v", r.Pct(50).Round(10*time.Microsecond), r.Pct(99).Round(10*time.Microsecond))
	}
	for _, r := range rows {
		name := r.name
		if r.unit > 0 {
			name += fmt.Sprintf(" (rows/s: %.0f vs %.0f)", float64(r.unit)*r.ours.Rate(), float64(r.unit)*r.rq.Rate())
		}
		ratio := r.ours.Rate() / r.rq.Rate()
		if md {
			fmt.Printf("| %s | %.0f | %.0f | %.2f | %s | %s | %v | %v |\n", name, r.ours.Rate(), r.rq.Rate(), ratio, lat(r.ours), lat(r.rq), r.ours.CPUPerOp().Round(time.Microsecond), r.rq.CPUPerOp().Round(time.Microsecond))
		} else {
			fmt.Printf("%-62s %9.0f %9.0f %6.2f %21s %21s %9v %9v\n", name, r.ours.Rate(), r.rq.Rate(), ratio, lat(r.ours), lat(r.rq), r.ours.CPUPerOp().Round(time.Microsecond), r.rq.CPUPerOp().Round(time.Microsecond))
		}
		if r.ours.Errors+r.rq.Errors > 0 {
			fmt.Printf("    errors: ours %d, rqlite %d\n", r.ours.Errors, r.rq.Errors)
		}
	}
}
