package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// EngineConfig configures a node's replication through Raft.
type EngineConfig struct {
	ID  uint64 // the master is 1, slave i is i+1
	URL string // this node's URL, as the others reach it
	// Peers are the URLs known at start (from the command line); nodes
	// learn the others' when they join.
	Peers map[uint64]string
	// Voters is the configuration the master creates the cluster with
	// (itself and the first slaves, up to five). A node that is not one
	// of them joins as a learner.
	Voters    []uint64
	Preferred uint64 // the master: leads whenever it is up and caught up
	// Timing is every duration the engine waits (zero: the defaults,
	// cluster.DefaultTiming).
	Timing     cluster.Timing
	AckTimeout time.Duration // how long a write may wait for its ack level or a leader
	Limits     store.Limits  // result limits of forwarded writes
	Dir        string        // where snapshot copies are written (the data directory)
	LogKeep    uint64        // applied entries the log keeps for followers behind (0: 200,000)
	// MaxSnapshot is the largest snapshot this node accepts (0: 1 TiB).
	MaxSnapshot int64
	// InjectBug switches on a deliberate defect, for the fault-injection
	// suite's proof that its checkers catch broken guarantees (never set
	// otherwise), comma-separated: "ack-before-commit" (a write is
	// answered before it is proposed, and proposed 100 ms later),
	// "stale-strong-read" (a strong read waits for nothing),
	// "admit-fresh-voter" (a node that lost its data votes again at once,
	// as before the simulator found what that costs), "rejoin-once" (a
	// node taken out to be added back is added back by no one),
	// "create-alone" (a master without Raft state that reaches no running
	// cluster creates one, as before the simulator found what that
	// costs), or the schedule "transfer-mid-rejoin" (see
	// moveLeadershipForTest).
	InjectBug string
	Auth      *cluster.Auth
	Name      string // this node's name in signatures
	Client    *http.Client
	Calls     replication.PeerCaller
	Log       *slog.Logger
	// CheckInterval: how often the leader logs a consistency check (0:
	// never; see checker.go).
	CheckInterval time.Duration
	// NoRepair: a follower that a check finds diverged stops serving but
	// does not replace its data with a copy of the leader's.
	NoRepair bool
}

