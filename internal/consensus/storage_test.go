package consensus

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/store"
)

// openLogAt opens the store at path and its log; the store is closed when
// the test ends.
func openLogAt(t *testing.T, path string) (*store.Store, *Storage) {
	t.Helper()
	st, err := store.Open(store.Options{Path: path, Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := OpenStorage(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return st, s
}

// The log keeps at most memLogBytes of entries' data in memory, however
// big the entries: older data is read back from the file, exactly, for
// any range Raft asks (the range crossing from file to memory too), after
// a suffix is replaced, after compaction, and after a restart.
func TestTheLogKeepsBoundedDataInMemoryAndServesTheRestFromTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, s := openLogAt(t, path)
	const size = 4 << 20
	data := func(i uint64, term uint64) []byte {
		b := bytes.Repeat([]byte{byte(i), byte(term)}, size/2)
		return b
	}
	var want []pb.Entry
	save := func(from, to, term uint64) {
		t.Helper()
		var es []pb.Entry
		for i := from; i <= to; i++ {
			es = append(es, pb.Entry{Index: i, Term: term, Type: pb.EntryNormal, Data: data(i, term)})
		}
		if err := s.Save(es, pb.HardState{Term: term, Commit: from - 1}); err != nil {
			t.Fatal(err)
		}
		want = append(want[:from-1], es...)
	}
	check := func(when string) {
		t.Helper()
		s.mu.Lock()
		held := s.dataBytes
		s.mu.Unlock()
		if held > memLogBytes {
			t.Fatalf("%s: %d bytes of data in memory, over %d", when, held, memLogBytes)
		}
		first, _ := s.FirstIndex()
		last, _ := s.LastIndex()
		for lo := first; lo <= last; lo += 3 {
			got, err := s.Entries(lo, last+1, 3*size)
			if err != nil || len(got) == 0 {
				t.Fatalf("%s: entries from %d: %v (%d)", when, lo, err, len(got))
			}
			for _, e := range got {
				w := want[e.Index-1]
				if e.Term != w.Term || !bytes.Equal(e.Data, w.Data) {
					t.Fatalf("%s: entry %d differs (term %d, want %d)", when, e.Index, e.Term, w.Term)
				}
			}
		}
	}
	save(1, 40, 1) // 160 MiB
	check("after 40 entries")
	save(10, 30, 2) // a new leader replaced a suffix
	check("after a suffix was replaced")
	if err := s.Compact(12); err != nil {
		t.Fatal(err)
	}
	check("after compaction")
	st.Close()
	st, s = openLogAt(t, path)
	check("after a restart")
}

// keptBehind counts the log's data up to an index, and finds where to
// compact it so that at most a number of bytes stay: across appends, a
// replaced suffix, a compaction, a restart and an installed snapshot.
func TestTheLogCountsItsBytesToCompactByThem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, s := openLogAt(t, path)
	sizes := map[uint64]int{} // index -> data bytes, as the log now holds it
	save := func(from, to, term uint64, size func(i uint64) int) {
		t.Helper()
		var es []pb.Entry
		for i := from; i <= to; i++ {
			es = append(es, pb.Entry{Index: i, Term: term, Data: make([]byte, size(i))})
			sizes[i] = size(i)
		}
		for i := to + 1; sizes[i] > 0; i++ {
			delete(sizes, i)
		}
		if err := s.Save(es, pb.HardState{Term: term, Commit: from - 1}); err != nil {
			t.Fatal(err)
		}
	}
	// The oracle: the bytes from first to applied, and the least index
	// after which at most keep bytes lie up to applied.
	check := func(when string, applied, keep uint64) {
		t.Helper()
		first, _ := s.FirstIndex()
		var total uint64
		for i := first; i <= applied; i++ {
			total += uint64(sizes[i])
		}
		upTo, rest := first-1, total
		for rest > keep {
			upTo++
			rest -= uint64(sizes[upTo])
		}
		bytes, to := s.keptBehind(applied, keep)
		if bytes != total || to != upTo {
			t.Fatalf("%s: keptBehind(%d, %d) = %d bytes, up to %d; want %d, %d", when, applied, keep, bytes, to, total, upTo)
		}
	}
	save(1, 40, 1, func(i uint64) int { return int(i%7) * 100 })
	for _, keep := range []uint64{0, 1, 99, 100, 600, 5000, 1 << 20} {
		for applied := uint64(0); applied <= 40; applied += 5 {
			check("appended", applied, keep)
		}
	}
	save(30, 50, 2, func(i uint64) int { return 1000 + int(i) }) // replaces 30..40
	check("replaced", 50, 3000)
	check("replaced", 35, 10)
	if _, to := s.keptBehind(50, 3000); true {
		if err := s.Compact(to); err != nil {
			t.Fatal(err)
		}
	}
	check("compacted", 50, 3000)
	check("compacted", 50, 0)
	save(51, 60, 2, func(i uint64) int { return 10 })
	check("after compaction", 60, 2500)
	st.Close()
	st, s = openLogAt(t, path)
	check("restarted", 60, 2500)
	check("restarted", 55, 0)
	s.installed(pb.SnapshotMetadata{Index: 100, Term: 3}, pb.HardState{Term: 3, Commit: 100})
	clear(sizes)
	check("installed", 100, 0)
	save(101, 110, 3, func(i uint64) int { return 50 })
	check("after the snapshot", 110, 120)
}
