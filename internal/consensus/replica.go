package consensus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/raft/v3"

	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// Replica is one node's database replicated through Raft: the leader turns
// a client write into a log entry (with its time and random seed), every
// node applies committed entries with store.ApplyLog, and the node that
// proposed answers once it has applied the entry.
type Replica struct {
	node  *Node
	st    *store.Store
	now   func() time.Time
	seeds func() int64

	mu      sync.Mutex
	waiters []applyWaiter // waiting for the applied index to reach theirs
}

type applyWaiter struct {
	index uint64
	ch    chan struct{}
}

// ReplicaConfig configures a Replica; Node is the Raft configuration
// (its Apply and Applied are set by the Replica).
type ReplicaConfig struct {
	Node Config
	// Applied, when set, is what Raft takes as applied (default: the
	// database's applied index). A node without Raft state whose database
	// will be replaced by a snapshot starts from 0.
	Applied *uint64
	Now     func() time.Time // the clock entries take their time from (default time.Now)
	Seeds   func() int64     // random seeds of entries (default: the OS's generator)
}

// StartReplica starts the node over st.
func StartReplica(ctx context.Context, st *store.Store, tr Transport, cfg ReplicaConfig) (*Replica, error) {
	return startReplica(ctx, st, tr, cfg, Start)
}

// OpenReplica opens the node over st without starting it: its caller
// steps it (see Open).
func OpenReplica(ctx context.Context, st *store.Store, tr Transport, cfg ReplicaConfig) (*Replica, error) {
	return startReplica(ctx, st, tr, cfg, Open)
}

func startReplica(ctx context.Context, st *store.Store, tr Transport, cfg ReplicaConfig, start func(context.Context, *store.Store, Transport, Config) (*Node, error)) (*Replica, error) {
	r := &Replica{st: st, now: cfg.Now, seeds: cfg.Seeds}
	if r.now == nil {
		r.now = time.Now
	}
	if r.seeds == nil {
		r.seeds = func() int64 { return int64(proposalID()) }
	}
	cfg.Node.Applied = st.Applied()
	if cfg.Applied != nil {
		cfg.Node.Applied = *cfg.Applied
	}
	cfg.Node.Apply = r.apply
	cfg.Node.ApplyRecordsConf = true
	cfg.Node.Installed = func(uint64) { r.wake() }
	cfg.Node.Restamp = r.restamp
	n, err := start(ctx, st, tr, cfg.Node)
	if err != nil {
		return nil, err
	}
	r.node = n
	return r, nil
}

// Node is the Raft node under the replica.
func (r *Replica) Node() *Node { return r.node }

// Stop stops the node (the database stays open).
func (r *Replica) Stop() { r.node.Stop() }

// NotLeaderError: writes go to the leader, which this node is not.
type NotLeaderError struct{ Leader uint64 } // 0: no leader known

func (e *NotLeaderError) Error() string {
	if e.Leader == 0 {
		return "no leader is known: an election is under way, or a majority cannot be reached; retry shortly"
	}
	return fmt.Sprintf("this node does not lead; node %d does", e.Leader)
}

// UnknownOutcomeError: the write was proposed but its outcome did not come
// back in time; it may still be committed.
type UnknownOutcomeError struct{ Err error }

func (e *UnknownOutcomeError) Error() string {
	return "the write was proposed, but no answer came (" + e.Err.Error() + ")"
}

func (e *UnknownOutcomeError) Unwrap() error { return e.Err }

// Write runs a client write through the log, on the leader. It answers
// once this node has applied the entry: with its results, or with the
// error the write gave (the same on every node).
func (r *Replica) Write(ctx context.Context, req *store.Request) (store.Outcome, error) {
	if lead, self := r.node.Leader(); !self {
		return store.Outcome{}, &NotLeaderError{Leader: lead}
	}
	_, out, err := r.propose(ctx, req, r.node.Propose)
	if err != nil {
		return out, err
	}
	return out, out.Err
}

