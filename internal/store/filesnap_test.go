package store

import (
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"testing"
	"time"
)

// A FileSnapshot is the leader's file as it stood at one index, though
// writes and checkpoints go on while it is read: installed on a follower
// at that index, the entries after it make the follower the leader's
// equal. (Were the file read while the WAL still held commits, the copy
// would miss them; were a checkpoint to copy pages in meanwhile, it would
// hold later ones, and the entries after it would apply twice.)
func TestAFileSnapshotHoldsItsIndexWhileWritesGoOn(t *testing.T) {
	leader, follower, entries := swapStores(t, 2, 3)
	// The last commit before the snapshot is in the WAL only.
	if err := leader.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.ApplyLog(entries[2:3]); err != nil {
		t.Fatal(err)
	}
	fs, err := leader.OpenFileSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fs.Index() != 3 {
		t.Fatalf("the file is held at index %d, not 3", fs.Index())
	}
	if _, err := leader.ApplyLog(entries[3:]); err != nil {
		t.Fatal(err)
	}
	if err := leader.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	path, err := fs.WriteFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fs.Close()
	if fi, _ := os.Stat(path); fi.Size() != fs.Size() {
		t.Fatalf("%d bytes written, the file holds %d", fi.Size(), fs.Size())
	}
	pos, err := SnapshotPosition(path)
	if err != nil || pos.Index != 3 || pos.Term != 2 {
		t.Fatalf("the copy stands at %+v (%v), not at index 3, term 2", pos, err)
	}
	if _, err := follower.InstallCopy(path); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.ApplyLog(entries[3:]); err != nil {
		t.Fatal(err)
	}
	sameContent(t, leader, follower)
	// Let go, the WAL empties into the file again.
	frames, copied, err := leader.w.CheckpointFrames(0)
	if err != nil || frames != copied {
		t.Fatalf("after the snapshot a checkpoint copied %d of %d frames (%v)", copied, frames, err)
	}
}

// A consistency check's digest under way holds the WAL (its read began
// earlier): it stops, and the file is held.
func TestAFileSnapshotStopsADigestUnderWay(t *testing.T) {
	leader, _, entries := swapStores(t, 3, 3)
	defer func(w time.Duration) { fileSnapshotWait = w }(fileSnapshotWait)
	fileSnapshotWait = time.Hour // a digest that does not stop would hold the test
	got := digestUnderWay(leader)
	// A commit after the digest's read began: the WAL is not empty.
	if _, err := leader.ApplyLog(entries[3:4]); err != nil {
		t.Fatal(err)
	}
	fs, err := leader.OpenFileSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	if d := <-got; d.Err == "" {
		t.Fatalf("the digest finished: %+v", d)
	}
	if fs.Index() != 4 {
		t.Fatalf("held at %d, not 4", fs.Index())
	}
}

// A file that changed while it was read (nothing in this process writes
// it then; another process might) fails the read at its end, rather than
// sending a torn copy; so does a store that closes meanwhile.
func TestAFileSnapshotThatChangedFailsItsRead(t *testing.T) {
	leader, _, _ := swapStores(t, 3, 3)
	fs, err := leader.OpenFileSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, fs.NewReader()); err != nil {
		t.Fatalf("the file held still, yet its read failed: %v", err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(leader.Path(), later, later); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, fs.NewReader()); !errors.Is(err, errFileMoved) {
		t.Fatalf("a changed file read to its end: %v", err)
	}
	fs.Close()

	fs, err = leader.OpenFileSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r := fs.NewReader()
	closed := make(chan error, 1)
	go func() { closed <- leader.Close() }()
	for leader.stopDigests.Load() == fs.gen { // Close has begun
		runtime.Gosched()
	}
	for {
		if _, err := r.Read(make([]byte, 4096)); err != nil {
			if err == io.EOF {
				t.Fatal("the read ended normally while the store closed")
			}
			break
		}
	}
	fs.Close()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// A copy shorter than its pages say (cut off on the way, or on the disk
// before its sync) is refused, and the database stays as it was.
func TestACopyCutShortIsNotInstalled(t *testing.T) {
	leader, follower, _ := swapStores(t, 5, 3)
	path, _, err := leader.Snapshot(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-4096); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.InstallCopy(path); err == nil {
		t.Fatal("a copy cut short was installed")
	}
	if follower.Applied() != 3 {
		t.Fatalf("the follower is at %d", follower.Applied())
	}
	if n := count(t, follower, "a"); n != 2000 {
		t.Fatalf("the follower holds %d rows of a", n)
	}
}
