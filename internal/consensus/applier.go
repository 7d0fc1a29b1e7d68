package consensus

import (
	"fmt"
	"maps"
	"slices"

	pb "go.etcd.io/raft/v3/raftpb"
)

// The applier applies committed entries to the database on a goroutine
// of its own (applyLoop), in log order, while Raft's loop goes on saving,
// sending and ticking: an entry that runs for seconds holds up no
// heartbeat, vote or append, so it costs the cluster no election. The
// loop hands over the committed entries of each Ready (handApply) and
// never waits for them, except before it installs a snapshot
// (drainApplier).
//
// Raft counts a handed entry as applied. That is safe: what the database
// has applied is recorded in the same transaction as the entries'
// changes, and after a restart Raft hands over again everything after it
// (Config.Applied).

// applyBatch is the committed entries of one Ready, with their proposal
// ids (0: not a proposal).
type applyBatch struct {
	run []Entry
	ids []uint64
}

// applyQueueBytes bounds the entries' data waiting for the applier: an
// applier behind by more (a follower applying a load while its chunks keep
// coming) gets the entries without their data, and reads it back from the
// log file when it comes to them. The loop never waits for it either way.
const applyQueueBytes = 64 << 20

// handApply queues a batch for the applier (run goroutine).
func (n *Node) handApply(b applyBatch) {
	n.amu.Lock()
	for i := range b.run {
		e := &b.run[i]
		if n.applyqBytes+len(e.Data) > applyQueueBytes && e.Conf == nil && len(e.Data) > 0 {
			e.Data, e.inLog = nil, true
		}
		n.applyqBytes += len(e.Data)
	}
	n.applyq = append(n.applyq, b)
	n.amu.Unlock()
	n.handed = b.run[len(b.run)-1].Index
	select {
	case n.applyWake <- struct{}{}:
	default:
	}
}

// applyLoop applies the queued batches, one Apply call each, until the
// node stops or its database fails.
func (n *Node) applyLoop() {
	defer close(n.applyDone)
	for {
		n.amu.Lock()
		batches := n.applyq
		n.applyq = nil
		n.amu.Unlock()
		if len(batches) == 0 {
			select {
			case <-n.applyWake:
				continue
			case <-n.applyStop:
				return
			}
		}
		for _, b := range batches {
			if err := n.applyBatch(b); err != nil {
				n.applyErr = err
				close(n.applyFailed)
				return
			}
			select {
			case <-n.applyStop:
				return // (the rest is applied again after a restart)
			default:
			}
		}
	}
}

// ApplyNext applies, on a stepped node (see Open), the oldest batch of
// committed entries handed to the applier, and reports whether there was
// one. The applier of a started node does this on its own goroutine.
func (n *Node) ApplyNext() (bool, error) {
	n.amu.Lock()
	if len(n.applyq) == 0 {
		n.amu.Unlock()
		return false, nil
	}
	b := n.applyq[0]
	n.applyq = n.applyq[1:]
	n.amu.Unlock()
	return true, n.applyBatch(b)
}

// Unapplied says how many batches of committed entries wait for the
// applier.
func (n *Node) Unapplied() int {
	n.amu.Lock()
	defer n.amu.Unlock()
	return len(n.applyq)
}

// applyBatch applies one batch and answers its proposers; a leader then
// tells the followers it has applied entries they proposed.
func (n *Node) applyBatch(b applyBatch) error {
	queued := 0
	for i := range b.run {
		queued += len(b.run[i].Data)
	}
	n.amu.Lock()
	n.applyqBytes -= queued
	n.amu.Unlock()
	// A batch is one Ready's committed entries: a megabyte of data, or
	// one entry, so what is read back here is as bounded.
	if err := n.readBack(b.run); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	results, err := n.cfg.Apply(b.run)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	last := b.run[len(b.run)-1].Index
	n.applied.Store(last)
	foreign, err := n.deliver(b.run, b.ids, results)
	if err != nil {
		return err
	}
	n.signalApplied()
	if _, self := n.Leader(); self && foreign {
		// Entries after these are on their way: the messages that commit
		// them carry the report (every batch of a leader's messages starts
		// with it), and so does the next heartbeat at the latest. Under load
		// that spares a message to every node for each batch.
		if lastLogged, _ := n.storage.LastIndex(); lastLogged <= last {
			n.reportApplied()
		}
	}
	if err := n.compact(); err != nil {
		n.cfg.Log.Warn("compacting the raft log failed; it is tried again after the next entries", "err", err)
	}
	// (Between two batches, no entry of this node holds SQLite's
	// generator, which the log file's checkpoint needs.)
	if err := n.storage.st.CheckpointRaftLog(); err != nil {
		n.cfg.Log.Warn("checkpointing the raft log failed; it is tried again after the next entries", "err", err)
	}
	return nil
}

