package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/store"
)

// Transport delivers Raft messages to other nodes. Send must not block on
// the network: a message that cannot be delivered is dropped (Raft
// retries). Every batch a leader sends carries what it has applied
// (ReportedApplied); Report sends that report to nodes with no message
// to carry it.
type Transport interface {
	Send(msgs []pb.Message)
	Report(to []uint64)
}

// Config configures a Node.
type Config struct {
	ID uint64
	// Voters form the configuration the cluster starts with, the first
	// time it starts (later, the log's configuration rules). A node that
	// joins a running cluster starts with none, and waits for the leader
	// to add it (AddLearner).
	Voters []uint64
	// OnConfChange is told of every configuration change the log applies,
	// with its context (the URL of a node being added); may be nil.
	OnConfChange func(cc pb.ConfChange)
	// Applied is the last log index the database has applied: Raft gives
	// nothing at or below it to apply again.
	Applied uint64
	// Ticks drives Raft's clock: one tick per value received. Production
	// passes a time.Ticker's channel; tests, one of their own.
	Ticks <-chan time.Time
	// Timing is every duration and count of ticks the node goes by (zero:
	// cluster.DefaultTiming). A negative Timing.HoldProposals holds no
	// proposal.
	Timing cluster.Timing
	// Apply applies committed entries, in log order, and returns what each
	// entry's proposer is answered; an error stops the node (its database
	// failed). It runs on the node's applier goroutine, never on Raft's
	// loop: a long entry holds up no heartbeat, vote or append. Each call
	// has the committed entries of one Ready. Entries that are not
	// proposals come with nil data: they only move the applied index.
	Apply func(entries []Entry) ([]any, error)
	// Preferred is the node that should lead whenever it is up and caught
	// up (the master); 0: no preference. The leader hands leadership to it
	// once it has held the leader's whole log for Timing.PreferredAfter
	// ticks in a row, so leadership never flaps.
	Preferred uint64
	// Log logs (default: nothing).
	Log *slog.Logger
	// ApplyRecordsConf: Apply records each entry's Conf (the configuration
	// a configuration change reaches) in the database with the entry, so
	// the node does not write it separately.
	ApplyRecordsConf bool
	// LogKeep is how many applied entries the log keeps for followers
	// that fall behind; once it holds an eighth more, it is compacted (0:
	// never). A follower behind the kept log gets a snapshot.
	LogKeep uint64
	// LogKeepBytes bounds the data of those applied entries as well (0:
	// no bound): replaying a log much larger than the database costs more
	// than a snapshot of it (a load's chunks, for a node that lost its
	// data).
	LogKeepBytes uint64
	// Installed is told when a snapshot from the leader replaced the
	// database (may be nil).
	Installed func(index uint64)
	// Restamp, when set, rewrites in place the data of a proposal that
	// reached this node from another node (the proposer's data, without
	// the proposal id): the leader logs it with its own clock and seed.
	Restamp func(data []byte)
	// Now is the node's clock (default time.Now): when a leader was last
	// heard from, how long a proposal was held, how old RecentStatus is.
	Now func() time.Time
	// Mono is a clock that never jumps (default time.Now, whose readings
	// compare by the monotonic clock): read leases are timed by it.
	Mono func() time.Time
	// InjectBug switches deliberate defects of the node on (fault builds
	// only; comma-separated): "ack-before-commit" (a proposal is answered
	// as applied when the loop takes it, and handed to Raft only some
	// 100 ms later), "endless-lease" (a leader's read lease never ends)
	// and "stale-strong-read" (a read index confirms nothing: it is 0 at
	// once).
	InjectBug string
}

