package consensus

import (
	"cmp"
	"context"
	"crypto/rand"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/faults"
	"go.etcd.io/raft/v3"
)

// Reads: a read index confirmed with a majority (Raft's ReadIndex).

// ReadIndex returns an index such that every write acknowledged before the
// call is at or below it, confirmed with a majority (Raft's ReadIndex): a
// read that waits until this node has applied it reflects all of them.
// Without a leader reachable through a majority it fails when ctx ends.
//
// One confirmation round serves every read waiting for it: a read that
// arrives while a round is under way waits for the next one, which starts
// as soon as that round ends and serves every read that arrived meanwhile
// (a round started before a read arrived may not cover the writes
// acknowledged before it). Under load, reads cost one round per batch,
// not one each; at rest, one round each, as before.
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	if n.bug(faults.StaleStrongRead) {
		return 0, nil
	}
	b := n.readBatch.join(n)
	select {
	case <-b.done:
		return b.index, b.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrStopped
	}
}

// readBatcher gathers reads into rounds: at most one round is under way,
// and the reads that arrive meanwhile wait together for the next.
type readBatcher struct {
	mu      sync.Mutex
	running bool       // a round is under way
	next    *readRound // the round the reads arriving now will share
	rounds  int64      // rounds started
	reads   int64      // reads that joined a round
}

// counts says how many reads joined rounds and how many rounds started.
func (rb *readBatcher) counts() (reads, rounds int64) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.reads, rb.rounds
}

// readRound is one confirmation round and its outcome.
type readRound struct {
	done  chan struct{} // closed once index or err is set
	index uint64
	err   error
}

// join returns the round the caller shares, starting it if no round is
// under way.
func (rb *readBatcher) join(n *Node) *readRound {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.next == nil {
		rb.next = &readRound{done: make(chan struct{})}
	}
	r := rb.next
	rb.reads++
	if !rb.running {
		rb.start(n)
	}
	return r
}

// start runs the next round; rb.mu is held.
func (rb *readBatcher) start(n *Node) {
	r := rb.next
	rb.next, rb.running = nil, true
	rb.rounds++
	go func() {
		// The round outlives any one reader (each stops waiting when its
		// own context ends): it ends when confirmed, or after ReadWait.
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Timing.ReadWait)
		r.index, r.err = n.readRound(ctx)
		cancel()
		close(r.done)
		rb.mu.Lock()
		defer rb.mu.Unlock()
		rb.running = false
		if rb.next != nil {
			rb.start(n)
		}
	}()
}

// readRound asks Raft for one read index and waits for it.
func (n *Node) readRound(ctx context.Context) (uint64, error) {
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
		if !n.do(ctx, func(rn *raft.RawNode) {
			if !n.readLocally(n.cfg.ID, key[:]) {
				rn.ReadIndex(key[:])
			}
		}) {
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

// answerRead gives the reader of key its read index (n.mu is held). A
// reader already answered (the request was sent again) or gone gets
// nothing.
func (n *Node) answerRead(key []byte, index uint64) {
	if ch := n.reads[string(key)]; ch != nil {
		select {
		case ch <- index:
		default:
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
	if !n.readLocally(n.cfg.ID, key) {
		n.rn.ReadIndex(key)
	}
	return ch, func() {
		n.mu.Lock()
		delete(n.reads, string(key))
		n.mu.Unlock()
	}
}
