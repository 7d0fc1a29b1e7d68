package peer

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	pb "go.etcd.io/raft/v3/raftpb"
)

// The stream (StreamPath) is where a node sends its Raft
// messages to a peer: one long-lived connection per peer and direction
// instead of an HTTP request per batch. The opening request is signed like
// any peer request and upgrades the connection (101 Switching Protocols).
// Then every batch is a frame: its length (a uvarint), the batch
// (EncodeFrame, of the version the opening request states), and an HMAC-SHA256 of its sequence number and content
// under a key both ends derive from the signed request
// (cluster.Auth.SessionKey), so a frame cannot be forged, altered, replayed
// or reordered. The receiver answers with acknowledgements (the sequence
// number reached, authenticated the same way): a stream whose frames go
// unacknowledged for Timing.StreamAck is closed (a peer paused, or a link
// that drops packets without closing the connection), and the next batch
// opens a new one. A peer that does not know streams (404) gets a request
// per batch, as before.

const streamProtocol = "ddb-raft-stream/1"

const (
	macLen    = sha256.Size
	ackMACLen = 16
)

var errStreamUnsupported = errors.New("the peer does not take streams")

// macer authenticates frames and acknowledgements under one key. It keeps
// its HMAC between uses (the key's setup costs as much as a short frame's
// hash), so each goroutine that authenticates holds its own.
type macer struct {
	h   hash.Hash
	sum []byte
}

func newMacer(key []byte) *macer { return &macer{h: hmac.New(sha256.New, key)} }

// frame is frame seq's MAC; it is valid until the next call.
func (m *macer) frame(seq uint64, payload []byte) []byte {
	m.h.Reset()
	var b [9]byte
	b[0] = 'f'
	binary.BigEndian.PutUint64(b[1:], seq)
	m.h.Write(b[:])
	m.h.Write(payload)
	m.sum = m.h.Sum(m.sum[:0])
	return m.sum
}

// ack is acknowledgement seq's MAC; it is valid until the next call.
func (m *macer) ack(seq uint64) []byte {
	m.h.Reset()
	var b [9]byte
	b[0] = 'a'
	binary.BigEndian.PutUint64(b[1:], seq)
	m.h.Write(b[:])
	m.sum = m.h.Sum(m.sum[:0])
	return m.sum[:ackMACLen]
}

func frameMAC(key []byte, seq uint64, payload []byte) []byte {
	return newMacer(key).frame(seq, payload)
}

func ackMAC(key []byte, seq uint64) []byte { return newMacer(key).ack(seq) }

// outStream is this node's stream of batches to one peer.
type outStream struct {
	t      *RaftTransport
	to     uint64
	url    string // the peer's address when the stream was opened
	rwc    io.ReadWriteCloser
	w      *bufio.Writer
	key    []byte
	cancel context.CancelFunc
	seq    uint64 // frames written (the peer's sender goroutine only)
	// frameMAC authenticates the frames (the sender goroutine only).
	frameMAC *macer
	version  int // the protocol version of the stream's frames

	mu     sync.Mutex
	sent   []time.Time // when each frame after acked was written
	acked  uint64
	closed bool
	done   chan struct{}
}

// openStream opens a stream to peer to.
func (t *RaftTransport) openStream(to uint64) (*outStream, error) {
	url := t.Peer(to)
	if url == "" {
		return nil, fmt.Errorf("node %d: %w", to, errNoAddress)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// A paused peer accepts the connection but never answers (the bound
	// covers the opening, sent again in an earlier version if need be).
	timer := time.AfterFunc(t.c.timing.PeerRequest, cancel)
	req, resp, err := t.c.do(url+StreamPath, func(v int) (*http.Request, error) {
		req, err := t.c.newRequest(ctx, url+StreamPath, v, nil, nil)
		if err == nil {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", streamProtocol)
		}
		return req, err
	})
	if !timer.Stop() && err == nil {
		resp.Body.Close()
		err = errors.New("the stream's opening timed out")
	}
	if err != nil {
		cancel()
		return nil, err
	}
	version, _ := RequestVersion(req)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		if resp.StatusCode == http.StatusForbidden || resp.StatusCode >= 500 {
			return nil, fmt.Errorf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
		}
		return nil, errStreamUnsupported // a node of an earlier version
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		cancel()
		return nil, errStreamUnsupported
	}
	key := t.c.auth.SessionKey(req)
	s := &outStream{t: t, to: to, url: url, rwc: rwc, w: bufio.NewWriterSize(rwc, 64<<10), key: key, frameMAC: newMacer(key), cancel: cancel, version: version, done: make(chan struct{})}
	go s.readAcks(bufio.NewReader(rwc))
	go s.watch()
	return s, nil
}

