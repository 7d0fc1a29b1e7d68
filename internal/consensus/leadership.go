package consensus

import (
	"context"
	"math"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	pb "go.etcd.io/raft/v3/raftpb"

	"go.etcd.io/raft/v3"
)

// Leadership: who leads as this node knows it, the preferred leader, and
// handing leadership over.

// contact records when a leader's message reached this node.
func (n *Node) contact(m pb.Message) {
	switch m.Type {
	case pb.MsgApp, pb.MsgHeartbeat, pb.MsgSnap:
		n.leaderContact.Store(n.cfg.Now().UnixNano())
	}
}

// NoteLeaderApplied records the applied index that node from, a leader,
// reported with its messages.
func (n *Node) NoteLeaderApplied(from, index uint64) {
	n.reporter.Store(from)
	for {
		old := n.leaderApplied.Load()
		if index <= old || n.leaderApplied.CompareAndSwap(old, index) {
			break
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.reported) > 0 {
		n.reported = release(n.reported, n.leaderApplied.Load())
	}
}

// ReportedApplied is what this node's messages report it has applied:
// its applied index if it leads, else 0 (see NoteLeaderApplied).
func (n *Node) ReportedApplied() uint64 {
	if _, self := n.Leader(); !self {
		return 0
	}
	return n.applied.Load()
}

// LeaderReports says whether node lead, the leader, reports its applied
// index with its messages: it then takes the proposals of followers (see
// ProposeThroughLeader). A leader that does not is an older version,
// which drops them.
func (n *Node) LeaderReports(lead uint64) bool { return lead != 0 && n.reporter.Load() == lead }

// WaitLeaderApplied waits until a leader has applied index: one reported
// it, or this node leads and has applied it.
func (n *Node) WaitLeaderApplied(ctx context.Context, index uint64) error {
	for {
		if n.leaderApplied.Load() >= index {
			return nil
		}
		if _, self := n.Leader(); self && n.applied.Load() >= index {
			return nil
		}
		leadChange := *n.leadChange.Load()
		ch := make(chan struct{})
		n.mu.Lock()
		n.reported = append(n.reported, applyWaiter{index: index, ch: ch})
		n.mu.Unlock()
		var err error
		if n.leaderApplied.Load() < index { // (else reported since the first look)
			select {
			case <-ch:
				return nil
			case <-leadChange:
			case <-ctx.Done():
				err = ctx.Err()
			case <-n.done:
				err = ErrStopped
			}
		}
		n.mu.Lock()
		n.reported = forget(n.reported, ch)
		n.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// Leader is the leader this node knows (0: none), and whether it is this
// node, as of the last step Raft took.
func (n *Node) Leader() (lead uint64, self bool) {
	return n.softLead.Load(), raft.StateType(n.softState.Load()) == raft.StateLeader
}

// SinceLeaderContact is how long ago a leader's message last reached this
// node: 0 on the leader, and a very long time if none ever has.
func (n *Node) SinceLeaderContact() time.Duration {
	if _, self := n.Leader(); self {
		return 0
	}
	t := n.leaderContact.Load()
	if t == 0 {
		return time.Duration(math.MaxInt64)
	}
	return n.cfg.Now().Sub(time.Unix(0, t))
}

// caughtUpLag is how far behind the commit index the preferred leader may
// be and still count as caught up (Raft's transfer then sends it the rest
// before it takes over).
const caughtUpLag = 1024

// leadPreferred, on the leader, hands leadership to the preferred node once
// it has held the whole log for Timing.PreferredAfter ticks in a row.
func (n *Node) leadPreferred() {
	p := n.cfg.Preferred
	if p == 0 || p == n.cfg.ID {
		return
	}
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		n.caughtUp = 0
		return
	}
	// (RecentActive is not asked: the leader clears it every election
	// timeout, whatever the follower does.)
	if !caughtUp(st, p) || st.Progress[p].IsLearner {
		n.caughtUp = 0
		return
	}
	n.caughtUp++
	if n.caughtUp >= n.cfg.Timing.PreferredAfter {
		n.caughtUp = 0
		n.cfg.Log.Info("handing leadership back to the preferred leader", "to", cluster.CommandLineID(p))
		n.transferAsked()
		n.rn.TransferLeader(p)
	}
}

// LeaderChanges is how many times a leader became known to this node.
func (n *Node) LeaderChanges() uint64 { return n.leaderChanges.Load() }

// TransferLeadership asks Raft, on the leader, to hand leadership to node
// id.
func (n *Node) TransferLeadership(ctx context.Context, id uint64) {
	n.do(ctx, func(rn *raft.RawNode) {
		if n.leading {
			n.transferAsked()
		}
		rn.TransferLeader(id)
	})
}
