package consensus

import (
	"context"
	"os"
	"sync"

	pb "go.etcd.io/raft/v3/raftpb"
)

// MemNetwork connects nodes in one process, for tests: every node has an
// ordered inbox, and links can be cut and healed.
type MemNetwork struct {
	// Dir is where snapshots are copied on their way (default: the
	// system's temporary directory).
	Dir string

	mu    sync.Mutex
	nodes map[uint64]*Node
	inbox map[uint64]chan memMessage
	cut   map[[2]uint64]bool
	// copies, when set, says how many times a message node from sends is
	// delivered (0: it is lost, 2: it arrives twice).
	copies func(from uint64, m pb.Message) int

	// flight counts the messages in inboxes that have not reached their
	// node's queue yet (see Quiet).
	fmu    sync.Mutex
	flight int
	puts   int64 // messages ever put in an inbox
	quiet  *sync.Cond
}

// SetCopies makes f decide how many times each message is delivered (nil:
// once).
func (m *MemNetwork) SetCopies(f func(from uint64, m pb.Message) int) {
	m.mu.Lock()
	m.copies = f
	m.mu.Unlock()
}

// memMessage is a message, with what its sender has applied if it leads
// (as the HTTP transport reports it); a report alone has no message.
type memMessage struct {
	m             pb.Message
	from          uint64
	leaderApplied uint64
	reportOnly    bool
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	m := &MemNetwork{nodes: map[uint64]*Node{}, inbox: map[uint64]chan memMessage{}, cut: map[[2]uint64]bool{}}
	m.quiet = sync.NewCond(&m.fmu)
	return m
}

// put puts msg in inbox in, unless it is full (the caller holds m.mu).
func (m *MemNetwork) put(in chan memMessage, msg memMessage) bool {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	select {
	case in <- msg:
		m.flight++
		m.puts++
		return true
	default: // a full inbox drops, as a congested network would
		return false
	}
}

// landed counts a message that reached its node's queue (or a node that
// had stopped).
func (m *MemNetwork) landed() {
	m.fmu.Lock()
	if m.flight--; m.flight == 0 {
		m.quiet.Broadcast()
	}
	m.fmu.Unlock()
}

// Quiet waits until every message sent so far has reached its node's
// queue (Raft's loop takes it in its next step), and returns how many
// messages were ever sent (a node that sends one after the call counts it).
func (m *MemNetwork) Quiet() (sent int64) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	for m.flight > 0 {
		m.quiet.Wait()
	}
	return m.puts
}

// Transport returns the transport node id sends through.
func (m *MemNetwork) Transport(id uint64) Transport { return memTransport{m: m, from: id} }

// Attach delivers messages for id to n (nil detaches: the node is down).
func (m *MemNetwork) Attach(id uint64, n *Node) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.inbox[id]; ok {
		close(old)
		delete(m.inbox, id)
	}
	delete(m.nodes, id)
	if n == nil {
		return
	}
	in := make(chan memMessage, 4096)
	m.nodes[id], m.inbox[id] = n, in
	go func() {
		for msg := range in {
			if msg.leaderApplied > 0 {
				n.NoteLeaderApplied(msg.from, msg.leaderApplied)
			}
			if !msg.reportOnly {
				n.Queue(context.Background(), msg.m)
			}
			m.landed()
		}
	}()
}

// Cut drops every message between a and b, both ways, until Heal.
func (m *MemNetwork) Cut(a, b uint64) {
	m.mu.Lock()
	m.cut[[2]uint64{a, b}], m.cut[[2]uint64{b, a}] = true, true
	m.mu.Unlock()
}

// Heal restores every link.
func (m *MemNetwork) Heal() {
	m.mu.Lock()
	clear(m.cut)
	m.mu.Unlock()
}

type memTransport struct {
	m    *MemNetwork
	from uint64
}

func (t memTransport) Send(msgs []pb.Message) {
	t.m.mu.Lock()
	defer t.m.mu.Unlock()
	var applied uint64
	if n := t.m.nodes[t.from]; n != nil {
		applied = n.ReportedApplied()
	}
	for _, msg := range msgs {
		if msg.Type == pb.MsgSnap {
			if n := t.m.nodes[t.from]; n != nil {
				go t.sendSnapshot(n, msg)
			}
			continue
		}
		in, ok := t.m.inbox[msg.To]
		if !ok || t.m.cut[[2]uint64{t.from, msg.To}] {
			t.undelivered(msg) // the connection would be refused
			continue
		}
		copies := 1
		if t.m.copies != nil {
			copies = t.m.copies(t.from, msg)
		}
		delivered := 0
		for range copies {
			if t.m.put(in, memMessage{m: msg, from: t.from, leaderApplied: applied}) {
				delivered++
			}
		}
		if delivered == 0 && copies > 0 {
			t.undelivered(msg)
		}
	}
}

// Report implements Transport.
func (t memTransport) Report(to []uint64) {
	t.m.mu.Lock()
	defer t.m.mu.Unlock()
	n := t.m.nodes[t.from]
	if n == nil {
		return
	}
	applied := n.ReportedApplied()
	if applied == 0 {
		return
	}
	for _, id := range to {
		if in, ok := t.m.inbox[id]; ok && !t.m.cut[[2]uint64{t.from, id}] {
			t.m.put(in, memMessage{from: t.from, leaderApplied: applied, reportOnly: true})
		}
	}
}

// undelivered tells the sender that msg certainly did not arrive, as the
// HTTP transport does when a connection is refused (the caller holds t.m.mu).
func (t memTransport) undelivered(msg pb.Message) {
	if n := t.m.nodes[t.from]; n != nil {
		n.Undelivered([]pb.Message{msg})
	}
}

// sendSnapshot sends a copy of the sender's database with the snapshot
// message, as the HTTP transport does.
func (t memTransport) sendSnapshot(from *Node, msg pb.Message) {
	dir := t.m.Dir
	if dir == "" {
		dir = os.TempDir()
	}
	path, out, err := from.SnapshotToSend(context.Background(), msg, dir)
	if err != nil {
		from.ReportSnapshot(msg.To, false)
		return
	}
	out.Snapshot.Data = []byte(path)
	t.m.mu.Lock()
	in, ok := t.m.inbox[msg.To]
	ok = ok && !t.m.cut[[2]uint64{t.from, msg.To}] && t.m.put(in, memMessage{m: out})
	t.m.mu.Unlock()
	if !ok {
		os.Remove(path)
	}
	from.ReportSnapshot(msg.To, ok)
}
