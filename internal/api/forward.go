package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/replication"
)

// Writes forwarded to the leader travel in batches when many are
// forwarded at once: at most maxForwardRequests requests are on their way
// to one leader, and the writes forwarded meanwhile wait and go together
// in the next one (up to maxForwardBatch writes, or about
// maxForwardBatchBytes). A write forwarded while a request is free goes
// at once, alone, as before. This spares the follower and the leader an
// HTTP exchange per write under load, and the leader proposes the batch's
// writes together.
const (
	maxForwardRequests   = 16
	maxForwardBatch      = 256
	maxForwardBatchBytes = 1 << 20
	forwardBatchPath     = "/_ddb/forward-batch"
)

// forwardQueue holds the writes forwarded to one leader URL.
type forwardQueue struct {
	mu       sync.Mutex
	inflight int // requests on their way
	waiting  []*forwardCall
	single   bool // the leader takes no batches (it runs an older version)
}

// forwardCall is one forwarded write and, once done is closed, its answer.
type forwardCall struct {
	ctx  context.Context
	body []byte // the ForwardRequest's JSON
	resp *replication.ForwardResponse
	err  error
	done chan struct{}
}

func (t *Transport) forwardQueue(url string) *forwardQueue {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	if t.forwards == nil {
		t.forwards = map[string]*forwardQueue{}
	}
	q := t.forwards[url]
	if q == nil {
		q = &forwardQueue{}
		t.forwards[url] = q
	}
	return q
}

// Forward implements replication.PeerCaller. A request that never reached
// the leader is ErrUnavailable (503); one that reached it but got no answer
// has an unknown outcome (504).
func (t *Transport) Forward(ctx context.Context, url string, req *replication.ForwardRequest) (*replication.ForwardResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	c := &forwardCall{ctx: ctx, body: body, done: make(chan struct{})}
	q := t.forwardQueue(url)
	q.mu.Lock()
	if q.inflight < maxForwardRequests {
		q.inflight++
		q.mu.Unlock()
		t.sendForwards(url, q, []*forwardCall{c})
		return c.resp, c.err
	}
	q.waiting = append(q.waiting, c)
	q.mu.Unlock()
	select {
	case <-c.done:
		return c.resp, c.err
	case <-ctx.Done():
	}
	select {
	case <-c.done: // answered as the deadline came
		return c.resp, c.err
	default:
	}
	q.mu.Lock()
	for i, w := range q.waiting {
		if w == c {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			q.mu.Unlock()
			return nil, &replication.UnavailableError{Reason: fmt.Sprintf("the write was not sent to the leader at %s before its deadline (%v)", url, ctx.Err())}
		}
	}
	q.mu.Unlock()
	return nil, &replication.UnknownOutcomeError{Reason: fmt.Sprintf("the leader at %s did not answer: %v", url, ctx.Err())}
}

// sendForwards sends calls (one request), answers them, then hands the
// request's place to the writes that waited meanwhile, if any.
func (t *Transport) sendForwards(url string, q *forwardQueue, calls []*forwardCall) {
	defer t.nextForwards(url, q)
	q.mu.Lock()
	single := q.single
	q.mu.Unlock()
	if len(calls) == 1 {
		c := calls[0]
		c.resp, c.err = t.forwardOne(c.ctx, url, c.body)
		close(c.done)
		return
	}
	if !single {
		if single = t.forwardBatch(url, calls); single {
			q.mu.Lock()
			q.single = true
			q.mu.Unlock()
		}
	}
	if single {
		var wg sync.WaitGroup
		for _, c := range calls {
			wg.Go(func() {
				c.resp, c.err = t.forwardOne(c.ctx, url, c.body)
				close(c.done)
			})
		}
		wg.Wait()
	}
}

