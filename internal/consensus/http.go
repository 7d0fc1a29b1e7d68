package consensus

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
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

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
)

// maxRaftBody bounds one request (or frame) of Raft messages; a sender's
// batches stay under maxBatchBytes, plus one message (at most Raft's
// MaxSizePerMsg, 1 MiB, unless one entry alone is larger).
const (
	maxRaftBody   = 64 << 20
	maxBatchBytes = 8 << 20
)

// EncodeMessages frames messages for one request: each as its length (a
// uvarint) and its protobuf encoding. A leader's request starts with what
// it has applied (leaderApplied; 0 from other nodes), as a message of a
// type Raft never takes from the network (MsgHup) marked appliedMarker: a
// node of an earlier version hands it to Raft, which ignores it.
func EncodeMessages(leaderApplied uint64, msgs []pb.Message) ([]byte, error) {
	var b []byte
	if leaderApplied > 0 && len(msgs) > 0 {
		msgs = append([]pb.Message{appliedReport(msgs[0].From, msgs[0].To, leaderApplied)}, msgs...)
	}
	for _, m := range msgs {
		data, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		b = binary.AppendUvarint(b, uint64(len(data)))
		b = append(b, data...)
	}
	return b, nil
}

var appliedMarker = []byte("ddb:leader-applied")

// DecodeMessages reverses EncodeMessages: the messages, and the highest
// applied index a leader reported in them, with the reporting node.
func DecodeMessages(b []byte) (report Report, msgs []pb.Message, err error) {
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return report, nil, errors.New("malformed raft message frame")
		}
		var m pb.Message
		if err := m.Unmarshal(b[k : k+int(n)]); err != nil {
			return report, nil, fmt.Errorf("decode raft message: %w", err)
		}
		b = b[k+int(n):]
		if isAppliedReport(m) {
			if m.Index > report.Applied {
				report = Report{From: m.From, Applied: m.Index}
			}
			continue
		}
		msgs = append(msgs, m)
	}
	return report, msgs, nil
}

// Report is a leader's report of the index it has applied (see
// Node.WaitLeaderApplied); the zero Report reports nothing.
type Report struct {
	From, Applied uint64
}

// HTTPTransport sends Raft messages over HTTP, signed with the cluster
// secret: one ordered queue per peer, drained by one goroutine that
// batches whatever is queued into a request. A full queue drops (Raft
// sends again); a peer that cannot be reached is reported to Raft.
type HTTPTransport struct {
	auth   *cluster.Auth
	self   string // this node's name in signatures
	client *http.Client
	log    *slog.Logger

	mu          sync.Mutex
	peers       map[uint64]string // id -> base URL
	queues      map[uint64]chan pb.Message
	down        map[uint64]bool // last send failed (logged once per change)
	unreachable func(id uint64)
	stop        chan struct{}
	node        *Node                 // for snapshots: the node whose database is copied
	snapDir     string                // where snapshot copies are written
	sending     map[uint64]bool       // a snapshot to this peer is on its way
	noStream    map[uint64]time.Time  // peers that take no streams, until then
	inbound     map[net.Conn]struct{} // streams from peers (see replication.StreamPath)

	// Batches of messages sent, and their round trips summed (nanoseconds).
	batches   atomic.Uint64
	roundTrip atomic.Uint64
}

// discard is a logger that logs nothing.
var discard = slog.New(slog.DiscardHandler)

// SendStats are the batches of Raft messages sent and their round trips
// summed, in seconds.
func (t *HTTPTransport) SendStats() (batches uint64, seconds float64) {
	return t.batches.Load(), float64(t.roundTrip.Load()) / 1e9
}

// NewHTTPTransport returns a transport; SetUnreachable tells it whom to
// report peers it cannot reach to (the Raft node).
func NewHTTPTransport(auth *cluster.Auth, self string, client *http.Client, log *slog.Logger) *HTTPTransport {
	if log == nil {
		log = discard
	}
	return &HTTPTransport{auth: auth, self: self, client: client, log: log, peers: map[uint64]string{},
		queues: map[uint64]chan pb.Message{}, down: map[uint64]bool{}, stop: make(chan struct{}), sending: map[uint64]bool{},
		noStream: map[uint64]time.Time{}, inbound: map[net.Conn]struct{}{}}
}

// SetPeer records (or moves) peer id's base URL.
func (t *HTTPTransport) SetPeer(id uint64, url string) {
	t.mu.Lock()
	t.peers[id] = url
	t.mu.Unlock()
}

