package consensus

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
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

// A node that installs a snapshot runs no Raft step until it is done (a
// copy of gigabytes takes a minute or more), so it hears from no leader
// meanwhile; that is no reason to tell its operator that the others
// cannot reach it. Quiet without an install still warns, once.
func TestANodeInstallingASnapshotDoesNotWarnThatNoLeaderIsHeard(t *testing.T) {
	var logged bytes.Buffer
	e := &Engine{cfg: EngineConfig{URL: "http://h:8082", Timing: cluster.Timing{ElectionWindow: time.Second}, Log: slog.New(slog.NewTextHandler(&logged, nil))}}
	e.admitted.Store(true)
	start := time.Unix(1000, 0)
	e.leaderSeen.Store(start.UnixNano())
	warned := false
	at := func(s int) time.Time { return start.Add(time.Duration(s) * time.Second) }

	for s := 4; s <= 60; s += 4 { // a minute's install
		e.noteNoLeader(&warned, at(s), true)
	}
	if logged.Len() > 0 || warned {
		t.Fatalf("warned while installing: %s", logged.String())
	}
	// Right after the install, the leader counts as heard from.
	e.noteNoLeader(&warned, at(61), false)
	if logged.Len() > 0 {
		t.Fatalf("warned right after the install: %s", logged.String())
	}
	// Then silence warns, once.
	e.noteNoLeader(&warned, at(65), false)
	e.noteNoLeader(&warned, at(69), false)
	if n := strings.Count(logged.String(), "has heard from no leader"); n != 1 {
		t.Fatalf("%d warnings after 8s of silence, want 1: %s", n, logged.String())
	}
}

// InstallingSnapshot is true from an install's start to its end only: not
// for a snapshot received and waiting for Raft, nor after.
func TestInstallingSnapshotFollowsTheInstall(t *testing.T) {
	n := &Node{}
	f := &snapshotFile{started: make(chan struct{}), done: make(chan struct{})}
	n.receiving.Store("/tmp/raft-snapshot-1.db", f)
	if n.InstallingSnapshot() {
		t.Fatal("installing before the install started")
	}
	close(f.started)
	if !n.InstallingSnapshot() {
		t.Fatal("not installing while the install runs")
	}
	close(f.done)
	if n.InstallingSnapshot() {
		t.Fatal("installing after the install ended")
	}
}
