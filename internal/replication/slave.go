package replication

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"ddb/internal/rlog"
	"ddb/internal/store"
)

// SlaveConfig configures a Slave.
type SlaveConfig struct {
	ID          int
	URL         string // this slave's own URL
	MasterURL   string
	AckTimeout  time.Duration // forwarded writes
	ReadTimeout time.Duration // waiting to apply what the master committed
	Heartbeat   time.Duration // the master's heartbeat interval
	TempDir     string
	GapWait     time.Duration // how long an append after a gap waits for the missing one (default 500ms; <0: not at all)
	Logf        func(format string, args ...any)
	// InjectBug "stale-strong-read" answers strong reads without asking the
	// master. Only for proving the fault-injection checkers work.
	InjectBug string
}

// Slave applies the master's log and forwards writes to it.
type Slave struct {
	cfg   SlaveConfig
	st    *store.Store
	tr    Transport
	clock Clock

	applyMu  sync.Mutex // one append or snapshot at a time
	progress Progress   // applied index advanced

	mu           sync.Mutex
	lastContact  time.Time // last append from the master
	masterCommit uint64
	joined       bool
	diverged     string

	fatal chan error // the master refused this node

	bootID   string        // random, tells this Slave's request ids from an earlier one's
	forwards atomic.Uint64 // request ids made

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Fatal delivers the error that makes this slave unable to serve at all
// (the master refused it); the node then stops.
func (s *Slave) Fatal() <-chan error { return s.fatal }

// NewSlave starts a slave (it announces itself to the master in the background).
func NewSlave(cfg SlaveConfig, st *store.Store, tr Transport, clock Clock) *Slave {
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 5 * time.Second
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 5 * time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 250 * time.Millisecond
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.GapWait == 0 {
		cfg.GapWait = 500 * time.Millisecond
	}
	if clock == nil {
		clock = RealClock{}
	}
	var boot [8]byte
	_, _ = crand.Read(boot[:])
	s := &Slave{cfg: cfg, st: st, tr: tr, clock: clock, fatal: make(chan error, 1), bootID: fmt.Sprintf("%x", boot)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.joinLoop()
	return s
}

// Close stops background work.
func (s *Slave) Close() {
	s.cancel()
	s.wg.Wait()
}

func (s *Slave) joinLoop() {
	defer s.wg.Done()
	delay := 200 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
		err := s.tr.Join(ctx, s.cfg.MasterURL, &JoinRequest{ID: s.cfg.ID, URL: s.cfg.URL})
		cancel()
		var refused *JoinRefusedError
		if errors.As(err, &refused) {
			s.cfg.Logf("%v", err)
			s.fatal <- err
			return
		}
		if err == nil {
			s.mu.Lock()
			s.joined = true
			s.mu.Unlock()
			return
		}
		select {
		case <-s.clock.After(delay):
		case <-s.ctx.Done():
			return
		}
		if delay < 2*time.Second {
			delay *= 2
		}
	}
}

// HandleAppend applies the entries it can (in order, skipping duplicates,
// stopping at a gap) and reports the applied index.
func (s *Slave) HandleAppend(req *AppendRequest) *AppendResponse {
	if len(req.Entries) > 0 && req.Entries[0].Index > s.st.Applied()+1 && s.cfg.GapWait > 0 {
		// The master pipelines appends; an earlier one may still be on its
		// way or being applied. Wait for it briefly rather than report a gap.
		first := req.Entries[0].Index
		waitUntil(context.Background(), s.clock, &s.progress, s.cfg.GapWait, func() bool { return s.st.Applied()+1 >= first })
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	s.lastContact = s.clock.Now()
	if req.Commit > s.masterCommit {
		s.masterCommit = req.Commit
	}
	s.mu.Unlock()
	applied, err := s.st.Apply(req.Entries)
	resp := &AppendResponse{Applied: applied}
	if err != nil {
		resp.Error = err.Error()
		if errors.Is(err, store.ErrDiverged) {
			s.mu.Lock()
			s.diverged = err.Error()
			s.mu.Unlock()
			s.cfg.Logf("%v; asking the master for a snapshot", err)
			resp.NeedSnapshot = true
		}
	}
	s.progress.Notify()
	return resp
}

// HandleSnapshot replaces the database with the master's snapshot.
func (s *Slave) HandleSnapshot(index uint64, r io.Reader) (*AppendResponse, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	got, err := s.st.Restore(r, s.cfg.TempDir)
	if err != nil {
		return nil, err
	}
	if got != index {
		return nil, fmt.Errorf("snapshot holds index %d, announced %d", got, index)
	}
	s.mu.Lock()
	s.lastContact = s.clock.Now()
	s.diverged = ""
	s.mu.Unlock()
	s.cfg.Logf("installed snapshot at index %d", index)
	s.progress.Notify()
	return &AppendResponse{Applied: got}, nil
}

// masterSilent explains why the master is taken as unreachable, or "".
func (s *Slave) masterSilent() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastContact.IsZero() {
		return ""
	}
	if d := s.clock.Now().Sub(s.lastContact); d > 8*s.cfg.Heartbeat+time.Second {
		return fmt.Sprintf("the master at %s has not been heard from for %.1fs", s.cfg.MasterURL, d.Seconds())
	}
	return ""
}

// forwardRetry is how long a forward is tried again after a broken or
// refused connection before the client gets its answer (a master that
// restarts is usually back by then).
const forwardRetry = 2 * time.Second

// Write forwards a write to the master and answers once this slave has
// applied it, so the client reads its own write here. The forward carries
// an idempotency key (the client's request_id, or one made here), so it is
// sent again when a connection breaks: it applies at most once.
func (s *Slave) Write(ctx context.Context, req *store.Request, ack string) (store.Outcome, error) {
	if why := s.masterSilent(); why != "" {
		return store.Outcome{}, &UnavailableError{Reason: why}
	}
	body, err := rlog.EncodeStatements(req.Stmts)
	if err != nil {
		return store.Outcome{}, &store.ParamError{Msg: err.Error()}
	}
	fwd := &ForwardRequest{Origin: s.cfg.ID, Body: body, Collect: req.Collect, Ack: ack, RequestID: req.RequestID}
	if fwd.RequestID == "" {
		fwd.RequestID = s.newRequestID()
	}
	var resp *ForwardResponse
	var unknown *UnknownOutcomeError // an earlier attempt may have been committed
	retryUntil := s.clock.Now().Add(min(forwardRetry, s.cfg.AckTimeout))
	for delay := 50 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		fctx, cancel := context.WithTimeout(ctx, s.cfg.AckTimeout+2*time.Second)
		resp, err = s.tr.Forward(fctx, s.cfg.MasterURL, fwd)
		cancel()
		var uo *UnknownOutcomeError
		if errors.As(err, &uo) {
			unknown = uo
		}
		retry := err != nil && (unknown != nil || errors.Is(err, ErrUnavailable)) && ctx.Err() == nil
		if !retry || s.clock.Now().Add(delay).After(retryUntil) {
			break
		}
		select {
		case <-s.clock.After(delay):
		case <-ctx.Done():
		}
	}
	if err != nil {
		if unknown != nil {
			return store.Outcome{}, &UnknownOutcomeError{Reason: unknown.Reason, RequestID: req.RequestID}
		}
		return store.Outcome{}, err
	}
	if resp.Error != nil {
		return store.Outcome{Index: resp.Index}, FromWireError(resp.Error, s.cfg.AckTimeout)
	}
	results, err := store.DecodeResults(resp.Results)
	if err != nil {
		return store.Outcome{}, err
	}
	// The master counted this slave as acknowledging the write (see
	// Master.write), so the answer waits until it really has: that gives
	// the client read-your-writes here and completes the ack level.
	out := store.Outcome{Index: resp.Index, Results: results}
	if err := s.WaitApplied(ctx, resp.Index, s.cfg.AckTimeout); err != nil {
		return out, &AckTimeoutError{Index: resp.Index, Level: ack + ", applied on the slave that received it", After: s.cfg.AckTimeout}
	}
	return out, nil
}

