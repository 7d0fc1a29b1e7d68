package consensus

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/store"
	pb "go.etcd.io/raft/v3/raftpb"
)

// dropTransport sends nothing anywhere.
type dropTransport struct{}

func (dropTransport) Send([]pb.Message) {}
func (dropTransport) Report([]uint64)   {}

// Raft asks for a snapshot for a node as soon as it applies the change
// that adds it, before the applier has committed that change to the
// database. A snapshot of the database then names a configuration
// without the node, which the node's Raft refuses after the whole
// transfer (for 10 GB, half a minute sent, and a minute to copy another).
// The leader's snapshot waits for the change instead: a node stepped by
// its caller (whose applier runs only when told) is refused a snapshot
// until the change is applied, then sent one that names it.
func TestASnapshotForANewNodeNamesItInItsConfiguration(t *testing.T) {
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "n1.db"), Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rep, err := OpenReplica(context.Background(), st, dropTransport{}, ReplicaConfig{Node: Config{ID: 1}})
	if err != nil {
		t.Fatal(err)
	}
	n := rep.Node()
	defer n.Stop()
	if err := n.Bootstrap([]uint64{1}); err != nil {
		t.Fatal(err)
	}
	settle := func(apply bool) {
		for {
			if err := n.Step(); err != nil {
				t.Fatal(err)
			}
			if !apply {
				return
			}
			more, err := n.ApplyNext()
			if err != nil {
				t.Fatal(err)
			}
			if !more {
				return
			}
		}
	}
	for {
		if _, self := n.Leader(); self {
			break
		}
		n.Tick()
		settle(true)
	}
	if err := n.ProposeChange(pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: 2}); err != nil {
		t.Fatal(err)
	}
	for n.Unapplied() == 0 { // Raft applied the change; the database has not
		settle(false)
	}
	dir := t.TempDir()
	req := pb.Message{Type: pb.MsgSnap, From: 1, To: 2}
	if src, out, err := n.SnapshotSource(context.Background(), req, dir); err == nil {
		src.Close()
		t.Fatalf("a snapshot for node 2 before the database added it: %+v", out.Snapshot.Metadata)
	} else if !strings.Contains(err.Error(), "has not yet applied the configuration") {
		t.Fatal(err)
	}
	settle(true)
	src, out, err := n.SnapshotSource(context.Background(), req, dir)
	if err != nil {
		t.Fatal(err)
	}
	src.Close()
	if cs := out.Snapshot.Metadata.ConfState; !confHolds(cs, 2) {
		t.Fatalf("the snapshot's configuration %v does not name node 2", cs)
	}
}
