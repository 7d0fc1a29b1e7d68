package consensus

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/store"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// Proposals: a client write becomes a proposal; the loop hands Raft every
// proposal queued since its last step as one batch, and the proposer waits
// until its node has applied the entry.

// proposer is a proposal's proposer, waiting for its entry.
type proposer struct {
	done chan Applied // the entry's result (the first copy's, if logged twice)
	// dropped counts the copies certainly never logged: Raft refused them
	// here (no leader), or the transport could not deliver them; event
	// says it changed.
	dropped atomic.Int32
	event   chan struct{}
}

// drop records that a copy was certainly not logged.
func (p *proposer) drop() {
	p.dropped.Add(1)
	select {
	case p.event <- struct{}{}:
	default:
	}
}

// proposal is one proposal waiting for the next step.
type proposal struct {
	id   uint64
	data []byte // framed: id, then the proposer's data
}

// Propose submits data to the log and waits until this node has applied
// it, returning its index and the Apply result. A proposal whose outcome
// cannot be known (the node stopped, the context ended after proposing)
// returns an error; the entry may still be committed.
func (n *Node) Propose(ctx context.Context, data []byte) (Applied, error) {
	return n.propose(ctx, data, false)
}

// ProposeThroughLeader is Propose on a follower: Raft carries the proposal
// to the leader with this node's messages, and this node answers once it
// has applied the entry. A proposal that may have been lost on its way
// (the leader changed, or a second passed without the entry; then two,
// four...) is sent again with the same id, so data must apply once however
// many copies are logged (a write with a request id). An error that Raft
// dropped the proposal is certain only for the first copy.
func (n *Node) ProposeThroughLeader(ctx context.Context, data []byte) (Applied, error) {
	return n.propose(ctx, data, true)
}

func (n *Node) propose(ctx context.Context, data []byte, resend bool) (Applied, error) {
	id := proposalID()
	p := &proposer{done: make(chan Applied, 1), event: make(chan struct{}, 1)}
	n.mu.Lock()
	n.waiting[id] = p
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.waiting, id)
		n.mu.Unlock()
	}()
	framed := newProposal(id, data)
	send := func() error {
		select {
		case n.props <- framed:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrStopped
		}
	}
	var leadChange chan struct{}
	var timer *time.Timer
	var expired <-chan time.Time // nil (never) without resend
	wait := n.cfg.Timing.ProposalResend
	if resend {
		leadChange = *n.leadChange.Load()
		timer = time.NewTimer(wait)
		defer timer.Stop()
		expired = timer.C
	}
	if err := send(); err != nil {
		return Applied{}, err
	}
	sent := int32(1)
	for {
		select {
		case a := <-p.done:
			return a, nil
		case <-p.event:
			if p.dropped.Load() >= sent {
				// No copy can be logged: the proposal failed, certainly.
				return Applied{}, fmt.Errorf("propose: %w", raft.ErrProposalDropped)
			}
			continue
		case <-leadChange:
			leadChange = *n.leadChange.Load()
		case <-expired:
			wait *= 2
			timer.Reset(wait)
		case <-ctx.Done():
			return Applied{}, ctx.Err()
		case <-n.done:
			return Applied{}, ErrStopped
		}
		sent++
		if err := send(); err != nil {
			return Applied{}, err
		}
	}
}

// Undelivered tells the node that the transport certainly did not deliver
// msgs (the peer refused the connection, or the queue was full): their
// proposals were not logged.
func (n *Node) Undelivered(msgs []pb.Message) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range msgs {
		if m.Type != pb.MsgProp {
			continue
		}
		for _, e := range m.Entries {
			if id, ok := proposalOf(e); ok {
				if p := n.waiting[id]; p != nil {
					p.drop()
				}
			}
		}
	}
}

// newProposal frames data as proposal id: the id, then the data (see
// proposalOf).
func newProposal(id uint64, data []byte) proposal {
	framed := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(data)), id)
	return proposal{id: id, data: append(framed, data...)}
}

// proposalOf is the id of the proposal an entry carries (ok false: the
// entry is not a proposal, such as a new leader's empty entry).
func proposalOf(e pb.Entry) (id uint64, ok bool) {
	if e.Type != pb.EntryNormal || len(e.Data) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(e.Data), true
}

func proposalID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1 // never 0
}

