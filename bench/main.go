// Command bench measures a cluster and reports every result as a ratio to
// two ceilings measured in the same run with the same client: a no-op HTTP
// server (measured again alternately with each workload, so that both see
// the same moment of a shared machine), and the same inserts into an
// in-process SQLite database with the same durability settings.
//
//	go run ./bench                          # starts 1 master + 2 slaves (processes) in a temp dir
//	go run ./bench -duration 3s -workloads insert,read
//	go run ./bench -urls http://m:8080,http://s1:8081,http://s2:8082   # an existing cluster
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/testcluster"
)

func main() {
	clients := flag.Int("clients", 16, "concurrent HTTP clients")
	duration := flag.Duration("duration", 10*time.Second, "how long each workload runs")
	workloads := flag.String("workloads", "insert,insert-ack-master,insert-slaves,read,mixed,tx,lag,catchup", "workloads to run, comma-separated (also: soak)")
	urls := flag.String("urls", "", "comma-separated URLs of an existing cluster, master first (default: start one)")
	catchup := flag.Int("catchup", 100000, "entries a slave is behind in the catchup workload")
	soak := flag.Duration("soak", 10*time.Minute, "length of the soak workload (memory growth under sustained load)")
	markdown := flag.Bool("markdown", false, "print the table as Markdown")
	nodeArgs := flag.String("node-args", "", "extra flags for the nodes it starts, space-separated (e.g. \"-check-interval 0\")")
	loadMB := flag.Int("load-mb", 0, "with -rqlited: after the comparison, load a SQLite file of about this many MiB and its dump into both, then time a follower's restart and a wiped follower's catch-up on it")
	largeGB := flag.Int("large-gb", 0, "with -rqlited: after the comparison (and -load-mb), fill each cluster in turn with about this many GiB (ours first, removed before rqlite's is filled), then time a follower's restart and a wiped follower's catch-up on it and read every node's memory; ours runs with -log-keep 16 (and -ack-timeout 30m, for statements that run for seconds) so that the catch-up is a copy of the database, as rqlite's is after a snapshot")
	rqlited := flag.String("rqlited", "", "path of an rqlited binary: run the side-by-side comparison with a 3-node rqlite cluster instead (-workloads then names its rows, e.g. insert-via-the-leader-own-api; default all)")
	flag.Parse()
	log.SetFlags(0)

	var tb testcluster.Standalone
	defer tb.Close()
	var c *testcluster.Cluster
	nodes := strings.Split(*urls, ",")
	if *urls == "" {
		log.Printf("starting 1 master + 2 slaves (separate processes)...")
		args := strings.Fields(*nodeArgs)
		if *loadMB > 0 {
			// A load's body is the whole file.
			args = append([]string{"-max-body", fmt.Sprint(int64(*loadMB+64) << 21), "-body-timeout", "30m"}, args...)
		}
		if *largeGB > 0 {
			// A fill statement runs for seconds, longer than the default
			// wait for a write's acknowledgement.
			args = append([]string{"-log-keep", "16", "-ack-timeout", "30m"}, args...)
		}
		c = testcluster.Start(&tb, 2, args...)
		nodes = []string{c.URL(0), c.URL(1), c.URL(2)}
	}
	for i := range nodes {
		nodes[i] = strings.TrimRight(nodes[i], "/") + "/"
	}
	hc := bench.Client(*clients)
	must := func(body string) {
		if _, err := bench.Post(hc, nodes[0], []byte(body)); err != nil {
			tb.Fatalf("setup: %v", err)
		}
	}
	if *rqlited != "" {
		want := map[string]bool{}
		flag.Visit(func(f *flag.Flag) {
			if f.Name == "workloads" {
				for _, w := range strings.Split(*workloads, ",") {
					want[strings.TrimSpace(w)] = true
				}
			}
		})
		compare(&tb, c, nodes, *rqlited, want, *clients, *duration, *markdown, *loadMB, *largeGB)
		return
	}
	must(`{"command":"exec","query":"CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, c INTEGER, v TEXT)"}`)

	// settle waits until every node has applied the master's log, so a
	// workload does not start behind the previous one's replication backlog.
	settle := func() { settleURLs(hc, nodes) }
	// The cluster's CPU time, when this run started its processes.
	nodeCPU := func() time.Duration {
		if c == nil {
			return 0
		}
		var t time.Duration
		for i := 0; i <= c.Slaves; i++ {
			t += bench.CPUTime(c.Node(i).Pid())
		}
		return t
	}
	var results []bench.Result
	add := func(r bench.Result) {
		defer settle()
		results = append(results, r)
		log.Printf("%-44s %9.0f ops/s  p50 %-9v p99 %-9v errors %d %s", r.Name, r.Rate(), r.Pct(50).Round(time.Microsecond), r.Pct(99).Round(time.Microsecond), r.Errors, r.Note)
		if r.FirstErr != "" {
			log.Printf("    first error: %s", r.FirstErr)
		}
	}

	// Ceilings, measured in this run with the same client.
	noopURL, stopNoop, err := bench.NoopServer()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	defer stopNoop()
	noopOp := func(cl, i int) error {
		_, err := bench.Post(hc, noopURL, bench.InsertBody(cl, i))
		return err
	}
	noop := bench.Run("no-op HTTP server (ceiling)", *clients, *duration, noopOp)
	add(noop)
	dir := tb.TempDir()
	sq, err := bench.SQLiteCeiling(dir, *clients, *duration)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	add(sq)

	// run is bench.Run that also measures the cluster's CPU time, and the
	// no-op ceiling alternately with the workload: the workload runs in
	// ceilingSlices slices, each followed (once the cluster has applied
	// everything) by a slice of no-op requests as long. A shared machine's
	// speed drifts by a third within a minute; a ceiling measured once, at
	// the start, would compare workloads with a machine of another moment.
	run := func(name string, op func(cl, i int) error) bench.Result {
		var parts, ceiling []bench.Result
		for s := 0; s < ceilingSlices; s++ {
			before := nodeCPU()
			r := bench.Run(name, *clients, *duration/ceilingSlices, op)
			if after := nodeCPU(); before > 0 {
				r.NodeCPU = after - before
			}
			parts = append(parts, r)
			settle()
			ceiling = append(ceiling, bench.Run("", *clients, *duration/ceilingSlices, noopOp))
		}
		r := bench.Merge(parts...)
		r.Ceiling = bench.Merge(ceiling...).Rate()
		return r
	}
	want := map[string]bool{}
	for _, w := range strings.Split(*workloads, ",") {
		want[strings.TrimSpace(w)] = true
	}
	var insertRate float64
	if want["insert"] {
		r := run("insert via master (ack=quorum)", func(cl, i int) error {
			_, err := bench.Post(hc, nodes[0], bench.InsertBody(cl, i))
			return err
		})
		insertRate = r.Rate()
		add(r)
	}
	if want["insert-ack-master"] {
		add(run("insert via master (ack=master)", func(cl, i int) error {
			b, _ := json.Marshal(map[string]any{"command": "exec", "query": "INSERT INTO bench (c, v) VALUES (?, ?)", "params": []any{cl, fmt.Sprintf("value %d/%d", cl, i)}, "ack": "master"})
			_, err := bench.Post(hc, nodes[0], b)
			return err
		}))
	}
	if want["insert-slaves"] && len(nodes) > 1 {
		add(run("insert via slaves, forwarded (ack=quorum)", func(cl, i int) error {
			_, err := bench.Post(hc, nodes[1+cl%(len(nodes)-1)], bench.InsertBody(cl, i))
			return err
		}))
	}
	rows := 10000
	if want["read"] || want["mixed"] {
		for i := 0; i < rows; i += 500 {
			var qs []string
			for j := 0; j < 500; j++ {
				qs = append(qs, fmt.Sprintf(`{"query":"INSERT INTO bench (c, v) VALUES (-1, 'seed %d')"}`, i+j))
			}
			must(`{"command":"exec","queries":[` + strings.Join(qs, ",") + `]}`)
		}
	}
	readBody := func() []byte {
		return []byte(fmt.Sprintf(`{"command":"query","query":"SELECT id, c, v FROM bench WHERE id = ?","params":[%d]}`, bench.RandomID(rows)))
	}
	if want["read"] {
		add(run("primary-key read, one node", func(cl, i int) error {
			_, err := bench.Post(hc, nodes[0], readBody())
			return err
		}))
	}
	if want["mixed"] {
		add(run("mixed 90% read / 10% insert, all nodes", func(cl, i int) error {
			n := nodes[(cl+i)%len(nodes)]
			if i%10 == 0 {
				_, err := bench.Post(hc, n, bench.InsertBody(cl, i))
				return err
			}
			_, err := bench.Post(hc, n, readBody())
			return err
		}))
	}
	if want["tx"] {
		r := run("transaction of 5 inserts via master", func(cl, i int) error {
			var qs []string
			for j := 0; j < 5; j++ {
				qs = append(qs, fmt.Sprintf(`{"query":"INSERT INTO bench (c, v) VALUES (?, ?)","params":[%d,"tx %d/%d"]}`, cl, i, j))
			}
			_, err := bench.Post(hc, nodes[0], []byte(`{"command":"exec","queries":[`+strings.Join(qs, ",")+`]}`))
			return err
		})
		r.Note = fmt.Sprintf("(%.0f rows/s)", 5*r.Rate())
		add(r)
	}
	if want["lag"] && len(nodes) > 1 {
		add(lag(nodes, *clients, *duration, insertRate/2))
	}
	if want["catchup"] && c != nil {
		add(catchUp(&tb, c, nodes, *clients, *catchup))
	}
	if want["soak"] && c != nil {
		add(soakRun(c, nodes, *clients, *soak))
	}
	printTable(results, noop, sq, *clients, *markdown)
}

