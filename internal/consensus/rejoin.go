package consensus

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/faults"
)

// A node whose disk was wiped comes back with an empty log under its old
// Raft id. The leader still counts what that id acknowledged before, so it
// takes the node out of the configuration (the only way Raft forgets a
// node's progress) and adds it again. Adding it again must not depend on
// the leader that began it: leadership can move between the two halves.
// So the removal carries a mark (rejoinMark and a RejoinNote as its
// context), and every node, applying the log, keeps the record of marked
// nodes not yet back (Rejoining, written with the configuration in the
// database and in every snapshot). Whichever node leads finishes the job:
// it adds each recorded node as a learner (it holds no log yet, so it must
// not vote), and promotes a voter once it has caught up. A removal by
// hand carries no mark and cancels the record: it stays final.

// rejoinMark starts the context of a removal that is the first half of
// adding a node again.
const rejoinMark = "ddb-rejoin:"

// RejoinNote is what the log records of a node being added again: where
// it is, and whether it voted.
type RejoinNote struct {
	URL   string `json:"url"`
	Voter bool   `json:"voter"`
}

// Rejoining is the log's record of the nodes being added again, by Raft
// id. Its values are never modified: a change makes a new map.
type Rejoining map[uint64]RejoinNote

func decodeRejoining(b []byte) (Rejoining, error) {
	r := Rejoining{}
	if len(b) == 0 {
		return r, nil
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read the record of rejoining nodes: %w", err)
	}
	return r, nil
}

// encode is the record as stored (JSON, keys in order: the same bytes on
// every node).
func (r Rejoining) encode() []byte {
	b, _ := json.Marshal(r)
	return b
}

// rejoinContext is the context of a marked removal.
func rejoinContext(n RejoinNote) []byte {
	b, _ := json.Marshal(n)
	return append([]byte(rejoinMark), b...)
}

// rejoinNoteOf reads the mark of a removal (ok false: unmarked).
func rejoinNoteOf(cc pb.ConfChange) (n RejoinNote, ok bool) {
	ctx, found := strings.CutPrefix(string(cc.Context), rejoinMark)
	if !found || cc.Type != pb.ConfChangeRemoveNode {
		return n, false
	}
	return n, json.Unmarshal([]byte(ctx), &n) == nil
}

// after is the record once cc is applied, and whether cc changed it: a
// marked removal records the node; adding it back as what it was (a
// voter, or a learner that was one) ends the record, and so does a
// removal by hand.
func (r Rejoining) after(cc pb.ConfChange) (Rejoining, bool) {
	if note, marked := rejoinNoteOf(cc); marked {
		out := maps.Clone(r)
		out[cc.NodeID] = note
		return out, true
	}
	note, had := r[cc.NodeID]
	if !had || cc.Type == pb.ConfChangeAddLearnerNode && note.Voter {
		return r, false // (a voter added back as a learner waits for its promotion)
	}
	out := maps.Clone(r)
	delete(out, cc.NodeID)
	return out, true
}

// loadRejoining reads the record of rejoining nodes where the data stands
// (at start, and once a snapshot replaced the database).
func (n *Node) loadRejoining(ctx context.Context) error {
	pos, err := n.storage.st.DataPosition(ctx)
	if err != nil {
		return err
	}
	rj, err := decodeRejoining(pos.Rejoining)
	if err != nil {
		return err
	}
	n.rejoining.Store(&rj)
	return nil
}

// Rejoining is the log's record of the nodes being added again, as this
// node has applied it. Callers must not modify it.
func (n *Node) Rejoining() Rejoining { return *n.rejoining.Load() }

// watchMembers finishes, on whichever node leads, the re-addition of the
// nodes the log records as rejoining, and reports on every node the named
// voters that are missing from the configuration (every
// Timing.RejoinEvery).
func (e *Engine) watchMembers() {
	defer e.wg.Done()
	t := time.NewTicker(e.cfg.Timing.RejoinEvery)
	defer t.Stop()
	since := map[uint64]time.Time{} // named voter -> first seen missing
	warned := false                 // that no leader was heard from (see noteNoLeader)
	for {
		select {
		case <-t.C:
		case <-e.stop:
			return
		}
		e.noteMissingVoters(since, time.Now())
		e.noteNoLeader(&warned, time.Now(), e.rep.Node().InstallingSnapshot())
		if _, self := e.rep.Node().Leader(); self && !e.bug(faults.RejoinOnce) {
			e.finishRejoins()
		}
	}
}

// noteNoLeader warns, once until a leader is heard from again, when this
// node has known no leader for three election windows: a majority of the
// voters is down, or the others cannot reach this node at its URL (a
// wrong -advertise or -host, a firewall), which the node cannot tell
// apart but its operator can. Not while the node installs a snapshot from
// its leader: its Raft loop, and with it what it knows of the leader,
// waits for the install, and the warning would send its operator looking
// for a network fault while it catches up as it should.
func (e *Engine) noteNoLeader(warned *bool, now time.Time, installing bool) {
	quiet := now.Sub(time.Unix(0, e.leaderSeen.Load()))
	switch {
	case installing:
		e.leaderSeen.Store(now.UnixNano())
		*warned = false
	case quiet <= 3*e.cfg.Timing.ElectionWindow:
		*warned = false
	case !*warned && e.admitted.Load():
		*warned = true
		e.cfg.Log.Warn(fmt.Sprintf("this node has heard from no leader for %v: a majority of the voters is down, or the others cannot reach this node at its URL %s; check that this URL (from -advertise, or -host and the port) reaches this node from the other hosts", quiet.Round(time.Second), e.cfg.URL), "url", e.cfg.URL)
	}
}

