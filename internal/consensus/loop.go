package consensus

import (
	"fmt"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// The Raft loop. One goroutine (run) owns Raft's state machine: it waits
// for something to do, then takes one step (Step). A step takes whatever
// is queued, saves, sends, hands committed entries to the applier, and
// advances. It never waits for SQL: the applier (applier.go) applies on
// its own goroutine. A node opened with Open has no goroutine: its caller
// ticks and steps it the same way (the simulator, package sim).

// run is the loop of a started node.
func (n *Node) run() {
	defer close(n.done)
	defer func() {
		close(n.applyStop)
		<-n.applyDone
	}()
	n.holdTimer = time.NewTimer(time.Hour)
	n.holdTimer.Stop()
	for {
		if err := n.wait(); err != nil {
			n.fail(err)
			return
		}
		if err := n.Step(); err != nil {
			n.fail(err)
			return
		}
	}
}

// wait waits for something to do and takes it: a tick, a message, a
// proposal, a request (see do), or the end of a hold. It returns
// ErrStopped once the node is stopped, or the applier's error.
func (n *Node) wait() error {
	if n.holdC != nil && !n.holdBatch() {
		return nil // the held batch may go now: the last step committed what it waited for
	}
	var applied <-chan struct{} // while a batch is held: the applier moved
	if n.holdC != nil {
		applied = *n.appliedSig.Load()
	}
	select {
	case <-n.holdC:
		n.holdC = nil // the hold is over: the batch goes out in the step
	case <-applied:
	case <-n.cfg.Ticks:
		n.Tick()
	case m := <-n.inbox:
		n.step(m)
	case p := <-n.props:
		n.take(p)
	case f := <-n.ops:
		f()
	case <-n.applyFailed:
		return n.applyErr
	case <-n.stopc:
		return ErrStopped
	}
	return nil
}

// fail ends the loop: err is why, unless the node was stopped.
func (n *Node) fail(err error) {
	if err == ErrStopped {
		return
	}
	n.cfg.Log.Error("raft node stops", "err", err)
	n.err = err
}

// maxStepInputs bounds what one step takes from the queues, so that a
// flood of messages cannot hold off the disk work of a step for long.
const maxStepInputs = 8192

// Tick advances Raft's clock by one tick, and on the leader hands
// leadership to the preferred node once it has caught up.
func (n *Node) Tick() {
	if n.ticks < n.cfg.Timing.ElectionTicks {
		n.ticks++
	}
	n.rn.Tick()
	n.leadPreferred()
	if len(n.late) > 0 {
		n.releaseLate()
	}
}

// Step takes one step of the loop: everything queued goes into Raft (the
// proposals as one batch, unless a leader holds them), then the Ready that
// results is saved, sent and handed to the applier, and Raft advances.
func (n *Node) Step() error {
drain:
	for range maxStepInputs {
		select {
		case m := <-n.inbox:
			n.step(m)
		case p := <-n.props:
			n.take(p)
		case f := <-n.ops:
			f()
		default:
			break drain
		}
	}
	n.proposeBatch()
	if n.rn.HasReady() {
		rd := n.rn.Ready()
		if err := n.handle(rd); err != nil {
			return err
		}
		n.rn.Advance(rd)
	}
	n.publishStatus(false)
	return nil
}

// handle processes one Ready in the order Raft requires: no vote or
// acknowledgement goes out before what it vouches for is durable; the
// leader's appends go out before it writes its own copy (Raft thesis
// 10.2.1), since they vouch for nothing on its disk. Committed entries go
// to the applier, which applies them in order while the loop goes on: it
// never waits for SQL, except to install a snapshot (see DESIGN.md).
func (n *Node) handle(rd raft.Ready) error {
	if rd.SoftState != nil {
		n.changed = true
		leading := rd.SoftState.RaftState == raft.StateLeader
		if leading != n.leading {
			if leading {
				n.cfg.Log.Info("this node leads now", "term", n.rn.BasicStatus().Term)
			} else {
				n.cfg.Log.Info("this node no longer leads", "term", n.rn.BasicStatus().Term, "leader", cluster.CommandLineID(rd.SoftState.Lead))
			}
		}
		n.leading = leading
		if old := n.softLead.Swap(rd.SoftState.Lead); old != rd.SoftState.Lead {
			if rd.SoftState.Lead != 0 {
				n.leaderChanges.Add(1)
			}
			lc := make(chan struct{})
			close(*n.leadChange.Swap(&lc))
		}
		n.softState.Store(uint32(rd.SoftState.RaftState))
	}
	if n.leading {
		// A leader's messages never vouch for its own disk (it sends no
		// votes or acknowledgements): they go while it writes.
		n.tr.Send(rd.Messages)
	} else {
		// A follower's proposals and read requests on their way to the
		// leader vouch for nothing: they go at once.
		rd.Messages = n.sendRequests(rd.Messages)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		// The snapshot replaces the database: what was handed to the
		// applier before it goes first.
		if err := n.drainApplier(); err != nil {
			return err
		}
		if err := n.install(rd.Snapshot, rd.HardState); err != nil {
			return fmt.Errorf("install snapshot at index %d: %w", rd.Snapshot.Metadata.Index, err)
		}
	}
	save, err := n.storage.encode(rd.Entries, rd.HardState)
	if err != nil {
		return err
	}
	// A step that writes no entry and changes neither term nor vote (only
	// the commit index moved) writes nothing: a commit index is learnt
	// again from the leader, and a node that applied beyond the one it
	// recorded raises it when it starts. The next step that writes
	// records it with the rest.
	if rd.MustSync {
		if err := n.storage.st.SaveRaft(save); err != nil {
			return fmt.Errorf("persist raft log: %w", err)
		}
	}
	if err := n.storage.saved(rd.Entries, rd.HardState); err != nil {
		return err
	}
	if !n.leading {
		// A follower's acknowledgements and votes go out once what they
		// vouch for is on its disk.
		n.tr.Send(rd.Messages)
	}
	run, ids, err := n.committed(rd.CommittedEntries)
	if err != nil {
		return err
	}
	if len(run) > 0 {
		n.handApply(applyBatch{run: run, ids: ids})
	}
	if len(rd.ReadStates) > 0 {
		n.mu.Lock()
		for _, r := range rd.ReadStates {
			if !n.leaseConfirmed(r) {
				n.answerRead(r.RequestCtx, r.Index)
			}
		}
		n.mu.Unlock()
	}
	return nil
}

// sendRequests sends the proposals and read requests among msgs, and
// returns the others.
func (n *Node) sendRequests(msgs []pb.Message) []pb.Message {
	var reqs, rest []pb.Message
	for i, m := range msgs {
		if m.Type == pb.MsgProp || m.Type == pb.MsgReadIndex {
			if reqs == nil {
				rest = append(rest, msgs[:i]...)
			}
			reqs = append(reqs, m)
		} else if reqs != nil {
			rest = append(rest, m)
		}
	}
	if reqs == nil {
		return msgs
	}
	n.tr.Send(reqs)
	return rest
}
