package main

// A large database, side by side with rqlite (-rqlited with -large-gb N):
// each cluster in turn is given about N GiB of rows by statements that make
// them on every node (INSERT ... SELECT of random blobs, about 100 MiB a
// statement), then, on it, a follower's restart and a wiped
// follower's catch-up are timed and every node's memory read. Ours is
// filled, measured and removed before rqlite's is filled, so the disk
// holds one of them at a time: each keeps three copies of the data, and
// more while a snapshot is sent.

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/testcluster"
)

const (
	largeRows     = 100000 // rows one statement makes
	largeBlob     = 1000   // bytes of each row's blob
	largeRowBytes = 1040   // about what a row takes on disk, with its key
	// largeWithin bounds each wait (a fill statement, a restart, a catch-up).
	largeWithin = 30 * time.Minute
)

type largeSide struct {
	name      string
	skipped   string // why this side was not measured
	fillErr   string
	fill      time.Duration
	rows      int64
	size      int64 // bytes of the leader's files once filled
	memFilled string
	restart   time.Duration
	catchUp   time.Duration
	memAfter  string
}

// largeFill is the statement that adds largeRows rows on every node.
var largeFill = fmt.Sprintf(`["WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < %d) INSERT INTO large (a, b) SELECT (x * 7919) %% 1000003, randomblob(%d) FROM s"]`, largeRows, largeBlob)

// largeSchema has no index besides the key: an index's random inserts
// would make filling 10 GiB take most of an hour, and what is measured on
// the filled database (a restart, a copy) does not depend on its shape.
const largeSchema = `["CREATE TABLE large (id INTEGER PRIMARY KEY, a INTEGER, b BLOB)"]`

