package api

import (
	"context"
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
		q := s.queue.waiting[0]
		s.queue.waiting = s.queue.waiting[1:]
		s.queue.mu.Unlock()
		q.done <- s.applyQueued(q)
	}
}

// applyQueued applies one queued write. It outlives the request that
// queued it, so it gets a deadline of its own.
func (s *Server) applyQueued(q *rqQueued) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.QueryTimeout+s.cfg.AckTimeout)
	defer cancel()
	out, err := s.repl.Write(ctx, q.req, s.cfg.Ack)
	if err == nil {
		s.metrics.Write()
		err = out.Err
	}
	if err != nil {
		s.log.Warn("queued write failed", "sequence_number", q.seq, "err", err)
	}
	return err
}