// Engine is a node's replicated database: the client protocol's writes and
// strong reads, forwarding to whoever leads now, ack levels, membership,
// and the node-to-node endpoints.
type Engine struct {
	cfg   EngineConfig
	st    *store.Store
	tr    *HTTPTransport
	rep   *Replica
	ticks *time.Ticker
	stop  chan struct{}
	wg    sync.WaitGroup

	forwards    atomic.Uint64 // request ids made here
	boot        string
	fatal       chan error
	admitted    atomic.Bool            // this node's Raft takes messages (see replication.JoinRequest.Fresh)
	fresh       bool                   // it started without Raft state
	creating    atomic.Bool            // the master, without Raft state, creates the cluster once it may (see mayCreate)
	leaderSeen  atomic.Int64           // unix ns when a leader was last known here (checked every tick)
	removed     atomic.Bool            // the log took this node out of the configuration while it ran
	missing     atomic.Pointer[[]int]  // named voters missing from the configuration (see MissingVoters)
	joinTrouble atomic.Pointer[string] // why the last round of announcing this node failed ("" or nil: it did not)
	check       checker                // the consistency checks (see checker.go)
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

// Fatal delivers the error that keeps this node out of the cluster (its id
// is held by another live node); the node then stops.
func (e *Engine) Fatal() <-chan error { return e.fatal }

// StartEngine starts the node's Raft replica over st.
func StartEngine(st *store.Store, cfg EngineConfig) (*Engine, error) {
	if cfg.Timing.Tick <= 0 {
		cfg.Timing = cluster.DefaultTiming()
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = cluster.Default().AckTimeout
	}
	if cfg.Log == nil {
		cfg.Log = discard
	}
	if cfg.LogKeep == 0 {
		cfg.LogKeep = 200_000
	}
	if cfg.MaxSnapshot == 0 {
		cfg.MaxSnapshot = 1 << 40
	}
	e := &Engine{cfg: cfg, st: st, stop: make(chan struct{}), boot: fmt.Sprintf("%x", proposalID()), fatal: make(chan error, 1)}
	e.leaderSeen.Store(time.Now().UnixNano()) // a node that starts gives the first election its window
	e.tr = NewHTTPTransport(cfg.Auth, cfg.Name, cfg.Client, cfg.Log)
	for id, u := range cfg.Peers {
		if id != cfg.ID {
			e.tr.SetPeer(id, u)
		}
	}
	e.tr.SetPeer(cfg.ID, cfg.URL)
	// Only the master creates the cluster's first configuration; every
	// other node starts empty and learns it from the log the leader sends
	// (it votes meanwhile, so the master can win the first election). A
	// node the configuration does not name asks the leader to add it as a
	// learner (see announce). A node without Raft state (a first start,
	// or lost data) takes part once admitted (see JoinRequest.Fresh); so
	// does a master without Raft state that finds a running cluster.
	if from, err := st.ClaimRaftNode(cfg.ID); err != nil {
		return nil, err
	} else if from != 0 {
		cfg.Log.Info("this database was copied from another node: its data is kept, its Raft state (that node's) is not", "from", int(from)-1)
	}
	if st.RaftLogDiscarded {
		cfg.Log.Warn("the consensus log file belonged to another database (this one was wiped or replaced): it was emptied, and this node joins as one without Raft state", "log", store.RaftLogPath(st.Path()))
	}
	fresh, err := st.RaftStateEmpty(context.Background())
	if err != nil {
		return nil, err
	}
	var voters []uint64
	applied := st.Applied()
	e.admitted.Store(!fresh)
	e.fresh = fresh
	if fresh {
		applied = 0 // its data, if any, is replaced by a snapshot
		if cfg.ID == cfg.Preferred {
			create, err := e.mayCreate()
			if err != nil {
				return nil, err
			}
			if create {
				e.admitted.Store(true)
				voters = cfg.Voters
				if st.Applied() > 0 {
					// A database that holds data but no Raft state (an
					// operator's copy): the new log starts after it, as
					// after a snapshot.
					if err := seedRaft(st, voters); err != nil {
						return nil, err
					}
					voters, applied = nil, st.Applied()
					cfg.Log.Info("the log starts after the database's index", "index", applied)
				}
			}
		}
	}
	ticks := make(chan time.Time)
	rep, err := StartReplica(context.Background(), st, e.tr, ReplicaConfig{Applied: &applied, Node: Config{
		ID: cfg.ID, Voters: voters, Ticks: ticks, Timing: cfg.Timing, Preferred: cfg.Preferred, Log: cfg.Log,
		LogKeep:      cfg.LogKeep,
		OnConfChange: e.confChanged,
	}})
	if err != nil {
		close(e.stop)
		e.wg.Wait()
		e.tr.Close()
		return nil, err
	}
	e.rep = rep
	// Raft's clock starts once e.rep is set: the ticker reads it.
	e.ticks = time.NewTicker(cfg.Timing.Tick)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			select {
			case t := <-e.ticks.C:
				if e.lead() != 0 {
					e.leaderSeen.Store(t.UnixNano())
				}
				select {
				case ticks <- t:
				case <-e.stop:
					return
				}
			case <-e.stop:
				return
			}
		}
	}()
	e.tr.SetUnreachable(rep.Node().ReportUnreachable)
	e.tr.SetSnapshots(rep.Node(), cfg.Dir)
	e.wg.Add(2)
	go e.announce()
	go e.watchMembers()
	st.OnDigest(e.onDigest)
	if cfg.CheckInterval > 0 {
		e.wg.Add(1)
		go e.proposeChecks(cfg.CheckInterval)
	}
	go func() {
		// A node whose own database fails cannot go on: the process stops
		// (and a restart reports what is wrong with the file).
		select {
		case <-rep.Node().Done():
			if err := rep.Node().Err(); err != nil {
				select {
				case e.fatal <- fmt.Errorf("replication stopped: %w", err):
				default:
				}
			}
		case <-e.stop:
		}
	}()
	return e, nil
}

// Close stops the node's Raft work (the database stays open).
func (e *Engine) Close() {
	close(e.stop)
	e.ticks.Stop()
	e.rep.Stop()
	e.wg.Wait()
	e.tr.Close()
}

