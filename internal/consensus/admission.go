package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// Admission: a node announces itself to the others (announce, joinRound);
// each decides what comes of it (HandleJoin, DecideJoin); the master
// creates the cluster once it may (mayCreate, MayCreate); the leader
// changes the configuration by hand (Remove) or hands leadership over.

// announce tells the known peers where this node is and learns theirs,
// until this node is admitted (a fresh node: see JoinRequest.Fresh) and
// in the configuration (a node the master's command line did not name is
// then a learner the leader added).
func (e *Engine) announce() {
	defer e.wg.Done()
	delay := e.cfg.Timing.JoinFirst
	for {
		running, empty := e.joinRound(!e.admitted.Load())
		if e.creating.Load() && !e.admitted.Load() {
			switch {
			case running:
				e.creating.Store(false) // it joins the cluster that runs
			case MayCreate(e.cfg.ID, e.cfg.Voters, empty):
				e.create()
			}
		}
		if e.admitted.Load() && e.inConfig() {
			return
		}
		select {
		case <-time.After(delay):
		case <-e.stop:
			return
		}
		delay = min(2*delay, e.cfg.Timing.JoinMax)
	}
}

// mayCreate decides, on the master without Raft state, whether it creates
// the cluster now: only when no peer has one running and a majority of the
// voters, itself included, hold no Raft state (MayCreate). A master that
// lost its data while the others were out of reach must not create a
// cluster of its own: it would vote with an empty log, and the entries
// the others hold committed would be lost. When it cannot tell yet, it
// starts without taking part and goes on asking (announce; create). A
// master whose database holds data waits here until it can tell (its log
// must start after that data, before its Raft node starts).
func (e *Engine) mayCreate() (bool, error) {
	for wait := e.cfg.Timing.JoinFirst; ; wait = min(2*wait, e.cfg.Timing.JoinMax) {
		running, empty := e.joinRound(true)
		switch {
		case running:
			return false, nil
		case MayCreate(e.cfg.ID, e.cfg.Voters, empty), e.bug(faults.CreateAlone):
			return true, nil
		case e.st.Applied() == 0:
			e.creating.Store(true)
			e.cfg.Log.Info("waiting for a majority of the voters to answer before creating the cluster (or for one that runs it)", "voters", len(e.cfg.Voters))
			return false, nil
		}
		e.cfg.Log.Info("this node holds data but no Raft state: it waits for a majority of the voters to answer before it creates the cluster (or for one that runs it)", "voters", len(e.cfg.Voters))
		select {
		case <-time.After(wait):
		case <-e.stop:
			return false, ErrStopped
		}
	}
}

// MayCreate says whether node self, the master, may create the cluster
// with voters, given the voters that answered that they hold no Raft
// state: a majority of them, itself included, must. A cluster created
// otherwise could elect a leader that lacks entries a majority of the
// running cluster acknowledged (the simulator found one, seed 1100).
func MayCreate(self uint64, voters, empty []uint64) bool {
	n := 0
	for _, v := range voters {
		if v == self || slices.Contains(empty, v) {
			n++
		}
	}
	return slices.Contains(voters, self) && n > len(voters)/2
}

// create creates the cluster on the master, which started without Raft
// state and without taking part (see mayCreate).
func (e *Engine) create() {
	if err := e.rep.Node().Bootstrap(e.cfg.Voters); err != nil {
		e.cfg.Log.Warn("creating the cluster failed; this node tries again", "err", err)
		return
	}
	e.creating.Store(false)
	e.admitted.Store(true)
	e.cfg.Log.Info("a majority of the voters hold no Raft state: this node creates the cluster", "voters", len(e.cfg.Voters))
}

