package peer

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
)

// fakeNode is a Raft node that records what it receives.
type fakeNode struct {
	mu      sync.Mutex
	msgs    []pb.Message
	reports []Report
	applied uint64 // what it reports
}

func (f *fakeNode) Receive(report Report, msgs []pb.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, msgs...)
	if report.Applied > 0 {
		f.reports = append(f.reports, report)
	}
}
func (f *fakeNode) received() []pb.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]pb.Message(nil), f.msgs...)
}
func (f *fakeNode) lastReport() Report {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reports) == 0 {
		return Report{}
	}
	return f.reports[len(f.reports)-1]
}
func (f *fakeNode) ReportedApplied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}
func (f *fakeNode) Undelivered([]pb.Message) {}
func (f *fakeNode) ReportUnreachable(uint64) {}
func (f *fakeNode) SnapshotSource(context.Context, pb.Message, string) (cluster.SnapshotSource, pb.Message, error) {
	return nil, pb.Message{}, io.EOF
}
func (f *fakeNode) ReportSnapshot(uint64, bool)                            {}
func (f *fakeNode) StepSnapshot(context.Context, pb.Message, string) error { return nil }

func newTestTransport(auth *cluster.Auth, name string) *RaftTransport {
	return NewRaftTransport(NewClientOver(http.DefaultClient, auth, name, cluster.DefaultTiming()), nil)
}

// A frame carries its messages and its sender's report whole, in this
// version and in the one before (which an earlier node sends and reads);
// a truncated frame does not decode.
func TestMessagesSurviveTheirFraming(t *testing.T) {
	msgs := []pb.Message{
		{Type: pb.MsgApp, To: 2, From: 1, Term: 3, Index: 7, Entries: []pb.Entry{{Index: 8, Term: 3, Data: []byte("x")}}},
		{Type: pb.MsgHeartbeat, To: 2, From: 1, Term: 3},
	}
	for _, v := range []int{1, Version} {
		for _, applied := range []uint64{0, 1, 300, math.MaxUint64} {
			for _, batch := range [][]pb.Message{msgs, nil} {
				if applied == 0 && batch == nil {
					continue
				}
				b, err := encodeFrame(v, applied, 1, 2, batch)
				if err != nil {
					t.Fatal(err)
				}
				report, got, err := DecodeFrame(v, b)
				if err != nil || !reflect.DeepEqual(got, batch) || report.Applied != applied || applied > 0 && report.From != 1 {
					t.Fatalf("version %d, applied %d, %d messages: decoded %+v %v, %v", v, applied, len(batch), report, got, err)
				}
				if len(b) > 1 {
					if _, _, err := DecodeFrame(v, b[:len(b)-1]); err == nil {
						t.Fatalf("version %d, applied %d: a truncated frame decoded", v, applied)
					}
				}
			}
		}
	}
	// A node of version 1 reads a version-1 frame's report as a message
	// of its own, of a type Raft refuses from the network.
	b, _ := encodeFrame(1, 42, 1, 2, msgs)
	var old []pb.Message
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		var m pb.Message
		if k <= 0 || n > uint64(len(b)-k) || m.Unmarshal(b[k:k+int(n)]) != nil {
			t.Fatal("an earlier version cannot read the frames")
		}
		old, b = append(old, m), b[k+int(n):]
	}
	if len(old) != 3 || !raft.IsLocalMsg(old[0].Type) || !reflect.DeepEqual(old[1:], msgs) {
		t.Fatalf("an earlier version reads %v", old)
	}
}

