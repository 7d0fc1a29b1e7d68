package consensus

import (
	"slices"
	"sort"

	"github.com/ddbgo/ddb/internal/replication"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
)

// Status reports the node's Raft state: now, or as of its last step when
// the step under way runs long (a large load being applied, a snapshot
// installed), so that monitoring is never held up.
func (e *Engine) Status() replication.Status {
	st := e.rep.Node().StatusWithin(e.cfg.Timing.StatusWait)
	s := replication.Status{ID: int(e.cfg.ID) - 1, URL: e.cfg.URL, Preferred: e.cfg.ID == e.cfg.Preferred,
		Term: st.Term, Commit: st.Commit, Applied: e.st.Applied(), SnapshotsInstalled: e.rep.Node().SnapshotsInstalled()}
	// What is applied is committed (a status of the last step may predate
	// the step that applied it).
	s.Commit = max(s.Commit, s.Applied)
	if st.Lead != 0 {
		l := int(st.Lead) - 1
		s.LeaderID, s.LeaderURL = &l, e.tr.Peer(st.Lead)
	}
	_, learner := st.Config.Learners[e.cfg.ID]
	switch {
	case e.removed.Load():
		s.Role = replication.RoleRemoved
	case st.RaftState == raft.StateLeader:
		s.Role = replication.RoleLeader
	case learner:
		s.Role = replication.RoleLearner
	case st.RaftState == raft.StateCandidate || st.RaftState == raft.StatePreCandidate:
		s.Role = replication.RoleCandidate
	default:
		s.Role = replication.RoleFollower
	}
	s.MissingVoters = e.MissingVoters()
	for id := range e.rep.Node().Rejoining() {
		s.Rejoining = append(s.Rejoining, int(id)-1)
	}
	slices.Sort(s.Rejoining)
	if st.RaftState == raft.StateLeader {
		for id, pr := range st.Progress {
			ns := replication.NodeStatus{ID: int(id) - 1, URL: e.tr.Peer(id), Voter: !pr.IsLearner, Match: pr.Match, State: pr.State.String(),
				Reachable: id == e.cfg.ID || pr.RecentActive || pr.State == tracker.StateReplicate}
			if st.Commit > pr.Match {
				ns.Lag = st.Commit - pr.Match
			}
			s.Nodes = append(s.Nodes, ns)
		}
		sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].ID < s.Nodes[j].ID })
	}
	return s
}
