package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ddbgo/ddb/client"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// previousRelease is the last commit whose nodes speak version 1 of the
// node-to-node protocol (a leader's applied index as a marked message;
// signatures that do not cover the version). This build speaks 2.
const previousRelease = "adcdd82"

// buildRelease builds the master and node binaries of commit rev into a
// directory, from the repository's own history.
func buildRelease(t *testing.T, rev string) string {
	t.Helper()
	root := testcluster.RepoRoot()
	if err := exec.Command("git", "-C", root, "cat-file", "-e", rev+"^{commit}").Run(); err != nil {
		t.Skipf("commit %s is not in this checkout (a shallow clone?): the rolling upgrade from it cannot be tested here", rev)
	}
	src, bin := t.TempDir(), t.TempDir()
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", root, rev, src))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	for _, b := range []string{"master", "node"} {
		build := exec.Command("go", "build", "-o", filepath.Join(bin, b), "./"+b)
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s of %s: %v\n%s", b, rev, err, out)
		}
	}
	return bin
}

// A cluster of the previous release is replaced node by node by this
// build while a client writes, as docs/DEPLOY.md's procedure says: the
// slaves first, then the master. Nodes of the two versions speak to each
// other in the earlier one (each learns the other's from its answers),
// nothing acknowledged is lost, and writes stop for no longer than a
// failover at each step.
func TestARollingUpgradeFromThePreviousRelease(t *testing.T) {
	old := buildRelease(t, previousRelease)
	c := testcluster.New(t, 2)
	for id := 0; id <= 2; id++ {
		c.Bin[id] = old
		c.StartNode(id)
	}
	c.WaitReady()
	c.Exec(0, "CREATE TABLE up (k INTEGER PRIMARY KEY, at TEXT)")

	cl, err := client.New(endpoints(c, 0, 1, 2), client.WithRetryTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acked []int
	var worst time.Duration
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		last := time.Now()
		for k := 1; ; k++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			_, err := cl.Exec(ctx, "INSERT INTO up (k, at) VALUES (?, ?)", k, time.Now().Format(time.RFC3339Nano))
			cancel()
			if err != nil {
				done <- fmt.Errorf("write %d: %w", k, err)
				return
			}
			now := time.Now()
			mu.Lock()
			acked = append(acked, k)
			worst = max(worst, now.Sub(last))
			mu.Unlock()
			last = now
		}
	}()
	progress := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitWrites := func(n int) {
		t.Helper()
		start := progress()
		for deadline := time.Now().Add(60 * time.Second); progress() < start+n; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("writes stalled at %d", progress())
			}
			select {
			case err := <-done:
				t.Fatalf("the writer stopped: %v", err)
			default:
			}
		}
	}
	waitWrites(50)
	oldLog := c.Node(0).Log // the old master's
	for _, id := range []int{2, 1, 0} {
		c.Node(id).Stop()
		delete(c.Bin, id) // this build
		c.StartNode(id)
		c.WaitHealthy(id)
		waitWrites(100)
		c.WaitConverged(60*time.Second, 0, 1, 2)
		t.Logf("node %d upgraded; %d writes acknowledged", id, progress())
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.WaitConverged(60*time.Second, 0, 1, 2)
	mu.Lock()
	defer mu.Unlock()
	for id := 0; id <= 2; id++ {
		rows := c.Query(id, "SELECT count(*) AS n, min(k) AS lo, max(k) AS hi FROM up")
		if n := int(rows[0]["n"].(float64)); n != len(acked) || int(rows[0]["hi"].(float64)) != acked[len(acked)-1] {
			t.Fatalf("node %d holds %v, %d writes were acknowledged (the last %d)", id, rows, len(acked), acked[len(acked)-1])
		}
	}
	// The old master refused the upgraded slaves' first requests, signed
	// in version 2 (its signatures do not cover the version): they went
	// on in version 1.
	if b, _ := os.ReadFile(oldLog); !strings.Contains(string(b), "signature does not match") {
		t.Errorf("the old master never refused a request of the later version: the versions were not told apart\n%s", b)
	}
	// Every node now runs this build.
	for id := 0; id <= 2; id++ {
		b, _ := os.ReadFile(c.Node(id).Log)
		if !strings.Contains(string(b), "secret=") {
			t.Fatalf("node %d does not run this build (no start-up line of it):\n%s", id, b)
		}
	}
	t.Logf("%d writes acknowledged through the upgrade, none lost; the longest wait between two was %v", len(acked), worst.Round(time.Millisecond))
	if worst > 10*time.Second {
		t.Fatalf("writes stopped for %v during the upgrade: longer than a failover", worst)
	}
}