// oldNode is a node of version 1, as the previous build serves Raft
// messages: its signatures do not cover the version, so it refuses a
// request signed in a later version as forged (403), stating its own
// version in the answer, as on every answer; it reads frames of its
// version.
func oldNode(t *testing.T, auth *cluster.Auth, node *fakeNode) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderVersion, "1")
		body, _ := io.ReadAll(r.Body)
		v1 := r.Clone(r.Context())
		v1.Header.Del(HeaderVersion) // (its signature does not cover the header)
		if err := auth.Verify(v1, cluster.BodyHash(body)); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		if v, _ := RequestVersion(r); v > 1 {
			http.Error(w, "the node speaks node-to-node protocol "+strconv.Itoa(v)+", this one 1", http.StatusBadRequest)
			return
		}
		if r.URL.Path != RaftPath {
			http.NotFound(w, r) // (no streams: every batch a request)
			return
		}
		report, msgs, err := DecodeFrame(1, body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		node.Receive(report, msgs)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// In a rolling upgrade, a node speaks to a node of the version before in
// that version: refused once for its own, it sends again in the peer's,
// and goes on in it; once the peer answers in this version, so does it.
// Its report reaches the old node too.
func TestANodeSpeaksToAnEarlierVersionInIts(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	old := &fakeNode{}
	srv := oldNode(t, auth, old)
	tr := newTestTransport(auth, "node1")
	defer tr.Close()
	self := &fakeNode{applied: 77}
	tr.SetNode(1, self, t.TempDir())
	tr.SetPeer(2, srv.URL)
	tr.Send([]pb.Message{{Type: pb.MsgHeartbeat, To: 2, From: 1, Term: 5}})
	for deadline := time.Now().Add(10 * time.Second); len(old.received()) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the message never reached the node of the earlier version")
		}
	}
	if got := old.received(); len(got) != 1 || got[0].Term != 5 || got[0].Type != pb.MsgHeartbeat {
		t.Fatalf("the old node received %v", got)
	}
	if r := old.lastReport(); r != (Report{From: 1, Applied: 77}) {
		t.Fatalf("the old node got the report %+v", r)
	}
	if v := tr.c.VersionFor(srv.URL); v != 1 {
		t.Fatalf("the transport speaks %d to the old node", v)
	}
	// A report alone, with no message to carry it.
	self.mu.Lock()
	self.applied = 90
	self.mu.Unlock()
	tr.Report([]uint64{2})
	for deadline := time.Now().Add(10 * time.Second); old.lastReport().Applied != 90; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the report alone did not arrive (last %+v)", old.lastReport())
		}
	}
	// The JSON calls too.
	var calls atomic.Int64
	upgraded := httptest.NewServer(Serve(auth, Endpoint{MaxBody: 1 << 10}, func(w http.ResponseWriter, r *http.Request, body []byte, v int) {
		calls.Add(1)
		w.Write([]byte(`{"applied": 9}`))
	}))
	defer upgraded.Close()
	tr.c.vmu.Lock()
	tr.c.versions[upgraded.Listener.Addr().String()] = 1 // as if it answered in 1 before its upgrade
	tr.c.vmu.Unlock()
	if n, err := tr.c.RemoteApplied(t.Context(), upgraded.URL, 9); err != nil || n != 9 {
		t.Fatalf("a call to an upgraded node: %d %v", n, err)
	}
	if v := tr.c.VersionFor(upgraded.URL); v != Version {
		t.Fatalf("after an answer in version %d, the client still speaks %d", Version, v)
	}
}

// openTestStream opens a stream to url as the transport would, signed with
// auth, and returns the connection and the frames' key.
func openTestStream(t *testing.T, auth *cluster.Auth, url string) (io.ReadWriteCloser, []byte, int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+StreamPath, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", streamProtocol)
	Sign(auth, req, "tester", cluster.BodyHash(nil))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, nil, resp.StatusCode
	}
	return resp.Body.(io.ReadWriteCloser), auth.SessionKey(req), resp.StatusCode
}

func writeTestFrame(w io.Writer, key []byte, seq uint64, msgs []pb.Message) {
	payload, _ := EncodeFrame(0, 0, msgs)
	b := binary.AppendUvarint(nil, uint64(len(payload)))
	b = append(append(b, payload...), frameMAC(key, seq, payload)...)
	w.Write(b)
}

// A stream of Raft messages takes only what its key authenticates, in
// order: a stream opened with another secret is refused, and a frame that
// is altered or replayed closes the stream without reaching Raft.
func TestStreamTakesOnlyAuthenticatedFramesInOrder(t *testing.T) {
	node := &fakeNode{}
	auth := cluster.NewAuth("a cluster secret", nil)
	tr := newTestTransport(auth, "node1")
	defer tr.Close()
	srv := httptest.NewServer(tr.Handlers(func() RaftNode { return node }, t.TempDir(), 1<<20)[StreamPath])
	defer srv.Close()
	if _, _, status := openTestStream(t, cluster.NewAuth("another secret", nil), srv.URL); status != http.StatusForbidden {
		t.Fatalf("a stream signed with another secret: %d", status)
	}
	const term = 3
	bump := []pb.Message{{Type: pb.MsgHeartbeat, To: 1, From: 2, Term: term + 50}}
	closed := func(c io.ReadWriteCloser) bool {
		done := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 64)); done <- err }()
		select {
		case err := <-done:
			return err != nil
		case <-time.After(5 * time.Second):
			return false
		}
	}
	// Altered: the right key, the wrong content.
	c, key, _ := openTestStream(t, auth, srv.URL)
	payload, _ := EncodeFrame(0, 0, bump)
	mac := frameMAC(key, 1, payload)
	payload[len(payload)-1] ^= 1
	c.Write(append(append(binary.AppendUvarint(nil, uint64(len(payload))), payload...), mac...))
	if !closed(c) {
		t.Fatal("an altered frame did not close the stream")
	}
	// Replayed: the first copy is taken (and acknowledged), the second
	// closes the stream.
	c, key, _ = openTestStream(t, auth, srv.URL)
	hello := []pb.Message{{Type: pb.MsgHeartbeatResp, To: 1, From: 1, Term: term}}
	writeTestFrame(c, key, 1, hello)
	ack := make([]byte, 8+ackMACLen)
	if _, err := io.ReadFull(c, ack); err != nil || binary.BigEndian.Uint64(ack) != 1 || !bytes.Equal(ack[8:], ackMAC(key, 1)) {
		t.Fatalf("the first frame's acknowledgement: %x %v", ack, err)
	}
	writeTestFrame(c, key, 1, bump)
	if !closed(c) {
		t.Fatal("a replayed frame did not close the stream")
	}
	if got := node.received(); len(got) != 1 || got[0].Term != term {
		t.Fatalf("the node received %v, want only the first frame's message", got)
	}
}

