package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// The recipe in docs/REPLICATION.md, "Restoring a node", followed
// literally after the master died with its WAL beside its file: the
// rebuilt cluster holds the chosen slave's data, is whole, and takes
// writes that continue its ids.
func TestRestoreRecipeFromTheDocsRebuildsTheMaster(t *testing.T) {
	c := clusterWith63Rows(t)
	c.Node(0).Kill() // the master dies: slave0.db-wal stays beside slave0.db
	if _, err := os.Stat(c.DBPath(0) + "-wal"); err != nil {
		t.Fatalf("the killed master left no WAL to trip over: %v", err)
	}
	// 1. Stop every node that still runs, cleanly.
	c.Node(1).Stop()
	c.Node(2).Stop()
	// 2. Pick the slave with the highest applied index (show_all prints it).
	best, bestIndex := 0, uint64(0)
	for id := 1; id <= 2; id++ {
		d, err := inspect.Load(c.DBPath(id))
		if err != nil {
			t.Fatal(err)
		}
		if d.Applied > bestIndex {
			best, bestIndex = id, d.Applied
		}
	}
	name := func(id int) string { return filepath.Join(c.Dir, fmt.Sprintf("slave%d.db", id)) }
	// 3. Remove the master's database and its companions.
	for _, f := range []string{"slave0.db", "slave0.db-wal", "slave0.db-shm"} {
		os.Remove(filepath.Join(c.Dir, f))
	}
	// 4. Copy the chosen slave's file.
	copyFile(t, name(best), name(0))
	// 5. Remove every other slave's database and companions.
	for id := 1; id <= 2; id++ {
		if id == best {
			continue
		}
		for _, suffix := range []string{"", "-wal", "-shm"} {
			os.Remove(name(id) + suffix)
		}
	}
	// 6. Start every node.
	for id := 0; id <= 2; id++ {
		c.StartNode(id)
	}
	c.WaitReady()
	if got := c.Applied(0); got < bestIndex {
		t.Fatalf("the rebuilt master is at index %d, the chosen slave was at %d", got, bestIndex)
	}
	r := c.Exec(1, "INSERT INTO r (v) VALUES ('after')")
	if r.LastInsertID != 64 {
		t.Fatalf("a write after the restore got id %d, want 64 (the ids continue)", r.LastInsertID)
	}
	c.WaitConverged(20*time.Second, 1, 2)
	dbs := requireIdentical(t, c, 0, 1, 2)
	if n := dbs[0].RowCount(); n != 64 {
		t.Fatalf("%d rows after the restore, want 64", n)
	}
	rows := c.Query(0, "PRAGMA integrity_check")
	if len(rows) != 1 || rows[0]["integrity_check"] != "ok" {
		t.Fatalf("integrity_check: %v", rows)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// The recipe as it once read (copy a slave's file over slave0.db and
// start) left the dead master's WAL beside the copy; the master started
// on a corrupt database and took writes. Now it refuses to start, says
// why, and changes nothing.
func TestMasterRefusesToStartOnAFileWithAnotherDatabasesWAL(t *testing.T) {
	c := clusterWith63Rows(t)
	c.Node(0).Kill()
	c.Node(1).Stop()
	copyFile(t, c.DBPath(1), c.DBPath(0)) // slave0.db-wal stays
	before, _ := os.ReadFile(c.DBPath(0))
	p := c.StartNode(0)
	deadline := time.Now().Add(15 * time.Second)
	for !p.Exited() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !p.Exited() || p.ExitCode() == 0 {
		t.Fatalf("the master started on a file with another database's WAL (exited %v)", p.Exited())
	}
	if b, _ := os.ReadFile(p.Log); !containsAll(string(b), "belongs to another database", "-wal") && !containsAll(string(b), "integrity check", "-wal") {
		t.Fatalf("the master's refusal does not say why:\n%s", b)
	}
	if after, _ := os.ReadFile(c.DBPath(0)); string(after) != string(before) {
		t.Fatal("the refused file was changed")
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// clusterWith63Rows starts a master and two slaves holding table r with
// 63 rows written through every node.
func clusterWith63Rows(t *testing.T) *testcluster.Cluster {
	t.Helper()
	c := testcluster.Start(t, 2)
	c.Exec(0, "CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT)")
	for i := 0; i < 63; i++ {
		c.Exec(i%3, "INSERT INTO r (v) VALUES (?)", fmt.Sprint(i))
	}
	c.WaitConverged(10*time.Second, 1, 2)
	return c
}
