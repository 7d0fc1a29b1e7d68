// Package bench measures a cluster: throughput and latency of the
// workloads users run, replication lag and catch-up, each reported as a
// ratio to two ceilings measured in the same run with the same client — a
// no-op HTTP server, and the same inserts into an in-process SQLite with
// the same durability settings.
package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/sqlite"
)

// Result is one workload's measurement.
type Result struct {
	Name      string
	Ops       int64
	Errors    int64
	FirstErr  string
	Duration  time.Duration
	Latencies []time.Duration // sorted
	Note      string
	// NodeCPU is the CPU time (user and system) the cluster's processes
	// used during the workload (0: not measured). Per operation it is a
	// steadier measure than the rate on a shared machine: the rate moves
	// with what else runs, the work each operation costs much less.
	NodeCPU time.Duration
	// Ceiling is the no-op HTTP server's rate measured in slices alternating
	// with this workload's (0: not measured so): the ratio to it compares
	// the two under the same conditions of a shared machine, whose speed
	// drifts from one minute to the next.
	Ceiling float64
}

// CPUPerOp is NodeCPU per operation (0 if not measured).
func (r Result) CPUPerOp() time.Duration {
	if r.Ops == 0 {
		return 0
	}
	return r.NodeCPU / time.Duration(r.Ops)
}

// Rate is operations per second.
func (r Result) Rate() float64 { return float64(r.Ops) / r.Duration.Seconds() }

// Pct is the p-th percentile latency (p in 0..100).
func (r Result) Pct(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies)-1) * p / 100)
	return r.Latencies[i]
}

// Client is an HTTP client tuned like a load generator: kept-alive
// connections, one per concurrent client.
func Client(clients int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: clients * 4, MaxIdleConnsPerHost: clients * 2, IdleConnTimeout: time.Minute,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}}
}

// Run calls op from `clients` goroutines for d and measures every call.
func Run(name string, clients int, d time.Duration, op func(client int, i int) error) Result {
	var ops, errs atomic.Int64
	var mu sync.Mutex
	var first string
	lats := make([][]time.Duration, clients)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			l := make([]time.Duration, 0, 1<<14)
			for i := 0; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				err := op(c, i)
				l = append(l, time.Since(t0))
				ops.Add(1)
				if err != nil {
					errs.Add(1)
					mu.Lock()
					if first == "" {
						first = err.Error()
					}
					mu.Unlock()
				}
			}
			lats[c] = l
		}(c)
	}
	wg.Wait()
	r := Result{Name: name, Ops: ops.Load(), Errors: errs.Load(), FirstErr: first, Duration: time.Since(start)}
	for _, l := range lats {
		r.Latencies = append(r.Latencies, l...)
	}
	sort.Slice(r.Latencies, func(i, j int) bool { return r.Latencies[i] < r.Latencies[j] })
	return r
}

// Post sends body to url and fails on a non-200 answer.
func Post(c *http.Client, url string, body []byte) ([]byte, error) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return b, fmt.Errorf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// InsertBody is the single-row insert every write workload sends.
func InsertBody(client, i int) []byte {
	b, _ := json.Marshal(map[string]any{"command": "exec", "query": "INSERT INTO bench (c, v) VALUES (?, ?)", "params": []any{client, fmt.Sprintf("value %d/%d", client, i)}})
	return b
}

// NoopServer is the HTTP ceiling: a server that reads the body and answers
// a fixed exec response, doing nothing else.
func NoopServer() (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	answer := []byte(`{"status":"success","rows_affected":1,"last_insert_id":1,"index":1}` + "\n")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer)
	})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String() + "/", func() { srv.Close() }, nil
}

// SQLiteCeiling runs the same inserts straight into an in-process SQLite
// database (WAL, synchronous=FULL, as the nodes use), one autocommit
// transaction each, from `clients` goroutines sharing one connection.
func SQLiteCeiling(dir string, clients int, d time.Duration) (Result, error) {
	c, err := sqlite.Open(filepath.Join(dir, "ceiling.db"), url.Values{"_journal_mode": {"WAL"}, "_synchronous": {"FULL"}})
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	if err := c.ExecScript("CREATE TABLE bench (id INTEGER PRIMARY KEY, c INTEGER, v TEXT)"); err != nil {
		return Result{}, err
	}
	st, err := c.Prepare("INSERT INTO bench (c, v) VALUES (?, ?)")
	if err != nil {
		return Result{}, err
	}
	defer st.Close()
	var mu sync.Mutex
	return Run("sqlite ceiling (in-process inserts)", clients, d, func(client, i int) error {
		mu.Lock()
		defer mu.Unlock()
		st.Reset()
		if _, err := st.Bind([]any{int64(client), fmt.Sprintf("value %d/%d", client, i)}, nil); err != nil {
			return err
		}
		_, err := st.Step()
		return err
	}), nil
}

// RSS is the resident memory of process pid in bytes (Linux), 0 if unknown.
func RSS(pid int) int64 { return statusBytes(pid, "VmRSS:") }

// AnonRSS is the part of RSS that is the process's own memory (heap,
// stacks), without the file pages it maps (its executable's among them),
// in bytes (Linux), 0 if unknown.
func AnonRSS(pid int) int64 { return statusBytes(pid, "RssAnon:") }

// Memory describes the resident memory of processes pids, in MiB, and
// how much of it is their own (not mapped files, such as the binary).
func Memory(pids []int) string {
	var all, anon []string
	for _, p := range pids {
		all = append(all, fmt.Sprintf("%.0f", float64(RSS(p))/(1<<20)))
		anon = append(anon, fmt.Sprintf("%.0f", float64(AnonRSS(p))/(1<<20)))
	}
	return fmt.Sprintf("%s MiB (anonymous %s)", strings.Join(all, "/"), strings.Join(anon, "/"))
}

// PeakRSS is the most resident memory process pid has had, in bytes
// (Linux), 0 if unknown.
func PeakRSS(pid int) int64 { return statusBytes(pid, "VmHWM:") }

// statusBytes reads a field given in kB from /proc/PID/status, in bytes.
func statusBytes(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb * 1024
		}
	}
	return 0
}

// CPUTime is the CPU time (user and system) process pid has used (Linux,
// from /proc; 0 if unknown).
func CPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	return cpuTimeOfStat(b)
}

// cpuTimeOfStat is the CPU time (user and system) a /proc/PID/stat line
// reports (0 if it cannot be read).
func cpuTimeOfStat(b []byte) time.Duration {
	// The command name (field 2) may hold spaces; the fields after it
	// start past its closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is the kernel's USER_HZ, the unit of /proc's CPU times: 100
// on every Linux architecture Go supports.
const clockTicks = 100

// RandomID picks a row id in [1, n].
func RandomID(n int) int64 { return 1 + rand.Int64N(int64(n)) }

// Merge combines measurements of one workload taken in parts (slices run
// one after the other) into one: their operations, errors, time and
// latencies add up.
func Merge(parts ...Result) Result {
	var r Result
	for i, p := range parts {
		if i == 0 {
			r.Name, r.Note = p.Name, p.Note
		}
		r.Ops += p.Ops
		r.Errors += p.Errors
		if r.FirstErr == "" {
			r.FirstErr = p.FirstErr
		}
		r.Duration += p.Duration
		r.NodeCPU += p.NodeCPU
		r.Latencies = append(r.Latencies, p.Latencies...)
	}
	sort.Slice(r.Latencies, func(i, j int) bool { return r.Latencies[i] < r.Latencies[j] })
	return r
}
