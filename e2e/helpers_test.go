// Package e2e drives real master and node processes over HTTP, as a user
// with curl would: build the binaries, start a cluster on free ports in a
// temporary directory, kill -9 and restart nodes, compare the files.
package e2e

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/testcluster"
)

func TestMain(m *testing.M) {
	// SeaweedFS (for the backups to S3) takes minutes to build the first
	// time: it builds while the tests before those that need it run,
	// which mostly wait on clusters.
	go testcluster.WeedBinary()
	code := m.Run()
	if dir, err := testcluster.Binaries(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// requireIdentical loads every node's file and fails unless all have the
// same logical checksum.
func requireIdentical(t *testing.T, c *testcluster.Cluster, ids ...int) []*inspect.Database {
	t.Helper()
	var dbs []*inspect.Database
	for _, id := range ids {
		d, err := inspect.Load(c.DBPath(id))
		if err != nil {
			t.Fatal(err)
		}
		dbs = append(dbs, d)
	}
	if diffs := inspect.Compare(dbs, 10); len(diffs) > 0 {
		t.Fatalf("replicas differ:\n%v", diffs)
	}
	for i := 1; i < len(dbs); i++ {
		if dbs[i].Checksum() != dbs[0].Checksum() {
			t.Fatalf("checksum of node %d differs from node %d", ids[i], ids[0])
		}
	}
	return dbs
}

// load runs fn from `clients` goroutines until duration passes (or each has
// done `each` calls when each > 0), and reports calls and failures.
func load(clients int, duration time.Duration, each int, fn func(client, i int) error) (calls, failures int64, firstErr error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var nCalls, nFail atomic.Int64
	deadline := time.Now().Add(duration)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ; i++ {
				if each > 0 && i >= each {
					return
				}
				if each == 0 && time.Now().After(deadline) {
					return
				}
				nCalls.Add(1)
				if err := fn(c, i); err != nil {
					nFail.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}(c)
	}
	wg.Wait()
	return nCalls.Load(), nFail.Load(), firstErr
}

func insertRow(c *testcluster.Cluster, node int, table string, id int64, ack string) error {
	r, err := c.Do(node, map[string]any{"command": "exec", "query": "INSERT INTO " + table + " (id, v) VALUES (?, ?)", "params": []any{id, fmt.Sprintf("v%d", id)}, "ack": ack})
	if err != nil {
		return err
	}
	if r.Status != 200 {
		return fmt.Errorf("node %d: %s", node, r)
	}
	return nil
}

func count(t *testing.T, c *testcluster.Cluster, node int, table string) int64 {
	t.Helper()
	rows := c.Query(node, "SELECT count(*) AS n FROM "+table)
	return int64(rows[0]["n"].(float64))
}

// workers runs n goroutines, each calling f(worker, i) for i = 0, 1, ...
// until Stop.
type workers struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

func startWorkers(n int, f func(worker, i int)) *workers {
	w := &workers{stop: make(chan struct{})}
	for k := 0; k < n; k++ {
		w.wg.Add(1)
		go func(k int) {
			defer w.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-w.stop:
					return
				default:
				}
				f(k, i)
			}
		}(k)
	}
	return w
}

// Stop ends the workers and waits for them.
func (w *workers) Stop() {
	close(w.stop)
	w.wg.Wait()
}
