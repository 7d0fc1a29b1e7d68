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
