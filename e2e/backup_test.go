package e2e

import (
	"bytes"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/testcluster"

	_ "github.com/mattn/go-sqlite3"
)

func fetch(t *testing.T, url string) ([]byte, uint64) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v %s", url, resp.StatusCode, err, b)
	}
	index, _ := strconv.ParseUint(resp.Header.Get("X-Ddb-Index"), 10, 64)
	return b, index
}

func loadInto(t *testing.T, url string, body []byte) {
	t.Helper()
	resp, err := http.Post(url+"/db/load", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("load: %d %s", resp.StatusCode, b)
	}
}

// Backups taken from followers while clients write are consistent (each
// writer's rows are a gap-free prefix of what it wrote: one point in the
// log, not a mix); loaded into a new cluster, as a SQLite file or as SQL
// text, they give every node of it exactly the backed-up tables.
func TestBackupUnderWriteLoadRestoresIntoANewCluster(t *testing.T) {
	a := testcluster.Start(t, 2)
	a.Exec(0, "CREATE TABLE w (writer INTEGER, seq INTEGER, v TEXT, PRIMARY KEY (writer, seq))")
	a.Exec(0, "CREATE TABLE k (id INTEGER PRIMARY KEY AUTOINCREMENT, n REAL, b BLOB)")
	a.Exec(0, "CREATE INDEX wv ON w (v)")
	load := startWorkers(4, func(wr, seq int) {
		// Each writer waits for its write before the next: its rows in
		// any consistent copy are 0..n-1.
		for {
			r, err := a.Do(wr%3, map[string]any{"command": "exec", "query": "INSERT INTO w VALUES (?, ?, ?)", "params": []any{wr, seq, fmt.Sprint(seq * wr)}, "request_id": fmt.Sprintf("w%d-%d", wr, seq)})
			if err == nil && r.Status == 200 {
				break
			}
		}
		a.Exec(0, "INSERT INTO k (n, b) VALUES (?, randomblob(8))", float64(seq)/3)
	})
	time.Sleep(time.Second)
	var files [][]byte
	for i := 0; i < 3; i++ {
		b, index := fetch(t, a.URL(1+i%2)+"/db/backup")
		if index == 0 {
			t.Fatal("a backup without its index")
		}
		path := filepath.Join(t.TempDir(), "b.db")
		os.WriteFile(path, b, 0o644)
		d, err := inspect.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if d.Applied != index {
			t.Fatalf("the backup says index %d, its header %d", d.Applied, index)
		}
		next := map[int64]int64{}
		for _, row := range d.Table("w").Rows {
			wr, seq := row[0].(int64), row[1].(int64)
			if seq != next[wr] {
				t.Fatalf("backup %d at index %d: writer %d's rows jump to %d after %d: not one point in the log", i, index, wr, seq, next[wr])
			}
			next[wr]++
		}
		files = append(files, b)
		time.Sleep(300 * time.Millisecond)
	}
	load.Stop()
	a.WaitConverged(10*time.Second, 1, 2)
	final, _ := fetch(t, a.URL(2)+"/db/backup")
	dump, _ := fetch(t, a.URL(1)+"/db/backup?fmt=sql")
	want, err := inspect.Load(a.DBPath(0))
	if err != nil {
		t.Fatal(err)
	}

	b := testcluster.Start(t, 2)
	b.Exec(0, "CREATE TABLE stale (x)") // replaced by the load
	loadInto(t, b.URL(1), files[0])     // an older backup first, then the final one
	loadInto(t, b.URL(2), final)
	b.WaitConverged(10*time.Second, 1, 2)
	got := requireIdentical(t, b, 0, 1, 2)
	if diffs := inspect.Compare([]*inspect.Database{want, got[0]}, 10); len(diffs) > 0 {
		t.Fatalf("restored from the SQLite file, the new cluster differs:\n%v", diffs)
	}

	c := testcluster.Start(t, 1)
	loadInto(t, c.URL(1), dump)
	c.WaitConverged(10*time.Second, 1)
	// The load and the backups were reported as they went (the long-work
	// progress), and /status lists nothing under way once they are done.
	for _, l := range []struct {
		log  string
		want string
	}{{c.Node(1).Log, `msg="load-body done"`}, {c.Node(1).Log, `msg="load done"`}, {a.Node(2).Log, `msg="backup done"`}} {
		if b, _ := os.ReadFile(l.log); !strings.Contains(string(b), l.want) {
			t.Fatalf("%s does not say %s:\n%s", l.log, l.want, b)
		}
	}
	if st, err := c.Status(1); err != nil || fmt.Sprint(st["progress"]) != "[]" {
		t.Fatalf("/status progress after the load: %v %v", st["progress"], err)
	}
	got = requireIdentical(t, c, 0, 1)
	if diffs := inspect.Compare([]*inspect.Database{want, got[0]}, 10); len(diffs) > 0 {
		t.Fatalf("restored from the SQL dump, the new cluster differs:\n%v", diffs)
	}
	// The restored cluster takes writes, and AUTOINCREMENT goes on from
	// where the backup left it.
	r := c.Exec(1, "INSERT INTO k (n) VALUES (0)")
	if r.LastInsertID != int64(len(want.Table("k").Rows))+1 {
		t.Fatalf("next id %d after %d rows", r.LastInsertID, len(want.Table("k").Rows))
	}
}

