package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/consensus"
	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// A simulated node goes by the production timing table, and compacts its
// log early, so that snapshots are sent often.
var timing = cluster.DefaultTiming()

const (
	tick    = cluster.DefaultTick
	logKeep = 64
	// logKeepBytes bounds the kept log's data too (a few large writes
	// compact it sooner).
	logKeepBytes = 16 << 10
	ackTimeout   = 4 * time.Second // how long a write or a configuration change may wait
)

// node is one simulated node.
type node struct {
	s    *sim
	i    int    // command-line id: 0 is the master
	id   uint64 // Raft id
	path string // its database file

	up       bool
	inc      int // incarnation: bumped at every start; events of an earlier one are ignored
	st       *store.Store
	rep      *consensus.Replica
	n        *consensus.Node
	admitted bool            // takes Raft messages (see replication.JoinRequest.Fresh)
	offset   time.Duration   // its clock's error
	slowTill time.Duration   // applies slowly until then (fault "slow-apply")
	applying bool            // an apply is scheduled
	joining  time.Duration   // the wait before it announces itself again
	fresh    bool            // started without Raft state
	creating bool            // the master, without Raft state, creates the cluster once it may
	empties  map[uint64]bool // this round's answers: which peers hold no Raft state
	wiped    bool            // lost its data, and is not back as a voter holding the log

	ops     []*op
	changes map[uint64]*change // configuration changes this node (leading) waits for, by node
}

func newNode(s *sim, i int) *node {
	return &node{s: s, i: i, id: cluster.RaftID(i), path: filepath.Join(s.o.Dir, fmt.Sprintf("slave%d.db", i))}
}

// clock is the node's time.
func (nd *node) clock() time.Time { return epoch.Add(nd.s.now + nd.offset) }

// mono is every node's clock that never jumps (read leases are timed by
// it): the simulation's time, which the clock faults do not move.
func (s *sim) mono() time.Time { return epoch.Add(s.now) }

// url is how the others know the node.
func url(id uint64) string { return fmt.Sprintf("sim://node%d", id-1) }

// bug says whether the deliberate defect name is on (fault builds only), as
// the engine's does.
func (s *sim) bug(name faults.Bug) bool { return faults.On(s.o.Bug, name) }

