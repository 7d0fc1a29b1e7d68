package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	pb "go.etcd.io/raft/v3/raftpb"
)

// RaftNode is what the Raft transport needs of the local Raft node
// (consensus.Node): where received messages go, what its messages report,
// and whom to tell about messages and snapshots that did not arrive.
type RaftNode interface {
	// Receive takes messages from a peer, with the report their frame
	// carried.
	Receive(report Report, msgs []pb.Message)
	// ReportedApplied is what this node's frames report (0: it does not
	// lead).
	ReportedApplied() uint64
	// Undelivered is told of messages that certainly never reached their
	// peer; ReportUnreachable of a peer that could not be reached.
	Undelivered(msgs []pb.Message)
	ReportUnreachable(id uint64)
	// SnapshotSource is the database to send for snapshot message m (a
	// copy may be written in dir), with the message to send; the caller
	// closes it.
	SnapshotSource(ctx context.Context, m pb.Message, dir string) (src cluster.SnapshotSource, out pb.Message, err error)
	// ReportSnapshot says whether a snapshot reached peer id.
	ReportSnapshot(id uint64, ok bool)
	// StepSnapshot installs a received snapshot (m, the copy at path).
	StepSnapshot(ctx context.Context, m pb.Message, path string) error
}

// RaftTransport sends Raft messages to the other nodes: one ordered queue
// per peer, drained by one goroutine that batches whatever is queued into
// one frame, sent over the peer's stream (or, to a peer that takes no
// streams, as a request). A full queue drops (Raft sends again); a peer
// that cannot be reached is reported to Raft. It also serves the Raft
// endpoints (Handlers).
type RaftTransport struct {
	c   *Client
	log *slog.Logger

	mu       sync.Mutex
	self     uint64   // this node's Raft id
	node     RaftNode // nil until SetNode
	snapDir  string   // where snapshot copies are written
	peers    map[uint64]string
	queues   map[uint64]*outQueue
	down     map[uint64]bool // last send failed (logged once per change)
	stop     chan struct{}
	sending  map[uint64]bool       // a snapshot to this peer is on its way
	noStream map[uint64]time.Time  // peers that take no streams, until then
	inbound  map[net.Conn]struct{} // streams from peers (see StreamPath)

	// Batches of messages sent, and their round trips summed (nanoseconds).
	batches   atomic.Uint64
	roundTrip atomic.Uint64
}

// outQueue is what waits to go to one peer: messages, and whether a frame
// must go even without any (a leader's report of what it applied).
type outQueue struct {
	msgs   chan pb.Message
	report chan struct{} // 1-buffered
}

// discard is a logger that logs nothing.
var discard = slog.New(slog.DiscardHandler)

// NewRaftTransport returns a transport that sends through c; SetNode tells
// it which node it serves.
func NewRaftTransport(c *Client, log *slog.Logger) *RaftTransport {
	if log == nil {
		log = discard
	}
	return &RaftTransport{c: c, log: log, peers: map[uint64]string{},
		queues: map[uint64]*outQueue{}, down: map[uint64]bool{}, stop: make(chan struct{}), sending: map[uint64]bool{},
		noStream: map[uint64]time.Time{}, inbound: map[net.Conn]struct{}{}}
}

// SetNode sets the Raft node the transport serves (Raft id self), and the
// directory snapshots of its database are copied to on their way out.
func (t *RaftTransport) SetNode(self uint64, n RaftNode, snapDir string) {
	t.mu.Lock()
	t.self, t.node, t.snapDir = self, n, snapDir
	t.mu.Unlock()
}

// SendStats are the batches of Raft messages sent and their round trips
// summed, in seconds.
func (t *RaftTransport) SendStats() (batches uint64, seconds float64) {
	return t.batches.Load(), float64(t.roundTrip.Load()) / 1e9
}

// SetPeer records (or moves) peer id's base URL.
func (t *RaftTransport) SetPeer(id uint64, url string) {
	t.mu.Lock()
	t.peers[id] = url
	t.mu.Unlock()
}

// Peer is peer id's base URL ("" if unknown).
func (t *RaftTransport) Peer(id uint64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peers[id]
}

// Peers is every peer's URL, by Raft id.
func (t *RaftTransport) Peers() map[uint64]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.peers)
}

// Close stops the senders and closes the streams from peers.
func (t *RaftTransport) Close() {
	t.mu.Lock()
	close(t.stop)
	for c := range t.inbound {
		c.Close()
	}
	t.mu.Unlock()
}

// queue is peer to's queue, its sender started with it. The caller holds
// t.mu.
func (t *RaftTransport) queue(to uint64) *outQueue {
	q, ok := t.queues[to]
	if !ok {
		q = &outQueue{msgs: make(chan pb.Message, 4096), report: make(chan struct{}, 1)}
		t.queues[to] = q
		go t.sender(to, q)
	}
	return q
}

// Send implements consensus.Transport.
func (t *RaftTransport) Send(msgs []pb.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		if m.Type == pb.MsgSnap {
			if t.node != nil && !t.sending[m.To] {
				t.sending[m.To] = true
				go t.sendSnapshot(m)
			}
			continue
		}
		select {
		case t.queue(m.To).msgs <- m:
		default:
			t.undelivered([]pb.Message{m})
		}
	}
}