// propose proposes req's entry with propose, and says what came of it: the
// outcome, a NotLeaderError (certainly not logged), or an
// UnknownOutcomeError.
func (r *Replica) propose(ctx context.Context, req *store.Request, propose func(context.Context, []byte) (Applied, error)) (Applied, store.Outcome, error) {
	data, err := r.Entry(req)
	if err != nil {
		return Applied{}, store.Outcome{}, err
	}
	a, err := propose(ctx, data)
	switch {
	case errors.Is(err, raft.ErrProposalDropped):
		lead, _ := r.node.Leader()
		return a, store.Outcome{}, &NotLeaderError{Leader: lead}
	case err != nil:
		return a, store.Outcome{}, &UnknownOutcomeError{Err: err}
	}
	out, ok := a.Result.(store.Outcome)
	if !ok {
		// The entry was committed, but this node's database took it from
		// a copy of the leader's (a repair), not by running it here.
		return a, out, &UnknownOutcomeError{Err: errors.New("the entry was committed while this node replaced its data with a copy of the leader's, so its results are not known here")}
	}
	return a, out, nil
}

// Entry is the data a write is proposed with: the time and random seed it
// runs with, then the write (what a stepped node's caller submits; see
// Node.Submit).
func (r *Replica) Entry(req *store.Request) ([]byte, error) {
	w := rlog.Write{RequestID: req.RequestID, Stmts: req.Stmts, AllowSchema: req.AllowSchema, Collect: req.Collect,
		MaxRows: req.Limits.MaxRows, MaxBytes: req.Limits.MaxBytes, MaxSteps: req.Limits.MaxSteps, Each: req.Each, Atomic: req.Atomic, Replace: req.Replace, Load: req.Load, Check: req.Check,
		SetChanges: req.SetChanges, ChangesKeep: req.ChangesKeep, ChangesDelivered: req.ChangesDelivered}
	body, err := w.Encode()
	if err != nil {
		return nil, &store.ParamError{Msg: err.Error()}
	}
	if len(body) > rlog.MaxEntryBytes {
		return nil, &store.EntryTooLargeError{Bytes: len(body)}
	}
	data := make([]byte, 16, 16+len(body))
	r.stamp(data)
	return append(data, body...), nil
}

// stamp writes this node's time and a new random seed at the start of an
// entry's data.
func (r *Replica) stamp(data []byte) {
	binary.BigEndian.PutUint64(data, uint64(r.now().UnixMilli()))
	binary.BigEndian.PutUint64(data[8:], uint64(r.seeds()))
}

// restamp is the node's Restamp: a write a follower proposed runs with the
// time and seed of the leader that logs it, as if proposed there.
func (r *Replica) restamp(data []byte) {
	if len(data) >= 16 {
		r.stamp(data)
	}
}

// LeaderApplyError: the write is committed and applied on this node, but
// no leader was seen to apply it in time (the "applied on the leader"
// part of the acknowledgement).
type LeaderApplyError struct {
	Index uint64
	Err   error
}

func (e *LeaderApplyError) Error() string {
	return fmt.Sprintf("entry %d is committed and applied here, but no leader reported applying it: %v", e.Index, e.Err)
}

func (e *LeaderApplyError) Unwrap() error { return e.Err }

// WriteThroughLeader runs a client write on a follower: proposed here, it
// reaches the leader with this node's Raft messages, and the leader logs
// it with its own time and seed. It answers once this node has applied the
// entry (with the results it computed, the same as every node's) and a
// leader reported applying it too. The write must carry a request id: a
// proposal that may have been lost on its way is sent again (see
// Node.ProposeThroughLeader), and its copies apply once. A NotLeaderError
// says nothing was proposed: no leader is known, or the leader does not
// take proposals from followers (it does not report what it applied; the
// caller forwards the write itself).
func (r *Replica) WriteThroughLeader(ctx context.Context, req *store.Request) (store.Outcome, error) {
	lead, self := r.node.Leader()
	if self || !r.node.LeaderReports(lead) {
		return store.Outcome{}, &NotLeaderError{Leader: lead}
	}
	if req.RequestID == "" {
		return store.Outcome{}, errors.New("a write proposed through the leader needs a request id")
	}
	a, out, err := r.propose(ctx, req, r.node.ProposeThroughLeader)
	if err != nil {
		return out, err
	}
	if err := r.node.WaitLeaderApplied(ctx, a.Index); err != nil {
		out.Index = a.Index
		return out, &LeaderApplyError{Index: a.Index, Err: err}
	}
	return out, out.Err
}

