// Package testcluster runs real clusters for end-to-end tests, fault
// injection and benchmarks: it builds the master and node binaries, starts
// them as processes on free ports in a temporary directory, and kills,
// stops and restarts them.
package testcluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB the harness uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binaries builds ./master and ./node once per process and returns the
// directory holding them.
func Binaries() (string, error) {
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "ddb-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range []string{"master", "node"} {
			// The harness's binaries can switch on the fault suite's
			// deliberate defects (package faults); release builds cannot.
			cmd := exec.Command("go", "build", "-tags", "ddb_faults", "-o", filepath.Join(binDir, b), "./"+b)
			cmd.Dir = RepoRoot()
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build ./%s: %v\n%s", b, err, out)
				return
			}
		}
	})
	return binDir, buildErr
}

// FreeBasePort finds a port p such that p .. p+n are all free. It picks
// below the kernel's ephemeral range: a port inside it can be taken by any
// outgoing connection while a killed node is down, and its restart would
// then fail with "address already in use".
func FreeBasePort(n int) (int, error) {
	lo := ephemeralStart() - n - 1
	for attempt := 0; attempt < 200; attempt++ {
		base := 10000 + rand.IntN(lo-10000)
		ok := true
		var lns []net.Listener
		for i := 0; i <= n; i++ {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no run of %d free ports found", n+1)
}

// ephemeralStart is the first port of the kernel's range for outgoing
// connections (Linux), 32768 when it cannot be read.
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 12000 {
				return v
			}
		}
	}
	return 32768
}

// Cluster is a master and its slaves running as processes.
type Cluster struct {
	t      TB
	Dir    string
	Port   int
	Slaves int
	Extra  []string         // flags given to every node
	Env    []string         // extra environment for every node (KEY=value)
	Flags  map[int][]string // extra flags for one node
	// Bin, when it names a node, is the directory holding the master and
	// node binaries that node runs (another build: a rolling upgrade).
	Bin    map[int]string
	Scheme string // "http" (default) or "https"
	bin    string
	nodes  map[int]*Proc
	Client *http.Client
	// spawned counts processes started, to name extra ones' logs.
	spawned int
}

// Proc is one node process.
type Proc struct {
	ID   int
	URL  string
	Args []string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start builds the binaries and starts a master and n slaves.
func Start(t TB, slaves int, extra ...string) *Cluster {
	t.Helper()
	c := New(t, slaves, extra...)
	for i := 0; i <= slaves; i++ {
		c.StartNode(i)
	}
	c.WaitReady()
	return c
}

// New prepares a cluster without starting any node.
func New(t TB, slaves int, extra ...string) *Cluster {
	t.Helper()
	bin, err := Binaries()
	if err != nil {
		t.Fatalf("%v", err)
	}
	port, err := FreeBasePort(slaves + 2)
	if err != nil {
		t.Fatalf("%v", err)
	}
	c := &Cluster{t: t, Dir: t.TempDir(), Port: port, Slaves: slaves, Extra: extra, bin: bin,
		nodes: map[int]*Proc{}, Flags: map[int][]string{}, Bin: map[int]string{}, Client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(func() {
		for _, p := range c.nodes {
			p.Kill()
		}
		if t.Failed() {
			for id, p := range c.nodes {
				b, _ := os.ReadFile(p.Log)
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("--- log of node %d (%s):\n%s", id, p.Log, b)
			}
		}
	})
	return c
}

// URL is node id's URL (0 = master).
func (c *Cluster) URL(id int) string {
	scheme := c.Scheme
	if scheme == "" {
		scheme = "http"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, c.Port+id)
}

// StartNode starts node id (0 = master) with the cluster's flags.
func (c *Cluster) StartNode(id int, extra ...string) *Proc {
	c.t.Helper()
	p := c.Spawn(id, extra...)
	c.nodes[id] = p
	return p
}

// Spawn starts another process for node id (a second one, say) without
// making it the cluster's node id; it is killed when the test ends.
func (c *Cluster) Spawn(id int, extra ...string) *Proc {
	c.t.Helper()
	args := []string{"-port", strconv.Itoa(c.Port), "-host", "127.0.0.1", "-dir", c.Dir}
	args = append(args, c.Extra...)
	args = append(args, c.Flags[id]...)
	args = append(args, extra...)
	dir := c.bin
	if d := c.Bin[id]; d != "" {
		dir = d
	}
	bin := filepath.Join(dir, "master")
	if id == 0 {
		args = append(args, strconv.Itoa(c.Slaves))
	} else {
		bin = filepath.Join(dir, "node")
		args = append(args, strconv.Itoa(id), strconv.Itoa(c.Slaves))
	}
	c.spawned++
	p := &Proc{ID: id, URL: c.URL(id), Args: args, Log: filepath.Join(c.Dir, fmt.Sprintf("node%d.log", id))}
	if _, taken := c.nodes[id]; taken && c.spawned > 1 {
		p.Log = filepath.Join(c.Dir, fmt.Sprintf("node%d-%d.log", id, c.spawned))
	}
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), c.Env...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Dir = c.Dir
	if err := p.cmd.Start(); err != nil {
		c.t.Fatalf("start node %d: %v", id, err)
	}
	p.done = make(chan struct{})
	go func() { p.cmd.Wait(); logf.Close(); close(p.done) }()
	c.t.Cleanup(p.Kill)
	return p
}

// Node returns the process of node id.
func (c *Cluster) Node(id int) *Proc { return c.nodes[id] }

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits (clean shutdown).
func (p *Proc) Stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.Kill()
	}
}

