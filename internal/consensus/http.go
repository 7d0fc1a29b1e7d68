package consensus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"ddb/internal/cluster"
)

// RaftPath is the HTTP path nodes post Raft messages to.
const RaftPath = "/_ddb/raft"

// maxRaftBody bounds one request of Raft messages.
const maxRaftBody = 64 << 20

// EncodeMessages frames messages for one request: each as its length (a
// uvarint) and its protobuf encoding.
func EncodeMessages(msgs []pb.Message) ([]byte, error) {
	var b []byte
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

// DecodeMessages reverses EncodeMessages.
func DecodeMessages(b []byte) ([]pb.Message, error) {
	var out []pb.Message
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, errors.New("malformed raft message frame")
		}
		var m pb.Message
		if err := m.Unmarshal(b[k : k+int(n)]); err != nil {
			return nil, fmt.Errorf("decode raft message: %w", err)
		}
		out = append(out, m)
		b = b[k+int(n):]
	}
	return out, nil
}

// HTTPTransport sends Raft messages over HTTP, signed with the cluster
// secret: one ordered queue per peer, drained by one goroutine that
// batches whatever is queued into a request. A full queue drops (Raft
// sends again); a peer that cannot be reached is reported to Raft.
type HTTPTransport struct {
	auth   *cluster.Auth
	self   string // this node's name in signatures
	client *http.Client
	logf   func(string, ...any)

	mu          sync.Mutex
	peers       map[uint64]string // id -> base URL
	queues      map[uint64]chan pb.Message
	down        map[uint64]bool // last send failed (logged once per change)
	unreachable func(id uint64)
	stop        chan struct{}
}

// NewHTTPTransport returns a transport; SetUnreachable tells it whom to
// report peers it cannot reach to (the Raft node).
func NewHTTPTransport(auth *cluster.Auth, self string, client *http.Client, logf func(string, ...any)) *HTTPTransport {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &HTTPTransport{auth: auth, self: self, client: client, logf: logf, peers: map[uint64]string{},
		queues: map[uint64]chan pb.Message{}, down: map[uint64]bool{}, stop: make(chan struct{})}
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

// SetUnreachable sets the function told about peers that cannot be reached.
func (t *HTTPTransport) SetUnreachable(f func(id uint64)) {
	t.mu.Lock()
	t.unreachable = f
	t.mu.Unlock()
}

// Close stops the senders.
func (t *HTTPTransport) Close() { close(t.stop) }

// Send implements Transport.
func (t *HTTPTransport) Send(msgs []pb.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		q, ok := t.queues[m.To]
		if !ok {
			q = make(chan pb.Message, 4096)
			t.queues[m.To] = q
			go t.sender(m.To, q)
		}
		select {
		case q <- m:
		default:
		}
	}
}

func (t *HTTPTransport) sender(to uint64, q chan pb.Message) {
	batch := make([]pb.Message, 0, 256)
	for {
		select {
		case m := <-q:
			batch = append(batch[:0], m)
		case <-t.stop:
			return
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case m := <-q:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		err := t.post(to, batch)
		t.mu.Lock()
		changed := t.down[to] != (err != nil)
		t.down[to] = err != nil
		report := t.unreachable
		t.mu.Unlock()
		if err != nil {
			if changed {
				t.logf("raft peer %d: %v", to, err)
			}
			if report != nil {
				report(to)
			}
		} else if changed {
			t.logf("raft peer %d reachable again", to)
		}
	}
}

func (t *HTTPTransport) post(to uint64, msgs []pb.Message) error {
	url := t.Peer(to)
	if url == "" {
		return fmt.Errorf("no address known for node %d", to)
	}
	body, err := EncodeMessages(msgs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+RaftPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	t.auth.Sign(req, t.self, cluster.BodyHash(body))
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

// Handler serves RaftPath: it checks the request's signature and hands
// every message to node.
func Handler(auth *cluster.Auth, node func() *Node, logf func(string, ...any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRaftBody))
		if err != nil {
			http.Error(w, "raft request too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := auth.Verify(r, cluster.BodyHash(body)); err != nil {
			if logf != nil {
				logf("refused raft messages from %s: %v", r.RemoteAddr, err)
			}
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		msgs, err := DecodeMessages(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n := node()
		if n == nil {
			http.Error(w, "this node's consensus is not running", http.StatusServiceUnavailable)
			return
		}
		for _, m := range msgs {
			n.Step(r.Context(), m)
		}
		w.WriteHeader(http.StatusNoContent)
	}
}