// deliver answers the proposers of applied entries, and reports whether
// any entry was proposed elsewhere (no proposer waits here).
func (n *Node) deliver(run []Entry, ids []uint64, results []any) (foreign bool, err error) {
	if len(results) != len(run) {
		return false, fmt.Errorf("apply answered %d results for %d entries", len(results), len(run))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, e := range run {
		if ids[i] == 0 {
			continue
		}
		p := n.waiting[ids[i]]
		if p == nil {
			foreign = true
			continue
		}
		select {
		case p.done <- Applied{Index: e.Index, Result: results[i]}:
		default: // a proposal sent again was logged twice: the first answers
		}
	}
	return foreign, nil
}

// take adds a queued proposal to the next step's batch (loop only).
func (n *Node) take(p proposal) {
	if n.bug(faults.AckBeforeCommit) {
		n.ackBeforeCommit(p)
		return
	}
	n.takeNow(p)
}

func (n *Node) takeNow(p proposal) {
	if len(n.batch) == 0 {
		n.batchSince = n.cfg.Now()
	}
	n.batch = append(n.batch, pb.Entry{Data: p.data})
	n.batchIDs = append(n.batchIDs, p.id)
}

// proposeBatch hands Raft the proposals taken since the last step as one
// message (one append to each follower), unless a leader holds them
// (holdBatch; then a timer ends the hold at the latest). Proposals Raft
// refuses (no leader is known) fail at once.
func (n *Node) proposeBatch() {
	if n.holdBatch() {
		if n.holdC == nil && n.holdTimer != nil {
			n.holdTimer.Reset(n.cfg.Timing.HoldProposals - n.cfg.Now().Sub(n.batchSince))
			n.holdC = n.holdTimer.C
		}
		return
	}
	if n.holdC != nil {
		n.holdTimer.Stop()
		n.holdC = nil
	}
	if len(n.batch) == 0 {
		return
	}
	// A new slice each time: Raft fills in the entries' index and term
	// and may keep the slice in its log.
	batch, ids := n.batch, n.batchIDs
	n.batch, n.batchIDs = nil, n.batchIDs[:0]
	if err := n.rn.Step(pb.Message{Type: pb.MsgProp, From: n.cfg.ID, Entries: batch}); err != nil {
		n.mu.Lock()
		for _, id := range ids {
			if p := n.waiting[id]; p != nil {
				p.drop()
			}
		}
		n.mu.Unlock()
	}
}

// holdBatch reports whether the leader's batch of proposals waits: while
// a leader has appended entries that are not committed yet, or its applier
// has committed entries still to apply, proposals that arrive go out
// together once those are done (the step that commits them takes them;
// the applier's progress wakes the loop) or once the oldest has waited
// Timing.HoldProposals. Each step costs an fsync on every node and a round
// of messages; proposals held meanwhile share the next one instead of each
// paying a step of its own. A follower's proposals, a leader's with
// nothing in flight, and a stepped node's (see Open) are never held.
func (n *Node) holdBatch() bool {
	if len(n.batch) == 0 || !n.leading || n.stepped || n.cfg.Timing.HoldProposals <= 0 || n.cfg.Now().Sub(n.batchSince) >= n.cfg.Timing.HoldProposals {
		return false
	}
	last, _ := n.storage.LastIndex()
	return last > n.rn.BasicStatus().Commit || n.applied.Load() < n.handed
}

// Submit queues data for the next step as proposal id without waiting for
// its outcome (a stepped node's proposals; see Open). The entry, once
// applied, answers id's proposer (see Await). It reports false if the
// queue is full.
func (n *Node) Submit(id uint64, data []byte) bool {
	select {
	case n.props <- newProposal(id, data):
		return true
	default:
		return false
	}
}

// Await registers proposal id's proposer on a stepped node (see Submit):
// done gets the entry's Applied once this node applies it; dropped is
// signalled when Raft refused the proposal here (no leader is known) or
// the transport certainly did not deliver it (see Undelivered). forget
// unregisters it.
func (n *Node) Await(id uint64) (done <-chan Applied, dropped <-chan struct{}, forget func()) {
	p := &proposer{done: make(chan Applied, 1), event: make(chan struct{}, 1)}
	n.mu.Lock()
	n.waiting[id] = p
	n.mu.Unlock()
	return p.done, p.event, func() {
		n.mu.Lock()
		delete(n.waiting, id)
		n.mu.Unlock()
	}
}

// Pending is how many proposals made here wait for their entry.
func (n *Node) Pending() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.waiting)
}

// bug says whether the deliberate defect b is on (fault builds only).
func (n *Node) bug(b faults.Bug) bool { return faults.On(n.cfg.InjectBug, b) }

// ackBeforeCommit is the deliberate defect "ack-before-commit" (fault
// builds only): p's proposer is answered as if its write applied, and p
// goes to Raft at the first tick 100 ms later (releaseLate).
func (n *Node) ackBeforeCommit(p proposal) {
	applied := n.applied.Load()
	n.mu.Lock()
	if w := n.waiting[p.id]; w != nil {
		select {
		case w.done <- Applied{Index: applied, Result: store.Outcome{Index: applied, Results: []store.Result{{RowsAffected: 1}}}}:
		default:
		}
	}
	n.mu.Unlock()
	n.late = append(n.late, lateProposal{p: p, due: n.cfg.Now().Add(100 * time.Millisecond)})
}

// lateProposal is a proposal the defect ack-before-commit holds back.
type lateProposal struct {
	p   proposal
	due time.Time
}

// releaseLate hands Raft the proposals ack-before-commit held back whose
// time has come (loop only, at every tick).
func (n *Node) releaseLate() {
	now := n.cfg.Now()
	for len(n.late) > 0 && !now.Before(n.late[0].due) {
		n.takeNow(n.late[0].p)
		n.late = n.late[1:]
	}
}