// Pause and Resume send SIGSTOP and SIGCONT.
func (p *Proc) Pause()  { p.cmd.Process.Signal(syscall.SIGSTOP) }
func (p *Proc) Resume() { p.cmd.Process.Signal(syscall.SIGCONT) }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Restart kills node id if running and starts it again.
func (c *Cluster) Restart(id int) *Proc {
	c.nodes[id].Kill()
	return c.StartNode(id)
}

// WaitReady waits until every started node is up and, under Raft, until
// the master leads (when it was started).
func (c *Cluster) WaitReady() {
	c.t.Helper()
	c.WaitUp()
	// Every running node is a member that knows the leader: a node the
	// leader has admitted serves nothing until its addition is applied.
	for id := range c.nodes {
		c.waitReadyz(id)
	}
}

// WaitUp is WaitReady but for /readyz: every node runs and the master
// knows a leader, whether or not each node serves (a node the consistency
// checker found diverged runs, and answers 503).
func (c *Cluster) WaitUp() {
	c.t.Helper()
	for id := range c.nodes {
		c.WaitHealthy(id)
	}
	if _, ok := c.nodes[0]; ok {
		c.WaitLeader(0, 30*time.Second)
	}
}

func (c *Cluster) waitReadyz(id int) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := c.Client.Get(c.URL(id) + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case 200, 401, 403: // ready, or a users file keeps the answer from this client
				return
			}
			last = strings.TrimSpace(string(b))
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("node %d not ready after 30s: %s", id, last)
}

// Role is node id's Raft role ("" when it cannot be asked, or the node
// does not run Raft).
func (c *Cluster) Role(id int) string {
	st, err := c.Status(id)
	if err != nil {
		return ""
	}
	r, _ := st["raft"].(map[string]any)
	role, _ := r["role"].(string)
	return role
}

