package api

import (
	"context"
	"fmt"
	"sync"

	"github.com/ddbgo/ddb/internal/store"
)

// rqQueue holds rqlite's queued writes (?queue) until they are applied,
// one after the other in the order they were queued, as rqlite applies
// its queue: a later queued write never lands before an earlier one (a
// DROP queued after a CREATE drops the table it created). A request this
// node takes on rqlite's API without ?queue waits until the queue has
// drained (up to its deadline): a client sees its own queued writes
// applied, in order, before its next request runs.
type rqQueue struct {
	mu      sync.Mutex
	waiting []*rqQueued
	running bool          // a goroutine is applying the queue
	idle    chan struct{} // closed once the running queue empties
}

// drained waits until no queued write is waiting or being applied, or
// ctx ends.
func (s *Server) drained(ctx context.Context) {
	s.queue.mu.Lock()
	idle := s.queue.idle
	s.queue.mu.Unlock()
	if idle == nil {
		return
	}
	select {
	case <-idle:
	case <-ctx.Done():
	}
}

type rqQueued struct {
	seq  int64
	req  *store.Request
	done chan error // the write's error (nil: applied), for ?wait
}

// enqueue queues req and returns its sequence number and where its
// outcome will be sent.
func (s *Server) enqueue(req *store.Request) (int64, <-chan error) {
	q := &rqQueued{seq: rqSequence.Add(1), req: req, done: make(chan error, 1)}
	s.queue.mu.Lock()
	defer s.queue.mu.Unlock()
	s.queue.waiting = append(s.queue.waiting, q)
	if !s.queue.running {
		s.queue.running = true
		s.queue.idle = make(chan struct{})
		go s.applyQueue()
	}
	return q.seq, q.done
}

// Queued writes are applied in batches: the writes waiting when the
// queue's goroutine looks form one log entry, as rqlite batches its queue.
// A batch holds at most queueBatch writes and queueBatchBytes of SQL.
const (
	queueBatch      = 256
	queueBatchBytes = 1 << 20
)

// applyQueue applies the queued writes in order until none is left.
func (s *Server) applyQueue() {
	for {
		s.queue.mu.Lock()
		if len(s.queue.waiting) == 0 {
			s.queue.running = false
			close(s.queue.idle)
			s.queue.idle = nil
			s.queue.mu.Unlock()
			return
		}
		n, size := 1, queuedSize(s.queue.waiting[0])
		for n < len(s.queue.waiting) && n < queueBatch && mergeable(s.queue.waiting[0], s.queue.waiting[n]) {
			size += queuedSize(s.queue.waiting[n])
			if size > queueBatchBytes {
				break
			}
			n++
		}
		batch := s.queue.waiting[:n:n]
		s.queue.waiting = s.queue.waiting[n:]
		s.queue.mu.Unlock()
		s.applyQueued(batch)
	}
}

// mergeable says whether b can share a's log entry: both are writes of
// independent statements (not a transaction, a load or a request with an
// id) with the same rights and limits. Their statements then run one after
// the other as they would in two entries, each failing alone.
func mergeable(a, b *rqQueued) bool {
	ok := func(r *store.Request) bool {
		return r.Each && !r.Atomic && !r.Replace && r.Load == nil && r.RequestID == "" && !r.Check && !r.SetChanges && r.ChangesDelivered == 0
	}
	return ok(a.req) && ok(b.req) && a.req.AllowSchema == b.req.AllowSchema && a.req.Limits == b.req.Limits
}

// queuedSize is about the bytes a queued write's statements take.
func queuedSize(q *rqQueued) int {
	n := 0
	val := func(v any) int {
		switch v := v.(type) {
		case string:
			return len(v)
		case []byte:
			return len(v)
		}
		return 8
	}
	for _, st := range q.req.Stmts {
		n += len(st.SQL)
		for _, v := range st.Pos {
			n += val(v)
		}
		for k, v := range st.Named {
			n += len(k) + val(v)
		}
	}
	return n
}

// applyQueued applies a batch of queued writes as one write. A batch that
// fails as a whole (nothing of it applied: over a bound one write would not
// reach, say) is applied again one write at a time, so each write fails or
// applies as it would alone. The writes outlive the requests that queued
// them, so they get a deadline of their own.
func (s *Server) applyQueued(batch []*rqQueued) {
	if len(batch) == 1 {
		batch[0].done <- s.applyQueuedWrite(batch[0].req, batch[0].seq)
		return
	}
	merged := *batch[0].req
	merged.Stmts = nil
	for _, q := range batch {
		merged.Stmts = append(merged.Stmts, q.req.Stmts...)
	}
	// Nobody reads a queued write's rows: a batch collects none, so the
	// writes do not share a bound on the rows they return.
	merged.Collect = false
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.QueryTimeout+s.cfg.AckTimeout)
	defer cancel()
	out, err := s.repl.Write(ctx, &merged, s.cfg.Ack)
	if err == nil && out.Err != nil {
		for _, q := range batch {
			q.done <- s.applyQueuedWrite(q.req, q.seq)
		}
		return
	}
	if err == nil {
		s.metrics.Write()
	} else {
		s.log.Warn("queued writes failed", "sequence_numbers", fmt.Sprintf("%d-%d", batch[0].seq, batch[len(batch)-1].seq), "err", err)
	}
	for _, q := range batch {
		q.done <- err
	}
}

func (s *Server) applyQueuedWrite(req *store.Request, seq int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.QueryTimeout+s.cfg.AckTimeout)
	defer cancel()
	out, err := s.repl.Write(ctx, req, s.cfg.Ack)
	if err == nil {
		s.metrics.Write()
		err = out.Err
	}
	if err != nil {
		s.log.Warn("queued write failed", "sequence_number", seq, "err", err)
	}
	return err
}
