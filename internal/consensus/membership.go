package consensus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"go.etcd.io/raft/v3"
)

// Membership: configuration changes proposed on the leader, and what
// applying them does here.

// ChangeMembership proposes a configuration change on the leader and
// waits until this node has applied it: AddLearnerNode (context: the new
// node's URL), AddNode (a learner becomes a voter), RemoveNode.
func (n *Node) ChangeMembership(ctx context.Context, cc pb.ConfChange) error {
	// Raft drops a configuration change while an earlier one, or any
	// entry of a previous leader's term, is not applied yet (it turns the
	// proposal into an empty entry). So a change that does not show within
	// a moment is proposed again, until the configuration has it.
	for {
		st := n.Status()
		if st.RaftState != raft.StateLeader {
			return &NotLeaderError{Leader: st.Lead}
		}
		if HasChange(st, cc) {
			return nil
		}
		ch := make(chan struct{}, 1)
		n.mu.Lock()
		n.confWaiters = append(n.confWaiters, confWaiter{cc: cc, ch: ch})
		n.mu.Unlock()
		var err error
		if !n.do(ctx, func(rn *raft.RawNode) { err = rn.ProposeConfChange(cc) }) {
			err = cmp.Or(ctx.Err(), ErrStopped)
		}
		if err != nil && !errors.Is(err, raft.ErrProposalDropped) {
			return fmt.Errorf("propose configuration change: %w", err)
		}
		select {
		case <-ch:
			return nil
		case <-time.After(n.cfg.Timing.ChangeResend):
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrStopped
		}
	}
}

// ProposeChange proposes a configuration change on a stepped node (see
// Open), without waiting: Raft drops it while an earlier change is not
// applied, so the caller proposes it again until the configuration has it
// (HasChange), as ChangeMembership does.
func (n *Node) ProposeChange(cc pb.ConfChange) error {
	var err error
	if !n.do(context.Background(), func(rn *raft.RawNode) { err = rn.ProposeConfChange(cc) }) {
		return ErrStopped
	}
	return err
}

// HasChange reports whether the configuration already holds cc's result.
func HasChange(st raft.Status, cc pb.ConfChange) bool {
	voter, learner := Membership(st.Config, cc.NodeID)
	switch cc.Type {
	case pb.ConfChangeAddNode:
		return voter
	case pb.ConfChangeAddLearnerNode:
		return learner
	case pb.ConfChangeRemoveNode:
		return !voter && !learner
	}
	return false
}

type confWaiter struct {
	cc pb.ConfChange
	ch chan struct{}
}

func (n *Node) confApplied(cc pb.ConfChange) {
	if n.cfg.OnConfChange != nil {
		n.cfg.OnConfChange(cc)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	kept := n.confWaiters[:0]
	for _, w := range n.confWaiters {
		if w.cc.Type == cc.Type && w.cc.NodeID == cc.NodeID {
			w.ch <- struct{}{}
		} else {
			kept = append(kept, w)
		}
	}
	n.confWaiters = kept
}

// confChange applies a configuration change to Raft and returns the
// configuration reached, encoded.
func (n *Node) confChange(cc pb.ConfChangeI) ([]byte, error) {
	cs := *n.rn.ApplyConfChange(cc)
	n.endLease() // a majority is no longer what it was
	n.changed = true
	if err := n.storage.SetConfState(cs, !n.cfg.ApplyRecordsConf); err != nil {
		return nil, err
	}
	return cs.Marshal()
}
