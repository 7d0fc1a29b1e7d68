package replication

import (
	"testing"

	"ddb/internal/rlog"
)

func TestTailStaysBoundedAndServesConsecutiveEntries(t *testing.T) {
	tl := newTail(1000, 1<<20)
	next := uint64(1)
	for round := 0; round < 500; round++ {
		batch := make([]rlog.Entry, 1+round%37)
		for i := range batch {
			batch[i] = rlog.Entry{Index: next, Body: []byte("x")}
			next++
		}
		tl.add(batch)
		if tl.len() > 1000 {
			t.Fatalf("tail holds %d entries", tl.len())
		}
		if cap(tl.entries) > 4*1000+4096 {
			t.Fatalf("tail's slice grew to %d", cap(tl.entries))
		}
	}
	last := next - 1
	got, ok := tl.get(last-999, 2000, 0)
	if !ok || len(got) != 1000 || got[0].Index != last-999 || got[999].Index != last {
		t.Fatalf("get: ok=%v n=%d", ok, len(got))
	}
	if _, ok := tl.get(last-1000, 10, 0); ok {
		t.Fatal("served an entry it dropped")
	}
	if got, _ := tl.get(last-5, 3, 0); len(got) != 3 || got[2].Index != last-3 {
		t.Fatalf("max not honoured: %v", got)
	}
	tl.add([]rlog.Entry{{Index: last + 10}}) // a gap resets the tail
	if _, ok := tl.get(last, 1, 0); ok || tl.len() != 1 {
		t.Fatal("a gap must reset the tail")
	}
}

// BenchmarkTailAddWhenFull is the steady state of a busy master: the tail
// is full and every batch pushes the oldest entries out.
func BenchmarkTailAddWhenFull(b *testing.B) {
	tl := newTail(1<<17, 64<<20)
	next := uint64(1)
	batch := make([]rlog.Entry, 16)
	for b.Loop() {
		for i := range batch {
			batch[i] = rlog.Entry{Index: next, Body: make([]byte, 64)}
			next++
		}
		tl.add(batch)
	}
}
