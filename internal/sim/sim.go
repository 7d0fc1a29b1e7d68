// Package sim is a deterministic simulator of a whole cluster, in the
// manner of FoundationDB's simulation and TigerBeetle's VOPR: N nodes run
// in one process and one goroutine, each with the real Raft loop
// (consensus.Node, stepped: see consensus.Open), the real applier, and the
// real store on real SQLite files in a directory of their own. The network
// and the clock are simulated: messages are delayed, dropped, duplicated,
// reordered and cut (partitions, one-way cuts); time is a number the
// simulator advances from one event to the next. Nodes crash (their store
// is closed and reopened), lose their files, and see their clocks jump.
// The workloads and checkers are the fault suite's (package verify).
//
// One seed decides everything: the schedule of faults, each message's fate,
// each client's operations, Raft's own randomness (the caller fixes
// crypto/rand to the seed; see testing/cryptotest.SetGlobalRandom). A run
// records every event it executes in a trace, and its digest (Report.Trace)
// is the same each time the seed runs.
package sim

import (
	"container/heap"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ddbgo/ddb/internal/verify"
)

// Options configure a run.
type Options struct {
	Seed  uint64
	Nodes int // voters, the first the master (default 3)
	// Duration is the simulated time workloads and faults run (default
	// 30 s); then every fault heals and the cluster must converge.
	Duration time.Duration
	// FaultEvery is the mean simulated time between faults (default 3 s;
	// negative: no faults).
	FaultEvery time.Duration
	Faults     []string // fault kinds to draw from (default AllFaults)
	Clients    int      // clients per workload (default 2)
	// Think is a client's mean pause between two operations (default
	// 200 ms: some 40 operations a simulated second in all). The real
	// store is most of a run's cost: fewer operations simulate more time.
	Think time.Duration
	// Bug switches deliberate defects on, comma-separated (fault builds
	// only; see consensus.EngineConfig.InjectBug and store.Options.InjectBug).
	Bug string
	Dir string // where the nodes keep their files (required)
	// Changes turns the change stream on before the workloads' schema,
	// and then judges it: every node stores the same changes, and they
	// replay to the same tables (verify.ChangeStreams).
	Changes bool
	// Log, if set, gets the trace line of every event as it runs.
	Log func(line string)
}

// AllFaults are the kinds of fault a run draws from.
var AllFaults = []string{"crash", "crash-master", "wipe", "isolate", "split", "one-way", "lossy", "clock", "slow-apply"}

// Report is what a run did and found.
type Report struct {
	Seed      uint64
	Simulated time.Duration // simulated time, the final convergence included
	Events    int
	Faults    []string
	Ops       map[string]int
	Anomalies []string
	Trace     string // SHA-256 of the trace: the same for every run of the seed
}

// sim is one run.
type sim struct {
	o      Options
	rng    *rand.Rand
	now    time.Duration // simulated time since epoch
	seq    uint64
	queue  events
	trace  hash.Hash
	nevent int
	nodes  []*node
	net    network
	nextID uint64 // proposal ids
	ended  bool   // workloads and faults are over

	faults    []string
	ops       map[string]int
	anomalies []string
	leaders   map[uint64]uint64 // term -> its leader, as the nodes said
	maxCommit uint64            // the highest commit index a node has seen

	appended       map[int64]verify.Outcome
	regOps         []porcupine.Operation
	counterAcked   int64
	counterUnknown int64
}

// maxEvents bounds a run: a run of 30 simulated seconds takes about
// 50,000 events, so one that takes 100 times as many is caught in a loop
// (nodes that keep answering each other without progress).
const maxEvents = 5_000_000

// epoch is when every simulated clock starts.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Run runs the simulation o describes.
func Run(o Options) (Report, error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Duration == 0 {
		o.Duration = 30 * time.Second
	}
	if o.FaultEvery == 0 {
		o.FaultEvery = 3 * time.Second
	}
	if o.Faults == nil {
		o.Faults = AllFaults
	}
	if o.Clients == 0 {
		o.Clients = 2
	}
	if o.Think == 0 {
		o.Think = 200 * time.Millisecond
	}
	if o.Dir == "" {
		return Report{}, fmt.Errorf("sim: Options.Dir is required")
	}
	s := &sim{o: o, rng: rand.New(rand.NewPCG(o.Seed, 0x5eed)), trace: sha256.New(), ops: map[string]int{},
		leaders: map[uint64]uint64{}, appended: map[int64]verify.Outcome{}}
	s.net = newNetwork()
	for i := range o.Nodes {
		s.nodes = append(s.nodes, newNode(s, i))
	}
	defer s.closeAll()
	for _, nd := range s.nodes {
		if err := s.start(nd); err != nil {
			return s.report(), err
		}
	}
	if err := s.setup(); err != nil {
		return s.report(), err
	}
	s.startWorkloads()
	if o.FaultEvery > 0 {
		s.after(s.exp(o.FaultEvery), "fault", s.fault)
	}
	s.after(o.Duration, "end", s.end)
	s.runUntil(func() bool { return s.ended })
	s.converge()
	s.check()
	return s.report(), nil
}