// Peer is peer id's base URL ("" if unknown).
func (t *HTTPTransport) Peer(id uint64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peers[id]
}

// Peers is every peer's URL, by Raft id.
func (t *HTTPTransport) Peers() map[uint64]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.peers)
}

// SetUnreachable sets the function told about peers that cannot be reached.
func (t *HTTPTransport) SetUnreachable(f func(id uint64)) {
	t.mu.Lock()
	t.unreachable = f
	t.mu.Unlock()
}

// SetSnapshots lets the transport send snapshots of node's database,
// copied to files in dir.
func (t *HTTPTransport) SetSnapshots(node *Node, dir string) {
	t.mu.Lock()
	t.node, t.snapDir = node, dir
	t.mu.Unlock()
}

// Close stops the senders and closes the streams from peers.
func (t *HTTPTransport) Close() {
	t.mu.Lock()
	close(t.stop)
	for c := range t.inbound {
		c.Close()
	}
	t.mu.Unlock()
}

// Send implements Transport.
func (t *HTTPTransport) Send(msgs []pb.Message) {
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
		q, ok := t.queues[m.To]
		if !ok {
			q = make(chan pb.Message, 4096)
			t.queues[m.To] = q
			go t.sender(m.To, q)
		}
		select {
		case q <- m:
		default:
			t.undelivered([]pb.Message{m})
		}
	}
}

