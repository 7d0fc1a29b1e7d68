package sim

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ddbgo/ddb/internal/peer"
	pb "go.etcd.io/raft/v3/raftpb"
)

// network is the simulated network's state: which links are cut, and how
// it treats the messages that cross it.
type network struct {
	cut      map[[2]uint64]int // (from, to) -> cuts in force
	drop     float64           // a message is lost
	dup      float64           // a message arrives twice
	minDelay time.Duration
	maxDelay time.Duration
}

func newNetwork() network {
	return network{cut: map[[2]uint64]int{}, minDelay: 200 * time.Microsecond, maxDelay: 3 * time.Millisecond}
}

// calm is the network's default behaviour (after "lossy" ends).
func (n *network) calm() {
	c := newNetwork()
	n.drop, n.dup, n.minDelay, n.maxDelay = c.drop, c.dup, c.minDelay, c.maxDelay
}

// isCut says whether messages from a to b are lost.
func (n *network) isCut(a, b uint64) bool { return n.cut[[2]uint64{a, b}] > 0 }

// cutBetween says whether either direction between a and b is cut.
func (n *network) cutBetween(a, b uint64) bool { return n.isCut(a, b) || n.isCut(b, a) }

// transport is a node's consensus.Transport: each message is framed as
// the HTTP transport frames a batch (peer.EncodeFrame, with the leader's
// applied index), and travels on its own.
type transport struct {
	s   *sim
	nd  *node
	inc int
}

func (t transport) Send(msgs []pb.Message) {
	s, nd := t.s, t.nd
	if nd.inc != t.inc || !nd.up {
		return
	}
	applied := nd.n.ReportedApplied()
	for _, m := range msgs {
		if m.Type == pb.MsgSnap {
			s.after(s.delay(), fmt.Sprintf("snapshot-request %d->%d", m.From-1, m.To-1), func() { s.sendSnapshot(nd, t.inc, m) })
			continue
		}
		data, err := peer.EncodeFrame(applied, nd.id, []pb.Message{m})
		if err != nil {
			s.anomaly("node: node %d could not encode %s: %v", nd.i, m.Type, err)
			continue
		}
		desc := fmt.Sprintf("%s %d->%d t%d i%d c%d n%d", m.Type, m.From-1, m.To-1, m.Term, m.Index, m.Commit, len(m.Entries))
		s.transmit(nd, t.inc, m.To, []pb.Message{m}, data, desc)
	}
}

// Report implements consensus.Transport: a frame with the report alone.
func (t transport) Report(to []uint64) {
	s, nd := t.s, t.nd
	if nd.inc != t.inc || !nd.up {
		return
	}
	applied := nd.n.ReportedApplied()
	if applied == 0 {
		return
	}
	for _, id := range to {
		data, _ := peer.EncodeFrame(applied, nd.id, nil)
		s.transmit(nd, t.inc, id, nil, data, fmt.Sprintf("report %d->%d a%d", nd.id-1, id-1, applied))
	}
}

// transmit sends one frame, holding msgs, from nd to the node with Raft
// id id, through the network's faults.
func (s *sim) transmit(nd *node, inc int, id uint64, msgs []pb.Message, data []byte, desc string) {
	to := s.nodes[id-1]
	switch {
	case s.net.isCut(nd.id, to.id):
		return // lost without a word, as in a partition
	case !to.up:
		// The connection is refused: the sender knows it was not
		// delivered.
		s.after(s.delay(), "refused "+desc, func() { s.unreachable(nd, inc, id, msgs) })
		return
	case s.chance(s.net.drop):
		return
	}
	copies := 1
	if s.chance(s.net.dup) {
		copies = 2
	}
	for range copies {
		s.after(s.delay(), desc, func() { s.receive(to, data) })
	}
}

// delay is a message's time on the network.
func (s *sim) delay() time.Duration { return s.between(s.net.minDelay, s.net.maxDelay) }

// receive hands a framed message to node to, as the HTTP handler does: a
// node not admitted yet refuses it.
func (s *sim) receive(to *node, data []byte) {
	if !to.up || !to.admitted {
		return
	}
	report, msgs, err := peer.DecodeFrame(peer.Version, data)
	if err != nil {
		s.anomaly("node: node %d could not decode a message: %v", to.i, err)
		return
	}
	from := report.From
	if len(msgs) > 0 {
		from = msgs[0].From
	}
	if from != 0 && s.net.isCut(from, to.id) {
		return // the link was cut while the message travelled
	}
	if !s.guard(to, "receive", func() { to.n.Receive(report, msgs) }) {
		return
	}
	s.step(to)
}

// unreachable tells the sender that a frame to peer id, holding msgs,
// certainly did not arrive.
func (s *sim) unreachable(nd *node, inc int, id uint64, msgs []pb.Message) {
	if nd.inc != inc || !nd.up {
		return
	}
	s.guard(nd, "unreachable", func() {
		if len(msgs) > 0 {
			nd.n.Undelivered(msgs)
		}
		nd.n.ReportUnreachable(id)
	})
	s.step(nd)
}

// sendSnapshot sends a copy of the leader's database with a snapshot
// message, as the HTTP transport does, and reports how it went.
func (s *sim) sendSnapshot(from *node, inc int, m pb.Message) {
	if from.inc != inc || !from.up {
		return
	}
	// Copies are written beside the databases, as a node writes them in
	// its -dir, so that a follower renames the copy into place (a copy in
	// another directory is written in through the backup API instead).
	dir := s.o.Dir
	var path string
	var out pb.Message
	var err error
	if !s.guard(from, "snapshot", func() { path, out, err = from.n.SnapshotToSend(context.Background(), m, dir) }) {
		return
	}
	report := func(ok bool) {
		if from.inc == inc && from.up {
			s.guard(from, "report snapshot", func() { from.n.ReportSnapshot(m.To, ok) })
			s.step(from)
		}
	}
	if err != nil {
		s.anomaly("node: node %d could not copy its database for a snapshot: %v", from.i, err)
		report(false)
		return
	}
	to := s.nodes[m.To-1]
	s.after(s.between(5*time.Millisecond, 50*time.Millisecond), fmt.Sprintf("snapshot %d->%d i%d", from.i, to.i, out.Snapshot.Metadata.Index), func() {
		ok := to.up && to.admitted && !s.net.cutBetween(from.id, to.id)
		if ok {
			var err error
			ok = s.guard(to, "step snapshot", func() { err = to.n.StepSnapshot(context.Background(), out, path) }) && err == nil
		}
		if !ok {
			os.Remove(path)
		} else {
			s.step(to)
		}
		report(ok)
	})
}

// rpc sends a request from one node to another, as the peer HTTP calls
// do: the handler runs on arrival, and its reply travels back (if the
// links allow) to run reply's function on the caller.
func (s *sim) rpc(from, to *node, what string, handle func(reply func(what string, f func()))) {
	if !to.up || s.net.isCut(from.id, to.id) || s.chance(s.net.drop) {
		return
	}
	inc := from.inc
	s.after(s.delay(), what, func() {
		if !to.up {
			return
		}
		handle(func(what string, f func()) {
			if s.net.isCut(to.id, from.id) || s.chance(s.net.drop) {
				return
			}
			s.after(s.delay(), what, func() {
				if from.inc == inc && from.up {
					f()
				}
			})
		})
	})
}