// A peer that takes the stream but never acknowledges (paused, or a link
// that drops everything without closing the connection) loses it after
// Timing.StreamAck: the next batch opens a new one.
func TestUnacknowledgedStreamIsClosedAndOpenedAgain(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	srv, opened := silentStreamServer(t, auth)
	tr := newTestTransport(auth, "node1")
	defer tr.Close()
	tr.SetPeer(2, srv.URL)
	streamAck := tr.c.timing.StreamAck
	deadline := time.Now().Add(3*streamAck + 2*time.Second)
	for opened.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the stream was opened %d times in %v without an acknowledgement", opened.Load(), 3*streamAck)
		}
		tr.Send([]pb.Message{{Type: pb.MsgHeartbeat, To: 2, From: 1, Term: 1}})
		time.Sleep(100 * time.Millisecond)
	}
}

// Batches stay under maxBatchBytes (plus one message): 200 appends of
// 100 KB queued at once reach the peer whole, in requests it accepts.
func TestBatchesOfLargeAppendsStayUnderTheLimit(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	var mu sync.Mutex
	var sizes []int
	got := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != RaftPath {
			http.NotFound(w, r) // no streams: every batch is a request
			return
		}
		body, _ := io.ReadAll(r.Body)
		v, _ := RequestVersion(r)
		_, msgs, err := DecodeFrame(v, body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		sizes, got = append(sizes, len(body)), got+len(msgs)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	tr := newTestTransport(auth, "node1")
	defer tr.Close()
	tr.SetPeer(2, srv.URL)
	var msgs []pb.Message
	for i := range 200 {
		msgs = append(msgs, pb.Message{Type: pb.MsgApp, To: 2, From: 1, Term: 1, Index: uint64(i), Entries: []pb.Entry{{Index: uint64(i + 1), Term: 1, Data: make([]byte, 100<<10)}}})
	}
	tr.Send(msgs)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := got
		mu.Unlock()
		if n == len(msgs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived", n, len(msgs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range sizes {
		if s > maxBatchBytes+200<<10 {
			t.Fatalf("a batch of %d bytes (limit %d)", s, maxBatchBytes)
		}
	}
	if len(sizes) < 3 {
		t.Fatalf("20 MB went in %d batches", len(sizes))
	}
}

// silentStreamServer takes streams of Raft messages signed with auth and
// reads them without ever acknowledging; opened counts the streams.
func silentStreamServer(t *testing.T, auth *cluster.Auth) (srv *httptest.Server, opened *atomic.Int64) {
	opened = new(atomic.Int64)
	var mu sync.Mutex
	var hijacked []net.Conn
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := auth.Verify(r, cluster.BodyHash(nil)); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		opened.Add(1)
		conn, rw, _ := http.NewResponseController(w).Hijack()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + streamProtocol + "\r\n\r\n")
		rw.Flush()
		mu.Lock()
		hijacked = append(hijacked, conn)
		mu.Unlock()
		go io.Copy(io.Discard, conn)
	}))
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range hijacked {
			c.Close()
		}
	})
	return srv, opened
}

// A peer that moves (its address changes) gets the next batches at its new
// address: the stream to the old one is closed.
func TestStreamFollowsAPeerThatMoves(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	old, openedOld := silentStreamServer(t, auth)
	moved, openedNew := silentStreamServer(t, auth)
	tr := newTestTransport(auth, "node1")
	defer tr.Close()
	heartbeat := []pb.Message{{Type: pb.MsgHeartbeat, To: 2, From: 1, Term: 1}}
	tr.SetPeer(2, old.URL)
	for deadline := time.Now().Add(5 * time.Second); openedOld.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no stream to the peer's first address")
		}
		tr.Send(heartbeat)
	}
	tr.SetPeer(2, moved.URL)
	for deadline := time.Now().Add(tr.c.timing.StreamAck / 2); openedNew.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no stream to the peer's new address within %v", tr.c.timing.StreamAck/2)
		}
		tr.Send(heartbeat)
	}
}
