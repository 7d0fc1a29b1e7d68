package consensus

import (
	"testing"

	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/replication"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/quorum"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// statusOf is a node's Raft status in a cluster of voters 1, 2 and 3.
func statusOf(state raft.StateType, lead, term, commit, applied uint64, match map[uint64]uint64) raft.Status {
	st := raft.Status{BasicStatus: raft.BasicStatus{HardState: pb.HardState{Term: term, Commit: commit}, SoftState: raft.SoftState{Lead: lead, RaftState: state}, Applied: applied}}
	st.Config = tracker.Config{Voters: quorum.JointConfig{quorum.MajorityConfig{1: {}, 2: {}, 3: {}}, nil}}
	if state == raft.StateLeader {
		st.Progress = map[uint64]tracker.Progress{}
		for id := uint64(1); id <= 3; id++ {
			st.Progress[id] = tracker.Progress{Match: match[id]}
		}
	}
	return st
}

// A node without Raft state votes again only once that cannot cost a
// committed entry: before the cluster's first election, when it holds an
// operator's copy of the data, or after the leader has taken it out and
// added it back (the simulator's seed 27 found the rule this replaces).
func TestANodeWithoutRaftStateVotesOnlyWhenItCannotLoseAnEntry(t *testing.T) {
	never := func(faults.Bug) bool { return false }
	wiped := &replication.JoinRequest{ID: 3, URL: "u3", Fresh: true}
	copied := &replication.JoinRequest{ID: 3, URL: "u3", Fresh: true, Data: 500}
	restarted := &replication.JoinRequest{ID: 3, URL: "u3"}
	cases := []struct {
		name     string
		st       raft.Status
		req      *replication.JoinRequest
		admitted bool
		change   pb.ConfChangeType // -1: none
	}{
		{"the creating master admits before the first election", statusOf(raft.StateFollower, 0, 1, 3, 3, nil), wiped, true, -1},
		{"a follower that knows no leader after an election refuses a wiped node", statusOf(raft.StateFollower, 0, 5, 600, 600, nil), wiped, false, -1},
		{"a follower that knows a leader sends a wiped node to it", statusOf(raft.StateFollower, 1, 5, 600, 600, nil), wiped, false, -1},
		{"a follower admits an operator's copy at least as far as it applied", statusOf(raft.StateFollower, 0, 5, 500, 500, nil), copied, true, -1},
		{"a follower refuses an older copy", statusOf(raft.StateFollower, 0, 5, 600, 600, nil), copied, false, -1},
		{"a follower admits a voter that kept its state", statusOf(raft.StateFollower, 0, 5, 600, 600, nil), restarted, true, -1},
		{"the leader takes a wiped voter out even if it never heard from it", statusOf(raft.StateLeader, 1, 5, 600, 600, map[uint64]uint64{1: 600}), wiped, true, pb.ConfChangeRemoveNode},
		{"the leader takes a wiped voter out that it counted", statusOf(raft.StateLeader, 1, 5, 600, 600, map[uint64]uint64{1: 600, 3: 590}), wiped, true, pb.ConfChangeRemoveNode},
		{"the leader admits a voter that kept its state", statusOf(raft.StateLeader, 1, 5, 600, 600, map[uint64]uint64{1: 600, 3: 590}), restarted, true, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := DecideJoin(c.st, nil, c.req, true, never)
			if d.Admitted != c.admitted {
				t.Fatalf("admitted = %v, want %v (%+v)", d.Admitted, c.admitted, d)
			}
			switch {
			case c.change < 0 && d.Change != nil:
				t.Fatalf("changes the configuration: %v", d.Change)
			case c.change >= 0 && (d.Change == nil || d.Change.Type != c.change):
				t.Fatalf("change = %v, want %v", d.Change, c.change)
			}
			if d.Change != nil && d.Change.Type == pb.ConfChangeRemoveNode {
				if note, ok := rejoinNoteOf(*d.Change); !ok || !note.Voter {
					t.Fatalf("the removal is not marked to add a voter back: %v", d.Change)
				}
			}
		})
	}
}