// joinRound announces this node to every known peer once. It reports
// whether any of them has a running cluster, and which of them hold no
// Raft state.
func (e *Engine) joinRound(fresh bool) (running bool, empty []uint64) {
	for id, u := range e.peerURLs() {
		if id == e.cfg.ID {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := e.cfg.Calls.RaftJoin(ctx, u, &replication.JoinRequest{ID: e.cfg.ID, URL: e.cfg.URL, Instance: e.boot, Fresh: fresh, Data: e.st.Applied()})
		cancel()
		var refused *replication.JoinRefusedError
		if errors.As(err, &refused) {
			e.cfg.Log.Warn("join refused", "err", err)
			select {
			case e.fatal <- err:
			default:
			}
			return false, empty
		}
		if err != nil {
			e.noteJoinTrouble(u, err)
			continue
		}
		e.joinTrouble.Store(nil)
		for pid, pu := range resp.Peers {
			// The command line's addresses win: they are how this node
			// reaches those peers (the others may reach them otherwise).
			if _, given := e.cfg.Peers[pid]; !given && pid != e.cfg.ID && pu != "" {
				e.tr.SetPeer(pid, pu)
			}
		}
		running = running || resp.Running
		if resp.Empty {
			empty = append(empty, id)
		}
		if resp.Admitted && fresh && !e.admitted.Load() {
			e.cfg.Log.Info("admitted", "by", cluster.CommandLineID(id), "url", u, "serves_from_index", resp.Commit)
			e.catchUpTo.Store(resp.Commit)
			e.admitted.Store(true)
		}
	}
	return running, empty
}

func (e *Engine) inConfig() bool {
	voter, learner := Membership(e.rep.Node().Status().Config, e.cfg.ID)
	return voter || learner
}

func (e *Engine) peerURLs() map[uint64]string { return e.tr.Peers() }

// HandleJoin records a node's URL and answers with the URLs known here. On
// the leader, a node outside the configuration is added as a learner.
func (e *Engine) HandleJoin(ctx context.Context, req *replication.JoinRequest) (*replication.JoinResponse, error) {
	if req.ID == 0 || req.URL == "" {
		return nil, &replication.JoinRefusedError{Reason: "a join needs the node's id and URL"}
	}
	if req.ID == e.cfg.ID && req.Instance != e.boot {
		return nil, &replication.JoinRefusedError{Reason: fmt.Sprintf("node id %d is already held by the live node at %s: start this node with another id, or stop that one first", cluster.CommandLineID(req.ID), e.cfg.URL)}
	}
	moved := false
	if old := e.tr.Peer(req.ID); old != "" && old != req.URL && req.ID != e.cfg.ID {
		// Another process claims a known id. It takes the id over only if
		// the node at the known address is gone (the node moved: a dead
		// host replaced) or is the same process (reached another way).
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		inst := e.cfg.Calls.Instance(lctx, old)
		cancel()
		if inst != "" && inst != req.Instance {
			return nil, &replication.JoinRefusedError{Reason: fmt.Sprintf("node id %d is already held by the live node at %s: start this node with another id, or stop that one first", cluster.CommandLineID(req.ID), old)}
		}
		moved = inst == ""
	}
	if _, given := e.cfg.Peers[req.ID]; (!given || moved) && req.ID != e.cfg.ID {
		// The command line's address wins while a node answers there (it
		// is how this node reaches it, which may differ from how the node
		// names itself); a node that moved is reached where it says.
		if moved {
			e.cfg.Log.Info("a node answers at a new address; the old one does not answer", "peer", cluster.CommandLineID(req.ID), "old_url", e.tr.Peer(req.ID), "url", req.URL)
		}
		e.tr.SetPeer(req.ID, req.URL)
	}
	resp := &replication.JoinResponse{Peers: e.peerURLs()}
	if e.rep == nil || !e.admitted.Load() {
		resp.Reason = "this node is starting"
		resp.Empty = e.fresh && !e.admitted.Load()
		return resp, nil
	}
	st := e.rep.Node().Status()
	resp.Running = st.Commit > 0
	d := DecideJoin(st, e.rep.Node().Rejoining(), req, e.namedVoter(req.ID), e.bug)
	resp.Reason = d.Reason
	if d.Change != nil {
		if match := st.Progress[req.ID].Match; d.Change.Type == pb.ConfChangeRemoveNode && match > 0 {
			e.cfg.Log.Warn(d.Log, "peer", cluster.CommandLineID(req.ID), "had_index", match) // it did lose data
		} else if d.Change.Type == pb.ConfChangeRemoveNode {
			e.cfg.Log.Info(d.Log, "peer", cluster.CommandLineID(req.ID))
		} else {
			e.cfg.Log.Info(d.Log, "peer", cluster.CommandLineID(req.ID), "url", req.URL)
		}
		cctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout)
		err := e.rep.Node().ChangeMembership(cctx, *d.Change)
		cancel()
		if err != nil {
			return nil, &replication.UnavailableError{Reason: "changing the configuration: " + err.Error()}
		}
		if d.Change.Type == pb.ConfChangeRemoveNode {
			e.moveLeadershipForTest(req.ID)
		}
	}
	if _, self := e.rep.Node().Leader(); self && d.FinishRejoins {
		e.finishRejoins()
	}
	resp.Admitted = d.Admitted
	if d.Admitted {
		resp.Commit = st.Commit
	}
	return resp, nil
}

