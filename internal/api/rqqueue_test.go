package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// queueRepl records the writes the queue sends. The first write waits
// until release is closed, so that the writes queued meanwhile wait too.
type queueRepl struct {
	fakeRepl
	release chan struct{}
	started chan struct{} // closed when the first write arrives
	failAll bool          // a write of more than one statement fails as a whole

	mu     sync.Mutex
	writes []store.Request
}

func (q *queueRepl) Write(_ context.Context, r *store.Request, _ cluster.Ack) (store.Outcome, error) {
	q.mu.Lock()
	first := len(q.writes) == 0
	q.writes = append(q.writes, *r)
	q.mu.Unlock()
	if first {
		close(q.started)
		<-q.release
	}
	if q.failAll && len(r.Stmts) > 1 {
		return store.Outcome{Err: &store.StepBudgetError{Steps: 1}}, nil
	}
	return store.Outcome{Index: 1}, nil
}

func queuedInsert(i int) *store.Request {
	return &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO t VALUES (?)", Pos: []any{int64(i)}}}, Each: true, Collect: true}
}

func sqlOf(rs []store.Request) [][]any {
	var out [][]any
	for _, r := range rs {
		var w []any
		for _, st := range r.Stmts {
			w = append(w, st.Pos[0])
		}
		out = append(out, w)
	}
	return out
}

// The writes queued while one is being applied go out together, as one
// write of their statements in the order queued; a transaction, or a
// request with an id, goes alone.
func TestQueuedWritesWaitingTogetherBecomeOneWrite(t *testing.T) {
	repl := &queueRepl{release: make(chan struct{}), started: make(chan struct{})}
	s := &Server{repl: repl, cfg: &cluster.Config{}, metrics: NewMetrics(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	_, first := s.enqueue(queuedInsert(0))
	<-repl.started
	var last <-chan error
	for i := 1; i <= 300; i++ {
		r := queuedInsert(i)
		if i == 150 {
			r.Atomic = true // a transaction: never merged
		}
		_, last = s.enqueue(r)
	}
	close(repl.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-last; err != nil {
		t.Fatal(err)
	}
	s.drained(context.Background())
	got := sqlOf(repl.writes)
	// 0 alone (it was being applied), 1..149 together, 150 alone (a
	// transaction), then 151..300 in batches of at most queueBatch.
	var want [][]any
	span := func(a, b int) []any {
		var w []any
		for i := a; i <= b; i++ {
			w = append(w, int64(i))
		}
		return w
	}
	want = append(want, span(0, 0), span(1, 149), span(150, 150), span(151, 300))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("writes sent:\n%v\nwant\n%v", got, want)
	}
	for i, w := range repl.writes[1:] {
		if len(w.Stmts) > 1 && (w.Collect || !w.Each || w.Atomic) {
			t.Errorf("batch %d: Collect %v Each %v Atomic %v; want a batch of independent statements collecting no rows", i+1, w.Collect, w.Each, w.Atomic)
		}
	}
}

// A batch that fails as a whole is sent again one write at a time, so
// every write applies or fails as it would have alone.
func TestAQueuedBatchThatFailsWholeIsAppliedOneByOne(t *testing.T) {
	repl := &queueRepl{release: make(chan struct{}), started: make(chan struct{}), failAll: true}
	s := &Server{repl: repl, cfg: &cluster.Config{}, metrics: NewMetrics(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	_, first := s.enqueue(queuedInsert(0))
	<-repl.started
	var dones []<-chan error
	for i := 1; i <= 5; i++ {
		_, d := s.enqueue(queuedInsert(i))
		dones = append(dones, d)
	}
	close(repl.release)
	<-first
	for i, d := range dones {
		if err := <-d; err != nil {
			t.Errorf("write %d: %v", i+1, err)
		}
	}
	got := fmt.Sprint(sqlOf(repl.writes))
	if want := "[[0] [1 2 3 4 5] [1] [2] [3] [4] [5]]"; got != want {
		t.Fatalf("writes sent %s, want %s", got, want)
	}
}

// A batch stops at queueBatchBytes of statements.
func TestAQueuedBatchHoldsAtMostItsBytes(t *testing.T) {
	repl := &queueRepl{release: make(chan struct{}), started: make(chan struct{})}
	s := &Server{repl: repl, cfg: &cluster.Config{}, metrics: NewMetrics(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	big := make([]byte, queueBatchBytes/3)
	_, first := s.enqueue(queuedInsert(0))
	<-repl.started
	var last <-chan error
	for i := 1; i <= 7; i++ {
		r := queuedInsert(i)
		r.Stmts[0].Pos = []any{int64(i), big}
		_, last = s.enqueue(r)
	}
	close(repl.release)
	<-first
	<-last
	var sizes []int
	for _, w := range repl.writes {
		sizes = append(sizes, len(w.Stmts))
	}
	if fmt.Sprint(sizes) != "[1 2 2 2 1]" {
		t.Fatalf("statements per write %v, want [1 2 2 2 1] (two thirds of the bound in each)", sizes)
	}
}
