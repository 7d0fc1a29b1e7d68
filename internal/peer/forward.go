package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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

func (cl *Client) forwardQueue(url string) *forwardQueue {
	cl.fmu.Lock()
	defer cl.fmu.Unlock()
	if cl.forwards == nil {
		cl.forwards = map[string]*forwardQueue{}
	}
	q := cl.forwards[url]
	if q == nil {
		q = &forwardQueue{}
		cl.forwards[url] = q
	}
	return q
}

// Forward implements replication.PeerCaller. A request that never reached
// the leader is ErrUnavailable (503); one that reached it but got no answer
// has an unknown outcome (504).
func (cl *Client) Forward(ctx context.Context, url string, req *replication.ForwardRequest) (*replication.ForwardResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	c := &forwardCall{ctx: ctx, body: body, done: make(chan struct{})}
	q := cl.forwardQueue(url)
	q.mu.Lock()
	if q.inflight < maxForwardRequests {
		q.inflight++
		q.mu.Unlock()
		cl.sendForwards(url, q, []*forwardCall{c})
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
func (cl *Client) sendForwards(url string, q *forwardQueue, calls []*forwardCall) {
	defer cl.nextForwards(url, q)
	q.mu.Lock()
	single := q.single
	q.mu.Unlock()
	if len(calls) == 1 {
		c := calls[0]
		c.resp, c.err = cl.forwardOne(c.ctx, url, c.body)
		close(c.done)
		return
	}
	if !single {
		if single = cl.forwardBatch(url, calls); single {
			q.mu.Lock()
			q.single = true
			q.mu.Unlock()
		}
	}
	if single {
		var wg sync.WaitGroup
		for _, c := range calls {
			wg.Go(func() {
				c.resp, c.err = cl.forwardOne(c.ctx, url, c.body)
				close(c.done)
			})
		}
		wg.Wait()
	}
}

// nextForwards starts the next request with the writes that wait, or
// frees the request's place.
func (cl *Client) nextForwards(url string, q *forwardQueue) {
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
	go cl.sendForwards(url, q, batch)
}

// forwardOne sends one forwarded write.
func (cl *Client) forwardOne(ctx context.Context, url string, body []byte) (*replication.ForwardResponse, error) {
	var resp replication.ForwardResponse
	if err := cl.postTraced(ctx, url+ForwardPath, url, body, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// forwardBatch sends calls in one request and answers each. It reports
// true, answering none, if the leader does not know batches.
func (cl *Client) forwardBatch(url string, calls []*forwardCall) (single bool) {
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
	err := cl.postTraced(ctx, url+ForwardBatchPath, url, body.Bytes(), &resps)
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
func (cl *Client) postTraced(ctx context.Context, path, url string, body []byte, out any) error {
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wrote.Store(true)
		}
	}})
	err := cl.post(ctx, path, body, out)
	if err == nil {
		return nil
	}
	var pe *peerError
	if errors.As(err, &pe) && pe.status == http.StatusNotFound && path == url+ForwardBatchPath {
		return err // the caller falls back to one write per request
	}
	err = classifyForwardError(url, err)
	var uo *replication.UnknownOutcomeError
	if errors.As(err, &uo) && !wrote.Load() {
		return &replication.UnavailableError{Reason: fmt.Sprintf("the leader at %s cannot be reached (the write was not sent: %s)", url, uo.Reason)}
	}
	return err
}

// classifyForwardError says what a forwarded write's failure means for
// the client: the leader refused it or could not take it (unavailable),
// could not be reached (unavailable), or did not answer (unknown outcome).
func classifyForwardError(url string, err error) error {
	var pe *peerError
	if errors.As(err, &pe) {
		if pe.status == http.StatusServiceUnavailable || pe.status == http.StatusConflict {
			return &replication.UnavailableError{Reason: fmt.Sprintf("the node at %s cannot take writes: %s", url, pe.msg)}
		}
		return fmt.Errorf("the leader at %s refused the forwarded write: %w", url, err)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" || errors.Is(err, syscall.ECONNREFUSED) {
		return &replication.UnavailableError{Reason: fmt.Sprintf("the leader at %s cannot be reached: %v", url, err)}
	}
	return &replication.UnknownOutcomeError{Reason: fmt.Sprintf("the leader at %s did not answer: %v", url, err)}
}