// Node is one member of a Raft group. One goroutine (run) owns Raft's
// state machine (a raft.RawNode): it takes everything queued for Raft
// since its last step (proposals, messages from other nodes, requests
// such as a status or a leadership transfer) at once, then handles the
// Ready that results. Proposals that arrive while a step writes to disk
// thus go into Raft as one batch, and out to followers as one append.
type Node struct {
	cfg     Config
	rn      *raft.RawNode // the run goroutine only
	storage *Storage
	tr      Transport
	props   chan proposal // proposals, for the next step
	ops     chan func()   // work on rn, run between steps

	applied   atomic.Uint64
	installed atomic.Uint64 // snapshots installed since start
	leading   bool          // this node leads (run goroutine only)
	// What Raft last said of leadership (from each Ready's SoftState):
	// cheap to read on every request, unlike Status, which copies the
	// progress of every node.
	softLead atomic.Uint64
	// leaderContact is when a leader's append, heartbeat or snapshot last
	// reached this node (Unix nanoseconds; 0: never).
	leaderContact atomic.Int64
	softState     atomic.Uint32 // raft.StateType
	// recent is Raft's status as of the last step (at most Timing.StatusEvery
	// old, unless a step is running long), for readers that must not wait
	// for a step: /status, /metrics, the console.
	recent   atomic.Pointer[raft.Status]
	recentAt time.Time       // run goroutine only
	changed  bool            // role, leader or configuration changed since (run goroutine only)
	inbox    chan pb.Message // messages from other nodes, for Step
	// leaderApplied is the highest applied index a leader reported with
	// its messages, and reporter the node that reported last: a follower
	// answers a write it proposed once a leader has applied it too.
	leaderApplied atomic.Uint64
	reporter      atomic.Uint64
	// leadChange is closed (and replaced) when the leader this node knows
	// changes: proposals on their way to the old one are sent again.
	leadChange atomic.Pointer[chan struct{}]
	// leaderChanges counts the times a leader became known here (the Raft
	// loop counts each one as it happens).
	leaderChanges atomic.Uint64
	receiving     sync.Map // path of a received snapshot -> *snapshotFile
	// rejoining is the log's record of the nodes taken out of the
	// configuration to be added again (see Rejoining); written by the run
	// goroutine as it applies configuration changes.
	rejoining atomic.Pointer[Rejoining]

	mu          sync.Mutex
	waiting     map[uint64]*proposer   // proposal id -> its proposer
	reported    []applyWaiter          // waiting for leaderApplied
	reads       map[string]chan uint64 // read request context -> its reader
	readBatch   readBatcher            // ReadIndex's rounds, shared by the reads waiting
	confWaiters []confWaiter

	caughtUp int // ticks the preferred leader has held the whole log (run goroutine only)

	lease leaseState // the leader's read lease (run goroutine only)
	ticks int        // ticks counted since the node started, up to ElectionTicks (run goroutine only)

	// The applier: committed entries wait in applyq, in order, for the
	// applier goroutine (applyLoop). handed is the last index handed to it
	// (run goroutine only); applied is the last it applied.
	amu         sync.Mutex
	applyq      []applyBatch
	applyqBytes int // the entries' data applyq holds (see handApply)
	applyWake   chan struct{}
	applyStop   chan struct{}
	applyDone   chan struct{}
	applyFailed chan struct{} // closed when Apply failed (applyErr)
	applyErr    error
	appliedSig  atomic.Pointer[chan struct{}] // closed (and replaced) whenever applied moves
	handed      uint64

	// The proposals taken for the next step, while a leader holds them
	// (see holdBatch; the loop's only).
	batch      []pb.Entry
	batchIDs   []uint64
	late       []lateProposal // held back by the defect ack-before-commit (loop only)
	batchSince time.Time
	holdTimer  *time.Timer
	holdC      <-chan time.Time // set while the batch is held

	stepped bool // opened with Open: the caller is the loop

	stopc chan struct{}
	done  chan struct{}
	err   error
}

// Entry is one committed entry: its log index and term, the data proposed
// (nil for an entry that is not a proposal), and for a configuration
// change the configuration it reaches (encoded).
type Entry struct {
	Index, Term uint64
	Data        []byte
	Conf        []byte
	// Rejoining: the new record of nodes being added again (encoded),
	// when this configuration change altered it.
	Rejoining []byte
	// inLog: Data was left out of the apply queue (it was full); the
	// applier reads it back from the log, where it is durable.
	inLog bool
}

// Applied is what a proposer learns once its proposal is applied.
type Applied struct {
	Index  uint64
	Result any
}

