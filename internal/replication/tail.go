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
	entries    []rlog.Entry // consecutive indexes
	bytes      int
	maxEntries int
	maxBytes   int
}

func newTail(maxEntries, maxBytes int) *tail {
	return &tail{maxEntries: maxEntries, maxBytes: maxBytes}
}

// add appends entries (consecutive, after the last one held). A gap resets
// the tail, which then refills from what comes next.
func (t *tail) add(es []rlog.Entry) {
	if len(es) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.entries); n > 0 && t.entries[n-1].Index+1 != es[0].Index {
		t.entries, t.bytes = nil, 0
	}
	for _, e := range es {
		t.entries = append(t.entries, e)
		t.bytes += len(e.Body) + 32
	}
	drop := 0
	for len(t.entries)-drop > t.maxEntries || (t.bytes > t.maxBytes && len(t.entries)-drop > 1) {
		t.bytes -= len(t.entries[drop].Body) + 32
		drop++
	}
	if drop > 0 {
		// Copy so the dropped entries' memory is released.
		t.entries = append(make([]rlog.Entry, 0, len(t.entries)-drop+1024), t.entries[drop:]...)
	}
}

// get returns up to max entries from index from (at most maxBytes of
// bodies), and false when the tail does not hold from.
func (t *tail) get(from uint64, max, maxBytes int) ([]rlog.Entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if len(t.entries) == 0 || from < t.entries[0].Index || from > t.entries[len(t.entries)-1].Index {
		return nil, false
	}
	i := int(from - t.entries[0].Index)
	out := make([]rlog.Entry, 0, min(max, len(t.entries)-i))
	size := 0
	for ; i < len(t.entries) && len(out) < max; i++ {
		out = append(out, t.entries[i])
		size += len(t.entries[i].Body)
		if maxBytes > 0 && size >= maxBytes {
			break
		}
	}
	return out, true
}
