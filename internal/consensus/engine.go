package consensus

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/replication"
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
	Dir        string        // where copies are written and received (the node's work directory, on the database's file system)
	LogKeep    uint64        // applied entries the log keeps for followers behind (0: 200,000)
	// LogKeepBytes bounds the data of those entries (0: 32 MiB).
	LogKeepBytes uint64
	// MaxSnapshot is the largest snapshot this node accepts (0: 1 TiB).
	MaxSnapshot int64
	// InjectBug switches on a deliberate defect, for the fault-injection
	// suite's proof that its checkers catch broken guarantees (never set
	// otherwise), comma-separated: "ack-before-commit" (a write is
	// answered before it is proposed, and proposed 100 ms later: see
	// Config.InjectBug), "stale-strong-read" (a strong read waits for
	// nothing, neither a leader nor a read index),
	// "admit-fresh-voter" (a node that lost its data votes again at once,
	// as before the simulator found what that costs), "rejoin-once" (a
	// node taken out to be added back is added back by no one),
	// "create-alone" (a master without Raft state that reaches no running
	// cluster creates one, as before the simulator found what that
	// costs), or the schedule "transfer-mid-rejoin" (see
	// moveLeadershipForTest).
	InjectBug string
	// Peer is the client of this node's requests to the others (signed
	// as this node); Calls, if set, carries the calls that are not Raft
	// messages instead (default: Peer).
	Peer  *peer.Client
	Calls replication.PeerCaller
	Log   *slog.Logger
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
	tr    *peer.RaftTransport
	rep   *Replica
	ticks *time.Ticker
	stop  chan struct{}
	wg    sync.WaitGroup

	forwards atomic.Uint64 // request ids made here
	boot     string
	fatal    chan error
	admitted atomic.Bool // this node's Raft takes messages (see replication.JoinRequest.Fresh)
	// catchUpTo: a node admitted without Raft state serves nothing until
	// it has applied this index (see replication.JoinResponse.Commit).
	catchUpTo   atomic.Uint64
	fresh       bool                   // it started without Raft state
	creating    atomic.Bool            // the master, without Raft state, creates the cluster once it may (see mayCreate)
	leaderSeen  atomic.Int64           // unix ns when a leader was last known here (checked every tick)
	removed     atomic.Bool            // the log took this node out of the configuration while it ran
	missing     atomic.Pointer[[]int]  // named voters missing from the configuration (see MissingVoters)
	joinTrouble atomic.Pointer[string] // why the last round of announcing this node failed ("" or nil: it did not)
	check       checker                // the consistency checks (see checker.go)
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
	if cfg.LogKeepBytes == 0 {
		cfg.LogKeepBytes = cluster.Default().LogKeepBytes
	}
	if cfg.MaxSnapshot == 0 {
		cfg.MaxSnapshot = 1 << 40
	}
	e := &Engine{cfg: cfg, st: st, stop: make(chan struct{}), boot: fmt.Sprintf("%x", proposalID()), fatal: make(chan error, 1)}
	e.leaderSeen.Store(time.Now().UnixNano()) // a node that starts gives the first election its window
	if cfg.Calls == nil {
		cfg.Calls = cfg.Peer
		e.cfg.Calls = cfg.Peer
	}
	e.tr = peer.NewRaftTransport(cfg.Peer, cfg.Log)
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
		cfg.Log.Info("this database was copied from another node: its data is kept, its Raft state (that node's) is not", "from", cluster.CommandLineID(from))
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
		LogKeepBytes: cfg.LogKeepBytes,
		OnConfChange: e.confChanged,
		InjectBug:    cfg.InjectBug,
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
	e.tr.SetNode(cfg.ID, rep.Node(), cfg.Dir)
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

// admittedNode is the Raft node once it takes messages (nil before).
func (e *Engine) admittedNode() *Node {
	if e.rep == nil || !e.admitted.Load() {
		return nil
	}
	return e.rep.Node()
}

// PeerHandlers are the node-to-node endpoints of the engine, by path:
// Raft messages, the streams of them other nodes open, and snapshots the
// leader streams to this node.
func (e *Engine) PeerHandlers() map[string]http.Handler {
	node := func() peer.RaftNode {
		if n := e.admittedNode(); n != nil {
			return n
		}
		return nil // (not a nil *Node in an interface)
	}
	return e.tr.Handlers(node, e.cfg.Dir, e.cfg.MaxSnapshot)
}

// Instance is this process's token (see JoinRequest.Instance).
func (e *Engine) Instance() string { return e.boot }

// discard is a logger that logs nothing.
var discard = slog.New(slog.DiscardHandler)