// Periodic backups under write load: each one whole (SQLite's integrity
// check), written atomically, the oldest deleted beyond -backup-keep; the
// newest starts a fresh cluster with -restore, whose nodes all get it; a
// restart with the flag still given changes nothing.
func TestPeriodicBackupsAndRestoreIntoAFreshCluster(t *testing.T) {
	a := testcluster.Start(t, 2)
	a.Exec(0, "CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT, at DEFAULT CURRENT_TIMESTAMP)")
	dir := t.TempDir()
	a.Node(0).Stop()
	a.StartNode(0, "-backup-dir", dir, "-backup-interval", "300ms", "-backup-keep", "2")
	a.WaitReady()
	load := startWorkers(1, func(_, i int) {
		a.Do(i%3, map[string]any{"command": "exec", "query": "INSERT INTO p (v) VALUES (?)", "params": []any{fmt.Sprint(i)}})
	})
	time.Sleep(2 * time.Second) // two seconds of writes, several backups
	load.Stop()
	time.Sleep(time.Second) // a backup after the last write
	// Idle, the next backups are skipped: their content is the newest's.
	waitFor(t, 10*time.Second, "a backup skipped", func() bool {
		b, _ := os.ReadFile(a.Node(0).Log)
		return strings.Contains(string(b), "backup skipped: nothing changed since the last one")
	})
	a.Node(0).Stop() // and no more
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Fatalf("backups kept: %v, want the newest 2", names)
	}
	var last uint64
	for _, n := range names {
		d, err := inspect.Load(filepath.Join(dir, n))
		if err != nil {
			t.Fatalf("backup %s: %v", n, err)
		}
		if d.Applied < last || !strings.HasSuffix(n, fmt.Sprintf("-%d.db", d.Applied)) {
			t.Fatalf("backup %s holds index %d", n, d.Applied)
		}
		last = d.Applied
	}
	newest := filepath.Join(dir, names[1])
	want, err := inspect.Load(newest)
	if err != nil {
		t.Fatal(err)
	}
	live, _ := inspect.Load(a.DBPath(0))
	if diffs := inspect.Compare([]*inspect.Database{live, want}, 5); len(diffs) > 0 {
		t.Fatalf("the newest backup differs from the master:\n%v", diffs)
	}

	b := testcluster.Start(t, 2)
	b.Node(0).Stop()
	b.StartNode(0, "-restore", newest)
	deadline := time.Now().Add(15 * time.Second)
	for {
		rows := b.Query(1, "SELECT count(*) AS n FROM sqlite_schema WHERE name = 'p'")
		if len(rows) == 1 && rows[0]["n"] == 1.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fresh cluster was not restored")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.WaitConverged(10*time.Second, 1, 2)
	if st, err := b.Status(0); err != nil || fmt.Sprint(st["restore"]) != fmt.Sprintf("map[file:%s index:%v state:restored tries:1]", newest, st["restore"].(map[string]any)["index"]) {
		t.Fatalf("/status restore after the restore: %v %v", st["restore"], err)
	}
	if l, _ := os.ReadFile(b.Node(0).Log); !strings.Contains(string(l), `msg="restore done"`) || !strings.Contains(string(l), `msg="restore started"`) {
		t.Fatalf("the restore was not reported as it went:\n%s", l)
	}
	got := requireIdentical(t, b, 0, 1, 2)
	if diffs := inspect.Compare([]*inspect.Database{want, got[0]}, 5); len(diffs) > 0 {
		t.Fatalf("the restored cluster differs from the backup:\n%v", diffs)
	}
	b.Exec(0, "INSERT INTO p (v) VALUES ('after the restore')")
	b.Node(0).Stop()
	p := b.StartNode(0, "-restore", newest)
	b.WaitReady()
	// The restarted master decides not to load the backup again, and says so.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if l, _ := os.ReadFile(p.Log); strings.Contains(string(l), "already holds tables; the backup is not loaded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restarted master did not decide about -restore")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := b.Status(0); err != nil || st["restore"].(map[string]any)["state"] != "skipped" {
		t.Fatalf("/status restore after the restart: %v %v", st["restore"], err)
	}
	if rows := b.Query(0, "SELECT count(*) AS n FROM p WHERE v = 'after the restore'"); rows[0]["n"] != 1.0 {
		t.Fatalf("a restart with -restore still given changed the data: %v", rows)
	}
}

// A backup the cluster refuses (it holds a table in the project's own
// namespace) is not loaded, and -restore says so once, in the log and on
// /status, instead of trying again: the restore's state is "failed", with
// the reason, and nothing of the file was loaded.
func TestARestoreThatCannotSucceedStopsAndSaysWhy(t *testing.T) {
	file := filepath.Join(t.TempDir(), "refused.db")
	db, err := sql.Open("sqlite3", file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE _ddb_evil (x); INSERT INTO _ddb_evil VALUES (1); CREATE TABLE fine (y)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	c := testcluster.Start(t, 2)
	c.Node(0).Stop()
	p := c.StartNode(0, "-restore", file)
	c.WaitReady()
	var restore map[string]any
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err := c.Status(0)
		if err == nil {
			restore, _ = st["restore"].(map[string]any)
			if restore != nil && restore["state"] == "failed" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refused restore did not fail: %v", restore)
		}
	}
	if tries, _ := restore["tries"].(float64); tries > 1 || !strings.Contains(fmt.Sprint(restore["error"]), "_ddb_evil") || restore["file"] != file {
		t.Fatalf("/status restore: %v", restore)
	}
	l, _ := os.ReadFile(p.Log)
	if n := strings.Count(string(l), `level=ERROR msg="restore: `); n != 1 {
		t.Fatalf("the log says %d times that the restore failed:\n%s", n, l)
	}
	if rows := c.Query(1, "SELECT count(*) AS n FROM sqlite_schema WHERE name = 'fine'"); rows[0]["n"] != 0.0 {
		t.Fatalf("part of the refused backup was loaded: %v", rows)
	}
}
