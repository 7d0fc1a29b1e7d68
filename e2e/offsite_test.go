package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/offsite"
	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// withTarget opens the backup target at rawURL with env's credentials, as
// a node would, for f.
func withTarget(t *testing.T, env []string, rawURL string, f func(ctx context.Context, tg *offsite.Target)) {
	t.Helper()
	restore := setEnv(t, env)
	defer restore()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tg, err := offsite.Open(ctx, rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	f(ctx, tg)
}

// listBackups lists the backups at rawURL.
func listBackups(t *testing.T, env []string, rawURL string) (list []offsite.Manifest) {
	t.Helper()
	withTarget(t, env, rawURL, func(ctx context.Context, tg *offsite.Target) {
		var err error
		if list, err = tg.List(ctx); err != nil {
			t.Fatal(err)
		}
	})
	return list
}

// fetchAll downloads every backup at rawURL, each checked against its
// manifest, and returns their paths by index.
func fetchAll(t *testing.T, env []string, rawURL string) map[uint64]string {
	t.Helper()
	out := map[uint64]string{}
	withTarget(t, env, rawURL, func(ctx context.Context, tg *offsite.Target) {
		list, err := tg.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range list {
			path, _, err := tg.Fetch(ctx, m.Index, t.TempDir(), nil)
			if err != nil {
				t.Fatalf("backup at %d: %v", m.Index, err)
			}
			out[m.Index] = path
		}
	})
	return out
}

var envMu sync.Mutex

// setEnv sets KEY=VALUE pairs for this process (the object store's
// credentials) until the returned function undoes it.
func setEnv(t *testing.T, env []string) func() {
	envMu.Lock()
	old := map[string]*string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if prev, ok := os.LookupEnv(k); ok {
			old[k] = &prev
		} else {
			old[k] = nil
		}
		os.Setenv(k, v)
	}
	return func() {
		for k, v := range old {
			if v == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *v)
			}
		}
		envMu.Unlock()
	}
}