// ErrStopped: the node stopped before the proposal was applied.
var ErrStopped = errors.New("the node stopped")

// Start opens the node's Raft state from its database and starts its loop
// (run) and its applier (applyLoop).
func Start(ctx context.Context, st *store.Store, tr Transport, cfg Config) (*Node, error) {
	n, err := open(ctx, st, tr, cfg)
	if err != nil {
		return nil, err
	}
	go n.applyLoop()
	go n.run()
	return n, nil
}

// Open opens the node's Raft state from its database without starting a
// goroutine: the caller is the loop. It ticks (Tick), queues messages
// (Deliver) and proposals (Submit), and calls Step, which does what one
// turn of the production loop does; committed entries wait for
// ApplyHanded. A simulator steps every node of a cluster this way, in one
// goroutine, so that a seed decides everything (package sim). Calls that
// wait for the loop (Status, ReportSnapshot, ...) run at once; Propose,
// ReadIndex and ChangeMembership, which wait for their outcome, are not
// for such a node.
func Open(ctx context.Context, st *store.Store, tr Transport, cfg Config) (*Node, error) {
	n, err := open(ctx, st, tr, cfg)
	if err != nil {
		return nil, err
	}
	n.stepped = true
	return n, nil
}

func open(ctx context.Context, st *store.Store, tr Transport, cfg Config) (*Node, error) {
	if cfg.Timing.Tick == 0 {
		cfg.Timing = cluster.DefaultTiming()
	}
	if cfg.Log == nil {
		cfg.Log = discard
	}
	storage, err := OpenStorage(ctx, st)
	if err != nil {
		return nil, err
	}
	if storage, err = mendLog(ctx, st, storage, cfg.Applied); err != nil {
		return nil, err
	}
	rc := &raft.Config{
		ID:              cfg.ID,
		ElectionTick:    cfg.Timing.ElectionTicks,
		HeartbeatTick:   cfg.Timing.HeartbeatTicks,
		Storage:         storage,
		Applied:         cfg.Applied,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		// Bytes in flight to one follower: its messages carry one entry
		// each when entries are big (a load's are 4 MiB), and 256 of them
		// held a gigabyte.
		MaxInflightBytes: 32 << 20,
		CheckQuorum:      true,
		PreVote:          true,
		ReadOnlyOption:   raft.ReadOnlySafe,
		// A follower's proposals go to the leader with its Raft messages
		// (see Node.Propose and DESIGN.md).
		Logger: raftLogger{cfg.Log},
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Mono == nil {
		cfg.Mono = time.Now
	}
	n := &Node{cfg: cfg, storage: storage, tr: tr, waiting: map[uint64]*proposer{}, reads: map[string]chan uint64{},
		props: make(chan proposal, 4096), ops: make(chan func(), 256), inbox: make(chan pb.Message, 4096),
		stopc: make(chan struct{}), done: make(chan struct{}),
		applyWake: make(chan struct{}, 1), applyStop: make(chan struct{}), applyDone: make(chan struct{}), applyFailed: make(chan struct{})}
	n.applied.Store(cfg.Applied)
	n.handed = cfg.Applied
	sig := make(chan struct{})
	n.appliedSig.Store(&sig)
	if err := n.loadRejoining(ctx); err != nil {
		return nil, err
	}
	lc := make(chan struct{})
	n.leadChange.Store(&lc)
	hard, _, _ := storage.InitialState()
	last, _ := storage.LastIndex()
	if cfg.Applied > hard.Commit && cfg.Applied <= last && !raft.IsEmptyHardState(hard) {
		// Only committed entries are applied, so the applied index is a
		// commit index too. The leader applies before it writes the
		// step's hard state, so a crash in between leaves the recorded
		// commit behind what the database applied; so does a repair,
		// which installs the leader's data at the leader's applied index
		// (see Engine.repair): catch it up (Raft refuses an applied index
		// past its commit).
		hard.Commit = cfg.Applied
		if err := storage.Save(nil, hard); err != nil {
			return nil, fmt.Errorf("record the commit index: %w", err)
		}
	}
	if n.rn, err = raft.NewRawNode(rc); err != nil {
		return nil, err
	}
	if raft.IsEmptyHardState(hard) && last == 0 && len(cfg.Voters) > 0 {
		var peers []raft.Peer
		for _, id := range cfg.Voters {
			peers = append(peers, raft.Peer{ID: id})
		}
		if err := n.rn.Bootstrap(peers); err != nil {
			return nil, fmt.Errorf("bootstrap the cluster: %w", err)
		}
	} // else restarting, or joining: the leader adds it
	n.publishStatus(true)
	return n, nil
}

// Deliver queues a message another node sent, for the next step, without
// waiting for Raft to take it: the transport answers its sender at once,
// so the sender's next batch is not held up while this node writes to
// disk. A full queue drops the message (Raft sends again).
func (n *Node) Deliver(m pb.Message) {
	n.contact(m)
	select {
	case n.inbox <- m:
	default:
	}
}

// do runs f on Raft's state machine between two steps, and waits for it.
// It reports false, without running f, if the node has stopped. It must
// not be called from the run goroutine.
func (n *Node) do(ctx context.Context, f func(rn *raft.RawNode)) bool {
	if n.stepped {
		// The caller is the loop (see Open).
		select {
		case <-n.done:
			return false
		default:
		}
		f(n.rn)
		return true
	}
	ran := make(chan struct{})
	select {
	case n.ops <- func() { f(n.rn); close(ran) }:
	case <-ctx.Done():
		return false
	case <-n.done:
		return false
	}
	select {
	case <-ran:
		return true
	case <-n.done:
		return false
	}
}

// Bootstrap creates the cluster's first configuration, voters, on a node
// that holds no Raft state and has taken part in nothing yet.
func (n *Node) Bootstrap(voters []uint64) error {
	peers := make([]raft.Peer, len(voters))
	for i, id := range voters {
		peers[i] = raft.Peer{ID: id}
	}
	var err error
	if !n.do(context.Background(), func(rn *raft.RawNode) { err = rn.Bootstrap(peers) }) {
		return ErrStopped
	}
	if err != nil {
		return fmt.Errorf("bootstrap the cluster: %w", err)
	}
	return nil
}

// Queue hands the node a message another node sent it, in order, and
// waits until it is queued for the next step.
func (n *Node) Queue(ctx context.Context, m pb.Message) error {
	n.contact(m)
	select {
	case n.inbox <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

// step hands Raft a message another node sent (run goroutine). A
// heartbeat that says entries beyond this node's log are committed comes
// from a leader that counts entries this node has lost (its data was
// wiped): Raft would stop the process on it, so it is dropped, and the
// node waits until the leader probes it afresh (see Engine.HandleJoin).
func (n *Node) step(m pb.Message) {
	switch m.Type {
	case pb.MsgVote, pb.MsgPreVote:
		if n.holdVotes(m) {
			return
		}
	case pb.MsgReadIndex:
		if len(m.Entries) == 1 && n.readLocally(m.From, m.Entries[0].Data) {
			return
		}
	case pb.MsgTransferLeader:
		if n.leading {
			n.transferAsked()
		}
	}
	if m.Type == pb.MsgHeartbeat {
		if last, _ := n.storage.LastIndex(); m.Commit > last {
			return
		}
	}
	if m.Type == pb.MsgProp && n.cfg.Restamp != nil {
		// A follower's proposals: every node they pass through stamps
		// them, the leader, which logs them, last.
		ents := make([]pb.Entry, len(m.Entries))
		for i, e := range m.Entries {
			if _, ok := proposalOf(e); ok {
				d := append([]byte(nil), e.Data...) // the message's data may be shared
				n.cfg.Restamp(d[8:])
				e.Data = d
			}
			ents[i] = e
		}
		m.Entries = ents
	}
	_ = n.rn.Step(m) // a message from a node no longer in the configuration, or of a past term: ignored
}

// publishStatus refreshes RecentStatus (run goroutine).
func (n *Node) publishStatus(force bool) {
	if now := n.cfg.Now(); force || n.stepped || n.changed || now.Sub(n.recentAt) >= n.cfg.Timing.StatusEvery {
		st := n.rn.Status()
		n.recent.Store(&st)
		n.recentAt, n.changed = now, false
	}
}

// RecentStatus is Raft's view of the node as of its last step, without
// waiting: a step that runs long (a large write being applied, a snapshot
// being installed) does not hold up the caller. Callers must not modify
// it.
func (n *Node) RecentStatus() raft.Status { return *n.recent.Load() }

// StatusWithin is Raft's view of the node now if the step under way ends
// within d, else as of its last step (RecentStatus).
func (n *Node) StatusWithin(d time.Duration) raft.Status {
	out := make(chan raft.Status, 1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case n.ops <- func() { out <- n.rn.Status() }:
	case <-t.C:
		return n.RecentStatus()
	case <-n.done:
		return n.RecentStatus()
	}
	select {
	case st := <-out:
		return st
	case <-t.C:
		return n.RecentStatus()
	case <-n.done:
		return n.RecentStatus()
	}
}

// Status is Raft's view of the node now (the zero Status once it
// stopped); it waits for the step under way to end.
func (n *Node) Status() raft.Status {
	var st raft.Status
	n.do(context.Background(), func(rn *raft.RawNode) { st = rn.Status() })
	return st
}

// AppliedIndex is the last index this node applied.
func (n *Node) AppliedIndex() uint64 { return n.applied.Load() }

// Stop stops the node's loop and fails proposals still waiting.
func (n *Node) Stop() {
	select {
	case <-n.stopc:
	default:
		close(n.stopc)
		if n.stepped {
			close(n.done)
		}
	}
	<-n.done
}

// Receive takes a batch of messages from another node, with the applied
// index it reported if it leads.
func (n *Node) Receive(report peer.Report, msgs []pb.Message) {
	if report.Applied > 0 {
		n.NoteLeaderApplied(report.From, report.Applied)
	}
	for _, m := range msgs {
		n.Deliver(m)
	}
}

// Done is closed when the node's loop has ended: stopped, or failed (Err).
func (n *Node) Done() <-chan struct{} { return n.done }

// Err is why the node's loop ended by itself (nil if it was stopped).
func (n *Node) Err() error {
	select {
	case <-n.done:
		return n.err
	default:
		return nil
	}
}

// raftLogger gives Raft's own logging to the node's log: its warnings and
// errors as such (prefixed "raft:"), its informational lines at debug level
// (elections and term changes, which the node logs in its own words), and
// its fatal conditions as panics, as Raft's default logger does.
type raftLogger struct{ log *slog.Logger }

func (l raftLogger) Debug(v ...any)              { l.log.Debug("raft: " + fmt.Sprint(v...)) }
func (l raftLogger) Debugf(f string, v ...any)   { l.log.Debug("raft: " + fmt.Sprintf(f, v...)) }
func (l raftLogger) Info(v ...any)               { l.log.Debug("raft: " + fmt.Sprint(v...)) }
func (l raftLogger) Infof(f string, v ...any)    { l.log.Debug("raft: " + fmt.Sprintf(f, v...)) }
func (l raftLogger) Warning(v ...any)            { l.log.Warn("raft: " + fmt.Sprint(v...)) }
func (l raftLogger) Warningf(f string, v ...any) { l.log.Warn("raft: " + fmt.Sprintf(f, v...)) }
func (l raftLogger) Error(v ...any)              { l.log.Error("raft: " + fmt.Sprint(v...)) }
func (l raftLogger) Errorf(f string, v ...any)   { l.log.Error("raft: " + fmt.Sprintf(f, v...)) }
func (l raftLogger) Fatal(v ...any)              { panic(fmt.Sprint(v...)) }
func (l raftLogger) Fatalf(f string, v ...any)   { panic(fmt.Sprintf(f, v...)) }
func (l raftLogger) Panic(v ...any)              { panic(fmt.Sprint(v...)) }
func (l raftLogger) Panicf(f string, v ...any)   { panic(fmt.Sprintf(f, v...)) }

// ReportUnreachable tells Raft that a message to id could not be sent.
func (n *Node) ReportUnreachable(id uint64) {
	n.do(context.Background(), func(rn *raft.RawNode) { rn.ReportUnreachable(id) })
}