// WaitLeader waits until node id leads (at once for a node that does not
// run Raft) and returns how long that took.
func (c *Cluster) WaitLeader(id int, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for {
		st, err := c.Status(id)
		if err == nil {
			r, isRaft := st["raft"].(map[string]any)
			if !isRaft || r["role"] == "leader" {
				return time.Since(start)
			}
		}
		if time.Since(start) > within {
			c.t.Fatalf("node %d does not lead after %v (role %q)", id, within, c.Role(id))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitHealthy waits until node id is up: it answers /livez with 200 (its
// process serves and its database opened; /health, readiness, also needs
// the rest of the cluster).
func (c *Cluster) WaitHealthy(id int) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := c.Client.Get(c.URL(id) + "/livez")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if c.nodes[id].Exited() {
			b, _ := os.ReadFile(c.nodes[id].Log)
			c.t.Fatalf("node %d exited:\n%s", id, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("node %d not healthy after 30s", id)
}

// Response is a node's answer.
type Response struct {
	Status int
	Body   []byte
	Header http.Header
}

// JSON decodes the body into v.
func (r Response) JSON(v any) error { return json.Unmarshal(r.Body, v) }

func (r Response) String() string { return fmt.Sprintf("%d %s", r.Status, bytes.TrimSpace(r.Body)) }

// Post sends a raw body to node id.
func (c *Cluster) Post(id int, body string) (Response, error) {
	resp, err := c.Client.Post(c.URL(id)+"/", "application/json", bytes.NewBufferString(body))
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Body: b, Header: resp.Header}, err
}

// Do sends a request object to node id.
func (c *Cluster) Do(id int, req map[string]any) (Response, error) {
	b, _ := json.Marshal(req)
	return c.Post(id, string(b))
}

// Exec runs a statement on node id and fails the test unless it answers 200.
func (c *Cluster) Exec(id int, sql string, params ...any) ExecResult {
	c.t.Helper()
	req := map[string]any{"command": "exec", "query": sql}
	if len(params) > 0 {
		req["params"] = params
	}
	r, err := c.Do(id, req)
	// A loaded test machine can delay heartbeats past an election timeout:
	// a schema change sent while leadership moves is sent again, to the
	// node that leads.
	for deadline := time.Now().Add(15 * time.Second); err == nil && time.Now().Before(deadline) &&
		(r.Status == 503 || r.Status == 403 && bytes.Contains(r.Body, []byte("run only on the leader"))); {
		time.Sleep(100 * time.Millisecond)
		for l := 0; l <= c.Slaves; l++ {
			if c.Role(l) == "leader" {
				id = l
			}
		}
		r, err = c.Do(id, req)
	}
	if err != nil || r.Status != 200 {
		c.t.Fatalf("exec %q on node %d: %v %v", sql, id, r, err)
	}
	var out ExecResult
	if err := r.JSON(&out); err != nil {
		c.t.Fatalf("exec answer %s: %v", r, err)
	}
	return out
}

// ExecResult is an exec answer.
type ExecResult struct {
	Status       string `json:"status"`
	RowsAffected int64  `json:"rows_affected"`
	LastInsertID int64  `json:"last_insert_id"`
	Index        uint64 `json:"index"`
}

// Query runs a read on node id and returns the rows.
func (c *Cluster) Query(id int, sql string, params ...any) []map[string]any {
	c.t.Helper()
	req := map[string]any{"command": "query", "query": sql}
	if len(params) > 0 {
		req["params"] = params
	}
	r, err := c.Do(id, req)
	if err != nil || r.Status != 200 {
		c.t.Fatalf("query %q on node %d: %v %v", sql, id, r, err)
	}
	var rows []map[string]any
	if err := r.JSON(&rows); err != nil {
		c.t.Fatalf("query answer %s: %v", r, err)
	}
	return rows
}

// Status returns node id's /status.
func (c *Cluster) Status(id int) (map[string]any, error) {
	resp, err := c.Client.Get(c.URL(id) + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st map[string]any
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Applied is node id's applied index (0 if it cannot be asked).
func (c *Cluster) Applied(id int) uint64 {
	st, err := c.Status(id)
	if err != nil {
		return 0
	}
	v, _ := st["applied_index"].(float64)
	return uint64(v)
}

// WaitConverged waits until every listed node and the master have applied
// the same index, the highest any of them has.
func (c *Cluster) WaitConverged(timeout time.Duration, ids ...int) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	all := append([]int{0}, ids...)
	for {
		// Any node may lead (the master may be catching up after a
		// restart): every node named, and the master, reach the highest
		// index any of them applied.
		var want uint64
		got := make([]uint64, len(all))
		for i, id := range all {
			got[i] = c.Applied(id)
			want = max(want, got[i])
		}
		ok := want > 0
		for _, g := range got {
			if g < want {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nodes %v did not all reach index %d in %v: at %v", all, want, timeout, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Secret is the cluster secret the nodes created in Dir.
func (c *Cluster) Secret() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "ddb-cluster.secret"))
	return strings.TrimSpace(string(b))
}

// DBPath is node id's database file.
func (c *Cluster) DBPath(id int) string { return filepath.Join(c.Dir, fmt.Sprintf("slave%d.db", id)) }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// ExitCode is the process's exit code once it has ended (-1 if killed by a signal or still running).
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Output is a process's (or a logger's) output, written by several
// goroutines and read while it is written.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

// String is what was written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}