// userTables reads every user table of the SQLite file at path, rows in
// rowid (or key) order.
func userTables(t *testing.T, path string) map[string][][]any {
	t.Helper()
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tables, err := c.All(`SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND name NOT LIKE '\_ddb\_%' ESCAPE '\' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][]any{}
	for _, tb := range tables {
		name := tb[0].(string)
		rows, err := c.All(fmt.Sprintf("SELECT * FROM %q ORDER BY 1", name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = rows
	}
	return out
}

// restoreInto starts a new cluster that restores from rawURL (extra flags
// for the master) and waits until it has; it returns the cluster.
func restoreInto(t *testing.T, env []string, rawURL string, extra ...string) *testcluster.Cluster {
	t.Helper()
	c := testcluster.New(t, 2)
	c.Env = env
	c.Flags[0] = append([]string{"-restore", rawURL}, extra...)
	for i := 0; i <= 2; i++ {
		c.StartNode(i)
	}
	c.WaitReady()
	waitFor(t, 60*time.Second, "the restore", func() bool {
		st, err := c.Status(0)
		if err != nil {
			return false
		}
		r, _ := st["restore"].(map[string]any)
		if r["state"] == "failed" {
			t.Fatalf("the restore failed: %v", r["error"])
		}
		return r["state"] == "restored"
	})
	return c
}

// offsiteScenario runs the scenario every store must pass: periodic
// uploads under write load by the leader only, skipped while nothing
// changes, the retention, a leader killed with SIGKILL in the middle of an
// upload, and restores (the newest, one by index) into new clusters,
// compared table by table.
func offsiteScenario(t *testing.T, env []string, rawURL string, storeDown func(), storeUp func()) {
	c := testcluster.New(t, 2, "-backup-url", rawURL, "-backup-interval", "1s", "-backup-keep", "3")
	c.Env = env
	for i := 0; i <= 2; i++ {
		c.StartNode(i)
	}
	c.WaitReady()
	waitLeader(t, c, 0, 10*time.Second)
	c.Exec(0, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, photo BLOB)")
	// Writes for a while: a backup each interval, by the leader alone.
	load := startWorkers(1, func(_, i int) {
		c.Do(1+i%2, map[string]any{"command": "exec", "query": "INSERT INTO items(name, photo) VALUES (?, randomblob(2000))", "params": []any{fmt.Sprint("item", i)}})
		time.Sleep(5 * time.Millisecond)
	})
	var seen []offsite.Manifest
	waitFor(t, 30*time.Second, "three backups under write load", func() bool {
		seen = listBackups(t, env, rawURL)
		return len(seen) == 3 && seen[0].Index > 0
	})
	load.Stop()
	for _, m := range seen {
		if m.Node != "master" {
			t.Fatalf("backup at %d was taken by %s, not the leader (the master)", m.Index, m.Node)
		}
	}
	// Idle: the next backups are skipped, and the master says so.
	c.WaitConverged(10*time.Second, 0, 1, 2)
	var last offsite.Manifest
	waitFor(t, 20*time.Second, "a backup of the final state", func() bool {
		l := listBackups(t, env, rawURL)
		last = l[len(l)-1]
		return last.Index >= c.Applied(0)-1 && len(l) <= 3
	})
	waitFor(t, 10*time.Second, "a skipped backup", func() bool {
		b, _ := os.ReadFile(c.Node(0).Log)
		return strings.Contains(string(b), "backup skipped: nothing changed since the last one")
	})
	time.Sleep(2 * time.Second)
	if l := listBackups(t, env, rawURL); l[len(l)-1].Index != last.Index || len(l) > 3 {
		t.Fatalf("an idle cluster uploaded again, or kept more than 3: %+v", l)
	}
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == "AWS_SECRET_ACCESS_KEY" {
			for id := 0; id <= 2; id++ {
				if log, _ := os.ReadFile(c.Node(id).Log); strings.Contains(string(log), v) {
					t.Fatalf("node %d logged the secret key", id)
				}
			}
		}
	}

	// A leader killed in the middle of an upload leaves no backup
	// without its manifest, and the next leader uploads.
	c.Exec(0, "CREATE TABLE big (id INTEGER PRIMARY KEY, data BLOB)")
	for i := 0; i < 24; i++ {
		c.Exec(0, "INSERT INTO big(data) SELECT randomblob(1000000)")
	}
	waitFor(t, 30*time.Second, "an upload under way on the master", func() bool {
		st, err := c.Status(0)
		if err != nil {
			return false
		}
		ps, _ := st["progress"].([]any)
		for _, p := range ps {
			if m, _ := p.(map[string]any); m["op"] == "backup" {
				return true
			}
		}
		return false
	})
	c.Node(0).Kill()
	before := last.Index
	waitFor(t, 60*time.Second, "a backup by the new leader", func() bool {
		l := listBackups(t, env, rawURL)
		return l[len(l)-1].Index > before && l[len(l)-1].Node != "master"
	})
	fetchAll(t, env, rawURL) // every manifest's file is whole

	if storeDown != nil {
		// The store goes away in the middle of an upload: the leader says
		// so, tries again later, and nothing uploaded before is lost.
		leader := 1
		if c.Role(2) == "leader" {
			leader = 2
		}
		c.Restart(0)
		c.Exec(1, "UPDATE big SET data = randomblob(1000001)")
		waitFor(t, 30*time.Second, "an upload under way", func() bool {
			for id := 0; id <= 2; id++ {
				st, err := c.Status(id)
				if err != nil {
					continue
				}
				ps, _ := st["progress"].([]any)
				for _, p := range ps {
					if m, _ := p.(map[string]any); m["op"] == "backup" {
						leader = id
						return true
					}
				}
			}
			return false
		})
		storeDown()
		waitFor(t, 60*time.Second, "the failed upload logged", func() bool {
			b, _ := os.ReadFile(c.Node(leader).Log)
			return strings.Contains(string(b), "backup to object storage failed; it is tried again at the next interval")
		})
		storeUp()
		held := listBackups(t, env, rawURL)
		waitFor(t, 60*time.Second, "an upload once the store is back", func() bool {
			l := listBackups(t, env, rawURL)
			return l[len(l)-1].Index > held[len(held)-1].Index
		})
		fetchAll(t, env, rawURL)
	}

	// Restores: the newest backup, and one by index, into new clusters,
	// each equal, table by table, to the backup it came from.
	c.Exec(1, "INSERT INTO items(name) VALUES ('the last write')")
	final := c.Applied(1)
	waitFor(t, 60*time.Second, "a backup of the last write", func() bool {
		l := listBackups(t, env, rawURL)
		return l[len(l)-1].Index >= final
	})
	files := fetchAll(t, env, rawURL)
	list := listBackups(t, env, rawURL)
	newest, oldest := list[len(list)-1], list[0]
	r := restoreInto(t, env, rawURL)
	r.WaitConverged(30*time.Second, 0, 1, 2)
	want := userTables(t, files[newest.Index])
	if len(want["items"]) < 10 || want["items"][len(want["items"])-1][1] != "the last write" {
		t.Fatalf("the newest backup does not hold the last write")
	}
	for id := 0; id <= 2; id++ {
		if got := userTables(t, r.DBPath(id)); !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d of the restored cluster differs from the backup at %d", id, newest.Index)
		}
	}
	if got := userTables(t, c.DBPath(1)); !reflect.DeepEqual(got, want) {
		t.Fatalf("the backup at %d differs from the cluster it came from", newest.Index)
	}
	if oldest.Index != newest.Index {
		r2 := restoreInto(t, env, rawURL, "-restore-index", fmt.Sprint(oldest.Index))
		r2.WaitConverged(30*time.Second, 0)
		if got := userTables(t, r2.DBPath(0)); !reflect.DeepEqual(got, userTables(t, files[oldest.Index])) {
			t.Fatalf("the cluster restored from the backup at %d differs from it", oldest.Index)
		}
	}
}

// Backups to a directory (file://), which needs no store: the whole
// scenario but the store going away.
func TestOffsiteBackupsToADirectory(t *testing.T) {
	t.Parallel() // they wait on clusters and stores, mostly: two at a time
	dir := t.TempDir()
	offsiteScenario(t, nil, "file://"+dir, nil, nil)
}

// Backups to SeaweedFS, a real S3-compatible store, started by the test:
// the whole scenario, the store going away mid-upload included; then wrong
// credentials and a bucket that does not exist, which the node's log
// names; and a damaged backup, which a restore refuses.
func TestOffsiteBackupsToS3(t *testing.T) {
	t.Parallel() // they wait on clusters and stores, mostly: two at a time
	s3 := testcluster.StartS3(t, t.TempDir(), "backups")
	env := s3.Env()
	rawURL := s3.URL("backups", "cluster-a")
	offsiteScenario(t, env, rawURL, s3.Kill, func() { s3.Start(t) })

	// Wrong credentials, and a bucket that does not exist: the node says
	// what to check, at every interval, and keeps running.
	c := testcluster.New(t, 0, "-backup-interval", "1s")
	wrong := append([]string{}, env...)
	wrong[1] = "AWS_SECRET_ACCESS_KEY=not-the-secret"
	c.Env = wrong
	c.Flags[0] = []string{"-backup-url", rawURL}
	c.StartNode(0)
	c.WaitReady()
	c.Exec(0, "CREATE TABLE t (x)")
	waitFor(t, 30*time.Second, "the wrong credentials named", func() bool {
		b, _ := os.ReadFile(c.Node(0).Log)
		return strings.Contains(string(b), "access denied: check the credentials")
	})
	if b, _ := os.ReadFile(c.Node(0).Log); strings.Contains(string(b), "not-the-secret") {
		t.Fatal("the log shows the secret key")
	}
	c2 := testcluster.New(t, 0, "-backup-interval", "1s")
	c2.Env = env
	c2.Flags[0] = []string{"-backup-url", s3.URL("nosuchbucket", "x")}
	c2.StartNode(0)
	c2.WaitReady()
	c2.Exec(0, "CREATE TABLE t (x)")
	waitFor(t, 30*time.Second, "the missing bucket named", func() bool {
		b, _ := os.ReadFile(c2.Node(0).Log)
		return strings.Contains(string(b), "does the bucket exist?")
	})

	// A damaged backup is refused by a restore, which says why.
	list := listBackups(t, env, rawURL)
	func() {
		restoreEnv := setEnv(t, env)
		defer restoreEnv()
		bu, _, err := cluster.ParseBackupURL(rawURL)
		if err != nil {
			t.Fatal(err)
		}
		b, err := blob.OpenBucket(context.Background(), bu)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		key := fmt.Sprintf("ddb-%020d.db", list[len(list)-1].Index)
		if err := b.WriteAll(context.Background(), key, []byte("not the database that was uploaded"), nil); err != nil {
			t.Fatal(err)
		}
	}()
	r := testcluster.New(t, 0)
	r.Env = env
	r.Flags[0] = []string{"-restore", rawURL}
	r.StartNode(0)
	r.WaitReady()
	waitFor(t, 30*time.Second, "the damaged backup refused", func() bool {
		st, err := r.Status(0)
		if err != nil {
			return false
		}
		rs, _ := st["restore"].(map[string]any)
		e, _ := rs["error"].(string)
		return rs["state"] == "failed" && strings.Contains(e, "is damaged")
	})
}

// The backup guide's off-site commands run as written, against SeaweedFS:
// its URL pointed at the test's store and its interval shortened, the
// three nodes it starts upload a backup, and its restore command starts a
// new cluster from it.
func TestTheBackupGuidesOffsiteCommandsRun(t *testing.T) {
	t.Parallel() // they wait on clusters and stores, mostly: two at a time
	s3 := testcluster.StartS3(t, t.TempDir(), "backups")
	b, err := os.ReadFile(filepath.Join(testcluster.RepoRoot(), "docs/BACKUP.md"))
	if err != nil {
		t.Fatal(err)
	}
	const docURL = "s3://backups/shop?region=eu-west-1"
	rawURL := s3.URL("backups", "shop")
	var nodes, restores [][]string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if !strings.Contains(l, "'"+docURL+"'") {
			continue
		}
		l = strings.ReplaceAll(l, docURL, rawURL)
		l = strings.ReplaceAll(l, "-backup-interval 1h", "-backup-interval 1s")
		if i := strings.Index(l, " #"); i > 0 {
			l = l[:i]
		}
		var args []string
		switch {
		case strings.HasPrefix(l, "go run master/main.go "), strings.HasPrefix(l, "go run node/main.go "):
			args = shellWords(t, strings.SplitN(l, " ", 4)[3])
		default:
			continue
		}
		// The port arithmetic's positional arguments are the test
		// cluster's to give.
		for len(args) > 0 && !strings.HasPrefix(args[len(args)-1], "-") && !strings.HasPrefix(args[len(args)-2], "-") {
			args = args[:len(args)-1]
		}
		if slices.Contains(args, "-restore") {
			restores = append(restores, args)
		} else {
			nodes = append(nodes, args)
		}
	}
	if len(nodes) != 3 || len(restores) != 2 {
		t.Fatalf("the guide's off-site commands: %d to start nodes, %d to restore; want 3 and 2", len(nodes), len(restores))
	}
	c := testcluster.New(t, 2)
	c.Env = s3.Env()
	for id := range nodes {
		c.Flags[id] = nodes[id]
		c.StartNode(id)
	}
	c.WaitReady()
	waitLeader(t, c, 0, 10*time.Second)
	c.Exec(0, "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
	c.Exec(1, "INSERT INTO orders(item) VALUES ('tea'), ('cake')")
	applied := c.Applied(1)
	waitFor(t, 30*time.Second, "a backup of the orders", func() bool {
		l := listBackups(t, s3.Env(), rawURL)
		return len(l) > 0 && l[len(l)-1].Index >= applied
	})
	want := userTables(t, c.DBPath(0))
	r := testcluster.New(t, 2)
	r.Env = s3.Env()
	r.Flags[0] = restores[0]
	for id := 0; id <= 2; id++ {
		r.StartNode(id)
	}
	r.WaitReady()
	waitFor(t, 60*time.Second, "the guide's restore", func() bool {
		st, err := r.Status(0)
		if err != nil {
			return false
		}
		rs, _ := st["restore"].(map[string]any)
		return rs["state"] == "restored"
	})
	r.WaitConverged(30*time.Second, 0, 1, 2)
	if got := userTables(t, r.DBPath(2)); !reflect.DeepEqual(got, want) || len(got["orders"]) != 2 {
		t.Fatalf("the restored cluster: %v, want %v", got, want)
	}
}

// Backups to Azure Blob Storage (Azurite, Microsoft's emulator, started
// by the test): uploaded by the leader, restored into a new cluster equal
// table by table; a wrong key is named in the log.
func TestOffsiteBackupsToAzure(t *testing.T) {
	t.Parallel() // they wait on clusters and stores, mostly: two at a time
	az := testcluster.StartAzure(t, t.TempDir(), "backups")
	env, rawURL := az.Env(), az.URL("cluster-a")
	c := testcluster.New(t, 2, "-backup-url", rawURL, "-backup-interval", "1s")
	c.Env = env
	for id := 0; id <= 2; id++ {
		c.StartNode(id)
	}
	c.WaitReady()
	waitLeader(t, c, 0, 10*time.Second)
	c.Exec(0, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, b BLOB)")
	for i := range 20 {
		c.Exec(1+i%2, "INSERT INTO notes(body, b) VALUES (?, randomblob(100))", fmt.Sprint("note ", i))
	}
	applied := c.Applied(1)
	waitFor(t, 30*time.Second, "a backup in Azure", func() bool {
		l := listBackups(t, env, rawURL)
		return len(l) > 0 && l[len(l)-1].Index >= applied
	})
	want := userTables(t, c.DBPath(0))
	r := restoreInto(t, env, rawURL)
	r.WaitConverged(30*time.Second, 0, 1, 2)
	if got := userTables(t, r.DBPath(1)); !reflect.DeepEqual(got, want) || len(got["notes"]) != 20 {
		t.Fatalf("the cluster restored from Azure differs from the one backed up")
	}
	wrong := testcluster.New(t, 0, "-backup-url", rawURL, "-backup-interval", "1s")
	wrong.Env = append(append([]string{}, env...), "AZURE_STORAGE_KEY=d3Jvbmcga2V5IGZvciB0aGlzIGFjY291bnQ=")
	wrong.StartNode(0)
	wrong.WaitReady()
	wrong.Exec(0, "CREATE TABLE t (x)")
	waitFor(t, 30*time.Second, "the wrong key named", func() bool {
		b, _ := os.ReadFile(wrong.Node(0).Log)
		return strings.Contains(string(b), "access denied: check the credentials")
	})
}