// send writes one batch as a frame. An error closes the stream; whether
// the peer got the frame is then unknown.
func (s *outStream) send(payload []byte) error {
	s.seq++
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(len(payload)))
	mac := s.frameMAC.frame(s.seq, payload)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("the stream is closed")
	}
	s.sent = append(s.sent, time.Now())
	s.mu.Unlock()
	s.w.Write(hdr[:n])
	s.w.Write(payload)
	s.w.Write(mac)
	if err := s.w.Flush(); err != nil {
		s.close()
		return err
	}
	return nil
}

// readAcks reads the peer's acknowledgements until the stream ends.
func (s *outStream) readAcks(r *bufio.Reader) {
	defer s.close()
	var b [8 + ackMACLen]byte
	acks := newMacer(s.key)
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return
		}
		seq := binary.BigEndian.Uint64(b[:8])
		if !hmac.Equal(b[8:], acks.ack(seq)) {
			s.t.log.Warn("a stream's acknowledgement does not match its key; the stream is closed", "peer", cluster.CommandLineID(s.to))
			return
		}
		now := time.Now()
		s.mu.Lock()
		if seq <= s.acked || seq-s.acked > uint64(len(s.sent)) {
			s.mu.Unlock()
			return // acknowledgements only go forward, to frames sent
		}
		k := seq - s.acked
		var rtt time.Duration
		for _, at := range s.sent[:k] {
			rtt += now.Sub(at)
		}
		s.sent, s.acked = s.sent[k:], seq
		s.mu.Unlock()
		s.t.batches.Add(k)
		s.t.roundTrip.Add(uint64(rtt))
	}
}

// watch closes the stream when a frame goes unacknowledged too long.
func (s *outStream) watch() {
	timeout := s.t.c.timing.StreamAck
	tk := time.NewTicker(timeout / 4)
	defer tk.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-tk.C:
			s.mu.Lock()
			stale := len(s.sent) > 0 && time.Since(s.sent[0]) > timeout
			s.mu.Unlock()
			if stale {
				s.t.log.Warn("a stream's frames went unacknowledged; it is closed", "peer", cluster.CommandLineID(s.to), "after", timeout)
				s.close()
				return
			}
		}
	}
}

func (s *outStream) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *outStream) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.rwc.Close()
	s.cancel()
}

// sendBatch sends one frame to peer to over its stream (opening one if
// need be), or as a request of its own to a peer that takes no streams.
func (t *RaftTransport) sendBatch(to uint64, s **outStream, batch []pb.Message, applied uint64) error {
	t.mu.Lock()
	until, url := t.noStream[to], t.peers[to]
	t.mu.Unlock()
	if time.Now().Before(until) {
		return t.post(to, batch, applied)
	}
	if *s != nil && (*s).url != url {
		(*s).close() // the peer moved: its stream goes to the new address
	}
	if *s == nil || (*s).isClosed() {
		ns, err := t.openStream(to)
		if errors.Is(err, errStreamUnsupported) {
			t.log.Info("peer takes no streams of raft messages (an earlier version?): one request per batch", "peer", cluster.CommandLineID(to), "retry_in", t.c.timing.StreamRetry)
			t.mu.Lock()
			t.noStream[to] = time.Now().Add(t.c.timing.StreamRetry)
			t.mu.Unlock()
			return t.post(to, batch, applied)
		}
		if err != nil {
			return err
		}
		t.log.Debug("stream of raft messages opened", "peer", cluster.CommandLineID(to))
		*s = ns
	}
	body, err := t.frame((*s).version, to, batch, applied)
	if err != nil {
		return err
	}
	if err := (*s).send(body); err != nil {
		*s = nil
		return err
	}
	return nil
}