func large(tb *testcluster.Standalone, c *testcluster.Cluster, ours []string, rq *rqCluster, gb int, md bool) {
	statements := int((int64(gb)<<30 + largeRows*largeRowBytes - 1) / (largeRows * largeRowBytes))
	hc := bench.Client(1)
	hc.Timeout = largeWithin
	fill := func(s *largeSide, leader string, settle func()) bool {
		log.Printf("large: %s: %d statements of %d rows...", s.name, statements, largeRows)
		if err := rqPost(hc, leader+"db/execute", []byte(largeSchema)); err != nil {
			s.fillErr = err.Error()
			return false
		}
		t := time.Now()
		for i := 0; i < statements; i++ {
			if err := rqPost(hc, leader+"db/execute", []byte(largeFill)); err != nil {
				s.fillErr = fmt.Sprintf("statement %d: %v", i+1, err)
				return false
			}
			s.rows += largeRows
			if (i+1)%10 == 0 {
				log.Printf("large: %s: %d of %d statements, %v", s.name, i+1, statements, time.Since(t).Round(time.Second))
			}
		}
		settle()
		s.fill = time.Since(t)
		return true
	}
	report := func(s *largeSide) {
		log.Printf("large: %s: filled in %v (%d rows, %d MiB on the leader), restart %v, wiped catch-up %v, memory %s / %s %s%s",
			s.name, s.fill.Round(time.Second), s.rows, s.size>>20, s.restart.Round(time.Millisecond), s.catchUp.Round(time.Millisecond), s.memFilled, s.memAfter, s.fillErr, s.skipped)
	}

	oursSide := largeSide{name: "ours"}
	switch {
	case c == nil:
		oursSide.skipped = "not started by this run"
	case !roomFor(c.Dir, gb, 5, &oursSide):
	default:
		settle := func() { settleURLsWithin(bench.Client(4), ours, largeWithin) }
		if fill(&oursSide, ours[0], settle) {
			oursSide.size = filesBytes(c.DBPath(0) + "*")
			oursSide.memFilled = bench.Memory(ourPids(c))
			oursSide.restart = oursFollower(c, ours, false, largeWithin)
			oursSide.catchUp = oursFollower(c, ours, true, largeWithin)
			oursSide.memAfter = bench.Memory(ourPids(c))
		}
		// Ours is removed, so that rqlite's copies have the disk.
		for i := 0; i <= c.Slaves; i++ {
			c.Node(i).Kill()
			removeGlob(c.DBPath(i) + "*")
		}
	}
	report(&oursSide)

	rqSide := largeSide{name: "rqlite"}
	if roomFor(filepath.Dir(rq.data[0]), gb, 7, &rqSide) {
		settle := func() { rq.settleWithin(largeWithin) }
		if fill(&rqSide, rq.urls[0], settle) {
			rqSide.size = dirBytes(rq.data[0])
			rqSide.memFilled = bench.Memory(rq.pids())
			// A snapshot now, with no log entries kept after it, so that
			// the wiped follower gets a copy of the database as ours does
			// (rqlite also snapshots by itself once its WAL passes 4 MiB).
			// (It answers 200 with an empty body.)
			if _, err := bench.Post(hc, rq.urls[0]+"snapshot?trailing_logs=0", nil); err != nil {
				log.Printf("large: rqlite: POST /snapshot: %v", err)
			}
			t := time.Now()
			rq.restartWithin(tb, 2, false, largeWithin)
			rqSide.restart = time.Since(t)
			t = time.Now()
			rq.restartWithin(tb, 2, true, largeWithin)
			rqSide.catchUp = time.Since(t)
			rqSide.memAfter = bench.Memory(rq.pids())
		}
	}
	report(&rqSide)

	fmt.Printf("\nA large database: %d statements, each adding %d rows of a %d-byte random blob on every node, about %d GiB.\n\n", statements, largeRows, largeBlob, gb)
	if md {
		fmt.Println("| what | ours | rqlite | ours / rqlite |")
		fmt.Println("|---|---:|---:|---:|")
	}
	cell := func(s largeSide, v string) string {
		switch {
		case s.skipped != "":
			return "not measured: " + s.skipped
		case s.fillErr != "":
			return "failed: " + strings.ReplaceAll(s.fillErr, "|", "/")
		}
		return v
	}
	ratio := func(a, b time.Duration) string {
		if a > 0 && b > 0 {
			return fmt.Sprintf("%.2f (time)", a.Seconds()/b.Seconds())
		}
		return "-"
	}
	rows := [][4]string{
		{"filling it (the statements, until every node applied them)",
			cell(oursSide, fmt.Sprintf("%v, %.0f rows/s", oursSide.fill.Round(time.Second), float64(oursSide.rows)/oursSide.fill.Seconds())),
			cell(rqSide, fmt.Sprintf("%v, %.0f rows/s", rqSide.fill.Round(time.Second), float64(rqSide.rows)/rqSide.fill.Seconds())),
			ratio(oursSide.fill, rqSide.fill)},
		{"the leader's files", cell(oursSide, fmt.Sprintf("%d MiB", oursSide.size>>20)), cell(rqSide, fmt.Sprintf("%d MiB", rqSide.size>>20)), "-"},
		{"resident memory per node, filled", cell(oursSide, oursSide.memFilled), cell(rqSide, rqSide.memFilled), "-"},
		{"a follower's restart, until it serves at the leader's index", cell(oursSide, oursSide.restart.Round(time.Millisecond).String()), cell(rqSide, rqSide.restart.Round(time.Millisecond).String()), ratio(oursSide.restart, rqSide.restart)},
		{"a wiped follower's catch-up, until it serves at the leader's index", cell(oursSide, oursSide.catchUp.Round(time.Millisecond).String()), cell(rqSide, rqSide.catchUp.Round(time.Millisecond).String()), ratio(oursSide.catchUp, rqSide.catchUp)},
		{"resident memory per node after the catch-up", cell(oursSide, oursSide.memAfter), cell(rqSide, rqSide.memAfter), "-"},
	}
	for _, r := range rows {
		if md {
			fmt.Printf("| %s | %s | %s | %s |\n", r[0], r[1], r[2], r[3])
		} else {
			fmt.Printf("%-70s ours %s; rqlite %s; ratio %s\n", r[0], r[1], r[2], r[3])
		}
	}
}

// roomFor says whether the disk under dir has copies times gb GiB free,
// and records why not in s.
func roomFor(dir string, gb, copies int, s *largeSide) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		s.skipped = err.Error()
		return false
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if need := int64(copies*gb) << 30; free < need {
		s.skipped = fmt.Sprintf("%d GiB free, %d needed (%d copies)", free>>30, need>>30, copies)
		return false
	}
	return true
}

// oursFollower stops slave 2 (SIGTERM; or SIGKILL and its files removed,
// if wipe), starts it again and returns the time until it serves and has
// applied the leader's index.
func oursFollower(c *testcluster.Cluster, ours []string, wipe bool, within time.Duration) time.Duration {
	t := time.Now()
	if wipe {
		c.Node(2).Kill()
		removeGlob(c.DBPath(2) + "*")
	} else {
		c.Node(2).Stop()
	}
	c.StartNode(2)
	waitServes(ours[2])
	settleURLsWithin(bench.Client(4), ours, within)
	return time.Since(t)
}

func removeGlob(pattern string) {
	matches, _ := filepath.Glob(pattern)
	for _, m := range matches {
		os.RemoveAll(m)
	}
}

// filesBytes is the total size of the files pattern matches.
func filesBytes(pattern string) int64 {
	var n int64
	matches, _ := filepath.Glob(pattern)
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && !fi.IsDir() {
			n += fi.Size()
		}
	}
	return n
}

// dirBytes is the total size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