// ReadIndex is an index covering every write acknowledged before the call
// (confirmed with a majority).
func (r *Replica) ReadIndex(ctx context.Context) (uint64, error) { return r.node.ReadIndex(ctx) }

// WaitApplied waits until this node's database has applied index.
func (r *Replica) WaitApplied(ctx context.Context, index uint64) error {
	if r.st.Applied() >= index {
		return nil
	}
	ch := make(chan struct{})
	r.mu.Lock()
	r.waiters = append(r.waiters, applyWaiter{index: index, ch: ch})
	r.mu.Unlock()
	if r.st.Applied() >= index {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		r.waiters = forget(r.waiters, ch)
		r.mu.Unlock()
		return ctx.Err()
	}
}

// apply is the node's Apply: committed entries into the database, in one
// transaction per Ready.
func (r *Replica) apply(ents []Entry) ([]any, error) {
	log := make([]rlog.Entry, len(ents))
	for i, e := range ents {
		log[i] = rlog.Entry{Index: e.Index, Term: e.Term, Conf: e.Conf, Rejoining: e.Rejoining}
		if len(e.Data) >= 16 {
			log[i].TimeMs = int64(binary.BigEndian.Uint64(e.Data))
			log[i].Seed = int64(binary.BigEndian.Uint64(e.Data[8:]))
			log[i].Body = e.Data[16:]
		}
	}
	first := r.st.Applied() + 1 // ApplyLog skips what the database already holds
	out, err := r.st.ApplyLog(log)
	if err != nil {
		// This node's own database failed: it cannot go on applying.
		return nil, fmt.Errorf("apply entries %d..%d: %w", ents[0].Index, ents[len(ents)-1].Index, err)
	}
	results := make([]any, len(ents))
	for i, e := range ents {
		if e.Index >= first && int(e.Index-first) < len(out) {
			results[i] = out[e.Index-first]
		}
	}
	r.wake()
	return results, nil
}

// wake releases the waiters whose index this node has applied.
func (r *Replica) wake() {
	applied := r.st.Applied()
	r.mu.Lock()
	r.waiters = release(r.waiters, applied)
	r.mu.Unlock()
}

// forget removes the waiter of ch (one that gave up).
func forget(ws []applyWaiter, ch chan struct{}) []applyWaiter {
	for i, w := range ws {
		if w.ch == ch {
			return append(ws[:i], ws[i+1:]...)
		}
	}
	return ws
}

// release closes the channels of the waiters at or below index, and
// returns the others.
func release(ws []applyWaiter, index uint64) []applyWaiter {
	kept := ws[:0]
	for _, w := range ws {
		if w.index <= index {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	return kept
}

// WaitDurableOnAllVoters waits, on the leader, until every voter holds the
// log up to index on its disk (the "all" acknowledgement level).
func (r *Replica) WaitDurableOnAllVoters(ctx context.Context, index uint64) error {
	for {
		st := r.node.Status()
		if st.RaftState != raft.StateLeader {
			return &NotLeaderError{Leader: st.Lead}
		}
		all := true
		for id := range st.Config.Voters.IDs() {
			if pr, ok := st.Progress[id]; !ok || pr.Match < index {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// The kinds of the engine's errors (see package errkind): the engine turns
// them into replication's before they reach a client, and these say what
// they are if one gets through.

func (e *NotLeaderError) Kind() errkind.Kind      { return errkind.Unavailable }
func (e *UnknownOutcomeError) Kind() errkind.Kind { return errkind.UnknownOutcome }
func (e *LeaderApplyError) Kind() errkind.Kind    { return errkind.AckTimeout }
func (removedError) Kind() errkind.Kind           { return errkind.Unavailable }
func (notMemberError) Kind() errkind.Kind         { return errkind.Unavailable }
func (divergedError) Kind() errkind.Kind          { return errkind.Unavailable }