// streamHandler serves StreamPath: it checks the opening request's
// signature, takes over the connection, and hands every authenticated
// frame's messages to node.
func (t *RaftTransport) streamHandler(node func() RaftNode) http.HandlerFunc {
	// The opening request has no body: its signature covers an empty one.
	upgrade := func(r *http.Request) ([]byte, error) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), streamProtocol) {
			return nil, errors.New("a stream of Raft messages needs Upgrade: " + streamProtocol)
		}
		return nil, nil
	}
	return Serve(t.c.auth, Endpoint{Covered: upgrade, Refused: t.refused("refused a stream of raft messages")}, func(w http.ResponseWriter, r *http.Request, _ []byte, version int) {
		if node() == nil {
			writeError(w, http.StatusServiceUnavailable, "this node's consensus is not running")
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			writeError(w, http.StatusInternalServerError, "this connection cannot carry a stream: "+err.Error())
			return
		}
		conn.SetDeadline(time.Time{}) // the server's request deadlines
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + streamProtocol + "\r\n" + HeaderVersion + ": " + strconv.Itoa(Version) + "\r\n\r\n")
		if err := rw.Flush(); err != nil {
			conn.Close()
			return
		}
		t.mu.Lock()
		select {
		case <-t.stop:
			t.mu.Unlock()
			conn.Close()
			return
		default:
		}
		t.inbound[conn] = struct{}{}
		t.mu.Unlock()
		go func() {
			defer func() {
				t.mu.Lock()
				delete(t.inbound, conn)
				t.mu.Unlock()
				conn.Close()
			}()
			err := serveStream(conn, rw.Reader, t.c.auth.SessionKey(r), version, t.c.timing.StreamIdle, node)
			if err != nil {
				t.log.Warn("a stream of raft messages ended", "from", r.RemoteAddr, "err", err)
			}
		}()
	})
}

// serveStream reads frames until the stream ends. A frame that fails its
// authentication ends the stream (an error); so does one that cannot be
// decoded.
func serveStream(conn net.Conn, r *bufio.Reader, key []byte, version int, idle time.Duration, node func() RaftNode) error {
	var seq uint64
	var buf []byte
	var deadlineSet time.Time
	macs := newMacer(key)
	for {
		if now := time.Now(); now.Sub(deadlineSet) > time.Second {
			conn.SetDeadline(now.Add(idle))
			deadlineSet = now
		}
		size, err := binary.ReadUvarint(r)
		if err != nil {
			return nil // closed, or idle past streamIdle
		}
		if size > MaxFrame {
			return fmt.Errorf("a frame of %d bytes is over the limit of %d", size, MaxFrame)
		}
		if need := int(size) + macLen; cap(buf) < need {
			buf = make([]byte, need)
		}
		frame := buf[:int(size)+macLen]
		if _, err := io.ReadFull(r, frame); err != nil {
			return nil
		}
		seq++
		payload := frame[:size]
		if !hmac.Equal(frame[size:], macs.frame(seq, payload)) {
			return errors.New("a frame does not match its authentication (altered, replayed or reordered); the stream is closed")
		}
		report, msgs, err := DecodeFrame(version, payload)
		if err != nil {
			return err
		}
		n := node()
		if n == nil {
			return errors.New("this node's consensus stopped")
		}
		n.Receive(report, msgs)
		if r.Buffered() == 0 {
			// Acknowledge what arrived; frames already waiting are
			// acknowledged together after them.
			var ack [8 + ackMACLen]byte
			binary.BigEndian.PutUint64(ack[:8], seq)
			copy(ack[8:], macs.ack(seq))
			if _, err := conn.Write(ack[:]); err != nil {
				return nil
			}
		}
	}
}