// newRequestID makes an idempotency key for a forward whose client sent
// none: the slave's id, a random id of this Slave and a counter. The keys
// of one Slave grow in order, so recording them appends to the request
// table's index instead of inserting at random places in it (random keys
// cost forwarded writes a fifth of their throughput, measured).
func (s *Slave) newRequestID() string {
	return fmt.Sprintf("~slave%d-%s-%016x", s.cfg.ID, s.bootID, s.forwards.Add(1))
}

// ReadIndex asks the master for the index that covers every acknowledged
// write (for strong reads).
func (s *Slave) ReadIndex(ctx context.Context) (uint64, error) {
	if s.cfg.InjectBug == "stale-strong-read" {
		return 0, nil
	}
	if why := s.masterSilent(); why != "" {
		return 0, &UnavailableError{Reason: why}
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.tr.ReadIndex(rctx, s.cfg.MasterURL)
}

// IsLeader implements Replicator: a slave never orders writes.
func (s *Slave) IsLeader() bool { return false }

// LeaderURL implements Replicator: the master's URL.
func (s *Slave) LeaderURL() string { return s.cfg.MasterURL }

// WaitApplied waits until this slave has applied index.
func (s *Slave) WaitApplied(ctx context.Context, index uint64, timeout time.Duration) error {
	return waitApplied(ctx, s.clock, &s.progress, s.st, index, timeout)
}

// SlaveStatus is what a slave knows of its replication.
type SlaveStatus struct {
	MasterURL    string  `json:"master_url"`
	MasterIndex  uint64  `json:"master_index"`
	Lag          uint64  `json:"lag"`
	Reachable    bool    `json:"master_reachable"`
	SecondsAgo   float64 `json:"seconds_since_master_contact,omitempty"`
	Joined       bool    `json:"joined"`
	Diverged     string  `json:"diverged,omitempty"`
	AppliedIndex uint64  `json:"applied_index"`
}

// Status reports the slave's view of replication.
func (s *Slave) Status() SlaveStatus {
	applied := s.st.Applied()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SlaveStatus{MasterURL: s.cfg.MasterURL, MasterIndex: s.masterCommit, Joined: s.joined, Diverged: s.diverged, AppliedIndex: applied}
	if s.masterCommit > applied {
		st.Lag = s.masterCommit - applied
	}
	if !s.lastContact.IsZero() {
		d := s.clock.Now().Sub(s.lastContact)
		st.SecondsAgo = d.Seconds()
		st.Reachable = d <= 8*s.cfg.Heartbeat+time.Second
	}
	return st
}
