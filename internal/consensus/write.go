package consensus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// Write routing: a client write runs here on the leader, goes to the
// leader inside Raft's own messages from a follower, or is forwarded over
// HTTP, and is answered at its ack level; strong reads confirm a read
// index.

func (e *Engine) newRequestID() string {
	return fmt.Sprintf("~node%d-%s-%016x", e.cfg.ID, e.boot, e.forwards.Add(1))
}

// Write runs a client write through the log: proposed here when this node
// leads, else forwarded to the leader; answered once this node has
// applied it. During an election it waits for a leader (up to the ack
// timeout). A forwarded write always carries a request id (the client's,
// or one made here), so a forward sent again applies once; a write
// proposed here without one is not sent again when its outcome is unknown.
func (e *Engine) Write(ctx context.Context, req *store.Request, ack cluster.Ack) (store.Outcome, error) {
	if err := e.Serving(); err != nil {
		return store.Outcome{}, err
	}
	deadline := time.Now().Add(e.cfg.AckTimeout)
	var unknown error // an earlier attempt may have been committed
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		out, err, retry := e.writeOnce(ctx, req, ack)
		if !retry {
			return out, err
		}
		var uo *replication.UnknownOutcomeError
		if errors.As(err, &uo) {
			if req.RequestID == "" {
				// Proposed here without an idempotency key (a write sent
				// to the leader without request_id records none, which
				// spares every node a row): sending it again could apply
				// it twice, so its outcome stays unknown to the client.
				return store.Outcome{}, err
			}
			unknown = err
		}
		if ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			if unknown != nil {
				return store.Outcome{}, unknownOutcome(unknown, req.RequestID)
			}
			return store.Outcome{}, err
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
}

// writeOnce makes one attempt; retry says whether another may succeed.
func (e *Engine) writeOnce(ctx context.Context, req *store.Request, ack cluster.Ack) (out store.Outcome, err error, retry bool) {
	lead, self := e.rep.Node().Leader()
	switch {
	case self:
		out, err = e.proposeHere(ctx, req, ack)
		err, retry = proposeError(err, req.RequestID)
		return out, err, retry
	case lead == 0:
		err := &replication.UnavailableError{Reason: "no leader is known: an election is under way, or a majority of the voters cannot be reached; retry shortly"}
		return out, err, e.WaitLeader(ctx)
	}
	if ack != cluster.AckAll && e.rep.Node().LeaderReports(lead) {
		return e.proposeThroughLeader(ctx, req, ack)
	}
	url := e.tr.Peer(lead)
	if url == "" {
		return out, &replication.UnavailableError{Reason: fmt.Sprintf("node %d leads, but its URL is not known here yet; retry shortly", cluster.CommandLineID(lead))}, true
	}
	body, err := rlog.EncodeStatements(req.Stmts)
	if err != nil {
		return out, &store.ParamError{Msg: err.Error()}, false
	}
	if req.RequestID == "" {
		// A forward always carries an idempotency key: sent again after
		// a broken connection or an election, it applies once.
		req.RequestID = e.newRequestID()
	}
	fctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout+2*time.Second)
	resp, err := e.cfg.Calls.Forward(fctx, url, &replication.ForwardRequest{Origin: int(e.cfg.ID), Body: body, Collect: req.Collect, Ack: ack, RequestID: req.RequestID,
		Schema: req.AllowSchema, Each: req.Each, Atomic: req.Atomic, Replace: req.Replace, Load: req.Load,
		SetChanges: req.SetChanges, ChangesKeep: req.ChangesKeep})
	cancel()
	if err != nil {
		var uo *replication.UnknownOutcomeError
		return out, err, errors.As(err, &uo) || errors.Is(err, replication.ErrUnavailable)
	}
	if resp.Error != nil {
		err := replication.FromWireError(resp.Error, e.cfg.AckTimeout)
		return store.Outcome{Index: resp.Index}, err, errors.Is(err, replication.ErrUnavailable)
	}
	results, err := store.DecodeResults(resp.Results)
	if err != nil {
		return out, err, false
	}
	out = store.Outcome{Index: resp.Index, Results: results}
	// The client reads its own write here.
	if err := e.WaitApplied(ctx, resp.Index, e.cfg.AckTimeout); err != nil {
		return out, &replication.AckTimeoutError{Index: resp.Index, Level: string(ack) + ", applied on the node that received it", After: e.cfg.AckTimeout}, false
	}
	return out, nil, false
}

