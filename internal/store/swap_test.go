package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

// swapStores returns a leader that applied the first lead entries of a
// small log (a few MB of rows), a follower that applied the first follow
// of them, checkpointed as on a node that ran a while, and the log.
func swapStores(t *testing.T, lead, follow int) (leader, follower *Store, entries []rlog.Entry) {
	t.Helper()
	entries = logEntries(t,
		rlog.Write{AllowSchema: true, Stmts: stmts("CREATE TABLE a (id INTEGER PRIMARY KEY, b BLOB)")},
		rlog.Write{Stmts: stmts("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 2000) INSERT INTO a (b) SELECT randomblob(2000) FROM s")},
		rlog.Write{AllowSchema: true, Stmts: stmts("CREATE TABLE other (y)")},
		rlog.Write{Stmts: stmts("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 5000) INSERT INTO other SELECT x FROM s")},
		rlog.Write{Stmts: stmts("INSERT INTO a (b) VALUES (x'00')")},
	)
	for i := range entries {
		entries[i].Term = 2
	}
	leader, follower = openTemp(t, "leader.db"), openTemp(t, "follower.db")
	if _, err := leader.ApplyLog(entries[:lead]); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.ApplyLog(entries[:follow]); err != nil {
		t.Fatal(err)
	}
	if err := follower.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	return leader, follower, entries
}

// workDir is a directory beside s's file, as a node's work directory is
// (its copies are made there, then renamed into place).
func workDir(t *testing.T, s *Store) string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(s.Path()), "work")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// installBeside installs a copy of leader's database, made in a work
// directory beside follower's file as a node makes it, and reports whether
// it was renamed into place (the database is another file afterwards).
func installBeside(t *testing.T, leader, follower *Store) (renamed bool) {
	t.Helper()
	// (The database's permissions are kept: a copy is made private.)
	if err := os.Chmod(follower.Path(), 0o640); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(follower.Path())
	if err != nil {
		t.Fatal(err)
	}
	copyPath, _, err := leader.Snapshot(context.Background(), workDir(t, follower))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := follower.InstallCopy(copyPath); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(follower.Path())
	if err != nil {
		t.Fatal(err)
	}
	if after.Mode().Perm() != 0o640 {
		t.Fatalf("the database's permissions went from 0640 to %o", after.Mode().Perm())
	}
	return !os.SameFile(before, after)
}

// digestUnderWay starts a digest of s at its applied index, as the writer
// starts one between entries, so slow (a byte a second) that it sleeps
// after its first rows; the digest arrives on the channel when it ends.
func digestUnderWay(s *Store) <-chan *Digest {
	s.digestRate = 1
	got := make(chan *Digest, 1)
	s.OnDigest(func(d *Digest) { got <- d })
	s.wmu.Lock()
	s.startDigest(s.Applied())
	s.wmu.Unlock()
	return got
}

func fileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// A copy of the leader's database received in the follower's work
// directory (beside its file, on its file system) is renamed over it: the follower's database is the copy's file, not the
// copy written again through the WAL (which cost 5 minutes 48 seconds for
// 10 GB here). The store then works as before: reads, writes, a restart,
// and the lock that keeps a second process off the file, which moves to
// the new file.
func TestACopyBesideTheDatabaseIsRenamedIntoPlace(t *testing.T) {
	leader, follower, entries := swapStores(t, 4, 1)
	before, err := os.Stat(follower.Path())
	if err != nil {
		t.Fatal(err)
	}
	copyPath, _, err := leader.Snapshot(context.Background(), workDir(t, follower))
	if err != nil {
		t.Fatal(err)
	}
	copySize := fileSize(t, copyPath)
	at, err := follower.InstallCopy(copyPath)
	if err != nil || at != leader.Applied() || follower.Applied() != at {
		t.Fatalf("install: at %d, applied %d, the leader's %d: %v", at, follower.Applied(), leader.Applied(), err)
	}
	after, err := os.Stat(follower.Path())
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Fatal("the database is the same file: the copy was written into it, not renamed")
	}
	if wal := fileSize(t, follower.Path()+"-wal"); wal > copySize/4 {
		t.Fatalf("the WAL holds %d bytes after installing a copy of %d", wal, copySize)
	}
	if _, err := os.Stat(copyPath); !os.IsNotExist(err) {
		t.Fatalf("the copy is still there: %v", err)
	}
	sameContent(t, leader, follower)
	for _, s := range []*Store{leader, follower} {
		if out, err := s.ApplyLog(entries[4:]); err != nil || len(out) != 1 || out[0].Err != nil {
			t.Fatalf("the next entry: %v %v", describe(out), err)
		}
	}
	sameContent(t, leader, follower)
	if _, err := Open(Options{Path: follower.Path()}); err == nil || !strings.Contains(err.Error(), "in use by another node process") {
		t.Fatalf("a second store opened the installed file while the first holds it: %v", err)
	}
	path, applied := follower.Path(), follower.Applied()
	if err := follower.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := Open(Options{Path: path})
	if err != nil {
		t.Fatalf("the installed database does not open again: %v", err)
	}
	defer again.Close()
	if again.Applied() != applied {
		t.Fatalf("applied %d after the restart, %d before", again.Applied(), applied)
	}
	sameContent(t, leader, again)
}

// A read that holds its connection past swapWait (a dump sent to a slow
// client) is not cut off: the copy is written in through the writer, as
// before, and the held connection reads the new content once its read
// ends.
func TestACopyIsWrittenInWhenAReadHoldsItsConnection(t *testing.T) {
	leader, follower, _ := swapStores(t, 4, 1)
	defer func(w time.Duration) { swapWait = w }(swapWait)
	swapWait = 20 * time.Millisecond
	r, err := follower.getReader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := true
	defer func() {
		if held {
			follower.putReader(r)
		}
	}()
	if installBeside(t, leader, follower) {
		t.Fatal("the file was replaced under a connection in use")
	}
	r.auth.reset(policyReplica)
	row, err := r.c.QueryRow("SELECT count(*) FROM a")
	if err != nil || row[0] != int64(2000) {
		t.Fatalf("the held connection reads %v, %v", row, err)
	}
	held = false
	follower.putReader(r)
	sameContent(t, leader, follower)
}

// A consistency check's digest reads its snapshot for minutes on a large
// database (at -check-rate); a copy to install does not wait for it: the
// digest stops at its next rows, and reports that it could not finish.
func TestADigestUnderWayStopsForACopyToBeRenamedIn(t *testing.T) {
	leader, follower, _ := swapStores(t, 4, 4)
	defer func(w time.Duration) { swapWait = w }(swapWait)
	swapWait = time.Hour // a digest that does not stop would hold the test
	got := digestUnderWay(follower)
	if !installBeside(t, leader, follower) {
		t.Fatal("the copy was not renamed in")
	}
	if d := <-got; d.Err == "" {
		t.Fatalf("the digest of the replaced database finished: %+v", d)
	}
	sameContent(t, leader, follower)
}

// A clean stop does not wait for a digest under way (minutes on a large
// database): the digest stops, and the stop leaves its note, so the next
// start skips the check. (A stop held by a digest was killed by the
// service manager's patience, or the test harness's, and the next start
// checked 10 GB.)
func TestACleanStopDoesNotWaitForADigest(t *testing.T) {
	_, follower, _ := swapStores(t, 4, 4)
	got := digestUnderWay(follower)
	if err := follower.Close(); err != nil {
		t.Fatal(err)
	}
	if d := <-got; d.Err == "" {
		t.Fatalf("the digest of the closed database finished: %+v", d)
	}
	if _, err := os.Stat(follower.Path() + "-clean"); err != nil {
		t.Fatalf("the stop left no note: %v", err)
	}
}