// readBack gives the entries whose data was left in the log their data.
func (n *Node) readBack(run []Entry) error {
	for i := range run {
		e := &run[i]
		if !e.inLog {
			continue
		}
		ents, err := n.storage.Entries(e.Index, e.Index+1, 0)
		if err != nil {
			return fmt.Errorf("read entry %d back from the log: %w", e.Index, err)
		}
		if len(ents) != 1 || ents[0].Term != e.Term {
			return fmt.Errorf("read entry %d back from the log: the log holds another entry there", e.Index)
		}
		if _, ok := proposalOf(ents[0]); !ok {
			return fmt.Errorf("read entry %d back from the log: it holds no write", e.Index)
		}
		e.Data, e.inLog = ents[0].Data[8:], false
	}
	return nil
}

// signalApplied wakes whoever waits for the applied index to move.
func (n *Node) signalApplied() {
	sig := make(chan struct{})
	close(*n.appliedSig.Swap(&sig))
}

// drainApplier waits until the applier has applied everything handed to
// it (run goroutine; a stepped node applies it now).
func (n *Node) drainApplier() error {
	for n.stepped {
		if more, err := n.ApplyNext(); err != nil || !more {
			return err
		}
	}
	for {
		sig := *n.appliedSig.Load()
		if n.applied.Load() >= n.handed {
			return nil
		}
		select {
		case <-sig:
		case <-n.applyFailed:
			return n.applyErr
		case <-n.stopc:
			return ErrStopped
		}
	}
}

// reportApplied tells every other node of the configuration what this
// node, the leader, has applied (ReportedApplied): a follower answers a write it
// proposed once a leader has applied it (WaitLeaderApplied). The report
// also rides on every batch of the leader's messages; this one is for
// the followers whose writes wait now.
func (n *Node) reportApplied() {
	st := n.RecentStatus()
	to := make([]uint64, 0, len(st.Progress))
	for _, id := range slices.Sorted(maps.Keys(st.Progress)) { // (in order: a simulation replays it)
		if id != n.cfg.ID {
			to = append(to, id)
		}
	}
	n.tr.Report(to)
}

// committed prepares committed entries for the database: configuration
// changes are applied to Raft here, and every entry, in order, goes to
// one Apply call (with its proposal id), so that the database's applied
// index covers each index of the log (an entry that is not a proposal,
// such as a new leader's empty entry or a configuration change, reaches
// Apply with nil data).
func (n *Node) committed(ents []pb.Entry) (run []Entry, ids []uint64, err error) {
	for _, e := range ents {
		if e.Index <= n.handed {
			continue // applied before a restart, or covered by a snapshot
		}
		var id uint64
		var data, conf, rejoin []byte
		switch e.Type {
		case pb.EntryConfChange:
			var cc pb.ConfChange
			if err := cc.Unmarshal(e.Data); err != nil {
				return nil, nil, fmt.Errorf("entry %d: %w", e.Index, err)
			}
			if conf, err = n.confChange(cc); err != nil {
				return nil, nil, err
			}
			if rj, changed := n.Rejoining().after(cc); changed {
				n.rejoining.Store(&rj)
				rejoin = rj.encode()
			}
			n.confApplied(cc)
		case pb.EntryConfChangeV2:
			var cc pb.ConfChangeV2
			if err := cc.Unmarshal(e.Data); err != nil {
				return nil, nil, fmt.Errorf("entry %d: %w", e.Index, err)
			}
			if conf, err = n.confChange(cc); err != nil {
				return nil, nil, err
			}
		case pb.EntryNormal:
			if pid, ok := proposalOf(e); ok {
				id, data = pid, e.Data[8:]
			}
		}
		run = append(run, Entry{Index: e.Index, Term: e.Term, Data: data, Conf: conf, Rejoining: rejoin})
		ids = append(ids, id)
	}
	return run, ids, nil
}
