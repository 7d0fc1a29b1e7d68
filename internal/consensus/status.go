package consensus

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
)

// Status reports the node's Raft state: now, or as of its last step when
// the step under way runs long (a large load being applied, a snapshot
// installed), so that monitoring is never held up.
func (e *Engine) Status() replication.Status {
	st := e.rep.Node().StatusWithin(e.cfg.Timing.StatusWait)
	s := replication.Status{ID: cluster.CommandLineID(e.cfg.ID), URL: e.cfg.URL, Preferred: e.cfg.ID == e.cfg.Preferred,
		Term: st.Term, Commit: st.Commit, Applied: e.st.Applied(), SnapshotsInstalled: e.rep.Node().SnapshotsInstalled()}
	// What is applied is committed (a status of the last step may predate
	// the step that applied it).
	s.Commit = max(s.Commit, s.Applied)
	if st.Lead != 0 {
		l := cluster.CommandLineID(st.Lead)
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
		s.Rejoining = append(s.Rejoining, cluster.CommandLineID(id))
	}
	slices.Sort(s.Rejoining)
	if st.RaftState == raft.StateLeader {
		for id, pr := range st.Progress {
			ns := replication.NodeStatus{ID: cluster.CommandLineID(id), URL: e.tr.Peer(id), Voter: !pr.IsLearner, Match: pr.Match, State: pr.State.String(),
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

// WaitLeader waits until a leader is known. It gives up at once when
// none has been known for the election window (no majority is reachable:
// waiting would only hang the client), else when the window ends.
func (e *Engine) WaitLeader(ctx context.Context) bool {
	for {
		if lead, _ := e.rep.Node().Leader(); lead != 0 {
			return true
		}
		if time.Since(time.Unix(0, e.leaderSeen.Load())) > e.cfg.Timing.ElectionWindow || ctx.Err() != nil {
			return false
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return false
		}
	}
}

// Learner reports whether this node receives the log without voting.
func (e *Engine) Learner() bool {
	_, learner := e.rep.Node().RecentStatus().Config.Learners[e.cfg.ID]
	return learner && !e.removed.Load()
}

// IsLeader reports whether this node leads now.
func (e *Engine) IsLeader() bool { _, self := e.rep.Node().Leader(); return self }

func (e *Engine) lead() uint64 { l, _ := e.rep.Node().Leader(); return l }

// LeaderURL is the URL of the node that leads ("" if none is known).
func (e *Engine) LeaderURL() string {
	if lead := e.lead(); lead != 0 {
		return e.tr.Peer(lead)
	}
	return ""
}

// SinceLeaderContact is how long ago this node last heard from a leader
// (0 on the leader).
func (e *Engine) SinceLeaderContact() time.Duration {
	n := e.admittedNode()
	if n == nil {
		return time.Duration(math.MaxInt64)
	}
	return n.SinceLeaderContact()
}

// Members lists the configuration's nodes, voters and learners, by id.
func (e *Engine) Members() []replication.Member {
	st := e.rep.Node().StatusWithin(e.cfg.Timing.StatusWait)
	var out []replication.Member
	add := func(id uint64, voter bool) {
		out = append(out, replication.Member{ID: cluster.CommandLineID(id), URL: e.tr.Peer(id), Voter: voter, Leader: id == st.Lead})
	}
	for id := range st.Config.Voters.IDs() {
		add(id, true)
	}
	for id := range st.Config.Learners {
		add(id, false)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// removedError is Serving's answer on a node the log took out of the
// configuration while it ran: a 503 (replication.ErrUnavailable) whose
// message says where to go instead of to retry here.
type removedError struct{}

var errRemoved error = removedError{}

// isMember says whether this node takes part in the cluster: admitted,
// and in the configuration as a voter or a learner.
func (e *Engine) isMember() bool {
	if e.rep == nil || !e.admitted.Load() {
		return false
	}
	voter, learner := Membership(e.rep.Node().RecentStatus().Config, e.cfg.ID)
	return voter || learner
}

// notMemberError is Serving's answer on a node that is not (yet) a member
// of the cluster: it holds no data of the cluster's, so it serves none.
type notMemberError struct{ why string }

func (e notMemberError) Error() string {
	msg := "this node is not a member of the cluster (yet): it serves no data until the leader has added it"
	if e.why != "" {
		msg += "; " + e.why
	}
	return msg
}

// Serving is nil while this node may answer clients (see
// replication.Replicator): it is a member of the cluster, and was not
// removed from it.
func (e *Engine) Serving() error {
	if e.removed.Load() {
		return errRemoved
	}
	if err := e.divergence(); err != nil {
		return err
	}
	if !e.isMember() {
		var why string
		if p := e.joinTrouble.Load(); p != nil {
			why = *p
		}
		return notMemberError{why: why}
	}
	return e.caughtUp()
}

// caughtUp is nil unless this node was admitted without data and has not
// yet applied what was committed when it was admitted.
func (e *Engine) caughtUp() error {
	if to := e.catchUpTo.Load(); to > 0 {
		if applied := e.st.Applied(); applied < to {
			return catchingUpError{applied: applied, to: to}
		}
		e.catchUpTo.Store(0) // caught up: from now on it serves as any node
	}
	return nil
}

// Ready says why this node cannot serve writes now ("" when it can).
func (e *Engine) Ready() string {
	if err := e.Serving(); err != nil {
		return err.Error()
	}
	lead, self := e.rep.Node().Leader()
	if lead == 0 {
		return "no leader is known: an election is under way, or a majority of the voters cannot be reached"
	}
	if !self && e.tr.Peer(lead) == "" {
		return fmt.Sprintf("node %d leads, but its URL is not known here yet", cluster.CommandLineID(lead))
	}
	return ""
}

// Metrics reads the engine's numbers.
func (e *Engine) Metrics() replication.MetricValues {
	s := e.Status()
	m := replication.MetricValues{Term: s.Term, Commit: s.Commit, Leader: s.Role == replication.RoleLeader, LeaderChanges: e.rep.Node().LeaderChanges(),
		SnapshotsInstalled: s.SnapshotsInstalled}
	m.ProposalsPending = e.rep.Node().Pending()
	if len(s.Nodes) > 0 {
		m.Lag = map[int]uint64{}
		for _, n := range s.Nodes {
			m.Lag[n.ID] = n.Lag
		}
	}
	m.Batches, m.RoundTripSeconds = e.tr.SendStats()
	return m
}

func (removedError) Error() string {
	return "this node was removed from the cluster (POST /remove): it no longer receives the log, so its data is out of date, and nothing was run; send requests to another node, or restart this one to join again as a learner"
}

func (removedError) Unwrap() error { return replication.ErrUnavailable }

func (notMemberError) Unwrap() error { return replication.ErrUnavailable }

// catchingUpError is Serving's answer on a node admitted without data
// until it has applied what was committed when it was admitted: it
// receives the log from its start, and its database passes through states
// long gone.
type catchingUpError struct{ applied, to uint64 }

func (e catchingUpError) Error() string {
	return fmt.Sprintf("this node lost its data and is catching up (applied index %d of the %d committed when it was admitted): it serves again once it has", e.applied, e.to)
}

func (catchingUpError) Unwrap() error { return replication.ErrUnavailable }