// proposeThroughLeader proposes a write on this node, a follower: Raft
// carries it to the leader with this node's messages (see
// Replica.WriteThroughLeader), which spares the HTTP request a forward
// costs. It answers once the entry is applied here and on the leader (the
// quorum acknowledgement). The "all" level is forwarded instead: the
// leader knows when every node holds the entry.
func (e *Engine) proposeThroughLeader(ctx context.Context, req *store.Request, ack cluster.Ack) (out store.Outcome, err error, retry bool) {
	if req.RequestID == "" {
		// The proposal may be sent again (its first copy lost on the way
		// to a leader that died): it applies once.
		req.RequestID = e.newRequestID()
	}
	pctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout)
	defer cancel()
	out, err = e.rep.WriteThroughLeader(pctx, req)
	if la := (*LeaderApplyError)(nil); errors.As(err, &la) {
		return out, &replication.AckTimeoutError{Index: la.Index, Level: string(ack) + ", applied on the leader", After: e.cfg.AckTimeout}, false
	}
	err, retry = proposeError(err, req.RequestID)
	return out, err, retry
}

// proposeError is what the client is told of a proposal's failure, and
// whether another attempt may succeed: nothing was logged (leadership
// changed: retry), the outcome is unknown (retry with the request id, if
// there is one), or the write's own failure, the same on every node.
func proposeError(err error, requestID string) (error, bool) {
	var nl *NotLeaderError
	var uo *UnknownOutcomeError
	switch {
	case errors.As(err, &nl):
		return &replication.UnavailableError{Reason: "leadership changed; retry"}, true
	case errors.As(err, &uo):
		return unknownOutcome(uo, requestID), true
	}
	return err, false
}

// unknownOutcome is what a client is told of a write whose outcome is
// unknown because of err: the reason once, and the advice once, however
// many layers the error went through.
func unknownOutcome(err error, requestID string) *replication.UnknownOutcomeError {
	reason := err.Error()
	var prev *replication.UnknownOutcomeError
	if errors.As(err, &prev) {
		reason = prev.Reason
	}
	return &replication.UnknownOutcomeError{Reason: reason, RequestID: requestID}
}

// proposeHere proposes on this node (the leader) and waits for the ack
// level: quorum is the proposal's own answer (committed by a majority and
// applied here); all also waits until every voter holds the entry.
func (e *Engine) proposeHere(ctx context.Context, req *store.Request, ack cluster.Ack) (store.Outcome, error) {
	pctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout)
	defer cancel()
	out, err := e.rep.Write(pctx, req)
	if err != nil {
		var nl *NotLeaderError
		var uo *UnknownOutcomeError
		if errors.As(err, &nl) || errors.As(err, &uo) || out.Index == 0 {
			return out, err
		}
		return out, err // the write's own failure, the same on every node
	}
	if ack == cluster.AckAll {
		if err := e.waitAppliedEverywhere(pctx, out.Index); err != nil {
			return out, &replication.AckTimeoutError{Index: out.Index, Level: "all (" + err.Error() + ")", After: e.cfg.AckTimeout}
		}
	}
	return out, nil
}