// JoinDecision is what a node that is admitted itself does with a join
// request (see DecideJoin).
type JoinDecision struct {
	Admitted bool   // the node may take part (see replication.JoinRequest.Fresh)
	Reason   string // why not
	// Change is the configuration change the leader makes first (nil:
	// none), and Log what it logs then.
	Change *pb.ConfChange
	Log    string
	// FinishRejoins: the leader then takes the nodes being added back a
	// step further (see RejoinSteps).
	FinishRejoins bool
}

// DecideJoin decides, from Raft's status st on the node asked, and its
// record rj of nodes being added back, what comes of req. named says
// whether the master's command line names the node a voter; bug says
// whether a deliberate defect is switched on (fault builds only). The
// engine and the simulator (package sim) both decide with it.
func DecideJoin(st raft.Status, rj Rejoining, req *replication.JoinRequest, named bool, bug func(faults.Bug) bool) JoinDecision {
	voter, learner := Membership(st.Config, req.ID)
	if st.RaftState != raft.StateLeader {
		switch {
		case !req.Fresh && (voter || learner):
			return JoinDecision{Admitted: true}
		case req.Fresh && st.Lead == 0 && st.Term <= 1 && st.Commit > 0,
			req.Fresh && st.Lead == 0 && req.Data > 0 && req.Data >= st.Applied,
			req.Fresh && st.Lead == 0 && faults.Enabled && bug(faults.AdmitFreshVoter):
			// Either this node holds the configuration the cluster was
			// created with and no election has been held yet (the first
			// is in term 2): nothing was acknowledged by a majority, so a
			// node without data loses nothing by voting in the first one.
			// Or the node holds a database copied from another node, at
			// least as far as this node applied the log: an
			// operator rebuilding the cluster from its best copy
			// (docs/REPLICATION.md, "Restoring a node").
			// Otherwise a node without Raft state may have lost what it
			// acknowledged: were it to vote, a node without those entries
			// could win an election, and they would be lost. Only the
			// leader admits it then, out of the configuration and back as
			// a learner.
			return JoinDecision{Admitted: true}
		}
		return JoinDecision{Reason: "ask the leader"}
	}
	_, rejoining := rj[req.ID]
	switch {
	case rejoining:
		// Taken out to be added back after it lost its data: as a
		// learner first, a voter once it holds the log (rejoin.go).
		return JoinDecision{Admitted: true, FinishRejoins: !(faults.Enabled && bug(faults.RejoinOnce))}
	case !voter && !learner && req.Fresh && named:
		// A voter the master's command line names that lost its data and
		// is out of the configuration (taking it out and adding it again
		// did not finish): it votes again. (A voter removed by hand that
		// merely restarts is not fresh, and comes back only as a learner.)
		return JoinDecision{Admitted: true, Log: "node joins as a voter",
			Change: &pb.ConfChange{Type: pb.ConfChangeAddNode, NodeID: req.ID, Context: []byte(req.URL)}}
	case !voter && !learner:
		return JoinDecision{Admitted: true, Log: "node joins as a learner",
			Change: &pb.ConfChange{Type: pb.ConfChangeAddLearnerNode, NodeID: req.ID, Context: []byte(req.URL)}}
	case req.Fresh && (voter && !(faults.Enabled && bug(faults.AdmitFreshVoter)) || st.Progress[req.ID].Match > 0):
		// The node lost its data. A voter may have lost entries it
		// acknowledged, which a majority counted: voting with an empty
		// log, it could elect a node that lacks them. (Whether this leader
		// heard from it since does not tell: its acknowledgements may
		// have gone to an earlier leader.) And this leader may still
		// count its old log. Take it out, marked to be added again, so
		// that it votes only once it holds the log again and the leader
		// probes it afresh; whichever node leads then adds it back (see
		// rejoin.go), this one at once.
		return JoinDecision{Admitted: true, Log: "node holds no Raft state (it lost its data, or starts for the first time in a running cluster); it is taken out of the configuration and added back",
			Change:        &pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: req.ID, Context: rejoinContext(RejoinNote{URL: req.URL, Voter: voter})},
			FinishRejoins: !(faults.Enabled && bug(faults.RejoinOnce))}
	}
	return JoinDecision{Admitted: true}
}

