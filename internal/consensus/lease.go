package consensus

import (
	"crypto/rand"
	"time"

	"github.com/ddbgo/ddb/internal/faults"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// Read leases: the leader answers read index requests from its commit
// index, without a round of heartbeats, while a lease it holds lasts.
//
// Why it is safe. A lease comes from a read index round of the leader's
// own, asked at time T in term t (before the round's heartbeats go out)
// and confirmed by a majority in term t: each member of that majority
// stepped a heartbeat of term t after T, which reset its election timer.
// A new leader needs the votes of a majority, so of one of them; with
// CheckQuorum (on) a follower refuses every vote while fewer than
// ElectionTicks ticks have passed since it last heard from its leader, at
// least (ElectionTicks-1) ticks of real time, and a tick never comes
// faster than Timing.Tick. So no other leader can exist before
// T + (ElectionTicks-1) ticks; the lease ends well before, at
// T + Timing.ReadLease (80% of that, for clocks that run at slightly
// different rates). Three things could break that argument, and each is
// closed:
//
//   - A member restarts and forgets when it heard from its leader (a new
//     process has no leader, so it would vote at once). A node refuses
//     every vote until it has counted ElectionTicks ticks since it
//     started (holdVotes): at least (ElectionTicks-1) ticks of real time.
//   - A leadership transfer makes its target campaign at once, and the
//     voters grant it their votes whatever their timers say. Once this
//     leader has asked for a transfer in a term, it holds no lease for
//     the rest of that term.
//   - A configuration change changes what a majority is. Applying one
//     ends the lease; the next comes from a round in the new configuration.
//
// Time is read from Config.Mono, a clock that never jumps (time.Now's
// monotonic reading): a leader that was paused finds its lease over when
// it runs again. A read that finds no lease goes through Raft's safe read
// index round, as before; a round of the leader's own renews the lease
// once half of it is left.

// leaseState is the leader's lease (the run goroutine only).
type leaseState struct {
	term  uint64    // the term it was confirmed in (0: none)
	until time.Time // on Config.Mono's clock
	// The round under way that will renew it: its key, term and when it
	// was asked (key nil: none).
	roundKey  []byte
	roundTerm uint64
	roundAt   time.Time
	// noLeaseTerm: a leadership transfer was asked in this term.
	noLeaseTerm uint64
}

// leaseTerm is the term in which this node may hold a lease now: it leads,
// leases are on, and it has asked for no leadership transfer in the term
// (0: it may hold none).
func (n *Node) leaseTerm() uint64 {
	if n.cfg.Timing.ReadLease <= 0 || !n.leading {
		return 0
	}
	bs := n.rn.BasicStatus()
	if bs.RaftState != raft.StateLeader || bs.LeadTransferee != raft.None || n.lease.noLeaseTerm == bs.Term {
		return 0
	}
	return bs.Term
}

// holding says whether this node leads with a lease now.
func (n *Node) holding(now time.Time) bool {
	t := n.leaseTerm()
	return t != 0 && n.lease.term == t && (now.Before(n.lease.until) || n.bug(faults.EndlessLease))
}

// renewLease starts a round of the leader's own when the lease is over or
// half spent and no round is under way (or the last one was lost).
func (n *Node) renewLease(now time.Time) {
	t := n.leaseTerm()
	if t == 0 {
		return
	}
	if n.lease.term == t && n.lease.until.Sub(now) > n.cfg.Timing.ReadLease/2 {
		return
	}
	if n.lease.roundKey != nil && n.lease.roundTerm == t && now.Sub(n.lease.roundAt) < n.cfg.Timing.ReadResend {
		return
	}
	key := make([]byte, 17)
	key[0] = leaseKeyTag
	_, _ = rand.Read(key[1:])
	n.lease.roundKey, n.lease.roundTerm, n.lease.roundAt = key, t, now
	n.rn.ReadIndex(key)
}

// leaseKeyTag starts the key of a lease round; the keys of reads are 16
// random bytes, so never of that length.
const leaseKeyTag = 'L'

// leaseConfirmed takes a read state that may be the lease round's.
func (n *Node) leaseConfirmed(rs raft.ReadState) bool {
	if len(rs.RequestCtx) != 17 || rs.RequestCtx[0] != leaseKeyTag {
		return false
	}
	if n.lease.roundKey != nil && string(rs.RequestCtx) == string(n.lease.roundKey) {
		if t := n.leaseTerm(); t != 0 && t == n.lease.roundTerm {
			n.lease.term, n.lease.until = t, n.lease.roundAt.Add(n.cfg.Timing.ReadLease)
		}
		n.lease.roundKey = nil
	}
	return true
}

// endLease ends the lease and forgets the round under way (a
// configuration change was applied).
func (n *Node) endLease() {
	n.lease.term, n.lease.roundKey = 0, nil
}

// transferAsked: this leader asked for a leadership transfer; it holds no
// lease for the rest of the term.
func (n *Node) transferAsked() {
	n.lease.noLeaseTerm = n.rn.BasicStatus().Term
	n.lease.term = 0
}

// readLocally answers a read index request under the lease, on the run
// goroutine: key's reader gets the commit index, or, for a follower's
// request, the follower gets Raft's answer to it. It says whether it
// answered; if not, the request goes through Raft.
func (n *Node) readLocally(from uint64, key []byte) bool {
	now := n.cfg.Mono()
	defer n.renewLease(now)
	if !n.holding(now) {
		return false
	}
	bs := n.rn.BasicStatus()
	if from == n.cfg.ID || from == raft.None {
		n.mu.Lock()
		n.answerRead(key, bs.Commit)
		n.mu.Unlock()
		return true
	}
	n.tr.Send([]pb.Message{{Type: pb.MsgReadIndexResp, To: from, From: n.cfg.ID, Term: bs.Term,
		Index: bs.Commit, Entries: []pb.Entry{{Data: key}}}})
	return true
}

// holdVotes says whether a vote request must go unanswered: until this
// node has counted ElectionTicks ticks since it started, it does not know
// when it last heard from a leader (see the comment at the top).
func (n *Node) holdVotes(m pb.Message) bool {
	if m.Type != pb.MsgVote && m.Type != pb.MsgPreVote || n.cfg.Timing.ReadLease <= 0 {
		return false
	}
	return n.ticks < n.cfg.Timing.ElectionTicks
}
