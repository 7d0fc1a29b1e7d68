package consensus

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/store"
)

// Transport delivers Raft messages to other nodes. Send must not block on
// the network: a message that cannot be delivered is dropped (Raft
// retries).
type Transport interface {
	Send(msgs []pb.Message)
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
	// ElectionTick and HeartbeatTick count ticks (default 10 and 1: with
	// a tick of 100 ms, an election timeout near 1 s).
	ElectionTick, HeartbeatTick int
	// Ticks drives Raft's clock: one tick per value received. Production
	// passes a time.Ticker's channel; tests, one of their own.
	Ticks <-chan time.Time
	// TickEvery is how often Ticks ticks (default 100 ms): what a wait
	// counted in ticks takes in time.
	TickEvery time.Duration
	// HoldProposals is how long a leader's own proposals may wait while
	// entries it appended are not yet committed (default
	// DefaultHoldProposals; negative: never): they go out together once
	// the entries in flight commit, or when the oldest has waited this
	// long. A leader with nothing in flight proposes at once.
	HoldProposals time.Duration
	// Apply applies committed entries, in log order, and returns what each
	// entry's proposer is answered; an error stops the node (its database
	// failed). It runs on the node's applier goroutine, never on Raft's
	// loop: a long entry holds up no heartbeat, vote or append. Each call
	// has the committed entries of one Ready. Entries that are not
	// proposals come with nil data: they only move the applied index.
	Apply func(entries []Entry) ([]any, error)
	// Preferred is the node that should lead whenever it is up and caught
	// up (the master); 0: no preference. The leader hands leadership to it
	// once it has held the leader's whole log for PreferredAfter ticks in a
	// row (default: 2 election timeouts), so leadership never flaps.
	Preferred      uint64
	PreferredAfter int
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
	// Installed is told when a snapshot from the leader replaced the
	// database (may be nil).
	Installed func(index uint64)
	// Restamp, when set, rewrites in place the data of a proposal that
	// reached this node from another node (the proposer's data, without
	// the proposal id): the leader logs it with its own clock and seed.
	Restamp func(data []byte)
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
	// recent is Raft's status as of the last step (at most statusEvery
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
	confWaiters []confWaiter

	caughtUp int // ticks the preferred leader has held the whole log (run goroutine only)

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

// proposer is a proposal's proposer, waiting for its entry.
type proposer struct {
	done chan Applied // the entry's result (the first copy's, if logged twice)
	// dropped counts the copies certainly never logged: Raft refused them
	// here (no leader), or the transport could not deliver them; event
	// says it changed.
	dropped atomic.Int32
	event   chan struct{}
}

// drop records that a copy was certainly not logged.
func (p *proposer) drop() {
	p.dropped.Add(1)
	select {
	case p.event <- struct{}{}:
	default:
	}
}

// proposal is one proposal waiting for the next step.
type proposal struct {
	id   uint64
	data []byte // framed: id, then the proposer's data
}

// ErrStopped: the node stopped before the proposal was applied.
var ErrStopped = errors.New("the node stopped")

// Start opens the node's Raft state from its database and starts its loop.
func Start(ctx context.Context, st *store.Store, tr Transport, cfg Config) (*Node, error) {
	if cfg.ElectionTick == 0 {
		cfg.ElectionTick = 10
	}
	if cfg.HeartbeatTick == 0 {
		cfg.HeartbeatTick = 1
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
		ElectionTick:    cfg.ElectionTick,
		HeartbeatTick:   cfg.HeartbeatTick,
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
	if cfg.HoldProposals == 0 {
		cfg.HoldProposals = DefaultHoldProposals
	}
	if cfg.TickEvery == 0 {
		cfg.TickEvery = 100 * time.Millisecond
	}
	if cfg.PreferredAfter == 0 {
		cfg.PreferredAfter = 2 * cfg.ElectionTick
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
	go n.applyLoop()
	go n.run()
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

// contact records when a leader's message reached this node.
func (n *Node) contact(m pb.Message) {
	switch m.Type {
	case pb.MsgApp, pb.MsgHeartbeat, pb.MsgSnap:
		n.leaderContact.Store(time.Now().UnixNano())
	}
}

// do runs f on Raft's state machine between two steps, and waits for it.
// It reports false, without running f, if the node has stopped. It must
// not be called from the run goroutine.
func (n *Node) do(ctx context.Context, f func(rn *raft.RawNode)) bool {
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

// ChangeMembership proposes a configuration change on the leader and
// waits until this node has applied it: AddLearnerNode (context: the new
// node's URL), AddNode (a learner becomes a voter), RemoveNode.
func (n *Node) ChangeMembership(ctx context.Context, cc pb.ConfChange) error {
	// Raft drops a configuration change while an earlier one, or any
	// entry of a previous leader's term, is not applied yet (it turns the
	// proposal into an empty entry). So a change that does not show within
	// a moment is proposed again, until the configuration has it.
	for {
		st := n.Status()
		if st.RaftState != raft.StateLeader {
			return &NotLeaderError{Leader: st.Lead}
		}
		if hasChange(st, cc) {
			return nil
		}
		ch := make(chan struct{}, 1)
		n.mu.Lock()
		n.confWaiters = append(n.confWaiters, confWaiter{cc: cc, ch: ch})
		n.mu.Unlock()
		var err error
		if !n.do(ctx, func(rn *raft.RawNode) { err = rn.ProposeConfChange(cc) }) {
			err = cmp.Or(ctx.Err(), ErrStopped)
		}
		if err != nil && !errors.Is(err, raft.ErrProposalDropped) {
			return fmt.Errorf("propose configuration change: %w", err)
		}
		select {
		case <-ch:
			return nil
		case <-time.After(time.Duration(2*n.cfg.ElectionTick) * n.cfg.TickEvery):
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrStopped
		}
	}
}

// hasChange reports whether the configuration already holds cc's result.
func hasChange(st raft.Status, cc pb.ConfChange) bool {
	voter, learner := membership(st.Config, cc.NodeID)
	switch cc.Type {
	case pb.ConfChangeAddNode:
		return voter
	case pb.ConfChangeAddLearnerNode:
		return learner
	case pb.ConfChangeRemoveNode:
		return !voter && !learner
	}
	return false
}

type confWaiter struct {
	cc pb.ConfChange
	ch chan struct{}
}

func (n *Node) confApplied(cc pb.ConfChange) {
	if n.cfg.OnConfChange != nil {
		n.cfg.OnConfChange(cc)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	kept := n.confWaiters[:0]
	for _, w := range n.confWaiters {
		if w.cc.Type == cc.Type && w.cc.NodeID == cc.NodeID {
			w.ch <- struct{}{}
		} else {
			kept = append(kept, w)
		}
	}
	n.confWaiters = kept
}

// Step hands the node a message another node sent it, in order, and
// waits until it is queued for the next step.
func (n *Node) Step(ctx context.Context, m pb.Message) error {
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

// statusEvery is how often the run goroutine refreshes RecentStatus.
const statusEvery = 20 * time.Millisecond

// publishStatus refreshes RecentStatus (run goroutine).
func (n *Node) publishStatus(force bool) {
	if now := time.Now(); force || n.changed || now.Sub(n.recentAt) >= statusEvery {
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
	}
	<-n.done
}

// Propose submits data to the log and waits until this node has applied
// it, returning its index and the Apply result. A proposal whose outcome
// cannot be known (the node stopped, the context ended after proposing)
// returns an error; the entry may still be committed.
func (n *Node) Propose(ctx context.Context, data []byte) (Applied, error) {
	return n.propose(ctx, data, false)
}

// ProposeThroughLeader is Propose on a follower: Raft carries the proposal
// to the leader with this node's messages, and this node answers once it
// has applied the entry. A proposal that may have been lost on its way
// (the leader changed, or a second passed without the entry; then two,
// four...) is sent again with the same id, so data must apply once however
// many copies are logged (a write with a request id). An error that Raft
// dropped the proposal is certain only for the first copy.
func (n *Node) ProposeThroughLeader(ctx context.Context, data []byte) (Applied, error) {
	return n.propose(ctx, data, true)
}

// resendAfter is how long a follower's proposal waits for its entry before
// it is sent again (then twice as long, and so on).
const resendAfter = time.Second

func (n *Node) propose(ctx context.Context, data []byte, resend bool) (Applied, error) {
	id := proposalID()
	p := &proposer{done: make(chan Applied, 1), event: make(chan struct{}, 1)}
	n.mu.Lock()
	n.waiting[id] = p
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.waiting, id)
		n.mu.Unlock()
	}()
	framed := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(data)), id)
	framed = append(framed, data...)
	send := func() error {
		select {
		case n.props <- proposal{id: id, data: framed}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrStopped
		}
	}
	var leadChange chan struct{}
	var timer *time.Timer
	var expired <-chan time.Time // nil (never) without resend
	wait := resendAfter
	if resend {
		leadChange = *n.leadChange.Load()
		timer = time.NewTimer(wait)
		defer timer.Stop()
		expired = timer.C
	}
	if err := send(); err != nil {
		return Applied{}, err
	}
	sent := int32(1)
	for {
		select {
		case a := <-p.done:
			return a, nil
		case <-p.event:
			if p.dropped.Load() >= sent {
				// No copy can be logged: the proposal failed, certainly.
				return Applied{}, fmt.Errorf("propose: %w", raft.ErrProposalDropped)
			}
			continue
		case <-leadChange:
			leadChange = *n.leadChange.Load()
		case <-expired:
			wait *= 2
			timer.Reset(wait)
		case <-ctx.Done():
			return Applied{}, ctx.Err()
		case <-n.done:
			return Applied{}, ErrStopped
		}
		sent++
		if err := send(); err != nil {
			return Applied{}, err
		}
	}
}

// Undelivered tells the node that the transport certainly did not deliver
// msgs (the peer refused the connection, or the queue was full): their
// proposals were not logged.
func (n *Node) Undelivered(msgs []pb.Message) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range msgs {
		if m.Type != pb.MsgProp {
			continue
		}
		for _, e := range m.Entries {
			if id, ok := proposalOf(e); ok {
				if p := n.waiting[id]; p != nil {
					p.drop()
				}
			}
		}
	}
}

// NoteLeaderApplied records the applied index that node from, a leader,
// reported with its messages.
func (n *Node) NoteLeaderApplied(from, index uint64) {
	n.reporter.Store(from)
	for {
		old := n.leaderApplied.Load()
		if index <= old || n.leaderApplied.CompareAndSwap(old, index) {
			break
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.reported) > 0 {
		n.reported = release(n.reported, n.leaderApplied.Load())
	}
}

// ReportedApplied is what this node's messages report it has applied:
// its applied index if it leads, else 0 (see NoteLeaderApplied).
func (n *Node) ReportedApplied() uint64 {
	if _, self := n.Leader(); !self {
		return 0
	}
	return n.applied.Load()
}

// Receive takes a batch of messages from another node, with the applied
// index it reported if it leads.
func (n *Node) Receive(report Report, msgs []pb.Message) {
	if report.Applied > 0 {
		n.NoteLeaderApplied(report.From, report.Applied)
	}
	for _, m := range msgs {
		n.Deliver(m)
	}
}

// LeaderReports says whether node lead, the leader, reports its applied
// index with its messages: it then takes the proposals of followers (see
// ProposeThroughLeader). A leader that does not is an older version,
// which drops them.
func (n *Node) LeaderReports(lead uint64) bool { return lead != 0 && n.reporter.Load() == lead }

// WaitLeaderApplied waits until a leader has applied index: one reported
// it, or this node leads and has applied it.
func (n *Node) WaitLeaderApplied(ctx context.Context, index uint64) error {
	for {
		if n.leaderApplied.Load() >= index {
			return nil
		}
		if _, self := n.Leader(); self && n.applied.Load() >= index {
			return nil
		}
		leadChange := *n.leadChange.Load()
		ch := make(chan struct{})
		n.mu.Lock()
		n.reported = append(n.reported, applyWaiter{index: index, ch: ch})
		n.mu.Unlock()
		var err error
		if n.leaderApplied.Load() < index { // (else reported since the first look)
			select {
			case <-ch:
				return nil
			case <-leadChange:
			case <-ctx.Done():
				err = ctx.Err()
			case <-n.done:
				err = ErrStopped
			}
		}
		n.mu.Lock()
		n.reported = forget(n.reported, ch)
		n.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// proposalOf is the id of the proposal an entry carries (ok false: the
// entry is not a proposal, such as a new leader's empty entry).
func proposalOf(e pb.Entry) (id uint64, ok bool) {
	if e.Type != pb.EntryNormal || len(e.Data) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(e.Data), true
}

func proposalID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1 // never 0
}

// DefaultHoldProposals is Config.HoldProposals' default. Under load the
// entries in flight commit within about a millisecond on this project's
// test machine, so the wait is mostly shorter; proposals that would each
// have cost a step, an fsync on every node and a round of messages share
// one (docs/BENCHMARKS.md: inserts through the leader at 64 clients rose
// from 21–22% of the no-op ceiling to 23–24%).
const DefaultHoldProposals = time.Millisecond

// maxStepInputs bounds what one step takes from the queues, so that a
// flood of messages cannot hold off the disk work of a step for long.
const maxStepInputs = 8192

func (n *Node) run() {
	defer close(n.done)
	defer func() {
		close(n.applyStop)
		<-n.applyDone
	}()
	var batch []pb.Entry
	var ids []uint64
	var batchSince time.Time // when the oldest proposal in batch was taken
	holdTimer := time.NewTimer(time.Hour)
	holdTimer.Stop()
	var holdC <-chan time.Time // set while batch is held
	take := func(p proposal) {
		if len(batch) == 0 {
			batchSince = time.Now()
		}
		batch = append(batch, pb.Entry{Data: p.data})
		ids = append(ids, p.id)
	}
	for {
		// A new slice each step: Raft fills in the entries' index and term
		// and may keep the slice in its log. A held batch is kept.
		if holdC == nil {
			batch, ids = nil, ids[:0]
		}
		// Wait for something to do (unless a held batch may go now: the
		// last step committed what it waited for), then take whatever else
		// is queued.
		if holdC == nil || n.holdBatch(batch, batchSince) {
			var applied <-chan struct{} // while a batch is held: the applier moved
			if holdC != nil {
				applied = *n.appliedSig.Load()
			}
			select {
			case <-holdC:
				holdC = nil // the hold is over: the batch goes out below
			case <-applied:
			case <-n.cfg.Ticks:
				n.rn.Tick()
				n.leadPreferred()
			case m := <-n.inbox:
				n.step(m)
			case p := <-n.props:
				take(p)
			case f := <-n.ops:
				f()
			case <-n.applyFailed:
				n.cfg.Log.Error("raft node stops", "err", n.applyErr)
				n.err = n.applyErr
				return
			case <-n.stopc:
				return
			}
		}
	drain:
		for i := 0; i < maxStepInputs; i++ {
			select {
			case m := <-n.inbox:
				n.step(m)
			case p := <-n.props:
				take(p)
			case f := <-n.ops:
				f()
			default:
				break drain
			}
		}
		if n.holdBatch(batch, batchSince) {
			if holdC == nil {
				holdTimer.Reset(n.cfg.HoldProposals - time.Since(batchSince))
				holdC = holdTimer.C
			}
		} else if len(batch) > 0 {
			if holdC != nil {
				holdTimer.Stop()
				holdC = nil
			}
			// All the proposals queued since the last step go into Raft
			// as one message: one append to each follower.
			if err := n.rn.Step(pb.Message{Type: pb.MsgProp, From: n.cfg.ID, Entries: batch}); err != nil {
				n.mu.Lock()
				for _, id := range ids {
					if p := n.waiting[id]; p != nil {
						p.drop()
					}
				}
				n.mu.Unlock()
			}
		}
		if n.rn.HasReady() {
			rd := n.rn.Ready()
			if err := n.handle(rd); err != nil {
				n.cfg.Log.Error("raft node stops", "err", err)
				n.err = err
				return
			}
			n.rn.Advance(rd)
		}
		n.publishStatus(false)
	}
}

// holdBatch reports whether the leader's batch of proposals, the oldest
// taken at since, waits: while a leader has appended entries that are not
// committed yet, or its applier has committed entries still to apply,
// proposals that arrive go out together once those are done (the step
// that commits them takes them; the applier's progress wakes the loop) or
// once the oldest has waited Config.HoldProposals. Each step costs an
// fsync on every node and a round of messages; proposals held meanwhile
// share the next one instead of each paying a step of its own. A
// follower's proposals, and a leader's with nothing in flight, are never
// held.
func (n *Node) holdBatch(batch []pb.Entry, since time.Time) bool {
	if len(batch) == 0 || !n.leading || n.cfg.HoldProposals <= 0 || time.Since(since) >= n.cfg.HoldProposals {
		return false
	}
	last, _ := n.storage.LastIndex()
	return last > n.rn.BasicStatus().Commit || n.applied.Load() < n.handed
}

// handle processes one Ready in the order Raft requires: no vote or
// acknowledgement goes out before what it vouches for is durable; the
// leader's appends go out before it writes its own copy (Raft thesis
// 10.2.1), since they vouch for nothing on its disk. Committed entries go
// to the applier, which applies them in order while the loop goes on: it
// never waits for SQL, except to install a snapshot (see DESIGN.md).
func (n *Node) handle(rd raft.Ready) error {
	if rd.SoftState != nil {
		n.changed = true
		leading := rd.SoftState.RaftState == raft.StateLeader
		if leading != n.leading {
			if leading {
				n.cfg.Log.Info("this node leads now", "term", n.rn.BasicStatus().Term)
			} else {
				n.cfg.Log.Info("this node no longer leads", "term", n.rn.BasicStatus().Term, "leader", int(rd.SoftState.Lead)-1)
			}
		}
		n.leading = leading
		if old := n.softLead.Swap(rd.SoftState.Lead); old != rd.SoftState.Lead {
			if rd.SoftState.Lead != 0 {
				n.leaderChanges.Add(1)
			}
			lc := make(chan struct{})
			close(*n.leadChange.Swap(&lc))
		}
		n.softState.Store(uint32(rd.SoftState.RaftState))
	}
	if n.leading {
		// A leader's messages never vouch for its own disk (it sends no
		// votes or acknowledgements): they go while it writes.
		n.tr.Send(rd.Messages)
	} else {
		// A follower's proposals and read requests on their way to the
		// leader vouch for nothing: they go at once.
		rd.Messages = n.sendRequests(rd.Messages)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		// The snapshot replaces the database: what was handed to the
		// applier before it goes first.
		if err := n.drainApplier(); err != nil {
			return err
		}
		if err := n.install(rd.Snapshot, rd.HardState); err != nil {
			return fmt.Errorf("install snapshot at index %d: %w", rd.Snapshot.Metadata.Index, err)
		}
	}
	save, err := n.storage.encode(rd.Entries, rd.HardState)
	if err != nil {
		return err
	}
	// A step that writes no entry and changes neither term nor vote (only
	// the commit index moved) writes nothing: a commit index is learnt
	// again from the leader, and a node that applied beyond the one it
	// recorded raises it when it starts. The next step that writes
	// records it with the rest.
	if rd.MustSync {
		if err := n.storage.st.SaveRaft(save); err != nil {
			return fmt.Errorf("persist raft log: %w", err)
		}
	}
	if err := n.storage.saved(rd.Entries, rd.HardState); err != nil {
		return err
	}
	if !n.leading {
		// A follower's acknowledgements and votes go out once what they
		// vouch for is on its disk.
		n.tr.Send(rd.Messages)
	}
	run, ids, err := n.committed(rd.CommittedEntries)
	if err != nil {
		return err
	}
	if len(run) > 0 {
		n.handApply(applyBatch{run: run, ids: ids})
	}
	if len(rd.ReadStates) > 0 {
		n.mu.Lock()
		for _, r := range rd.ReadStates {
			if ch := n.reads[string(r.RequestCtx)]; ch != nil {
				select {
				case ch <- r.Index:
				default: // answered already (the request was sent again)
				}
			}
		}
		n.mu.Unlock()
	}
	return nil
}

// sendRequests sends the proposals and read requests among msgs, and
// returns the others.
func (n *Node) sendRequests(msgs []pb.Message) []pb.Message {
	var reqs, rest []pb.Message
	for i, m := range msgs {
		if m.Type == pb.MsgProp || m.Type == pb.MsgReadIndex {
			if reqs == nil {
				rest = append(rest, msgs[:i]...)
			}
			reqs = append(reqs, m)
		} else if reqs != nil {
			rest = append(rest, m)
		}
	}
	if reqs == nil {
		return msgs
	}
	n.tr.Send(reqs)
	return rest
}

// deliver answers the proposers of applied entries, and reports whether
// any entry was proposed elsewhere (no proposer waits here).
func (n *Node) deliver(run []Entry, ids []uint64, results []any) (foreign bool, err error) {
	if len(results) != len(run) {
		return false, fmt.Errorf("apply answered %d results for %d entries", len(results), len(run))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, e := range run {
		if ids[i] == 0 {
			continue
		}
		p := n.waiting[ids[i]]
		if p == nil {
			foreign = true
			continue
		}
		select {
		case p.done <- Applied{Index: e.Index, Result: results[i]}:
		default: // a proposal sent again was logged twice: the first answers
		}
	}
	return foreign, nil
}

// install makes the snapshot Raft restored from (its data: the path of a
// copy of the leader's database, received whole and verified) this node's
// database, with this node's own term and vote, in one transaction.
func (n *Node) install(snap pb.Snapshot, hard pb.HardState) error {
	path := string(snap.Data)
	if path == "" {
		return errors.New("the snapshot carries no database")
	}
	if v, ok := n.receiving.Load(path); ok {
		f := v.(*snapshotFile)
		close(f.started)
		defer close(f.done)
	}
	if raft.IsEmptyHardState(hard) {
		hard = n.storage.HardState()
	}
	if hard.Commit < snap.Metadata.Index {
		hard.Commit = snap.Metadata.Index
	}
	hb, err := hard.Marshal()
	if err != nil {
		return err
	}
	if err := n.storage.st.InstallRaftSnapshot(path, snap.Metadata.Index, snap.Metadata.Term, hb); err != nil {
		return err
	}
	n.storage.installed(snap.Metadata, hard)
	n.changed = true // the configuration is the snapshot's: RecentStatus follows at once
	if err := n.loadRejoining(context.Background()); err != nil {
		return err
	}
	n.applied.Store(snap.Metadata.Index)
	n.handed = snap.Metadata.Index
	n.signalApplied()
	n.installed.Add(1)
	n.cfg.Log.Info("installed a snapshot of the leader's database", "index", snap.Metadata.Index)
	if n.cfg.Installed != nil {
		n.cfg.Installed(snap.Metadata.Index)
	}
	return nil
}

// compact drops applied entries beyond the LogKeep the log keeps, in
// steps of an eighth of it (each delete stays short).
func (n *Node) compact() error {
	keep := n.cfg.LogKeep
	if keep == 0 {
		return nil
	}
	applied := n.applied.Load()
	first, _ := n.storage.FirstIndex()
	if applied+1 < first+keep+keep/8+1 {
		return nil
	}
	// The data commits without an fsync: it must be durable before the
	// log drops what would apply it again (a checkpoint syncs the WAL
	// before it copies it back).
	if err := n.storage.st.Checkpoint(); err != nil {
		return err
	}
	return n.storage.Compact(applied - keep)
}

// SnapshotToSend turns Raft's request to send a snapshot into one that
// carries a fresh copy of this node's database (written to a new file in
// dir, which the caller sends and removes): the message then describes the
// copy's own position in the log, which is at or after the compacted
// position Raft asked for, and is what the follower restores to.
func (n *Node) SnapshotToSend(ctx context.Context, m pb.Message, dir string) (path string, out pb.Message, err error) {
	path, _, err = n.storage.st.Snapshot(ctx, dir)
	if err != nil {
		return "", m, err
	}
	pos, err := store.SnapshotPosition(path)
	var cs pb.ConfState
	if err == nil {
		err = cs.Unmarshal(pos.Conf)
	}
	if err != nil {
		os.Remove(path)
		return "", m, err
	}
	m.Snapshot = &pb.Snapshot{Metadata: pb.SnapshotMetadata{Index: pos.Index, Term: pos.Term, ConfState: cs}}
	return path, m, nil
}

// snapshotFile follows a received snapshot file from Step to its install.
type snapshotFile struct{ started, done chan struct{} }

// StepSnapshot hands Raft a snapshot message whose database was received
// whole into the file at path. The file is removed once installed, or
// after two minutes if Raft ignored the message (the node had caught up
// otherwise meanwhile).
func (n *Node) StepSnapshot(ctx context.Context, m pb.Message, path string) error {
	f := &snapshotFile{started: make(chan struct{}), done: make(chan struct{})}
	n.receiving.Store(path, f)
	m.Snapshot.Data = []byte(path)
	n.contact(m)
	var err error
	if !n.do(ctx, func(rn *raft.RawNode) { err = rn.Step(m) }) {
		err = cmp.Or(ctx.Err(), ErrStopped)
	}
	if err != nil {
		n.receiving.Delete(path)
		removeFile(path)
		return err
	}
	go func() {
		defer n.receiving.Delete(path)
		defer removeFile(path)
		select {
		case <-f.started:
		case <-time.After(2 * time.Minute):
			return
		case <-n.done:
			return
		}
		select {
		case <-f.done:
		case <-n.done:
		}
	}()
	return nil
}

func removeFile(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
}

// Leader is the leader this node knows (0: none), and whether it is this
// node, as of the last step Raft took.
func (n *Node) Leader() (lead uint64, self bool) {
	return n.softLead.Load(), raft.StateType(n.softState.Load()) == raft.StateLeader
}

// SinceLeaderContact is how long ago a leader's message last reached this
// node: 0 on the leader, and a very long time if none ever has.
func (n *Node) SinceLeaderContact() time.Duration {
	if _, self := n.Leader(); self {
		return 0
	}
	t := n.leaderContact.Load()
	if t == 0 {
		return time.Duration(math.MaxInt64)
	}
	return time.Since(time.Unix(0, t))
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

// SnapshotsInstalled counts the snapshots this node installed since it
// started.
func (n *Node) SnapshotsInstalled() uint64 { return n.installed.Load() }

// ReportSnapshot tells Raft whether a snapshot reached follower id.
func (n *Node) ReportSnapshot(id uint64, ok bool) {
	st := raft.SnapshotFinish
	if !ok {
		st = raft.SnapshotFailure
	}
	n.do(context.Background(), func(rn *raft.RawNode) { rn.ReportSnapshot(id, st) })
}

// ReadIndex returns an index such that every write acknowledged before the
// call is at or below it, confirmed with a majority (Raft's ReadIndex): a
// read that waits until this node has applied it reflects all of them.
// Without a leader reachable through a majority it fails when ctx ends.
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	var key [16]byte
	_, _ = rand.Read(key[:])
	ch := make(chan uint64, 1)
	n.mu.Lock()
	n.reads[string(key[:])] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.reads, string(key[:]))
		n.mu.Unlock()
	}()
	// Raft drops a read index request that finds no leader, or a leader
	// that has not committed an entry of its term yet, or that is lost on
	// the way: it is sent again every resend until answered.
	const resend = 200 * time.Millisecond
	for {
		if !n.do(ctx, func(rn *raft.RawNode) { rn.ReadIndex(key[:]) }) {
			return 0, cmp.Or(ctx.Err(), ErrStopped)
		}
		select {
		case idx := <-ch:
			return idx, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-n.done:
			return 0, ErrStopped
		case <-time.After(resend):
		}
	}
}

// caughtUpLag is how far behind the commit index the preferred leader may
// be and still count as caught up (Raft's transfer then sends it the rest
// before it takes over).
const caughtUpLag = 1024

// leadPreferred, on the leader, hands leadership to the preferred node once
// it has held the whole log for PreferredAfter ticks in a row.
func (n *Node) leadPreferred() {
	p := n.cfg.Preferred
	if p == 0 || p == n.cfg.ID {
		return
	}
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		n.caughtUp = 0
		return
	}
	// (RecentActive is not asked: the leader clears it every election
	// timeout, whatever the follower does.)
	if !caughtUp(st, p) || st.Progress[p].IsLearner {
		n.caughtUp = 0
		return
	}
	n.caughtUp++
	if n.caughtUp >= n.cfg.PreferredAfter {
		n.caughtUp = 0
		n.cfg.Log.Info("handing leadership back to the preferred leader", "to", int(p)-1)
		n.rn.TransferLeader(p)
	}
}

// committed prepares committed entries for the database: configuration
// changes are applied to Raft here, and every entry, in order, goes to
// one Apply call (with its proposal id), so that the database's applied
// index covers each index of the log (an entry that is not a proposal,
// such as a new leader's empty entry or a configuration change, reaches
// Apply with nil data).
func (n *Node) committed(ents []pb.Entry) (run []Entry, ids []uint64, err error) {
	for _, e := range ents {
		if e.Index <= n.handed {
			continue // applied before a restart, or covered by a snapshot
		}
		var id uint64
		var data, conf, rejoin []byte
		switch e.Type {
		case pb.EntryConfChange:
			var cc pb.ConfChange
			if err := cc.Unmarshal(e.Data); err != nil {
				return nil, nil, fmt.Errorf("entry %d: %w", e.Index, err)
			}
			if conf, err = n.confChange(cc); err != nil {
				return nil, nil, err
			}
			if rj, changed := n.Rejoining().after(cc); changed {
				n.rejoining.Store(&rj)
				rejoin = rj.encode()
			}
			n.confApplied(cc)
		case pb.EntryConfChangeV2:
			var cc pb.ConfChangeV2
			if err := cc.Unmarshal(e.Data); err != nil {
				return nil, nil, fmt.Errorf("entry %d: %w", e.Index, err)
			}
			if conf, err = n.confChange(cc); err != nil {
				return nil, nil, err
			}
		case pb.EntryNormal:
			if pid, ok := proposalOf(e); ok {
				id, data = pid, e.Data[8:]
			}
		}
		run = append(run, Entry{Index: e.Index, Term: e.Term, Data: data, Conf: conf, Rejoining: rejoin})
		ids = append(ids, id)
	}
	return run, ids, nil
}

// confChange applies a configuration change to Raft and returns the
// configuration reached, encoded.
func (n *Node) confChange(cc pb.ConfChangeI) ([]byte, error) {
	cs := *n.rn.ApplyConfChange(cc)
	n.changed = true
	if err := n.storage.SetConfState(cs, !n.cfg.ApplyRecordsConf); err != nil {
		return nil, err
	}
	return cs.Marshal()
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

// LeaderChanges is how many times a leader became known to this node.
func (n *Node) LeaderChanges() uint64 { return n.leaderChanges.Load() }

// ReportUnreachable tells Raft that a message to id could not be sent.
func (n *Node) ReportUnreachable(id uint64) {
	n.do(context.Background(), func(rn *raft.RawNode) { rn.ReportUnreachable(id) })
}

// TransferLeadership asks Raft, on the leader, to hand leadership to node
// id.
func (n *Node) TransferLeadership(ctx context.Context, id uint64) {
	n.do(ctx, func(rn *raft.RawNode) { rn.TransferLeader(id) })
}
