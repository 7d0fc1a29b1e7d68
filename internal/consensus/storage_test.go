package consensus

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/store"
)

// The log keeps at most memLogBytes of entries' data in memory, however
// big the entries: older data is read back from the file, exactly, for
// any range Raft asks (the range crossing from file to memory too), after
// a suffix is replaced, after compaction, and after a restart.
func TestTheLogKeepsBoundedDataInMemoryAndServesTheRestFromTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := store.Open(store.Options{Path: path, Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	s, err := OpenStorage(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
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
	if st, err = store.Open(store.Options{Path: path, Synchronous: "OFF"}); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenStorage(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	check("after a restart")
}