// namedVoter reports whether the command line names node id a voter.
func (e *Engine) namedVoter(id uint64) bool {
	for _, v := range e.cfg.Voters {
		if v == id {
			return true
		}
	}
	return false
}

// Remove takes node id (a Raft id; see NodeID) out of the configuration
// (on the leader).
func (e *Engine) Remove(ctx context.Context, id uint64) error {
	if id == e.cfg.ID {
		return errors.New("a node cannot remove itself: send the request to another node")
	}
	st := e.rep.Node().Status()
	voter, learner := Membership(st.Config, id)
	if !voter && !learner {
		return fmt.Errorf("node %d is not in the configuration", cluster.CommandLineID(id))
	}
	cctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout)
	defer cancel()
	return e.rep.Node().ChangeMembership(cctx, pb.ConfChange{Type: pb.ConfChangeRemoveNode, NodeID: id})
}

// TransferLeadership asks the leader to hand over to node id (a Raft id;
// see NodeID), and waits
// (up to the ack timeout) until it has.
func (e *Engine) TransferLeadership(ctx context.Context, id uint64) error {
	st := e.rep.Node().Status()
	if st.RaftState != raft.StateLeader {
		return &NotLeaderError{Leader: st.Lead}
	}
	if voter, _ := Membership(st.Config, id); !voter {
		return fmt.Errorf("node %d is not a voter", cluster.CommandLineID(id))
	}
	e.rep.Node().TransferLeadership(ctx, id)
	deadline := time.Now().Add(e.cfg.AckTimeout)
	for time.Now().Before(deadline) {
		if e.rep.Node().Status().Lead == id {
			return nil
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fmt.Errorf("node %d did not take over within %v", cluster.CommandLineID(id), e.cfg.AckTimeout)
}

// noteJoinTrouble records, and logs in plain words, why announcing this
// node to the peer at url failed.
func (e *Engine) noteJoinTrouble(url string, err error) {
	if e.isMember() {
		return // a member whose peer is down: the Raft transport says so
	}
	level, why := slog.LevelInfo, fmt.Sprintf("the node at %s cannot be reached yet (%v): this node keeps trying; check that it runs and that -master, -slaves, -host and -port name it as the others reach it", url, err)
	if errors.Is(err, replication.ErrPeerAuth) {
		level, why = slog.LevelWarn, fmt.Sprintf("the node at %s refuses this node: wrong cluster secret; start it with the cluster's -secret (or $DDB_CLUSTER_SECRET), the same on every node", url)
	}
	e.joinTrouble.Store(&why)
	e.cfg.Log.Log(context.Background(), level, "this node cannot join the cluster: "+why, "peer_url", url)
}

// seedRaft gives a database that holds data but no Raft state a log that
// starts after its applied index. A copy of another node's database keeps
// the term and configuration its data stands at, so the new log agrees with
// the logs of nodes that hold the same data; a database the former engine
// built starts at term 1 with the voters' configuration.
func seedRaft(st *store.Store, voters []uint64) error {
	pos, err := st.DataPosition(context.Background())
	if err != nil {
		return err
	}
	term, conf := pos.Term, pos.Conf
	if term == 0 {
		term = 1
	}
	if conf == nil {
		cs := pb.ConfState{Voters: voters}
		if conf, err = cs.Marshal(); err != nil {
			return err
		}
	}
	hs := pb.HardState{Term: term, Commit: st.Applied()}
	hard, err := hs.Marshal()
	if err != nil {
		return err
	}
	return st.SeedRaft(st.Applied(), term, hard, conf)
}