// waitAppliedEverywhere waits until every node of the configuration,
// learners included, has applied index (the "all" acknowledgement level).
func (e *Engine) waitAppliedEverywhere(ctx context.Context, index uint64) error {
	if err := e.rep.WaitDurableOnAllVoters(ctx, index); err != nil {
		return err
	}
	st := e.rep.Node().Status()
	ids := []uint64{}
	for id := range st.Config.Voters.IDs() {
		ids = append(ids, id)
	}
	for id := range st.Config.Learners {
		ids = append(ids, id)
	}
	errs := make(chan error, len(ids))
	for _, id := range ids {
		go func(id uint64) {
			if id == e.cfg.ID {
				errs <- nil // the proposal's answer came after this node applied it
				return
			}
			url := e.tr.Peer(id)
			if url == "" {
				errs <- fmt.Errorf("node %d has no known URL", cluster.CommandLineID(id))
				return
			}
			_, err := e.cfg.Calls.RemoteApplied(ctx, url, index)
			if err != nil {
				err = fmt.Errorf("node %d: %w", cluster.CommandLineID(id), err)
			}
			errs <- err
		}(id)
	}
	var first error
	for range ids {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// HandleForward runs a write a follower forwarded (on the leader).
func (e *Engine) HandleForward(ctx context.Context, req *replication.ForwardRequest) *replication.ForwardResponse {
	stmts, err := rlog.DecodeStatements(req.Body)
	if err != nil {
		return &replication.ForwardResponse{Error: replication.ToWireError(&store.ParamError{Msg: err.Error()})}
	}
	if !e.IsLeader() {
		return &replication.ForwardResponse{Error: replication.ToWireError(&replication.UnavailableError{Reason: "this node does not lead any more; retry"})}
	}
	out, err := e.proposeHere(ctx, &store.Request{Stmts: stmts, Collect: req.Collect, Limits: e.cfg.Limits, RequestID: req.RequestID,
		AllowSchema: req.Schema, Each: req.Each, Atomic: req.Atomic, Replace: req.Replace, Load: req.Load,
		SetChanges: req.SetChanges, ChangesKeep: req.ChangesKeep}, req.Ack)
	var nl *NotLeaderError
	var uo *UnknownOutcomeError
	switch {
	case errors.As(err, &nl):
		err = &replication.UnavailableError{Reason: "leadership changed; retry"}
	case errors.As(err, &uo):
		err = unknownOutcome(uo, req.RequestID)
	}
	resp := &replication.ForwardResponse{Index: out.Index}
	if err != nil {
		resp.Error = replication.ToWireError(err)
		return resp
	}
	if resp.Results, err = store.EncodeResults(out.Results); err != nil {
		resp.Error = replication.ToWireError(err)
	}
	return resp
}

// ReadIndex is an index covering every write acknowledged before the call,
// confirmed by the leader with a majority. Without a leader: 503 at once;
// with one that cannot confirm in time: 503 after Timing.ReadWait.
func (e *Engine) ReadIndex(ctx context.Context) (uint64, error) {
	if e.bug(faults.StaleStrongRead) {
		return 0, nil // (and the node's read index confirms nothing: Node.ReadIndex)
	}
	if err := e.Serving(); err != nil {
		return 0, err
	}
	if !e.WaitLeader(ctx) {
		return 0, &replication.UnavailableError{Reason: "no leader is known: an election is under way, or a majority of the voters cannot be reached; retry shortly"}
	}
	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timing.ReadWait)
	defer cancel()
	idx, err := e.rep.ReadIndex(rctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, &replication.UnavailableError{Reason: fmt.Sprintf("the leader could not confirm a read index with a majority within %v: %v", e.cfg.Timing.ReadWait, err)}
	}
	return idx, nil
}

// WaitApplied waits (up to timeout) until this node has applied index.
func (e *Engine) WaitApplied(ctx context.Context, index uint64, timeout time.Duration) error {
	if e.st.Applied() >= index {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := e.rep.WaitApplied(wctx, index); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &replication.WaitTimeoutError{Want: index, Have: e.st.Applied(), After: timeout}
	}
	return nil
}
