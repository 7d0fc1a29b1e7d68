package peer

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
)

// memSource is a database to send, held in memory.
type memSource []byte

func (s memSource) Size() int64          { return int64(len(s)) }
func (s memSource) NewReader() io.Reader { return bytes.NewReader(s) }
func (s memSource) Close()               {}

// snapNode sends db as its snapshot, and keeps what it receives.
type snapNode struct {
	fakeNode
	db       memSource
	got      chan []byte
	reported chan bool
}

func (n *snapNode) SnapshotSource(_ context.Context, m pb.Message, _ string) (cluster.SnapshotSource, pb.Message, error) {
	m.Snapshot = &pb.Snapshot{Metadata: pb.SnapshotMetadata{Index: 7, Term: 2}}
	return n.db, m, nil
}
func (n *snapNode) ReportSnapshot(_ uint64, ok bool) { n.reported <- ok }
func (n *snapNode) StepSnapshot(_ context.Context, m pb.Message, path string) error {
	b, err := os.ReadFile(path)
	os.Remove(path)
	if err != nil || m.Snapshot.Metadata.Index != 7 {
		return err
	}
	n.got <- b
	return nil
}

// A snapshot reaches a node of this version with its hash after it (the
// sender reads its database once), and a node of version 2, which wants
// the hash first, in that form: refused once in this version, the sender
// sends again in the node's.
func TestASnapshotReachesANodeOfThisVersionAndOfTheOneBefore(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	db := memSource(bytes.Repeat([]byte("0123456789abcdef"), 64<<10)) // 1 MiB
	for _, peerVersion := range []int{2, Version} {
		recv := &snapNode{got: make(chan []byte, 1)}
		handler := newTestTransport(auth, "node2").Handlers(func() RaftNode { return recv }, t.TempDir(), 1<<30)[SnapshotPath]
		var refused, taken atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if v, _ := RequestVersion(r); v > peerVersion {
				refused.Add(1)
				w.Header().Set(HeaderVersion, strconv.Itoa(peerVersion))
				http.Error(w, "the node speaks a later protocol", http.StatusBadRequest)
				return
			}
			taken.Add(1)
			handler.ServeHTTP(w, r)
		}))
		defer srv.Close()
		send := &snapNode{db: db, reported: make(chan bool, 1)}
		tr := newTestTransport(auth, "node1")
		defer tr.Close()
		tr.SetNode(1, send, t.TempDir())
		tr.SetPeer(2, srv.URL)
		tr.sendSnapshot(pb.Message{Type: pb.MsgSnap, From: 1, To: 2, Term: 2})
		if ok := <-send.reported; !ok {
			t.Fatalf("version %d: the snapshot was reported as not sent", peerVersion)
		}
		if got := <-recv.got; !bytes.Equal(got, db) {
			t.Fatalf("version %d: %d bytes arrived, not the %d sent", peerVersion, len(got), len(db))
		}
		wantRefused := int64(0)
		if peerVersion < Version {
			wantRefused = 1
		}
		if refused.Load() != wantRefused || taken.Load() != 1 {
			t.Fatalf("version %d: refused %d times, taken %d", peerVersion, refused.Load(), taken.Load())
		}
	}
}

// pacedSource is a database to send that arrives in 64 KiB pieces, each
// after a pause (a slow link), or that stops halfway until stall is closed.
type pacedSource struct {
	memSource
	pause time.Duration
	stall chan struct{} // non-nil: the bytes stop halfway
}

func (s pacedSource) NewReader() io.Reader {
	return &pacedReader{s: s, r: bytes.NewReader(s.memSource)}
}

type pacedReader struct {
	s    pacedSource
	r    *bytes.Reader
	sent int
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.s.stall != nil && p.sent >= len(p.s.memSource)/2 {
		<-p.s.stall
		return 0, io.ErrUnexpectedEOF
	}
	time.Sleep(p.s.pause)
	n, err := p.r.Read(b[:min(len(b), 64<<10)])
	p.sent += n
	return n, err
}

// receiver is a node's snapshot endpoint behind an HTTP server whose own
// timeouts (which bound every other request) are far shorter than the
// transfer, and the transport whose timing it receives with.
func receiver(t *testing.T, auth *cluster.Auth, timing cluster.Timing) (*snapNode, *httptest.Server, string) {
	recv := &snapNode{got: make(chan []byte, 1)}
	dir := t.TempDir()
	tr := NewRaftTransport(NewClientOver(http.DefaultClient, auth, "node2", timing), nil)
	srv := httptest.NewUnstartedServer(tr.Handlers(func() RaftNode { return recv }, dir, 1<<30)[SnapshotPath])
	// The request's headers get all the time a busy machine needs; its
	// body and answer do not.
	srv.Config.ReadHeaderTimeout = 10 * time.Second
	srv.Config.ReadTimeout = 100 * time.Millisecond
	srv.Config.WriteTimeout = 100 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	return recv, srv, dir
}

// A snapshot whose bytes keep arriving (16 pieces 40 ms apart: at least
// six times the server's limits) is received to its end however
// long it takes, past the server's timeouts for other requests (a minute:
// a 10 GB snapshot on a busy machine took longer, was cut off and sent
// again, twice); one whose bytes stop is given up after SnapshotIdle, and
// nothing of it is kept.
func TestASnapshotOutlastsTheServersTimeoutsWhileItsBytesArrive(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	db := memSource(bytes.Repeat([]byte("0123456789abcdef"), 64<<10)) // 1 MiB: 16 pieces
	send := func(to *httptest.Server, src cluster.SnapshotSource) bool {
		n := &snapNode{db: db, reported: make(chan bool, 1)}
		tr := newTestTransport(auth, "node1")
		defer tr.Close()
		tr.SetNode(1, &pacedNode{snapNode: n, src: src}, t.TempDir())
		tr.SetPeer(2, to.URL)
		tr.sendSnapshot(pb.Message{Type: pb.MsgSnap, From: 1, To: 2, Term: 2})
		return <-n.reported
	}

	recv, srv, _ := receiver(t, auth, cluster.DefaultTiming())
	if !send(srv, pacedSource{memSource: db, pause: 40 * time.Millisecond}) {
		t.Fatal("a snapshot arriving steadily for longer than the server's timeouts was reported as not sent")
	}
	if got := <-recv.got; !bytes.Equal(got, db) {
		t.Fatalf("%d bytes installed, not the %d sent", len(got), len(db))
	}

	timing := cluster.DefaultTiming()
	timing.SnapshotIdle = 300 * time.Millisecond
	recv, srv, dir := receiver(t, auth, timing)
	stall := make(chan struct{})
	defer close(stall)
	if send(srv, pacedSource{memSource: db, stall: stall}) {
		t.Fatal("a snapshot whose bytes stopped halfway was reported as sent")
	}
	select {
	case <-recv.got:
		t.Fatal("half a snapshot was installed")
	default:
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("the receiver kept %d files of a transfer it gave up", len(left))
	}
}

// pacedNode sends src as its snapshot.
type pacedNode struct {
	*snapNode
	src cluster.SnapshotSource
}

func (n *pacedNode) SnapshotSource(ctx context.Context, m pb.Message, dir string) (cluster.SnapshotSource, pb.Message, error) {
	_, m, err := n.snapNode.SnapshotSource(ctx, m, dir)
	return n.src, m, err
}