// nextForwards starts the next request with the writes that wait, or
// frees the request's place.
func (t *Transport) nextForwards(url string, q *forwardQueue) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) == 0 {
		q.inflight--
		return
	}
	n, size := 0, 0
	for n < len(q.waiting) && n < maxForwardBatch && (n == 0 || size+len(q.waiting[n].body) <= maxForwardBatchBytes) {
		size += len(q.waiting[n].body)
		n++
	}
	batch := append([]*forwardCall(nil), q.waiting[:n]...)
	q.waiting = append(q.waiting[:0], q.waiting[n:]...)
	go t.sendForwards(url, q, batch)
}

// forwardOne sends one forwarded write.
func (t *Transport) forwardOne(ctx context.Context, url string, body []byte) (*replication.ForwardResponse, error) {
	var resp replication.ForwardResponse
	if err := t.postTraced(ctx, url+"/_ddb/forward", url, body, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// forwardBatch sends calls in one request and answers each. It reports
// true, answering none, if the leader does not know batches.
func (t *Transport) forwardBatch(url string, calls []*forwardCall) (single bool) {
	// The request outlives any one caller that gives up (its write is in
	// the batch, and its outcome becomes unknown to it); it ends at the
	// latest of the callers' deadlines.
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := calls[0].ctx.Deadline(); ok {
		deadline = d
		for _, c := range calls[1:] {
			if d, ok := c.ctx.Deadline(); ok && d.After(deadline) {
				deadline = d
			}
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var body bytes.Buffer
	body.WriteByte('[')
	for i, c := range calls {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(c.body)
	}
	body.WriteByte(']')
	var resps []*replication.ForwardResponse
	err := t.postTraced(ctx, url+forwardBatchPath, url, body.Bytes(), &resps)
	var pe *peerError
	if errors.As(err, &pe) && pe.status == http.StatusNotFound {
		return true
	}
	if err == nil && len(resps) != len(calls) {
		err = &replication.UnknownOutcomeError{Reason: fmt.Sprintf("the leader at %s answered %d of %d forwarded writes", url, len(resps), len(calls))}
	}
	for i, c := range calls {
		if err != nil {
			c.err = err
		} else if c.resp = resps[i]; c.resp == nil {
			c.err = &replication.UnknownOutcomeError{Reason: fmt.Sprintf("the leader at %s gave no answer for a forwarded write", url)}
		}
		close(c.done)
	}
	return false
}

// postTraced posts forwarded writes. Whether the request was written whole
// decides what a broken connection means: unwritten, the leader cannot
// have run them (it reads the whole body first), so none was applied;
// written, they may have been.
func (t *Transport) postTraced(ctx context.Context, path, url string, body []byte, out any) error {
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wrote.Store(true)
		}
	}})
	err := t.post(ctx, path, body, out)
	if err == nil {
		return nil
	}
	var pe *peerError
	if errors.As(err, &pe) && pe.status == http.StatusNotFound && path == url+forwardBatchPath {
		return err // the caller falls back to one write per request
	}
	err = classifyForwardError(url, err)
	var uo *replication.UnknownOutcomeError
	if errors.As(err, &uo) && !wrote.Load() {
		return &replication.UnavailableError{Reason: fmt.Sprintf("the leader at %s cannot be reached (the write was not sent: %s)", url, uo.Reason)}
	}
	return err
}

// handleForwardBatch runs a batch of forwarded writes (on the leader), all
// at once, so that they are proposed together, and answers each in order.
func (s *Server) handleForwardBatch(w http.ResponseWriter, r *http.Request, body []byte) {
	var reqs []*replication.ForwardRequest
	if err := json.Unmarshal(body, &reqs); err != nil {
		writeError(w, http.StatusBadRequest, "bad forward batch: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout+s.cfg.AckTimeout)
	defer cancel()
	out := make([]*replication.ForwardResponse, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		if req == nil {
			out[i] = &replication.ForwardResponse{Error: &replication.WireError{Kind: errkind.Param.String(), Message: "empty forwarded write"}}
			continue
		}
		if !cluster.ValidAck(req.Ack) {
			req.Ack = s.cfg.Ack
		}
		wg.Go(func() { out[i] = s.admin.HandleForward(ctx, req) })
	}
	wg.Wait()
	b, _ := json.Marshal(out)
	writeJSON(w, http.StatusOK, b)
}