// Report implements consensus.Transport: each of to gets a frame with
// what this node reports, with messages or without.
func (t *RaftTransport) Report(to []uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range to {
		select {
		case t.queue(id).report <- struct{}{}:
		default: // one is already due
		}
	}
}

// undelivered tells the node about messages that certainly never reached
// their peer. The caller holds t.mu.
func (t *RaftTransport) undelivered(msgs []pb.Message) {
	if t.node != nil && len(msgs) > 0 {
		t.node.Undelivered(msgs)
	}
}

// notSent says whether a request's error means it never left this node:
// the connection could not be made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.Is(err, errNoAddress) || (errors.As(err, &op) && op.Op == "dial")
}

var errNoAddress = errors.New("no address known for the node")

func (t *RaftTransport) sender(to uint64, q *outQueue) {
	batch := make([]pb.Message, 0, 256)
	var stream *outStream
	defer func() {
		if stream != nil {
			stream.close()
		}
	}()
	for {
		batch = batch[:0]
		select {
		case m := <-q.msgs:
			batch = append(batch, m)
		case <-q.report:
		case <-t.stop:
			return
		}
		// A batch stops at 256 messages or maxBatchBytes (a follower being
		// caught up gets appends of up to 1 MiB each).
		size := 0
		if len(batch) > 0 {
			size = batch[0].Size()
		}
	fill:
		for len(batch) < cap(batch) && size < maxBatchBytes {
			select {
			case m := <-q.msgs:
				batch = append(batch, m)
				size += m.Size()
			default:
				break fill
			}
		}
		select {
		case <-q.report: // this frame carries it
		default:
		}
		applied := t.reported()
		if applied == 0 && len(batch) == 0 {
			continue // a report was due, but this node no longer leads
		}
		err := t.sendBatch(to, &stream, batch, applied)
		if err != nil && notSent(err) {
			t.mu.Lock()
			t.undelivered(batch)
			t.mu.Unlock()
		}
		t.mu.Lock()
		changed := t.down[to] != (err != nil)
		t.down[to] = err != nil
		node := t.node
		t.mu.Unlock()
		if err != nil {
			if changed {
				t.log.Warn("peer unreachable", "peer", cluster.CommandLineID(to), "err", err)
			}
			if node != nil {
				node.ReportUnreachable(to)
			}
		} else if changed {
			t.log.Info("peer reachable again", "peer", cluster.CommandLineID(to))
		}
	}
}

// reported is what this node's frames report (0: nothing).
func (t *RaftTransport) reported() uint64 {
	t.mu.Lock()
	n := t.node
	t.mu.Unlock()
	if n == nil {
		return 0
	}
	return n.ReportedApplied()
}

// frame encodes a batch to peer to, in version v, with the report applied.
func (t *RaftTransport) frame(v int, to uint64, batch []pb.Message, applied uint64) ([]byte, error) {
	t.mu.Lock()
	self := t.self
	t.mu.Unlock()
	return encodeFrame(v, applied, self, to, batch)
}

// post sends one frame as a request of its own.
func (t *RaftTransport) post(to uint64, batch []pb.Message, applied uint64) error {
	url := t.Peer(to)
	if url == "" {
		return fmt.Errorf("node %d: %w", to, errNoAddress)
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.c.timing.PeerRequest)
	defer cancel()
	start := time.Now()
	_, resp, err := t.c.do(url+RaftPath, func(v int) (*http.Request, error) {
		body, err := t.frame(v, to, batch, applied)
		if err != nil {
			return nil, err
		}
		req, err := t.c.newRequest(ctx, url+RaftPath, v, bytes.NewReader(body), body)
		if err == nil {
			req.Header.Set("Content-Type", "application/octet-stream")
		}
		return req, err
	})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("%s answered %s: %s", url, resp.Status, answerError(resp).msg)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	t.batches.Add(1)
	t.roundTrip.Add(uint64(time.Since(start)))
	return nil
}

// Handlers are the Raft endpoints, by path: batches of messages, the
// streams of them other nodes open, and the snapshots a leader streams to
// this node (installed from files in dir, at most maxSnapshot bytes).
// node is the Raft node once it takes messages (nil before: the
// endpoints answer 503).
func (t *RaftTransport) Handlers(node func() RaftNode, dir string, maxSnapshot int64) map[string]http.Handler {
	return map[string]http.Handler{
		RaftPath:     t.raftHandler(node),
		StreamPath:   t.streamHandler(node),
		SnapshotPath: t.snapshotHandler(node, dir, maxSnapshot),
	}
}

// raftHandler serves RaftPath: one frame of messages.
func (t *RaftTransport) raftHandler(node func() RaftNode) http.HandlerFunc {
	return Serve(t.c.auth, Endpoint{MaxBody: MaxFrame, Refused: t.refused("refused raft messages")}, func(w http.ResponseWriter, r *http.Request, body []byte, version int) {
		report, msgs, err := DecodeFrame(version, body)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		n := node()
		if n == nil {
			writeError(w, http.StatusServiceUnavailable, "this node's consensus is not running")
			return
		}
		n.Receive(report, msgs)
		w.WriteHeader(http.StatusNoContent)
	})
}

// refused logs a request refused for its signature.
func (t *RaftTransport) refused(what string) func(r *http.Request, err error) {
	return func(r *http.Request, err error) { t.log.Warn(what, "from", r.RemoteAddr, "err", err) }
}