// lag writes at a fixed rate with ack=master and, for each write, asks
// slave 1 for the write's index with min_index: the time from the master's
// answer to the slave's is the replication lag (plus one local round trip).
func lag(nodes []string, clients int, d time.Duration, rate float64) bench.Result {
	client := bench.Client(clients)
	if rate <= 0 {
		rate = 1000
	}
	interval := time.Duration(float64(time.Second) / rate)
	tokens := make(chan struct{}, clients)
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				select {
				case tokens <- struct{}{}:
				default:
				}
			case <-stop:
				return
			}
		}
	}()
	var mu sync.Mutex
	var lags []time.Duration
	r := bench.Run(fmt.Sprintf("replication lag at %.0f writes/s (half max)", rate), clients, d, func(cl, i int) error {
		<-tokens
		body := []byte(fmt.Sprintf(`{"command":"exec","query":"INSERT INTO bench (c, v) VALUES (?, 'lag')","params":[%d],"ack":"master"}`, cl))
		b, err := bench.Post(client, nodes[0], body)
		if err != nil {
			return err
		}
		var res struct{ Index uint64 }
		json.Unmarshal(b, &res)
		t0 := time.Now()
		_, err = bench.Post(client, nodes[1], []byte(fmt.Sprintf(`{"command":"query","query":"SELECT 1","min_index":%d}`, res.Index)))
		mu.Lock()
		lags = append(lags, time.Since(t0))
		mu.Unlock()
		return err
	})
	close(stop)
	r.Latencies = sortDurations(lags)
	r.Note = "(latencies are the lag)"
	return r
}