// undelivered tells the node about messages that certainly never reached
// their peer (see Node.Undelivered). The caller holds t.mu.
func (t *HTTPTransport) undelivered(msgs []pb.Message) {
	if t.node != nil {
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

func (t *HTTPTransport) sender(to uint64, q chan pb.Message) {
	batch := make([]pb.Message, 0, 256)
	var stream *outStream
	defer func() {
		if stream != nil {
			stream.close()
		}
	}()
	for {
		select {
		case m := <-q:
			batch = append(batch[:0], m)
		case <-t.stop:
			return
		}
		// A batch stops at 256 messages or maxBatchBytes (a follower being
		// caught up gets appends of up to 1 MiB each).
		size := batch[0].Size()
	fill:
		for len(batch) < cap(batch) && size < maxBatchBytes {
			select {
			case m := <-q:
				batch = append(batch, m)
				size += m.Size()
			default:
				break fill
			}
		}
		err := t.sendBatch(to, &stream, batch)
		if err != nil && notSent(err) {
			t.mu.Lock()
			t.undelivered(batch)
			t.mu.Unlock()
		}
		t.mu.Lock()
		changed := t.down[to] != (err != nil)
		t.down[to] = err != nil
		report := t.unreachable
		t.mu.Unlock()
		if err != nil {
			if changed {
				t.log.Warn("peer unreachable", "peer", int(to)-1, "err", err)
			}
			if report != nil {
				report(to)
			}
		} else if changed {
			t.log.Info("peer reachable again", "peer", int(to)-1)
		}
	}
}

func (t *HTTPTransport) post(to uint64, msgs []pb.Message) error {
	url := t.Peer(to)
	if url == "" {
		return fmt.Errorf("node %d: %w", to, errNoAddress)
	}
	body, err := EncodeMessages(t.leaderApplied(), msgs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+replication.RaftPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	t.auth.Sign(req, t.self, cluster.BodyHash(body))
	start := time.Now()
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	t.batches.Add(1)
	t.roundTrip.Add(uint64(time.Since(start)))
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

// leaderApplied is what this node's messages report (Node.ReportedApplied).
func (t *HTTPTransport) leaderApplied() uint64 {
	t.mu.Lock()
	n := t.node
	t.mu.Unlock()
	if n == nil {
		return 0
	}
	return n.ReportedApplied()
}

// Handler serves replication.RaftPath: it checks the request's signature and hands
// every message to node.
func Handler(auth *cluster.Auth, node func() *Node, log *slog.Logger) http.HandlerFunc {
	if log == nil {
		log = discard
	}
	return auth.PeerEndpoint(cluster.Endpoint{MaxBody: maxRaftBody, Refused: refused(log, "refused raft messages")}, func(w http.ResponseWriter, r *http.Request, body []byte) {
		report, msgs, err := DecodeMessages(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n := node()
		if n == nil {
			http.Error(w, "this node's consensus is not running", http.StatusServiceUnavailable)
			return
		}
		n.Receive(report, msgs)
		w.WriteHeader(http.StatusNoContent)
	})
}

// refused logs a request refused for its signature.
func refused(log *slog.Logger, what string) func(r *http.Request, err error) {
	return func(r *http.Request, err error) { log.Warn(what, "from", r.RemoteAddr, "err", err) }
}

// Headers of a snapshot request: the Raft message (base64) and the
// SHA-256 of the database copy that is the body (hex). The signature
// covers both, so the receiver checks who sent the request before it
// reads the body, and checks the body against the signed hash as it
// arrives. A transfer may take as long as it needs: only its start is
// within the signature's time window.
const (
	headerRaftMessage    = "X-Ddb-Raft-Message"
	headerSnapshotSHA256 = "X-Ddb-Snapshot-Sha256"
)

func snapshotSigned(msg []byte, sum string) []byte { // what a snapshot request's signature covers
	return append(append([]byte(nil), msg...), sum...)
}

// sendSnapshot copies the node's database and streams it to m.To with
// the message describing it, then tells Raft whether it arrived.
func (t *HTTPTransport) sendSnapshot(m pb.Message) {
	t.mu.Lock()
	node, dir := t.node, t.snapDir
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.sending, m.To)
		t.mu.Unlock()
	}()
	err := t.streamSnapshot(node, dir, m)
	if err != nil {
		t.log.Warn("snapshot not sent", "to", int(m.To)-1, "err", err)
	}
	node.ReportSnapshot(m.To, err == nil)
}

func (t *HTTPTransport) streamSnapshot(node *Node, dir string, m pb.Message) error {
	url := t.Peer(m.To)
	if url == "" {
		return fmt.Errorf("no address known for node %d", m.To)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Hour)
	defer cancel()
	path, out, err := node.SnapshotToSend(ctx, m, dir)
	if err != nil {
		return fmt.Errorf("copy the database: %w", err)
	}
	defer removeFile(path)
	f, size, sum, err := cluster.OpenHashed(path)
	if err != nil {
		return err
	}
	defer f.Close()
	msg, err := out.Marshal()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+replication.SnapshotPath, f)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(headerRaftMessage, base64.StdEncoding.EncodeToString(msg))
	req.Header.Set(headerSnapshotSHA256, sum)
	t.auth.Sign(req, t.self, cluster.BodyHash(snapshotSigned(msg, sum)))
	t.log.Info("sending a snapshot", "to", int(m.To)-1, "index", out.Snapshot.Metadata.Index, "bytes", size)
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("%s answered %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// SnapshotHandler serves replication.SnapshotPath: it checks the signature over the
// message and the body's hash before reading the body, receives the body
// into a file in dir (at most maxBytes), checks it against the signed
// hash, and hands the message to the node, which installs the copy.
func SnapshotHandler(auth *cluster.Auth, node func() *Node, dir string, maxBytes int64, log *slog.Logger) http.HandlerFunc {
	if log == nil {
		log = discard
	}
	covered := func(r *http.Request) ([]byte, error) {
		msg, err := base64.StdEncoding.DecodeString(r.Header.Get(headerRaftMessage))
		sum := r.Header.Get(headerSnapshotSHA256)
		if err != nil || len(sum) != 64 {
			return nil, errors.New("a snapshot request needs its message and hash headers")
		}
		return snapshotSigned(msg, sum), nil
	}
	return auth.PeerEndpoint(cluster.Endpoint{Covered: covered, Refused: refused(log, "refused a snapshot")}, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		msg, _ := base64.StdEncoding.DecodeString(r.Header.Get(headerRaftMessage))
		sum := r.Header.Get(headerSnapshotSHA256)
		if r.ContentLength > maxBytes {
			http.Error(w, fmt.Sprintf("snapshot of %d bytes is over this node's limit of %d", r.ContentLength, maxBytes), http.StatusRequestEntityTooLarge)
			return
		}
		var m pb.Message
		if err := m.Unmarshal(msg); err != nil || m.Type != pb.MsgSnap || m.Snapshot == nil {
			http.Error(w, "the message is not a snapshot", http.StatusBadRequest)
			return
		}
		n := node()
		if n == nil {
			http.Error(w, "this node's consensus is not running", http.StatusServiceUnavailable)
			return
		}
		path, err := cluster.ReceiveFile(r.Body, dir, "raft-snapshot-*.db", maxBytes, sum)
		if err != nil {
			err = fmt.Errorf("the snapshot: %w", err)
			log.Warn("snapshot not installed", "from", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := n.StepSnapshot(r.Context(), m, path); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