// confChanged learns the URL a configuration change carries, and whether
// this node is still in the configuration.
func (e *Engine) confChanged(cc pb.ConfChange) {
	if cc.NodeID == e.cfg.ID {
		removed := cc.Type == pb.ConfChangeRemoveNode
		if _, rejoin := rejoinNoteOf(cc); rejoin {
			e.cfg.Log.Info("the log takes this node out of the configuration to add it back after it lost its data: the leader adds it as a learner, and it votes again once it holds the log; meanwhile it answers clients 503")
		} else if removed && !e.removed.Load() {
			e.cfg.Log.Info("the log takes this node out of the configuration (removed by hand): until it is added again it answers clients 503; restarted, it joins again as a learner")
		}
		e.removed.Store(removed)
	}
	if len(cc.Context) > 0 && cc.Type != pb.ConfChangeRemoveNode {
		e.tr.SetPeer(cc.NodeID, string(cc.Context))
	}
}

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
			e.cfg.Log.Info("admitted", "by", int(id)-1, "url", u)
			e.admitted.Store(true)
		}
	}
	return running, empty
}

func (e *Engine) inConfig() bool {
	voter, learner := membership(e.rep.Node().Status().Config, e.cfg.ID)
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
		return nil, &replication.JoinRefusedError{Reason: fmt.Sprintf("node id %d is already held by the live node at %s: start this node with another id, or stop that one first", int(req.ID)-1, e.cfg.URL)}
	}
	if old := e.tr.Peer(req.ID); old != "" && old != req.URL && req.ID != e.cfg.ID {
		// Another process claims a known id. It takes the id over only if
		// the node at the known address is gone (the node moved) or is
		// the same process (reached another way).
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		inst := e.cfg.Calls.Instance(lctx, old)
		cancel()
		if inst != "" && inst != req.Instance {
			return nil, &replication.JoinRefusedError{Reason: fmt.Sprintf("node id %d is already held by the live node at %s: start this node with another id, or stop that one first", int(req.ID)-1, old)}
		}
	}
	if _, given := e.cfg.Peers[req.ID]; !given && req.ID != e.cfg.ID {
		// (The command line's address wins: it is how this node reaches it.)
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
		if d.Change.Type == pb.ConfChangeRemoveNode {
			e.cfg.Log.Warn(d.Log, "peer", int(req.ID)-1, "had_index", st.Progress[req.ID].Match)
		} else {
			e.cfg.Log.Info(d.Log, "node", int(req.ID)-1, "url", req.URL)
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
	voter, learner := membership(st.Config, req.ID)
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
		return JoinDecision{Admitted: true, Log: "node lost its data; it is taken out of the configuration and added back",
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
	voter, learner := membership(st.Config, id)
	if !voter && !learner {
		return fmt.Errorf("node %d is not in the configuration", int(id)-1)
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
	if voter, _ := membership(st.Config, id); !voter {
		return fmt.Errorf("node %d is not a voter", int(id)-1)
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
	return fmt.Errorf("node %d did not take over within %v", int(id)-1, e.cfg.AckTimeout)
}

// admittedNode is the Raft node once it takes messages (nil before).
func (e *Engine) admittedNode() *Node {
	if e.rep == nil || !e.admitted.Load() {
		return nil
	}
	return e.rep.Node()
}

// Learner reports whether this node receives the log without voting.
func (e *Engine) Learner() bool {
	_, learner := e.rep.Node().RecentStatus().Config.Learners[e.cfg.ID]
	return learner && !e.removed.Load()
}

// PeerHandlers are the node-to-node endpoints of the engine, by path.
func (e *Engine) PeerHandlers() map[string]http.Handler {
	return map[string]http.Handler{
		replication.RaftPath:     e.RaftHandler(),
		replication.StreamPath:   e.RaftStreamHandler(),
		replication.SnapshotPath: e.SnapshotHandler(),
	}
}

// RaftHandler serves Raft messages from the other nodes.
func (e *Engine) RaftHandler() http.HandlerFunc {
	return Handler(e.cfg.Auth, e.admittedNode, e.cfg.Log)
}

// RaftStreamHandler serves the streams of Raft messages other nodes open
// (see replication.StreamPath).
func (e *Engine) RaftStreamHandler() http.HandlerFunc {
	return e.tr.StreamHandler(e.admittedNode)
}

// SnapshotHandler serves snapshots the leader streams to this node.
func (e *Engine) SnapshotHandler() http.HandlerFunc {
	return SnapshotHandler(e.cfg.Auth, e.admittedNode, e.cfg.Dir, e.cfg.MaxSnapshot, e.cfg.Log)
}

// Instance is this process's token (see JoinRequest.Instance).
func (e *Engine) Instance() string { return e.boot }

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

func (e *Engine) newRequestID() string {
	return fmt.Sprintf("~node%d-%s-%016x", e.cfg.ID, e.boot, e.forwards.Add(1))
}

// Write runs a client write through the log: proposed here when this node
// leads, else forwarded to the leader; answered once this node has
// applied it. During an election it waits for a leader (up to the ack
// timeout). A forwarded write always carries a request id (the client's,
// or one made here), so a forward sent again applies once; a write
// proposed here without one is not sent again when its outcome is unknown.
func (e *Engine) Write(ctx context.Context, req *store.Request, ack cluster.Ack) (store.Outcome, error) {
	if err := e.Serving(); err != nil {
		return store.Outcome{}, err
	}
	deadline := time.Now().Add(e.cfg.AckTimeout)
	var unknown error // an earlier attempt may have been committed
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		out, err, retry := e.writeOnce(ctx, req, ack)
		if !retry {
			return out, err
		}
		var uo *replication.UnknownOutcomeError
		if errors.As(err, &uo) {
			if req.RequestID == "" {
				// Proposed here without an idempotency key (a write sent
				// to the leader without request_id records none, which
				// spares every node a row): sending it again could apply
				// it twice, so its outcome stays unknown to the client.
				return store.Outcome{}, err
			}
			unknown = err
		}
		if ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			if unknown != nil {
				return store.Outcome{}, unknownOutcome(unknown, req.RequestID)
			}
			return store.Outcome{}, err
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
}

// writeOnce makes one attempt; retry says whether another may succeed.
func (e *Engine) writeOnce(ctx context.Context, req *store.Request, ack cluster.Ack) (out store.Outcome, err error, retry bool) {
	lead, self := e.rep.Node().Leader()
	switch {
	case self:
		out, err = e.proposeHere(ctx, req, ack)
		err, retry = proposeError(err, req.RequestID)
		return out, err, retry
	case lead == 0:
		err := &replication.UnavailableError{Reason: "no leader is known: an election is under way, or a majority of the voters cannot be reached; retry shortly"}
		return out, err, e.WaitLeader(ctx)
	}
	if ack != cluster.AckAll && e.rep.Node().LeaderReports(lead) {
		return e.proposeThroughLeader(ctx, req, ack)
	}
	url := e.tr.Peer(lead)
	if url == "" {
		return out, &replication.UnavailableError{Reason: fmt.Sprintf("node %d leads, but its URL is not known here yet; retry shortly", int(lead)-1)}, true
	}
	body, err := rlog.EncodeStatements(req.Stmts)
	if err != nil {
		return out, &store.ParamError{Msg: err.Error()}, false
	}
	if req.RequestID == "" {
		// A forward always carries an idempotency key: sent again after
		// a broken connection or an election, it applies once.
		req.RequestID = e.newRequestID()
	}
	fctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout+2*time.Second)
	resp, err := e.cfg.Calls.Forward(fctx, url, &replication.ForwardRequest{Origin: int(e.cfg.ID), Body: body, Collect: req.Collect, Ack: ack, RequestID: req.RequestID,
		Schema: req.AllowSchema, Each: req.Each, Atomic: req.Atomic, Replace: req.Replace, Load: req.Load})
	cancel()
	if err != nil {
		var uo *replication.UnknownOutcomeError
		return out, err, errors.As(err, &uo) || errors.Is(err, replication.ErrUnavailable)
	}
	if resp.Error != nil {
		err := replication.FromWireError(resp.Error, e.cfg.AckTimeout)
		return store.Outcome{Index: resp.Index}, err, errors.Is(err, replication.ErrUnavailable)
	}
	results, err := store.DecodeResults(resp.Results)
	if err != nil {
		return out, err, false
	}
	out = store.Outcome{Index: resp.Index, Results: results}
	// The client reads its own write here.
	if err := e.WaitApplied(ctx, resp.Index, e.cfg.AckTimeout); err != nil {
		return out, &replication.AckTimeoutError{Index: resp.Index, Level: string(ack) + ", applied on the node that received it", After: e.cfg.AckTimeout}, false
	}
	return out, nil, false
}

// proposeThroughLeader proposes a write on this node, a follower: Raft
// carries it to the leader with this node's messages (see
// Replica.WriteThroughLeader), which spares the HTTP request a forward
// costs. It answers once the entry is applied here and on the leader (the
// quorum acknowledgement). The "all" level is forwarded instead: the
// leader knows when every node holds the entry.
func (e *Engine) proposeThroughLeader(ctx context.Context, req *store.Request, ack cluster.Ack) (out store.Outcome, err error, retry bool) {
	if req.RequestID == "" {
		// The proposal may be sent again (its first copy lost on the way
		// to a leader that died): it applies once.
		req.RequestID = e.newRequestID()
	}
	if e.bug(faults.AckBeforeCommit) {
		return e.ackBeforeCommit(req, e.rep.WriteThroughLeader), nil, false
	}
	pctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout)
	defer cancel()
	out, err = e.rep.WriteThroughLeader(pctx, req)
	if la := (*LeaderApplyError)(nil); errors.As(err, &la) {
		return out, &replication.AckTimeoutError{Index: la.Index, Level: string(ack) + ", applied on the leader", After: e.cfg.AckTimeout}, false
	}
	err, retry = proposeError(err, req.RequestID)
	return out, err, retry
}

// proposeError is what the client is told of a proposal's failure, and
// whether another attempt may succeed: nothing was logged (leadership
// changed: retry), the outcome is unknown (retry with the request id, if
// there is one), or the write's own failure, the same on every node.
func proposeError(err error, requestID string) (error, bool) {
	var nl *NotLeaderError
	var uo *UnknownOutcomeError
	switch {
	case errors.As(err, &nl):
		return &replication.UnavailableError{Reason: "leadership changed; retry"}, true
	case errors.As(err, &uo):
		return unknownOutcome(uo, requestID), true
	}
	return err, false
}

// unknownOutcome is what a client is told of a write whose outcome is
// unknown because of err: the reason once, and the advice once, however
// many layers the error went through.
func unknownOutcome(err error, requestID string) *replication.UnknownOutcomeError {
	reason := err.Error()
	var prev *replication.UnknownOutcomeError
	if errors.As(err, &prev) {
		reason = prev.Reason
	}
	return &replication.UnknownOutcomeError{Reason: reason, RequestID: requestID}
}

// ackBeforeCommit is the deliberate defect "ack-before-commit" (fault
// builds only): the write is answered at once and proposed 100 ms later.
func (e *Engine) ackBeforeCommit(req *store.Request, write func(context.Context, *store.Request) (store.Outcome, error)) store.Outcome {
	r := *req
	go func() {
		time.Sleep(100 * time.Millisecond)
		pctx, cancel := context.WithTimeout(context.Background(), e.cfg.AckTimeout)
		defer cancel()
		write(pctx, &r)
	}()
	return store.Outcome{Index: e.st.Applied(), Results: []store.Result{{RowsAffected: 1}}}
}

// proposeHere proposes on this node (the leader) and waits for the ack
// level: quorum is the proposal's own answer (committed by a majority and
// applied here); all also waits until every voter holds the entry.
func (e *Engine) proposeHere(ctx context.Context, req *store.Request, ack cluster.Ack) (store.Outcome, error) {
	if e.bug(faults.AckBeforeCommit) {
		return e.ackBeforeCommit(req, e.rep.Write), nil
	}
	pctx, cancel := context.WithTimeout(ctx, e.cfg.AckTimeout)
	defer cancel()
	out, err := e.rep.Write(pctx, req)
	if err != nil {
		var nl *NotLeaderError
		var uo *UnknownOutcomeError
		if errors.As(err, &nl) || errors.As(err, &uo) || out.Index == 0 {
			return out, err
		}
		return out, err // the write's own failure, the same on every node
	}
	if ack == cluster.AckAll {
		if err := e.waitAppliedEverywhere(pctx, out.Index); err != nil {
			return out, &replication.AckTimeoutError{Index: out.Index, Level: "all (" + err.Error() + ")", After: e.cfg.AckTimeout}
		}
	}
	return out, nil
}

// waitAppliedEverywhere waits until every node of the configuration,
// learners included, has applied index (the "all" acknowledgement level).
func (e *Engine) waitAppliedEverywhere(ctx context.Context, index uint64) error {
	if err := e.rep.WaitDurableOnAllVoters(ctx, index); err != nil {
		return err
	}
	st := e.rep.Node().Status()
	ids := []uint64{}
	for id := range st.Config.Voters.IDs() {
		ids = append(ids, id)
	}
	for id := range st.Config.Learners {
		ids = append(ids, id)
	}
	errs := make(chan error, len(ids))
	for _, id := range ids {
		go func(id uint64) {
			if id == e.cfg.ID {
				errs <- nil // the proposal's answer came after this node applied it
				return
			}
			url := e.tr.Peer(id)
			if url == "" {
				errs <- fmt.Errorf("node %d has no known URL", int(id)-1)
				return
			}
			_, err := e.cfg.Calls.RemoteApplied(ctx, url, index)
			if err != nil {
				err = fmt.Errorf("node %d: %w", int(id)-1, err)
			}
			errs <- err
		}(id)
	}
	var first error
	for range ids {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// HandleForward runs a write a follower forwarded (on the leader).
func (e *Engine) HandleForward(ctx context.Context, req *replication.ForwardRequest) *replication.ForwardResponse {
	stmts, err := rlog.DecodeStatements(req.Body)
	if err != nil {
		return &replication.ForwardResponse{Error: replication.ToWireError(&store.ParamError{Msg: err.Error()})}
	}
	if !e.IsLeader() {
		return &replication.ForwardResponse{Error: replication.ToWireError(&replication.UnavailableError{Reason: "this node does not lead any more; retry"})}
	}
	out, err := e.proposeHere(ctx, &store.Request{Stmts: stmts, Collect: req.Collect, Limits: e.cfg.Limits, RequestID: req.RequestID,
		AllowSchema: req.Schema, Each: req.Each, Atomic: req.Atomic, Replace: req.Replace, Load: req.Load}, req.Ack)
	var nl *NotLeaderError
	var uo *UnknownOutcomeError
	switch {
	case errors.As(err, &nl):
		err = &replication.UnavailableError{Reason: "leadership changed; retry"}
	case errors.As(err, &uo):
		err = unknownOutcome(uo, req.RequestID)
	}
	resp := &replication.ForwardResponse{Index: out.Index}
	if err != nil {
		resp.Error = replication.ToWireError(err)
		return resp
	}
	if resp.Results, err = store.EncodeResults(out.Results); err != nil {
		resp.Error = replication.ToWireError(err)
	}
	return resp
}

// ReadIndex is an index covering every write acknowledged before the call,
// confirmed by the leader with a majority. Without a leader: 503 at once;
// with one that cannot confirm in time: 503 after Timing.ReadWait.
func (e *Engine) ReadIndex(ctx context.Context) (uint64, error) {
	if e.bug(faults.StaleStrongRead) {
		return 0, nil
	}
	if err := e.Serving(); err != nil {
		return 0, err
	}
	if !e.WaitLeader(ctx) {
		return 0, &replication.UnavailableError{Reason: "no leader is known: an election is under way, or a majority of the voters cannot be reached; retry shortly"}
	}
	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timing.ReadWait)
	defer cancel()
	idx, err := e.rep.ReadIndex(rctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, &replication.UnavailableError{Reason: fmt.Sprintf("the leader could not confirm a read index with a majority within %v: %v", e.cfg.Timing.ReadWait, err)}
	}
	return idx, nil
}

// WaitApplied waits (up to timeout) until this node has applied index.
func (e *Engine) WaitApplied(ctx context.Context, index uint64, timeout time.Duration) error {
	if e.st.Applied() >= index {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := e.rep.WaitApplied(wctx, index); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &replication.WaitTimeoutError{Want: index, Have: e.st.Applied(), After: timeout}
	}
	return nil
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

// Client is the HTTP client the engine reaches other nodes with.
func (e *Engine) Client() *http.Client { return e.cfg.Client }

// Members lists the configuration's nodes, voters and learners, by id.
func (e *Engine) Members() []replication.Member {
	st := e.rep.Node().StatusWithin(e.cfg.Timing.StatusWait)
	var out []replication.Member
	add := func(id uint64, voter bool) {
		out = append(out, replication.Member{ID: int(id) - 1, URL: e.tr.Peer(id), Voter: voter, Leader: id == st.Lead})
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

func (removedError) Error() string {
	return "this node was removed from the cluster (POST /remove): it no longer receives the log, so its data is out of date, and nothing was run; send requests to another node, or restart this one to join again as a learner"
}
func (removedError) Unwrap() error { return replication.ErrUnavailable }

var errRemoved error = removedError{}

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

// isMember says whether this node takes part in the cluster: admitted,
// and in the configuration as a voter or a learner.
func (e *Engine) isMember() bool {
	if e.rep == nil || !e.admitted.Load() {
		return false
	}
	voter, learner := membership(e.rep.Node().RecentStatus().Config, e.cfg.ID)
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
func (notMemberError) Unwrap() error { return replication.ErrUnavailable }

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
		return fmt.Sprintf("node %d leads, but its URL is not known here yet", int(lead)-1)
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
