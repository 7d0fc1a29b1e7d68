package replication

import (
	"sync"

	"ddb/internal/rlog"
)

// tail keeps the most recent log entries in memory, so shippers rarely
// read the log back from SQLite: a slave that keeps up, or one that comes
// back within the tail, is served from here.
type tail struct {
	mu         sync.RWMutex
	entries    []rlog.Entry // entries[head:] are held, with consecutive indexes
	head       int
	bytes      int
	maxEntries int
	maxBytes   int
}

func newTail(maxEntries, maxBytes int) *tail {
	return &tail{maxEntries: maxEntries, maxBytes: maxBytes}
}

func entrySize(e rlog.Entry) int { return len(e.Body) + 32 }

// add appends entries (consecutive, after the last one held). A gap resets
// the tail, which then refills from what comes next. Dropping old entries
// only moves head; the slice is compacted when head passes half of it, so
// adding costs O(1) amortized however full the tail is.
func (t *tail) add(es []rlog.Entry) {
	if len(es) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.entries); n > t.head && t.entries[n-1].Index+1 != es[0].Index {
		t.entries, t.head, t.bytes = nil, 0, 0
	}
	for _, e := range es {
		t.entries = append(t.entries, e)
		t.bytes += entrySize(e)
	}
	for len(t.entries)-t.head > t.maxEntries || (t.bytes > t.maxBytes && len(t.entries)-t.head > 1) {
		t.bytes -= entrySize(t.entries[t.head])
		t.entries[t.head] = rlog.Entry{} // release the body
		t.head++
	}
	if t.head > 1024 && t.head > len(t.entries)/2 {
		live := t.entries[t.head:]
		t.entries = append(make([]rlog.Entry, 0, 2*len(live)+1024), live...)
		t.head = 0
	}
}

// get returns up to max entries from index from (at most maxBytes of
// bodies), and false when the tail does not hold from.
func (t *tail) get(from uint64, max, maxBytes int) ([]rlog.Entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	live := t.entries[t.head:]
	if len(live) == 0 || from < live[0].Index || from > live[len(live)-1].Index {
		return nil, false
	}
	i := int(from - live[0].Index)
	out := make([]rlog.Entry, 0, min(max, len(live)-i))
	size := 0
	for ; i < len(live) && len(out) < max; i++ {
		out = append(out, live[i])
		size += len(live[i].Body)
		if maxBytes > 0 && size >= maxBytes {
			break
		}
	}
	return out, true
}

// len is the number of entries held.
func (t *tail) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.entries) - t.head
}
