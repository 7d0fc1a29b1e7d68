// Package progress keeps the long operations under way on a node (a load,
// a restore, a backup, a snapshot sent to or received from another node)
// and what each has done: the node's log reports them every few seconds,
// and /status and the console show them.
package progress

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Tracker holds a node's operations under way. The zero value is not
// usable; a nil *Tracker tracks nothing (every method is safe on it).
type Tracker struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	next int64
	ops  map[int64]*Op
}

// New returns a tracker that logs each operation's progress to log every
// every while it runs (Run), and when it starts and ends.
func New(log *slog.Logger, every time.Duration) *Tracker {
	return &Tracker{log: log, every: every, now: time.Now, ops: map[int64]*Op{}}
}

// Run logs the operations under way every t.every, until stop is closed:
// one whose step takes long (a large load's commit) is reported too.
func (t *Tracker) Run(stop <-chan struct{}) {
	tick := time.NewTicker(t.every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			t.logUnderWay()
		case <-stop:
			return
		}
	}
}

// logUnderWay logs each operation under way that has run for every at
// least since it started or was last logged.
func (t *Tracker) logUnderWay() {
	now := t.now()
	t.mu.Lock()
	var due []*Op
	for _, op := range t.ops {
		if now.Sub(op.logged) >= t.every {
			op.logged = now
			due = append(due, op)
		}
	}
	t.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].id < due[j].id })
	for _, op := range due {
		st := op.status(now)
		args := []any{"detail", op.detail, "done", sized(st.Done, op.unit), "elapsed", time.Duration(st.ElapsedSeconds * float64(time.Second)).Round(time.Second)}
		if st.Total > 0 {
			args = append(args, "total", sized(st.Total, op.unit), "percent", fmt.Sprintf("%.0f%%", st.Percent))
		}
		t.log.Info(op.kind+" under way", args...)
	}
}

// Op is one operation under way.
type Op struct {
	t       *Tracker
	id      int64
	kind    string // load, restore, backup, snapshot-send, snapshot-receive
	detail  string // what it works on (a file, a peer)
	unit    string // bytes, chunks
	total   atomic.Int64
	done    atomic.Int64
	started time.Time
	logged  time.Time // the last progress line (t.mu)
}

// Status is an operation's state, as /status shows it.
type Status struct {
	Op             string  `json:"op"`
	Detail         string  `json:"detail,omitempty"`
	Unit           string  `json:"unit"`
	Done           int64   `json:"done"`
	Total          int64   `json:"total,omitempty"` // 0: not known
	Percent        float64 `json:"percent,omitempty"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

// Start records an operation of kind on detail, counted in unit, of
// total units (0: not known).
func (t *Tracker) Start(kind, detail, unit string, total int64) *Op {
	if t == nil {
		return nil
	}
	op := &Op{t: t, kind: kind, detail: detail, unit: unit, started: t.now()}
	op.total.Store(total)
	op.logged = op.started
	t.mu.Lock()
	t.next++
	op.id = t.next
	t.ops[op.id] = op
	t.mu.Unlock()
	t.log.Info(kind+" started", "detail", detail, "total", sized(total, unit))
	return op
}

// Add counts n more units done.
func (o *Op) Add(n int64) {
	if o == nil {
		return
	}
	o.done.Add(n)
}

// Set says done units are done.
func (o *Op) Set(done int64) {
	if o == nil {
		return
	}
	o.done.Store(done)
}

// SetTotal sets the total, once it is known.
func (o *Op) SetTotal(total int64) {
	if o == nil {
		return
	}
	o.total.Store(total)
}

// End records the operation's end (err: how it failed).
func (o *Op) End(err error) {
	if o == nil {
		return
	}
	o.t.mu.Lock()
	delete(o.t.ops, o.id)
	o.t.mu.Unlock()
	st := o.status(o.t.now())
	elapsed := time.Duration(st.ElapsedSeconds * float64(time.Second)).Round(time.Millisecond)
	if err != nil {
		o.t.log.Warn(o.kind+" failed", "detail", o.detail, "done", sized(st.Done, o.unit), "elapsed", elapsed, "err", err)
		return
	}
	o.t.log.Info(o.kind+" done", "detail", o.detail, "done", sized(st.Done, o.unit), "elapsed", elapsed)
}

func (o *Op) status(now time.Time) Status {
	st := Status{Op: o.kind, Detail: o.detail, Unit: o.unit, Done: o.done.Load(), Total: o.total.Load(), ElapsedSeconds: now.Sub(o.started).Seconds()}
	if st.Total > 0 {
		st.Percent = min(100, 100*float64(st.Done)/float64(st.Total))
	}
	return st
}

// UnderWay lists the operations under way, oldest first.
func (t *Tracker) UnderWay() []Status {
	if t == nil {
		return nil
	}
	now := t.now()
	t.mu.Lock()
	ops := make([]*Op, 0, len(t.ops))
	for _, op := range t.ops {
		ops = append(ops, op)
	}
	t.mu.Unlock()
	sort.Slice(ops, func(i, j int) bool { return ops[i].id < ops[j].id })
	out := make([]Status, 0, len(ops))
	for _, op := range ops {
		out = append(out, op.status(now))
	}
	return out
}

// Reader counts what is read from r as units (bytes) done by o.
func (o *Op) Reader(r io.Reader) io.Reader {
	if o == nil {
		return r
	}
	return &counting{r: r, o: o}
}

type counting struct {
	r io.Reader
	o *Op
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.o.Add(int64(n))
	return n, err
}

// sized says n units: bytes in KB, MB, GB.
func sized(n int64, unit string) string {
	if unit != "bytes" {
		return fmt.Sprintf("%d %s", n, unit)
	}
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