// start opens the node's store and Raft state as consensus.StartEngine
// does, and schedules its ticks and its background work.
func (s *sim) start(nd *node) error {
	storeBug := ""
	if faults.Enabled {
		storeBug = s.o.Bug
	}
	st, err := store.Open(store.Options{Path: nd.path, ReadConns: 1, Synchronous: "OFF", Seeds: s.rng.Int64, InjectBug: storeBug})
	if err != nil {
		return fmt.Errorf("node %d: %w", nd.i, err)
	}
	if _, err := st.ClaimRaftNode(nd.id); err != nil {
		st.Close()
		return err
	}
	fresh, err := st.RaftStateEmpty(context.Background())
	if err != nil {
		st.Close()
		return err
	}
	applied := st.Applied()
	admitted := !fresh
	var voters []uint64
	nd.fresh, nd.creating = fresh, false
	if fresh {
		applied = 0 // its data, if any, is replaced by a snapshot
		if nd.i == 0 {
			// The engine's first join round (consensus.Engine.mayCreate).
			running, empty := s.firstRound(nd)
			switch {
			case running:
			case consensus.MayCreate(nd.id, s.voters(), empty), s.bug(faults.CreateAlone):
				admitted, voters = true, s.voters()
			default:
				nd.creating = true
			}
		}
	}
	nd.inc++
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if s.o.Log != nil {
		log = slog.New(slog.NewTextHandler(logWriter{s, nd.i}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	rep, err := consensus.OpenReplica(context.Background(), st, transport{s, nd, nd.inc}, consensus.ReplicaConfig{
		Applied: &applied, Now: nd.clock, Seeds: s.rng.Int64,
		Node: consensus.Config{ID: nd.id, Voters: voters, Timing: timing, Preferred: 1,
			LogKeep: logKeep, LogKeepBytes: logKeepBytes, Now: nd.clock, Mono: s.mono, Log: log, InjectBug: s.o.Bug},
	})
	if err != nil {
		st.Close()
		return fmt.Errorf("node %d: %w", nd.i, err)
	}
	nd.st, nd.rep, nd.n = st, rep, rep.Node()
	nd.up, nd.admitted, nd.applying = true, admitted, false
	nd.changes = map[uint64]*change{}
	nd.joining = timing.JoinFirst
	s.log(fmt.Sprintf("start %d fresh=%v admitted=%v applied=%d", nd.i, fresh, admitted, applied))
	inc := nd.inc
	var ticker func()
	ticker = func() {
		if nd.inc != inc || !nd.up {
			return
		}
		s.guard(nd, "tick", func() { nd.n.Tick() })
		s.step(nd)
		s.after(tick, "", ticker)
	}
	s.after(s.between(0, tick), "", ticker)
	var watch func()
	watch = func() {
		if nd.inc != inc || !nd.up {
			return
		}
		if _, self := nd.n.Leader(); self && !s.bug(faults.RejoinOnce) {
			s.finishRejoins(nd)
		}
		s.after(timing.RejoinEvery, "", watch)
	}
	s.after(timing.RejoinEvery, "", watch)
	s.after(0, "", func() { s.announce(nd, inc) })
	return nil
}

// logWriter sends a node's log lines to the run's log (not its trace).
type logWriter struct {
	s *sim
	i int
}

func (w logWriter) Write(b []byte) (int, error) {
	w.s.o.Log(fmt.Sprintf("[%9.3fs] node %d: %s", w.s.now.Seconds(), w.i, strings.TrimSpace(string(b))))
	return len(b), nil
}

// voters are the voters the master's command line names: every node.
func (s *sim) voters() []uint64 {
	var out []uint64
	for _, o := range s.nodes {
		out = append(out, o.id)
	}
	return out
}

// firstRound is what the master's first join round learns at once from
// the nodes it can reach both ways: whether one runs the cluster, and
// which hold no Raft state.
func (s *sim) firstRound(nd *node) (running bool, empty []uint64) {
	for _, o := range s.upNodes() {
		if o == nd || s.net.cutBetween(nd.id, o.id) {
			continue
		}
		r := s.joinAnswer(o)
		running = running || r.Running
		if r.Empty {
			empty = append(empty, o.id)
		}
	}
	return running, empty
}

// joinAnswer is the part of a node's answer to a join request that does
// not depend on the request (consensus.Engine.HandleJoin).
func (s *sim) joinAnswer(o *node) replication.JoinResponse {
	if !o.admitted {
		return replication.JoinResponse{Reason: "this node is starting", Empty: o.fresh}
	}
	return replication.JoinResponse{Running: o.n.RecentStatus().Commit > 0}
}

// stop stops the node as a crash would: its Raft state and store close,
// and what waited on it learns nothing more.
func (nd *node) stop() {
	nd.n.Stop()
	nd.st.Close()
	nd.up = false
	nd.inc++
	for _, o := range nd.ops {
		o.forget()
		o.finish(result{outcome: unknownOutcome, node: nd.i})
	}
	nd.ops = nil
	nd.changes = nil
}

// wipe deletes the node's files (it must be down).
func (nd *node) wipe() {
	for _, p := range []string{nd.path, store.RaftLogPath(nd.path)} {
		for _, f := range []string{p, p + "-wal", p + "-shm"} {
			os.Remove(f)
		}
	}
}

// guard runs f on nd: a panic in Raft or the store (a broken invariant)
// is an anomaly, and the node crashes.
func (s *sim) guard(nd *node, what string, f func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.anomaly("node: node %d panicked in %s: %v", nd.i, what, r)
			if nd.up {
				nd.stop()
			}
			ok = false
		}
	}()
	f()
	return true
}

// step takes one step of the node's loop, then schedules its applier and
// settles what waits on it.
func (s *sim) step(nd *node) {
	if !nd.up {
		return
	}
	var err error
	if !s.guard(nd, "step", func() { err = nd.n.Step() }) {
		return
	}
	if err != nil {
		s.anomaly("node: node %d stopped: %v", nd.i, err)
		nd.stop()
		return
	}
	s.noteLeader(nd)
	s.scheduleApply(nd)
	s.settle(nd)
}

// scheduleApply has the node's applier apply its next batch after a
// while (longer while the node is slow): the loop goes on meanwhile.
func (s *sim) scheduleApply(nd *node) {
	if nd.applying || nd.n.Unapplied() == 0 {
		return
	}
	nd.applying = true
	d := s.between(100*time.Microsecond, 2*time.Millisecond)
	if s.now < nd.slowTill {
		d = s.between(50*time.Millisecond, 400*time.Millisecond)
	}
	inc := nd.inc
	s.after(d, "", func() {
		if nd.inc != inc || !nd.up {
			return
		}
		nd.applying = false
		var err error
		if !s.guard(nd, "apply", func() { _, err = nd.n.ApplyNext() }) {
			return
		}
		if err != nil {
			s.anomaly("node: node %d failed to apply: %v", nd.i, err)
			nd.stop()
			return
		}
		s.log(fmt.Sprintf("applied %d %d", nd.i, nd.st.Applied()))
		s.scheduleApply(nd)
		s.settle(nd)
		// What the applier sends (a leader's report of what it applied)
		// goes out with the next step.
		s.step(nd)
	})
}

// change is a configuration change a leader waits for, as
// consensus.Node.ChangeMembership does: proposed again until the
// configuration holds it, given up after the ack timeout.
type change struct {
	cc       pb.ConfChange
	proposed time.Duration
	deadline time.Duration
	done     func(ok bool)
}

// changeConf proposes cc on nd, which leads, and calls done (if set) with
// whether the configuration came to hold it.
func (s *sim) changeConf(nd *node, cc pb.ConfChange, done func(ok bool)) {
	if c := nd.changes[cc.NodeID]; c != nil {
		if c.cc.Type != cc.Type {
			if done != nil {
				done(false) // another change of that node is under way
			}
			return
		}
		if done != nil {
			prev := c.done
			c.done = func(ok bool) {
				if prev != nil {
					prev(ok)
				}
				done(ok)
			}
		}
		return
	}
	s.log(fmt.Sprintf("propose %d %s %d", nd.i, cc.Type, cc.NodeID-1))
	nd.changes[cc.NodeID] = &change{cc: cc, proposed: s.now, deadline: s.now + ackTimeout, done: done}
	if s.guard(nd, "propose change", func() { _ = nd.n.ProposeChange(cc) }) {
		s.after(0, "", func() { s.step(nd) })
	}
}

// settleChanges finishes the configuration changes nd waits for.
func (s *sim) settleChanges(nd *node) {
	if len(nd.changes) == 0 {
		return
	}
	st := nd.n.RecentStatus()
	for _, id := range sortedKeys(nd.changes) {
		c := nd.changes[id]
		var ok, over bool
		switch {
		case consensus.HasChange(st, c.cc):
			ok, over = true, true
		case st.RaftState != raft.StateLeader || s.now >= c.deadline:
			over = true
		case s.now-c.proposed >= timing.ChangeResend:
			c.proposed = s.now
			s.guard(nd, "propose change", func() { _ = nd.n.ProposeChange(c.cc) })
			s.after(0, "", func() { s.step(nd) })
		}
		if over {
			delete(nd.changes, id)
			s.log(fmt.Sprintf("changed %d %s %d ok=%v", nd.i, c.cc.Type, id-1, ok))
			if c.done != nil {
				c.done(ok)
			}
		}
	}
}

// finishRejoins, on the leader, takes each node being added back a step
// further (consensus.RejoinSteps, as the engine does).
func (s *sim) finishRejoins(nd *node) {
	for _, cc := range consensus.RejoinSteps(nd.n.RecentStatus(), nd.n.Rejoining(), url) {
		s.changeConf(nd, cc, nil)
	}
}

// inConfig says whether nd is in its own view of the configuration.
func (nd *node) inConfig() bool {
	voter, learner := consensus.Membership(nd.n.RecentStatus().Config, nd.id)
	return voter || learner
}

// announce sends a join request to every other node, until nd is admitted
// and in the configuration (consensus.Engine.announce).
func (s *sim) announce(nd *node, inc int) {
	if nd.inc != inc || !nd.up {
		return
	}
	if nd.admitted && nd.inConfig() {
		return
	}
	req := replication.JoinRequest{ID: nd.id, URL: url(nd.id), Fresh: !nd.admitted, Data: nd.st.Applied()}
	nd.empties = map[uint64]bool{}
	for _, o := range s.nodes {
		if o == nd {
			continue
		}
		s.rpc(nd, o, fmt.Sprintf("join %d->%d fresh=%v", nd.i, o.i, req.Fresh), func(reply func(string, func())) {
			s.handleJoin(o, req, func(r replication.JoinResponse) {
				reply(fmt.Sprintf("joined %d<-%d admitted=%v running=%v empty=%v %s", nd.i, o.i, r.Admitted, r.Running, r.Empty, r.Reason), func() {
					if nd.inc != inc {
						return
					}
					if r.Admitted && req.Fresh && !nd.admitted {
						nd.admitted = true
						s.log(fmt.Sprintf("admitted %d by %d", nd.i, o.i))
					}
					s.mayCreate(nd, o, r)
				})
			})
		})
	}
	s.after(nd.joining, "", func() { s.announce(nd, inc) })
	nd.joining = min(2*nd.joining, timing.JoinMax)
}

// mayCreate is the master's decision, as its join round's answers come
// in, to create the cluster (consensus.Engine.announce and create).
func (s *sim) mayCreate(nd, from *node, r replication.JoinResponse) {
	if !nd.creating || nd.admitted || !nd.up {
		return
	}
	if r.Running {
		nd.creating = false
		return
	}
	if r.Empty {
		nd.empties[from.id] = true
	}
	if !consensus.MayCreate(nd.id, s.voters(), sortedKeys(nd.empties)) {
		return
	}
	if s.guard(nd, "bootstrap", func() {
		if err := nd.n.Bootstrap(s.voters()); err != nil {
			s.anomaly("node: node %d could not create the cluster: %v", nd.i, err)
		}
	}) {
		nd.creating, nd.admitted = false, true
		s.log(fmt.Sprintf("create %d", nd.i))
		s.after(0, "", func() { s.step(nd) })
	}
}

// handleJoin is a node's answer to a join request (consensus.Engine.HandleJoin).
func (s *sim) handleJoin(nd *node, req replication.JoinRequest, answer func(replication.JoinResponse)) {
	base := s.joinAnswer(nd)
	if !nd.admitted {
		answer(base)
		return
	}
	d := consensus.DecideJoin(nd.n.RecentStatus(), nd.n.Rejoining(), &req, true, s.bug)
	finish := func() {
		if _, self := nd.n.Leader(); self && d.FinishRejoins {
			s.finishRejoins(nd)
		}
	}
	if d.Change == nil {
		finish()
		base.Admitted, base.Reason = d.Admitted, d.Reason
		answer(base)
		return
	}
	s.log(fmt.Sprintf("decide %d: %s (%s %d)", nd.i, d.Log, d.Change.Type, d.Change.NodeID-1))
	inc := nd.inc
	s.changeConf(nd, *d.Change, func(ok bool) {
		if nd.inc != inc || !nd.up {
			return
		}
		if !ok {
			base.Reason = "changing the configuration failed"
			answer(base)
			return
		}
		finish()
		base.Admitted = true
		answer(base)
	})
}
