package consensus

import (
	"bytes"
	"testing"

	pb "go.etcd.io/raft/v3/raftpb"
)

// The record of nodes being added back follows the configuration changes
// every node applies: a marked removal records the node, adding it back
// as what it was ends the record (a voter added as a learner waits for its
// promotion), and a removal by hand ends it too, so that it stays final.
func TestRejoiningRecordFollowsConfigurationChanges(t *testing.T) {
	var r Rejoining = Rejoining{}
	step := func(cc pb.ConfChange, wantChanged bool, want Rejoining) {
		t.Helper()
		next, changed := r.after(cc)
		if changed != wantChanged || !bytes.Equal(next.encode(), want.encode()) {
			t.Fatalf("after %v %d: %v (changed %v), want %v (changed %v)", cc.Type, cc.NodeID, next, changed, want, wantChanged)
		}
		r = next
	}
	voter := RejoinNote{URL: "http://h:8082", Voter: true}
	learner := RejoinNote{URL: "http://h:8084"}
	step(pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: 3}, false, Rejoining{})
	step(pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: 3, Context: rejoinContext(voter)}, true, Rejoining{3: voter})
	step(pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: 5, Context: rejoinContext(learner)}, true, Rejoining{3: voter, 5: learner})
	step(pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: 3, Context: []byte(voter.URL)}, false, Rejoining{3: voter, 5: learner})
	step(pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: 5, Context: []byte(learner.URL)}, true, Rejoining{3: voter})
	step(pb.ConfChange{Type: pb.ConfChangeAddNode, NodeID: 3}, true, Rejoining{})
	// A removal by hand while a node is being added back cancels it.
	step(pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: 3, Context: rejoinContext(voter)}, true, Rejoining{3: voter})
	step(pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: 3}, true, Rejoining{})
	// A context that merely looks like a mark on an addition is no mark.
	step(pb.ConfChange{Type: pb.ConfChangeAddNode, NodeID: 4, Context: rejoinContext(voter)}, false, Rejoining{})

	got, err := decodeRejoining(Rejoining{3: voter}.encode())
	if err != nil || got[3] != voter || len(got) != 1 {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	if got, err := decodeRejoining(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty record: %v, %v", got, err)
	}
}
