package replication

import (
	"context"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ddb/internal/rlog"
	"ddb/internal/store"
)

// MasterConfig configures a Master.
type MasterConfig struct {
	URL        string         // the master's own URL
	Slaves     map[int]string // known slaves by id
	AckTimeout time.Duration
	Heartbeat  time.Duration
	LogKeep    uint64       // entries kept for catch-up
	Limits     store.Limits // what a forwarded write may return (RETURNING), as for the master's own clients
	TempDir    string       // where snapshots are written
	MaxBatch   int          // requests per group commit (default 256)
	ShipBatch  int          // entries per append (default 1024)
	ShipBytes  int          // bytes of entries per append (default 4 MiB)
	Logf       func(format string, args ...any)
	// InjectBug "ack-before-commit" answers writes as soon as they are
	// queued and, like an asynchronous commit, lets the writer flush the
	// queue only every 100 ms, so a kill -9 always loses acknowledged
	// writes. Only for proving the fault-injection checkers work.
	InjectBug string
}

// Master sequences writes and ships the log.
type Master struct {
	cfg   MasterConfig
	st    *store.Store
	tr    Transport
	clock Clock

	tail        *tail // recent entries, for shippers
	queue       chan *pendingWrite
	progress    Progress // any follower acked more, or the log grew
	truncatedTo uint64   // the log starts here (writer goroutine only)

	mu        sync.Mutex
	followers map[int]*follower

	stats pipelineStats

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// pipelineStats counts where a write's time goes on the master, for
// /metrics: group commits (requests and wall time each) and appends
// (entries and round-trip time each).
type pipelineStats struct {
	commits, commitRequests, commitNanos atomic.Uint64
	appends, appendEntries, appendNanos  atomic.Uint64
}

// PipelineStats is a snapshot of the master's pipeline counters.
type PipelineStats struct {
	Commits, CommitRequests uint64
	CommitSeconds           float64
	Appends, AppendEntries  uint64
	AppendSeconds           float64
}

// Pipeline returns the master's group-commit and shipping counters.
func (m *Master) Pipeline() PipelineStats {
	return PipelineStats{
		Commits: m.stats.commits.Load(), CommitRequests: m.stats.commitRequests.Load(),
		CommitSeconds: time.Duration(m.stats.commitNanos.Load()).Seconds(),
		Appends:       m.stats.appends.Load(), AppendEntries: m.stats.appendEntries.Load(),
		AppendSeconds: time.Duration(m.stats.appendNanos.Load()).Seconds(),
	}
}

type pendingWrite struct {
	req  *store.Request
	done chan store.Outcome
}

type follower struct {
	id          int
	url         string
	voter       bool   // counts toward the quorum (configured on the master's command line)
	acked       uint64 // last index the slave confirmed applied
	known       bool   // acked has been learned from the slave
	reachable   bool
	lastContact time.Time
	lastError   string
	snapshots   int
	ackSeq      uint64 // sequence number of the latest append answer recorded
	wake        chan struct{}
	rejoin      chan struct{} // the slave announced itself: retry now
	stop        context.CancelFunc
}

// NewMaster starts the master's writer, shippers and housekeeping.
func NewMaster(cfg MasterConfig, st *store.Store, tr Transport, clock Clock) *Master {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 256
	}
	if cfg.ShipBatch <= 0 {
		cfg.ShipBatch = 1024
	}
	if cfg.ShipBytes <= 0 {
		cfg.ShipBytes = 4 << 20
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 250 * time.Millisecond
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 5 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if clock == nil {
		clock = RealClock{}
	}
	m := &Master{cfg: cfg, st: st, tr: tr, clock: clock, queue: make(chan *pendingWrite, 4096), followers: map[int]*follower{},
		tail: newTail(1<<17, 64<<20)}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	slaves := map[int]string{}
	if stored, err := st.Members(m.ctx); err == nil {
		for id, u := range stored {
			slaves[id] = u
		}
	}
	for id, u := range cfg.Slaves {
		slaves[id] = u
	}
	for id, u := range slaves {
		_, voter := cfg.Slaves[id]
		m.addFollower(id, u, voter)
	}
	m.wg.Add(2)
	go m.writeLoop()
	go m.housekeeping()
	return m
}

// Close stops the master's goroutines (the store stays open). Writes
// already queued finish first.
func (m *Master) Close() {
	m.cancel()
	m.wg.Wait()
}

func (m *Master) addFollower(id int, url string, voter bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok := m.followers[id]; ok {
		if f.url == url {
			return
		}
		f.stop()
	}
	ctx, cancel := context.WithCancel(m.ctx)
	f := &follower{id: id, url: url, voter: voter, wake: make(chan struct{}, 1), rejoin: make(chan struct{}, 1), stop: cancel}
	m.followers[id] = f
	m.wg.Add(1)
	go m.ship(ctx, f)
}

// Write sequences one request and waits for its acknowledgement level.
func (m *Master) Write(ctx context.Context, req *store.Request, ack string) (store.Outcome, error) {
	return m.write(ctx, req, ack, 0)
}

// write is Write for a request that entered at slave origin (0: at the
// master). That slave answers its client only once it has applied the
// write itself, so it counts as acknowledged here: with one master and
// two slaves, a forwarded quorum write needs no other slave, and the
// master answers the forward as soon as it has committed.
func (m *Master) write(ctx context.Context, req *store.Request, ack string, origin int) (store.Outcome, error) {
	if m.cfg.InjectBug == "ack-before-commit" {
		req.Ctx = context.Background() // commit later, whatever the client does
	}
	p := &pendingWrite{req: req, done: make(chan store.Outcome, 1)}
	select {
	case m.queue <- p:
	case <-ctx.Done():
		return store.Outcome{}, ctx.Err()
	case <-m.ctx.Done():
		return store.Outcome{}, &UnavailableError{Reason: "the master is shutting down"}
	}
	if m.cfg.InjectBug == "ack-before-commit" {
		go func() { <-p.done }()
		return store.Outcome{Index: m.st.Applied() + 1, Results: []store.Result{{}}}, nil
	}
	// Once queued the write may commit, so wait for the writer's verdict
	// even if the client has gone.
	out := <-p.done
	if out.Err != nil {
		return out, out.Err
	}
	return out, m.waitAck(ctx, out.Index, ack, origin)
}

// waitAck waits until index is acknowledged at level, counting slave
// origin (if not 0) as having it.
func (m *Master) waitAck(ctx context.Context, index uint64, level string, origin int) error {
	if level == "master" {
		return nil
	}
	ok, err := waitUntil(ctx, m.clock, &m.progress, m.cfg.AckTimeout, func() bool { return m.acked(index, level, origin) })
	if err != nil || !ok {
		return &AckTimeoutError{Index: index, Level: level, After: m.cfg.AckTimeout}
	}
	return nil
}

// acked reports whether index is applied on enough voters for level.
// quorum: a majority of the voters, the master included; all: every
// voter. Learners (slaves that joined on their own) never count: a process
// started once cannot change what a majority is. Slave origin (if not 0)
// counts as having it: it waits for it itself.
func (m *Master) acked(index uint64, level string, origin int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	have, voters := 1, 1 // the master committed it
	for _, f := range m.followers {
		if !f.voter {
			continue
		}
		voters++
		if (f.known && f.acked >= index) || f.id == origin {
			have++
		} else if level == "all" {
			return false
		}
	}
	if level == "all" {
		return true
	}
	return have >= voters/2+1
}

// Ready explains why the master cannot acknowledge writes at level now
// ("" when it can): too few voters are reachable.
func (m *Master) Ready(level string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	reachable, voters := 1, 1
	var down []string
	for _, f := range m.followers {
		if !f.voter {
			continue
		}
		voters++
		if f.reachable {
			reachable++
		} else {
			down = append(down, fmt.Sprintf("slave %d (%s)", f.id, f.url))
		}
	}
	sort.Strings(down)
	need := voters/2 + 1
	if level == "all" {
		need = voters
	}
	if reachable >= need {
		return ""
	}
	return fmt.Sprintf("writes at ack level %q need %d of the %d voting nodes, and only %d are reachable (unreachable: %s)", level, need, voters, reachable, strings.Join(down, ", "))
}

// writeLoop is the single writer: it takes whatever requests are queued,
// commits them as one batch, answers each, and wakes the shippers.
func (m *Master) writeLoop() {
	defer m.wg.Done()
	batch := make([]*pendingWrite, 0, m.cfg.MaxBatch)
	reqs := make([]*store.Request, 0, m.cfg.MaxBatch)
	for {
		batch, reqs = batch[:0], reqs[:0]
		select {
		case p := <-m.queue:
			batch = append(batch, p)
		case <-m.ctx.Done():
			m.drain()
			return
		}
		if m.cfg.InjectBug == "ack-before-commit" {
			time.Sleep(100 * time.Millisecond) // the deliberate defect: acknowledged, not yet durable
		}
	fill:
		for len(batch) < m.cfg.MaxBatch {
			select {
			case p := <-m.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		live := batch[:0]
		for _, p := range batch {
			if p.req.Ctx != nil && p.req.Ctx.Err() != nil {
				p.done <- store.Outcome{Err: p.req.Ctx.Err()} // client gone before it ran: nothing happened
				continue
			}
			live = append(live, p)
			reqs = append(reqs, p.req)
		}
		if len(live) == 0 {
			continue
		}
		t0 := time.Now()
		outs := m.st.CommitBatch(reqs, m.clock.Now)
		m.stats.commits.Add(1)
		m.stats.commitRequests.Add(uint64(len(reqs)))
		m.stats.commitNanos.Add(uint64(time.Since(t0)))
		committed := make([]rlog.Entry, 0, len(outs))
		for _, o := range outs {
			if o.Err == nil && !o.Duplicate { // a duplicate wrote no entry
				committed = append(committed, o.Entry)
			}
		}
		m.tail.add(committed)
		for i, p := range live {
			p.done <- outs[i]
		}
		m.wakeAll()
		m.truncate()
	}
}

// truncate keeps the log at about LogKeep entries. It runs in the writer
// goroutine, in steps of an eighth of LogKeep, so each delete is short.
func (m *Master) truncate() {
	keep, last := m.cfg.LogKeep, m.st.Applied()
	if keep == 0 || last <= keep {
		return
	}
	step := keep/8 + 1
	if step > 4096 {
		step = 4096
	}
	if target := last - keep + 1; target >= m.truncatedTo+step {
		if err := m.st.TruncateLog(target); err != nil {
			m.cfg.Logf("truncate log: %v", err)
			return
		}
		m.truncatedTo = target
	}
}

func (m *Master) drain() {
	for {
		select {
		case p := <-m.queue:
			p.done <- store.Outcome{Err: &UnavailableError{Reason: "the master is shutting down"}}
		default:
			return
		}
	}
}

func (m *Master) wakeAll() {
	m.mu.Lock()
	for _, f := range m.followers {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
	m.mu.Unlock()
	m.progress.Notify()
}

// shipWindow is how many appends may be in flight to one slave. Measured
// on the 2-core reference machine (docs/BENCHMARKS.md), one is best: while
// an append is in flight the next batch grows, so each HTTP request and
// fsync carries more entries, and out-of-order arrivals never make a slave
// wait. Steady-state inserts and forwarded writes were 10-20% slower with
// 4 in flight, and catch-up of 50,000 entries took 1.0 s instead of 0.4 s.
// The loop below supports a larger window for machines where the network,
// not the CPU, is the limit.
const shipWindow = 1

type shipResult struct {
	seq  uint64
	last uint64 // last index the append carried (0: none)
	resp *AppendResponse
	err  error
}

// ship streams the log to one slave, from what it has acknowledged, with
// up to shipWindow appends in flight. Any error or gap makes it start over
// from the slave's acknowledged index (the slave skips what it has).
func (m *Master) ship(ctx context.Context, f *follower) {
	defer m.wg.Done()
	results := make(chan shipResult, shipWindow)
	var seq, sent uint64
	inflight := 0
	resync, needSnapshot := true, false
	backoff := 50 * time.Millisecond
	var retryAt time.Time
	send := func(entries []rlog.Entry) {
		seq++
		r := shipResult{seq: seq}
		if len(entries) > 0 {
			r.last = entries[len(entries)-1].Index
		}
		inflight++
		go func() {
			actx, cancel := context.WithTimeout(ctx, m.cfg.AckTimeout)
			t0 := time.Now()
			r.resp, r.err = m.tr.Append(actx, f.url, &AppendRequest{Master: m.cfg.URL, Entries: entries, Commit: m.st.Applied()})
			cancel()
			if len(entries) > 0 {
				m.stats.appends.Add(1)
				m.stats.appendEntries.Add(uint64(len(entries)))
				m.stats.appendNanos.Add(uint64(time.Since(t0)))
			}
			results <- r
		}()
	}
	for ctx.Err() == nil {
		m.mu.Lock()
		known, acked := f.known, f.acked
		m.mu.Unlock()
		if inflight == 0 {
			if needSnapshot {
				m.sendSnapshot(ctx, f)
				needSnapshot, resync = false, true
				continue
			}
			if resync {
				sent, resync = acked, false
			}
		}
		last := m.st.Applied()
		canSend := !resync && !m.clock.Now().Before(retryAt)
		switch {
		case canSend && !known && inflight == 0:
			send(nil) // learn where the slave is
		case canSend && known && sent < last && inflight < shipWindow && (inflight == 0 || last-sent >= uint64(m.cfg.ShipBatch)):
			// With an append already in flight, another goes only when a
			// whole batch is waiting.
			next := sent + 1
			if next < m.st.FirstLogIndex() {
				needSnapshot, resync = true, true
				continue
			}
			entries, ok := m.tail.get(next, m.cfg.ShipBatch, m.cfg.ShipBytes)
			if !ok {
				var err error
				if entries, err = m.st.LogRange(ctx, next, m.cfg.ShipBatch, m.cfg.ShipBytes); err != nil || len(entries) == 0 {
					m.fail(f, fmt.Errorf("read log from %d: %v", next, err))
					resync, retryAt = true, m.clock.Now().Add(backoff)
					continue
				}
			}
			send(entries)
			sent = entries[len(entries)-1].Index
			continue
		}
		var timer <-chan time.Time
		switch {
		case m.clock.Now().Before(retryAt):
			timer = m.clock.After(retryAt.Sub(m.clock.Now()))
		case inflight == 0:
			timer = m.clock.After(m.cfg.Heartbeat)
		}
		select {
		case r := <-results:
			inflight--
			switch {
			case r.err != nil:
				m.fail(f, r.err)
				resync, retryAt = true, m.clock.Now().Add(backoff)
				backoff = min(2*backoff, time.Second)
			default:
				backoff = 50 * time.Millisecond
				m.ack(f, r.seq, r.resp)
				if r.resp.NeedSnapshot {
					needSnapshot, resync = true, true
				} else if r.resp.Applied < r.last || (inflight == 0 && r.resp.Applied < sent) {
					// A gap or a failure on the slave, or a slave that lost
					// its data (a heartbeat's answer is behind what was
					// sent): start over from what it has.
					resync = true
				} else if inflight == 0 && r.resp.Applied > sent && r.resp.Applied <= m.st.Applied() {
					// The slave already has more than this loop sent (its
					// first answer, after either side restarted): go on from
					// there, rather than from 0, which would need a snapshot.
					sent = r.resp.Applied
				}
			}
		case <-f.wake:
		case <-f.rejoin:
			retryAt, backoff = time.Time{}, 50*time.Millisecond
		case <-timer:
			if known && inflight == 0 && !resync && sent >= m.st.Applied() {
				send(nil) // heartbeat: the slave knows the master is alive
			}
		case <-ctx.Done():
			return
		}
	}
}

// ack records a slave's answer. Answers to earlier appends than one
// already recorded carry nothing new and are ignored; a later answer may
// lower the index (the slave lost its data and starts again).
func (m *Master) ack(f *follower, seq uint64, resp *AppendResponse) {
	last := m.st.Applied()
	m.mu.Lock()
	if seq != 0 && seq < f.ackSeq {
		m.mu.Unlock()
		return
	}
	if seq != 0 {
		f.ackSeq = seq
	}
	if resp.Applied > last {
		m.cfg.Logf("slave %d reports index %d but the log ends at %d: it has writes this master does not; not counting them", f.id, resp.Applied, last)
		f.acked = last
	} else {
		f.acked = resp.Applied
	}
	f.known, f.reachable, f.lastContact, f.lastError = true, true, m.clock.Now(), ""
	m.mu.Unlock()
	m.progress.Notify()
}

func (m *Master) fail(f *follower, err error) {
	m.mu.Lock()
	if f.reachable || f.lastError == "" {
		m.cfg.Logf("slave %d at %s: %v", f.id, f.url, err)
	}
	f.reachable, f.lastError = false, err.Error()
	m.mu.Unlock()
}

func (m *Master) sendSnapshot(ctx context.Context, f *follower) {
	path, index, err := m.st.Snapshot(ctx, m.cfg.TempDir)
	if err != nil {
		m.fail(f, fmt.Errorf("make snapshot: %w", err))
		return
	}
	defer os.Remove(path)
	m.cfg.Logf("sending slave %d a snapshot at index %d", f.id, index)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	resp, err := m.tr.InstallSnapshot(sctx, f.url, index, path)
	if err != nil {
		m.fail(f, fmt.Errorf("install snapshot: %w", err))
		select {
		case <-m.clock.After(time.Second):
		case <-ctx.Done():
		}
		return
	}
	m.mu.Lock()
	f.snapshots++
	m.mu.Unlock()
	m.ack(f, 0, resp)
}

// housekeeping checkpoints the WAL now and then, so it does not grow
// without bound under a steady write load (SQLite's automatic checkpoint
// can be starved by long reads).
func (m *Master) housekeeping() {
	defer m.wg.Done()
	for {
		select {
		case <-m.clock.After(10 * time.Second):
		case <-m.ctx.Done():
			return
		}
		if err := m.st.Checkpoint(); err != nil {
			m.cfg.Logf("checkpoint: %v", err)
		}
	}
}

// HandleForward runs a write that entered at a slave.
func (m *Master) HandleForward(ctx context.Context, req *ForwardRequest) *ForwardResponse {
	stmts, err := rlog.DecodeStatements(req.Body)
	if err != nil {
		return &ForwardResponse{Error: &WireError{Kind: "param", Message: err.Error()}}
	}
	out, err := m.write(ctx, &store.Request{Ctx: ctx, Stmts: stmts, AllowSchema: false, Collect: req.Collect,
		Limits: m.cfg.Limits, RequestID: req.RequestID}, req.Ack, req.Origin)
	resp := &ForwardResponse{Index: out.Index}
	if err != nil {
		resp.Error = ToWireError(err)
		return resp
	}
	if resp.Results, err = store.EncodeResults(out.Results); err != nil {
		resp.Error = ToWireError(err)
	}
	return resp
}

// HandleReadIndex returns an index at or above every write a reader, on any
// node, may have seen: every acknowledged write, and every committed one
// (the master's readers see a write from its COMMIT on, before it is
// acknowledged; see store.VisibleIndex).
func (m *Master) HandleReadIndex() uint64 { return m.st.VisibleIndex() }

// ReadIndex implements Replicator: on the master, its own visible index.
func (m *Master) ReadIndex(context.Context) (uint64, error) { return m.HandleReadIndex(), nil }

// IsLeader implements Replicator: the master orders every write.
func (m *Master) IsLeader() bool { return true }

// LeaderURL implements Replicator.
func (m *Master) LeaderURL() string { return m.cfg.URL }

// IDInUseError refuses a join: a live node already holds the id.
type IDInUseError struct {
	ID  int
	URL string
}

func (e *IDInUseError) Error() string {
	return fmt.Sprintf("slave id %d is already held by the live node at %s: start this node with another id, or stop that one first", e.ID, e.URL)
}

// HandleJoin adds a slave, or moves one whose node is not live any more
// to a new URL. A slave the master's command line does not name joins as
// a learner: it gets the log but never counts toward the quorum.
func (m *Master) HandleJoin(req *JoinRequest) error {
	if req.ID < 1 || req.URL == "" {
		return fmt.Errorf("join needs a slave id >= 1 and a URL")
	}
	m.mu.Lock()
	f, ok := m.followers[req.ID]
	if ok && f.url != req.URL && f.reachable && m.clock.Now().Sub(f.lastContact) < 8*m.cfg.Heartbeat+time.Second {
		m.mu.Unlock()
		m.cfg.Logf("refused a join as slave %d from %s: that id is held by the live node at %s", req.ID, req.URL, f.url)
		return &IDInUseError{ID: req.ID, URL: f.url}
	}
	m.mu.Unlock()
	if err := m.st.SetMember(req.ID, req.URL); err != nil {
		return err
	}
	m.mu.Lock()
	f, ok = m.followers[req.ID]
	same := ok && f.url == req.URL
	if same {
		select {
		case f.rejoin <- struct{}{}: // it just started: no need to wait out the retry backoff
		default:
		}
	}
	m.mu.Unlock()
	if !same {
		_, voter := m.cfg.Slaves[req.ID]
		role := "as a voter"
		if !voter {
			role = "as a learner (it gets the log, and does not count toward the quorum)"
		}
		m.cfg.Logf("slave %d joined at %s %s", req.ID, req.URL, role)
		m.addFollower(req.ID, req.URL, voter)
	}
	return nil
}

// Remove takes a slave out of the membership: the master stops shipping to
// it and forgets it. A voter cannot be removed (it is on the master's
// command line); stop it and restart the master with fewer slaves.
func (m *Master) Remove(id int) error {
	m.mu.Lock()
	f, ok := m.followers[id]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("no slave %d in the membership", id)
	}
	if f.voter {
		return fmt.Errorf("slave %d is a voter named on the master's command line; remove it by restarting the master with fewer slaves", id)
	}
	if err := m.st.RemoveMember(id); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.followers, id)
	m.mu.Unlock()
	f.stop()
	m.cfg.Logf("slave %d (%s) removed from the membership", id, f.url)
	m.progress.Notify()
	return nil
}

// FollowerStatus is what the master knows of one slave.
type FollowerStatus struct {
	ID          int     `json:"id"`
	URL         string  `json:"url"`
	Acked       uint64  `json:"acked_index"`
	Lag         uint64  `json:"lag"`
	Reachable   bool    `json:"reachable"`
	LastContact string  `json:"last_contact,omitempty"`
	SecondsAgo  float64 `json:"seconds_since_contact,omitempty"`
	LastError   string  `json:"last_error,omitempty"`
	Snapshots   int     `json:"snapshots_sent"`
	Voter       bool    `json:"voter"`
}

// Followers reports every slave, by id.
func (m *Master) Followers() []FollowerStatus {
	last := m.st.Applied()
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]FollowerStatus, 0, len(m.followers))
	for _, f := range m.followers {
		s := FollowerStatus{ID: f.id, URL: f.url, Acked: f.acked, Reachable: f.reachable, LastError: f.lastError, Snapshots: f.snapshots, Voter: f.voter}
		if last > f.acked {
			s.Lag = last - f.acked
		}
		if !f.lastContact.IsZero() {
			s.LastContact = f.lastContact.UTC().Format(time.RFC3339Nano)
			s.SecondsAgo = now.Sub(f.lastContact).Seconds()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// WaitApplied waits until the master's own database is at index.
func (m *Master) WaitApplied(ctx context.Context, index uint64, timeout time.Duration) error {
	return waitApplied(ctx, m.clock, &m.progress, m.st, index, timeout)
}