func (s *sim) report() Report {
	ops := map[string]int{}
	for k, v := range s.ops {
		ops[k] = v
	}
	return Report{Seed: s.o.Seed, Simulated: s.now, Events: s.nevent, Faults: s.faults, Ops: ops,
		Anomalies: s.anomalies, Trace: hex.EncodeToString(s.trace.Sum(nil))}
}

// anomaly records what a checker found (at most 20 of each checker).
func (s *sim) anomaly(format string, args ...any) {
	a := fmt.Sprintf(format, args...)
	var kept bool
	if s.anomalies, kept = verify.Record(s.anomalies, a, 20); kept {
		s.log("ANOMALY " + a)
	}
}

// log adds a line to the trace.
func (s *sim) log(line string) {
	fmt.Fprintf(s.trace, "%d %s\n", s.now, line)
	if s.o.Log != nil {
		s.o.Log(fmt.Sprintf("[%9.3fs] %s", s.now.Seconds(), line))
	}
}

// An event is something that happens at a simulated time. Events at the
// same time run in the order they were scheduled.
type event struct {
	at   time.Duration
	seq  uint64
	what string
	fn   func()
}

type events []*event

func (q events) Len() int { return len(q) }
func (q events) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q events) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *events) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *events) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// after schedules fn to run d from now. what names it in the trace.
func (s *sim) after(d time.Duration, what string, fn func()) {
	s.seq++
	heap.Push(&s.queue, &event{at: s.now + max(d, 0), seq: s.seq, what: what, fn: fn})
}

// runUntil runs events in order until done says so (or none is left).
func (s *sim) runUntil(done func() bool) {
	for !done() && s.queue.Len() > 0 {
		if s.nevent >= maxEvents {
			if s.nevent == maxEvents {
				s.anomaly("sim: %d events by %v simulated: a livelock (the run stops here)", maxEvents, s.now)
				s.nevent++
			}
			return
		}
		e := heap.Pop(&s.queue).(*event)
		s.now = e.at
		s.nevent++
		if e.what != "" {
			s.log(e.what)
		}
		e.fn()
	}
}

// between is a random duration in [lo, hi).
func (s *sim) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

// exp is a random duration, exponentially distributed around mean.
func (s *sim) exp(mean time.Duration) time.Duration {
	return time.Duration(s.rng.ExpFloat64() * float64(mean))
}

// chance is true with probability p.
func (s *sim) chance(p float64) bool { return s.rng.Float64() < p }

// pick is a random element of xs.
func pick[T any](s *sim, xs []T) T { return xs[s.rng.IntN(len(xs))] }

// upNodes are the nodes running, in order.
func (s *sim) upNodes() []*node {
	var out []*node
	for _, nd := range s.nodes {
		if nd.up {
			out = append(out, nd)
		}
	}
	return out
}

// leader is the node that leads with the highest term (nil: none).
func (s *sim) leader() *node {
	var best *node
	var term uint64
	for _, nd := range s.upNodes() {
		if st := nd.n.RecentStatus(); st.RaftState.String() == "StateLeader" && st.Term >= term {
			best, term = nd, st.Term
		}
	}
	return best
}

// noteLeader checks two of Raft's guarantees after each step: election
// safety (one leader per term) and leader completeness (a leader's log
// holds every entry committed before: it ends at or after the highest
// commit index any node has seen).
func (s *sim) noteLeader(nd *node) {
	st := nd.n.RecentStatus()
	if st.Commit > s.maxCommit {
		s.maxCommit = st.Commit
	}
	if st.RaftState.String() != "StateLeader" {
		return
	}
	if other, ok := s.leaders[st.Term]; ok && other != nd.id {
		s.anomaly("raft: nodes %d and %d both lead in term %d", other-1, nd.id-1, st.Term)
	}
	if _, known := s.leaders[st.Term]; !known {
		if last := st.Progress[nd.id].Match; last < s.maxCommit {
			s.anomaly("raft: node %d leads term %d with a log that ends at %d, but entries up to %d were committed", nd.i, st.Term, last, s.maxCommit)
		}
	}
	s.leaders[st.Term] = nd.id
}

// closeAll stops every node and closes its store.
func (s *sim) closeAll() {
	for _, nd := range s.nodes {
		if nd.up {
			nd.stop()
		}
	}
}

// sortedKeys is m's keys in order.
func sortedKeys[K interface{ ~int | ~uint64 | ~int64 }, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
