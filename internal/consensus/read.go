package consensus

import (
	"cmp"
	"context"
	"crypto/rand"
	"time"

	"github.com/ddbgo/ddb/internal/faults"
	"go.etcd.io/raft/v3"
)

// Reads: a read index confirmed with a majority (Raft's ReadIndex).

// ReadIndex returns an index such that every write acknowledged before the
// call is at or below it, confirmed with a majority (Raft's ReadIndex): a
// read that waits until this node has applied it reflects all of them.
// Without a leader reachable through a majority it fails when ctx ends.
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	if n.bug(faults.StaleStrongRead) {
		return 0, nil
	}
	var key [16]byte
	_, _ = rand.Read(key[:])
	ch := make(chan uint64, 1)
	n.mu.Lock()
	n.reads[string(key[:])] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.reads, string(key[:]))
		n.mu.Unlock()
	}()
	// Raft drops a read index request that finds no leader, or a leader
	// that has not committed an entry of its term yet, or that is lost on
	// the way: it is sent again every resend until answered.
	for {
		if !n.do(ctx, func(rn *raft.RawNode) { rn.ReadIndex(key[:]) }) {
			return 0, cmp.Or(ctx.Err(), ErrStopped)
		}
		select {
		case idx := <-ch:
			return idx, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-n.done:
			return 0, ErrStopped
		case <-time.After(n.cfg.Timing.ReadResend):
		}
	}
}

// RequestRead asks Raft, on a stepped node (see Open), for a read index
// under key: the channel gets the index once a majority confirmed it. A
// request Raft drops (no leader, or one without an entry of its term
// committed) is never answered: ask again. forget unregisters it.
func (n *Node) RequestRead(key []byte) (index <-chan uint64, forget func()) {
	ch := make(chan uint64, 1)
	if n.bug(faults.StaleStrongRead) {
		ch <- 0
		return ch, func() {}
	}
	n.mu.Lock()
	n.reads[string(key)] = ch
	n.mu.Unlock()
	n.rn.ReadIndex(key)
	return ch, func() {
		n.mu.Lock()
		delete(n.reads, string(key))
		n.mu.Unlock()
	}
}
