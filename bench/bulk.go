package main

// Bulk loads and large databases, side by side with rqlite (-rqlited with
// -load-mb N): a SQLite file of about N MiB and its SQL dump are loaded
// through /db/load into both clusters, and the dump into a local sqlite3 as
// the floor; then, on the loaded database, a follower's restart and a
// wiped follower's catch-up are timed, and every node's memory read.

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// bulkRow is about the bytes one row of the generated table takes.
const bulkRow = 140

// rqDumpRows is the most rows of the dump rqlite is given.
const rqDumpRows = 20000

type bulkResult struct {
	what       string
	ours, rq   time.Duration
	floor      time.Duration // sqlite3 alone (0: none)
	rows       int64
	rqRows     int64 // rows rqlite loaded (fewer for a dump)
	oursErr    string
	rqErr      string
	oursDetail string
}

func bulk(tb *testcluster.Standalone, c *testcluster.Cluster, ours []string, rq *rqCluster, mb int, md bool) {
	if _, err := exec.LookPath("sqlite3"); err != nil {
		tb.Fatalf("-load-mb needs the sqlite3 command (for the file, its dump and the floor): %v", err)
	}
	dir := tb.TempDir()
	rows := int64(mb) << 20 / bulkRow
	make := func(name string, rows int64) (file, dump string) {
		file, dump = filepath.Join(dir, name+".db"), filepath.Join(dir, name+".sql")
		script := fmt.Sprintf(`CREATE TABLE big (id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL);
WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < %d)
INSERT INTO big SELECT x, (x * 7919) %% 1000003, hex(randomblob(50)), x / 3.0 FROM s;
CREATE INDEX big_a ON big(a);`, rows)
		if out, err := exec.Command("sqlite3", file, script).CombinedOutput(); err != nil {
			tb.Fatalf("make %s: %v %s", file, err, out)
		}
		df, err := os.Create(dump)
		if err != nil {
			tb.Fatalf("%v", err)
		}
		cmd := exec.Command("sqlite3", file, ".dump")
		cmd.Stdout = df
		if err := cmd.Run(); err != nil {
			tb.Fatalf("dump: %v", err)
		}
		df.Close()
		return file, dump
	}
	log.Printf("bulk: making a SQLite file of %d rows (about %d MiB) and its dump...", rows, mb)
	file, dump := make("bulk", rows)
	fi, _ := os.Stat(file)
	di, _ := os.Stat(dump)
	log.Printf("bulk: file %d MiB, dump %d MiB", fi.Size()>>20, di.Size()>>20)
	// rqlite runs a dump statement by statement, slower as it grows (640
	// rows/s for 10,000 rows here, 2,700/s for 1,000): it gets a dump of
	// at most rqDumpRows rows, and its rate is reported for that.
	rqRows := min(rows, rqDumpRows)
	_, rqDump := make("rq", rqRows)

	// The floor: sqlite3 running the dump into a new local file.
	floor := func() time.Duration {
		local := filepath.Join(dir, "local.db")
		in, err := os.Open(dump)
		if err != nil {
			tb.Fatalf("%v", err)
		}
		defer in.Close()
		cmd := exec.Command("sqlite3", local)
		cmd.Stdin = in
		t := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("sqlite3 < dump: %v %s", err, out)
		}
		return time.Since(t)
	}()

	hc := &http.Client{} // no timeout: a load takes what it takes
	load := func(url, path, contentType string) (time.Duration, string) {
		f, err := os.Open(path)
		if err != nil {
			return 0, err.Error()
		}
		defer f.Close()
		t := time.Now()
		resp, err := hc.Post(url, contentType, f)
		if err != nil {
			return 0, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || bytes.Contains(b, []byte(`"error"`)) {
			return 0, fmt.Sprintf("%d %.300s", resp.StatusCode, b)
		}
		return time.Since(t), ""
	}
	var out []bulkResult
	// The dump first (it creates the table; the file then replaces the
	// whole database). Each time counts until every node has applied it.
	for _, kind := range []struct {
		what, path, rqPath, ct string
		floor                  time.Duration
		rqRows                 int64
	}{
		{"/db/load of the SQL dump", dump, rqDump, "text/plain", floor, rqRows},
		{"/db/load of the SQLite file", file, file, "application/octet-stream", 0, rows},
	} {
		r := bulkResult{what: kind.what, floor: kind.floor, rows: rows, rqRows: kind.rqRows}
		log.Printf("bulk: %s, ours...", kind.what)
		t := time.Now()
		if _, e := load(ours[0]+"db/load", kind.path, kind.ct); e != "" {
			r.oursErr = e
		} else {
			settleURLs(bench.Client(4), ours)
			r.ours = time.Since(t)
		}
		log.Printf("bulk: %s, rqlite...", kind.what)
		t = time.Now()
		if _, e := load(rq.urls[0]+"db/load", kind.rqPath, kind.ct); e != "" {
			r.rqErr = e
		} else {
			rq.settle()
			r.rq = time.Since(t)
		}
		log.Printf("bulk: %s: ours %v %s, rqlite %v %s", kind.what, r.ours.Round(time.Millisecond), r.oursErr, r.rq.Round(time.Millisecond), r.rqErr)
		out = append(out, r)
	}
	// Every node holds the loaded database now: its memory.
	ourMem, rqMem := bench.Memory(ourPids(c)), bench.Memory(rq.pids())

	// A follower's restart (SIGTERM, start, until it serves and has the
	// leader's index), then a wiped follower's catch-up (its data removed).
	for _, step := range []struct {
		what string
		wipe bool
	}{
		{"a follower's restart, until it serves at the leader's index", false},
		{"a wiped follower's catch-up (its data removed), until it serves at the leader's index", true},
	} {
		if c == nil {
			break
		}
		r := bulkResult{what: step.what}
		r.ours = oursFollower(c, ours, step.wipe, 2*time.Minute)
		t := time.Now()
		rq.restart(tb, 2, step.wipe)
		r.rq = time.Since(t)
		out = append(out, r)
	}

	fmt.Printf("\nBulk loads and a large database: a SQLite file of %d MiB (%d rows, one index) and its dump of %d MiB; each load counts until every node has applied it.\n\n", fi.Size()>>20, rows, di.Size()>>20)
	if md {
		fmt.Println("| what | ours | rqlite | ratio | ours rows/s | rqlite rows/s | sqlite3 alone |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	}
	for _, r := range out {
		ratio := "-"
		if r.ours > 0 && r.rq > 0 {
			if strings.HasPrefix(r.what, "/db/load") {
				ratio = fmt.Sprintf("%.2f (rows/s)", (float64(r.rows)/r.ours.Seconds())/(float64(r.rqRows)/r.rq.Seconds()))
			} else {
				ratio = fmt.Sprintf("%.2f (time)", r.ours.Seconds()/r.rq.Seconds())
			}
		}
		rate := func(d time.Duration, e string, rows int64) string {
			if e != "" {
				return "failed: " + strings.ReplaceAll(e, "|", "/")
			}
			if d == 0 || !strings.HasPrefix(r.what, "/db/load") {
				return "-"
			}
			return fmt.Sprintf("%.0f (%d rows)", float64(rows)/d.Seconds(), rows)
		}
		fl := "-"
		if r.floor > 0 {
			fl = fmt.Sprintf("%v (%.0f rows/s)", r.floor.Round(time.Millisecond), float64(r.rows)/r.floor.Seconds())
		}
		if md {
			fmt.Printf("| %s | %v | %v | %s | %s | %s | %s |\n", r.what, r.ours.Round(time.Millisecond), r.rq.Round(time.Millisecond), ratio, rate(r.ours, r.oursErr, r.rows), rate(r.rq, r.rqErr, r.rqRows), fl)
		} else {
			fmt.Printf("%-90s ours %10v rqlite %10v ratio %s  rows/s %s / %s  sqlite3 %s\n", r.what, r.ours.Round(time.Millisecond), r.rq.Round(time.Millisecond), ratio, rate(r.ours, r.oursErr, r.rows), rate(r.rq, r.rqErr, r.rqRows), fl)
		}
	}
	fmt.Printf("\nresident memory per node with the database loaded: ours %s, rqlite %s\n", ourMem, rqMem)
}

// waitServes waits until a node answers /readyz with 200.
func waitServes(url string) {
	deadline := time.Now().Add(30 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url + "readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}