// finishRejoins, on the leader, takes each rejoining node one step
// further (see RejoinSteps).
func (e *Engine) finishRejoins() {
	node := e.rep.Node()
	for _, cc := range RejoinSteps(node.RecentStatus(), node.Rejoining(), e.tr.Peer) {
		if cc.Type == pb.ConfChangeAddLearnerNode {
			e.cfg.Log.Info("adding a node back after it lost its data: as a learner until it holds the log", "peer", cluster.CommandLineID(cc.NodeID), "url", string(cc.Context))
		} else {
			e.cfg.Log.Info("a node added back after it lost its data holds the log: it votes again", "peer", cluster.CommandLineID(cc.NodeID))
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.AckTimeout)
		err := node.ChangeMembership(ctx, cc)
		cancel()
		if err != nil {
			e.cfg.Log.Warn("adding a node back did not finish; the leader tries again", "peer", cluster.CommandLineID(cc.NodeID), "err", err)
			return
		}
		e.moveLeadershipForTest(cc.NodeID)
	}
}

// RejoinSteps are the configuration changes that take each node of rj a
// step further, given the leader's status st: a node out of the
// configuration is added as a learner (at the URL peer knows, else the
// one recorded); a learner that was a voter is promoted once it holds
// the log. The engine and the simulator (package sim) both use it.
func RejoinSteps(st raft.Status, rj Rejoining, peer func(id uint64) string) []pb.ConfChange {
	var out []pb.ConfChange
	for _, id := range slices.Sorted(maps.Keys(rj)) {
		note := rj[id]
		voter, learner := Membership(st.Config, id)
		switch {
		case !voter && !learner:
			out = append(out, pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: id, Context: []byte(cmp.Or(peer(id), note.URL))})
		case learner && note.Voter && caughtUp(st, id):
			out = append(out, pb.ConfChange{Type: pb.ConfChangeAddNode, NodeID: id})
		}
	}
	return out
}

// Membership says whether node id is a voter (in the incoming or, during a
// joint change, the outgoing configuration) or a learner of cfg.
func Membership(cfg tracker.Config, id uint64) (voter, learner bool) {
	_, in := cfg.Voters[0][id]
	_, out := cfg.Voters[1][id]
	_, learner = cfg.Learners[id]
	return in || out, learner
}

// caughtUp says whether, in a leader's status, node id holds the log: in
// replicate state, and behind the commit index by no more than the entries
// in flight under load (an exact Match == Commit is rarely seen while
// writes stream).
func caughtUp(st raft.Status, id uint64) bool {
	pr, ok := st.Progress[id]
	return ok && pr.State == tracker.StateReplicate && pr.Match+caughtUpLag >= st.Commit
}

// noteMissingVoters reports the voters the command line names that have
// been missing from the configuration for Timing.MissingAfter (since: when each
// was first seen missing).
func (e *Engine) noteMissingVoters(since map[uint64]time.Time, now time.Time) {
	st := e.rep.Node().RecentStatus()
	voters := st.Config.Voters.IDs()
	if len(voters) == 0 {
		return // the configuration is not known here yet
	}
	var missing []int
	for _, id := range e.cfg.Voters {
		if _, ok := voters[id]; ok {
			if _, was := since[id]; was {
				delete(since, id)
				e.cfg.Log.Info("a named voter is back in the configuration", "peer", cluster.CommandLineID(id))
			}
			continue
		}
		first, was := since[id]
		if !was {
			since[id] = now
			continue
		}
		if now.Sub(first) < e.cfg.Timing.MissingAfter {
			continue
		}
		missing = append(missing, cluster.CommandLineID(id))
	}
	old := e.missing.Swap(&missing)
	for _, id := range missing {
		if old == nil || !slices.Contains(*old, id) {
			e.cfg.Log.Warn("a voter the command line names is missing from the configuration (removed by hand, or not yet added back after it lost its data): the cluster tolerates fewer failures than its command line says; GET /status lists it under missing_voters", "peer", id, "missing_for", now.Sub(since[cluster.RaftID(id)]).Round(time.Second).String())
		}
	}
}

// MissingVoters are the command-line ids of the voters the command line
// names that have been missing from the configuration for a while.
func (e *Engine) MissingVoters() []int {
	if m := e.missing.Load(); m != nil {
		return *m
	}
	return nil
}

// bug reports whether the deliberate defect or forced schedule name is
// switched on (a comma-separated list; fault builds only).
func (e *Engine) bug(name faults.Bug) bool { return faults.On(e.cfg.InjectBug, name) }

// moveLeadershipForTest, in the fault build with the schedule
// "transfer-mid-rejoin", hands leadership from this leader to another
// voter right after a step of adding node id back, so that a test sees
// every step finished by another leader.
func (e *Engine) moveLeadershipForTest(id uint64) {
	if !e.bug(faults.TransferMidRejoin) {
		return
	}
	st := e.rep.Node().RecentStatus()
	for v := range st.Config.Voters.IDs() {
		if v != e.cfg.ID && v != id && caughtUp(st, v) {
			e.cfg.Log.Warn("forced schedule: leadership moves in the middle of adding a node back", "peer", cluster.CommandLineID(id), "to", cluster.CommandLineID(v))
			ctx, cancel := context.WithTimeout(context.Background(), e.cfg.AckTimeout)
			defer cancel()
			if err := e.TransferLeadership(ctx, v); err != nil {
				e.cfg.Log.Warn("forced schedule: leadership did not move", "err", err)
			}
			return
		}
	}
}