// applied is a node's applied index from /status (0 if unknown).
func applied(hc *http.Client, nodeURL string) uint64 {
	resp, err := hc.Get(nodeURL + "status")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var st struct {
		Applied uint64 `json:"applied_index"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.Applied
}

func sortDurations(d []time.Duration) []time.Duration {
	out := append([]time.Duration(nil), d...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// catchUp stops slave 2, writes n entries, restarts it and times how long
// it takes to apply them all.
func catchUp(tb *testcluster.Standalone, c *testcluster.Cluster, nodes []string, clients, n int) bench.Result {
	client := bench.Client(clients)
	c.Node(2).Kill()
	per := n / clients
	var wg sync.WaitGroup
	for cl := 0; cl < clients; cl++ {
		wg.Add(1)
		go func(cl int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				bench.Post(client, nodes[0], bench.InsertBody(cl, i))
			}
		}(cl)
	}
	wg.Wait()
	target := c.Applied(0)
	start := time.Now()
	c.StartNode(2)
	for c.Applied(2) < target {
		time.Sleep(5 * time.Millisecond)
		if time.Since(start) > 5*time.Minute {
			tb.Fatalf("slave 2 did not catch up in 5 minutes")
		}
	}
	d := time.Since(start)
	return bench.Result{Name: fmt.Sprintf("catch-up of a slave %d entries behind", per*clients), Ops: int64(per * clients), Duration: d,
		Latencies: []time.Duration{d}, Note: fmt.Sprintf("(%.2fs from restart to fully applied)", d.Seconds())}
}

// soakRun keeps an insert/read load on for d and samples the master's RSS.
func soakRun(c *testcluster.Cluster, nodes []string, clients int, d time.Duration) bench.Result {
	client := bench.Client(clients)
	pid := c.Node(0).Pid()
	// RSS is sampled every 10 s. Growth is judged from the end of a
	// warm-up (a quarter of the run: caches, the in-memory log tail and the
	// SQLite page caches fill up) to the end.
	var first, warm, peak, last int64
	warmAt := time.Now().Add(d / 4)
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				rss := bench.RSS(pid)
				if first == 0 {
					first = rss
				}
				if warm == 0 && time.Now().After(warmAt) {
					warm = rss
				}
				if rss > peak {
					peak = rss
				}
				last = rss
				log.Printf("    soak: master RSS %d MiB", rss>>20)
			case <-stop:
				return
			}
		}
	}()
	r := bench.Run(fmt.Sprintf("soak: %v of 50/50 insert/read", d), clients, d, func(cl, i int) error {
		if i%2 == 0 {
			_, err := bench.Post(client, nodes[0], bench.InsertBody(cl, i))
			return err
		}
		_, err := bench.Post(client, nodes[0], []byte(fmt.Sprintf(`{"command":"query","query":"SELECT * FROM bench WHERE id = %d"}`, bench.RandomID(1000))))
		return err
	})
	close(stop)
	growth := 0.0
	if warm > 0 {
		growth = 100 * float64(last-warm) / float64(warm)
	}
	r.Note = fmt.Sprintf("(master RSS at 10s %d MiB, after warm-up %d MiB, peak %d MiB, end %d MiB: %+.1f%% after warm-up)", first>>20, warm>>20, peak>>20, last>>20, growth)
	return r
}

func printTable(results []bench.Result, noop, sq bench.Result, clients int, md bool) {
	fmt.Println()
	fmt.Printf("%d clients, %d CPUs. Ratios are to the no-op HTTP ceiling and the in-process SQLite ceiling (%.0f ops/s) measured in this run. A workload's ratio to the no-op ceiling is to the ceiling measured alternately with it (column \"no-op\"); the ceiling's first measurement, alone, was %.0f ops/s.\n\n", clients, numCPU(), sq.Rate(), noop.Rate())
	if md {
		fmt.Println("| workload | ops/s | no-op | vs no-op HTTP | vs SQLite | p50 | p99 | p999 | errors | cluster CPU/op |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	} else {
		fmt.Printf("%-46s %10s %8s %8s %8s %10s %10s %10s %7s %8s\n", "workload", "ops/s", "no-op", "/no-op", "/sqlite", "p50", "p99", "p999", "errors", "CPU/op")
	}
	for _, r := range results {
		ceiling := noop.Rate()
		if r.Ceiling > 0 {
			ceiling = r.Ceiling
		}
		rn, rs := ratio(r.Rate(), ceiling), ratio(r.Rate(), sq.Rate())
		cpu := "-"
		if r.NodeCPU > 0 {
			cpu = r.CPUPerOp().Round(time.Microsecond).String()
		}
		if md {
			fmt.Printf("| %s %s | %.0f | %.0f | %s | %s | %v | %v | %v | %d | %s |\n", r.Name, r.Note, r.Rate(), ceiling, rn, rs, r.Pct(50).Round(time.Microsecond), r.Pct(99).Round(time.Microsecond), r.Pct(99.9).Round(time.Microsecond), r.Errors, cpu)
		} else {
			fmt.Printf("%-46s %10.0f %8.0f %8s %8s %10v %10v %10v %7d %8s %s\n", r.Name, r.Rate(), ceiling, rn, rs, r.Pct(50).Round(time.Microsecond), r.Pct(99).Round(time.Microsecond), r.Pct(99.9).Round(time.Microsecond), r.Errors, cpu, r.Note)
		}
	}
}

// ceilingSlices is how many slices a workload runs in, alternating with
// the no-op ceiling.
const ceilingSlices = 4

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a/b) {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*a/b)
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	n := strings.Count(string(b), "processor\t:")
	if n == 0 {
		return 1
	}
	return n
}
