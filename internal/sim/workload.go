package sim

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ddbgo/ddb/internal/consensus"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
	"github.com/ddbgo/ddb/internal/verify"
)

// unknownOutcome: the write's outcome is not known (it may be applied).
const unknownOutcome = verify.Unknown

// result is what came of an operation.
type result struct {
	outcome verify.Outcome
	out     store.Outcome // a write's
	rows    [][]any       // a read's
	node    int
	index   uint64
}

// op is an operation waiting on a node: a write until the node applies its
// entry, a strong read until the node has applied its read index.
type op struct {
	id       uint64 // the write's proposal id
	done     <-chan consensus.Applied
	dropped  <-chan struct{}
	deadline time.Duration
	read     bool
	stmts    []rlog.Statement
	index    <-chan uint64 // the read index, once confirmed
	readAt   uint64        // the read index (0: not yet)
	asked    time.Duration
	forget   func()
	finish   func(result)
}

// write proposes req on a random running node and calls finish with what
// came of it (Failed when it was certainly not logged).
func (s *sim) write(req *store.Request, finish func(result)) {
	nd := s.target()
	if nd == nil {
		s.after(10*time.Millisecond, "", func() { finish(result{outcome: verify.Failed}) })
		return
	}
	data, err := nd.rep.Entry(req)
	if err != nil {
		s.anomaly("workload: encode a write: %v", err)
		s.after(0, "", func() { finish(result{outcome: verify.Failed}) })
		return
	}
	s.nextID++
	id := s.nextID
	done, dropped, forget := nd.n.Await(id)
	o := &op{id: id, done: done, dropped: dropped, forget: forget, deadline: s.now + ackTimeout, finish: finish}
	nd.ops = append(nd.ops, o)
	if !nd.n.Submit(id, data) {
		s.anomaly("workload: node %d's proposal queue is full", nd.i)
	}
	s.log(fmt.Sprintf("write %d on %d", id, nd.i))
	s.after(0, "", func() { s.step(nd) })
}

// read runs stmts on a random running node, after confirming a read index
// with the leader when strong (consensus' ReadIndex, then the wait for the
// node to apply it).
func (s *sim) read(stmts []rlog.Statement, strong bool, finish func(result)) {
	nd := s.target()
	if nd == nil {
		s.after(10*time.Millisecond, "", func() { finish(result{outcome: verify.Failed}) })
		return
	}
	if !strong {
		s.after(0, "", func() {
			if !nd.up {
				finish(result{outcome: verify.Failed})
				return
			}
			rows, err := s.query(nd, stmts)
			if err != nil {
				finish(result{outcome: verify.Failed, node: nd.i})
				return
			}
			finish(result{outcome: verify.OK, rows: rows, node: nd.i, index: nd.st.Applied()})
		})
		return
	}
	o := &op{read: true, stmts: stmts, deadline: s.now + ackTimeout, finish: finish, forget: func() {}}
	nd.ops = append(nd.ops, o)
	s.askReadIndex(nd, o)
}

// askReadIndex asks Raft for o's read index (again).
func (s *sim) askReadIndex(nd *node, o *op) {
	o.forget()
	key := make([]byte, 16)
	for i := range key {
		key[i] = byte(s.rng.Uint32())
	}
	o.asked = s.now
	s.guard(nd, "read index", func() { o.index, o.forget = nd.n.RequestRead(key) })
	s.after(0, "", func() { s.step(nd) })
}

// query runs a read on the node's store.
func (s *sim) query(nd *node, stmts []rlog.Statement) ([][]any, error) {
	res, err := nd.st.Read(context.Background(), stmts, store.Limits{})
	if err != nil {
		return nil, err
	}
	if len(res) == 0 {
		return nil, nil
	}
	return res[len(res)-1].Rows, nil
}

// target is a random node that serves clients: running, admitted and in
// the configuration (nil: none).
func (s *sim) target() *node {
	var ok []*node
	for _, nd := range s.upNodes() {
		if nd.admitted && nd.inConfig() {
			ok = append(ok, nd)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	return pick(s, ok)
}

// settle finishes what waits on nd and can finish now.
func (s *sim) settle(nd *node) {
	if !nd.up {
		return
	}
	s.settleChanges(nd)
	var ready []func()
	kept := nd.ops[:0]
	for _, o := range nd.ops {
		if f := s.settleOp(nd, o); f != nil {
			o.forget()
			ready = append(ready, f)
		} else {
			kept = append(kept, o)
		}
	}
	nd.ops = kept
	for _, f := range ready {
		f()
	}
}

// settleOp returns o's finish, with its result, once o is over (nil: it
// waits on).
func (s *sim) settleOp(nd *node, o *op) func() {
	res := func(r result) func() { r.node = nd.i; return func() { o.finish(r) } }
	if !o.read {
		select {
		case a := <-o.done:
			out, ok := a.Result.(store.Outcome)
			switch {
			case !ok:
				return res(result{outcome: verify.Unknown, index: a.Index})
			case out.Err != nil:
				return res(result{outcome: verify.Failed, out: out, index: a.Index})
			}
			return res(result{outcome: verify.OK, out: out, index: a.Index})
		case <-o.dropped:
			return res(result{outcome: verify.Failed})
		default:
		}
		if s.now >= o.deadline {
			return res(result{outcome: verify.Unknown})
		}
		return nil
	}
	if o.readAt == 0 {
		select {
		case i := <-o.index:
			o.readAt = max(i, 1)
		default:
		}
	}
	if o.readAt > 0 && nd.st.Applied() >= o.readAt {
		rows, err := s.query(nd, o.stmts)
		if err != nil {
			return res(result{outcome: verify.Failed})
		}
		return res(result{outcome: verify.OK, rows: rows, index: o.readAt})
	}
	if s.now >= o.deadline {
		return res(result{outcome: verify.Failed})
	}
	if o.readAt == 0 && s.now-o.asked >= timing.ReadResend {
		s.askReadIndex(nd, o)
	}
	return nil
}

// setup creates the workloads' tables and the bank's accounts, through
// the leader, before anything else happens.
func (s *sim) setup() error {
	if s.o.Changes {
		if err := s.setupWrite(&store.Request{SetChanges: true, ChangesKeep: 1 << 40, RequestID: "changes"}); err != nil {
			return err
		}
	}
	var stmts []rlog.Statement
	for _, q := range verify.Schema {
		stmts = append(stmts, rlog.Statement{SQL: q})
	}
	for i := range verify.BankAccounts {
		stmts = append(stmts, rlog.Statement{SQL: verify.BankInitSQL, Pos: []any{int64(i), int64(verify.BankTotal / verify.BankAccounts)}})
	}
	if err := s.setupWrite(&store.Request{Stmts: stmts, AllowSchema: true, RequestID: "setup"}); err != nil {
		return err
	}
	s.log("setup done")
	return nil
}

// setupWrite writes req through the leader, again until it is applied.
func (s *sim) setupWrite(req *store.Request) error {
	deadline := s.now + time.Minute
	for s.now < deadline {
		var got *result
		if lead := s.leader(); lead == nil {
			s.runUntil(func() bool { return s.leader() != nil || s.now >= deadline })
			continue
		}
		s.write(req, func(r result) { got = &r })
		s.runUntil(func() bool { return got != nil })
		if got != nil && got.outcome == verify.OK {
			return nil
		}
		if got != nil && got.outcome == verify.Failed && got.out.Err != nil {
			return fmt.Errorf("setup: %v", got.out.Err)
		}
	}
	return fmt.Errorf("setup: no leader took the write within a simulated minute")
}

// startWorkloads starts every client.
func (s *sim) startWorkloads() {
	for c := range s.o.Clients {
		s.appendClient(c, 0)
		s.bankClient(c)
		s.registerClient(c, 0)
		s.counterClient(c)
		s.determinismClient(c)
	}
}

// think is a client's pause between two operations.
func (s *sim) think(then func()) {
	if s.ended {
		return
	}
	s.after(s.between(time.Millisecond, 2*s.o.Think), "", then)
}

// retried sends a write with a request id, and again (same id) while its
// outcome is unknown, up to three times: it must apply once. The outcome
// is the last answer's, unknown if an earlier try's was unknown and the
// last is not an acknowledgement.
func (s *sim) retried(req *store.Request, finish func(verify.Outcome)) {
	var try func(n int, unknown bool)
	try = func(n int, unknown bool) {
		s.write(req, func(r result) {
			switch {
			case r.outcome == verify.OK:
				finish(verify.OK)
			case r.outcome == verify.Unknown && n < 3 && !s.ended:
				try(n+1, true)
			case unknown || r.outcome == verify.Unknown:
				finish(verify.Unknown)
			default:
				finish(verify.Failed)
			}
		})
	}
	try(1, false)
}

// appendClient inserts rows with ids it chooses.
func (s *sim) appendClient(c, i int) {
	id := int64(c)*1_000_000_000 + int64(i)
	s.appended[id] = verify.Unknown
	req := &store.Request{RequestID: fmt.Sprintf("append-%d", id), Stmts: []rlog.Statement{{SQL: verify.AppendSQL, Pos: []any{id, int64(c), int64(i)}}}}
	s.retried(req, func(o verify.Outcome) {
		s.appended[id] = o
		s.ops["append"]++
		s.think(func() { s.appendClient(c, i+1) })
	})
}

// counterClient increments one counter with request ids.
func (s *sim) counterClient(c int) {
	s.nextID++
	req := &store.Request{RequestID: fmt.Sprintf("counter-%d-%d", c, s.nextID), Stmts: []rlog.Statement{{SQL: verify.CounterSQL}}}
	s.retried(req, func(o verify.Outcome) {
		switch o {
		case verify.OK:
			s.counterAcked++
		case verify.Unknown:
			s.counterUnknown++
		}
		s.ops["counter"]++
		s.think(func() { s.counterClient(c) })
	})
}

// bankClient moves money between accounts, and reads the total (locally
// or strongly), which must always be the bank's.
func (s *sim) bankClient(c int) {
	next := func() { s.ops["bank"]++; s.think(func() { s.bankClient(c) }) }
	if s.rng.IntN(2) == 0 {
		a, b := int64(s.rng.IntN(verify.BankAccounts)), int64(s.rng.IntN(verify.BankAccounts))
		amt := int64(1 + s.rng.IntN(50))
		s.write(&store.Request{Stmts: []rlog.Statement{{SQL: verify.BankTakeSQL, Pos: []any{amt, a}}, {SQL: verify.BankGiveSQL, Pos: []any{amt, b}}}},
			func(result) { next() })
		return
	}
	strong := s.rng.IntN(2) == 0
	s.read([]rlog.Statement{{SQL: verify.BankTotalSQL}}, strong, func(r result) {
		if r.outcome == verify.OK {
			var total, n int64
			if len(r.rows) == 1 && len(r.rows[0]) == 2 {
				total, _ = r.rows[0][0].(int64)
				n, _ = r.rows[0][1].(int64)
			}
			for _, a := range verify.BankRead(total, n, fmt.Sprintf("a read (strong=%v) on node %d at index %d", strong, r.node, r.index)) {
				s.anomaly("%s", a)
			}
		}
		next()
	})
}

// registerClient writes unique values to a few keys and reads them
// strongly, recording the history for the linearizability check.
func (s *sim) registerClient(c, i int) {
	key := s.rng.IntN(verify.RegKeys)
	call := int64(s.now)
	next := func() { s.ops["register"]++; s.think(func() { s.registerClient(c, i+1) }) }
	if s.rng.IntN(2) == 0 {
		v := int64(c+1)*1_000_000 + int64(i)
		s.write(&store.Request{Stmts: []rlog.Statement{{SQL: verify.RegWriteSQL, Pos: []any{int64(key), v}}}}, func(r result) {
			op := porcupine.Operation{ClientId: c, Input: verify.RegInput{Write: true, Key: key, Value: v}, Call: call,
				Output: verify.RegOutput{Node: r.node, Index: r.index}, Return: int64(s.now)}
			switch r.outcome {
			case verify.Unknown:
				// It may take effect at any time from now on.
				op.Output, op.Return = verify.RegOutput{Unknown: true, Node: r.node}, math.MaxInt64/2
				s.regOps = append(s.regOps, op)
			case verify.OK:
				s.regOps = append(s.regOps, op)
			}
			next()
		})
		return
	}
	s.read([]rlog.Statement{{SQL: verify.RegReadSQL, Pos: []any{int64(key)}}}, true, func(r result) {
		if r.outcome == verify.OK {
			var v int64
			if len(r.rows) == 1 && len(r.rows[0]) == 1 {
				v, _ = r.rows[0][0].(int64)
			}
			s.regOps = append(s.regOps, porcupine.Operation{ClientId: c, Input: verify.RegInput{Key: key}, Call: call,
				Output: verify.RegOutput{Value: v, Node: r.node, Index: r.index}, Return: int64(s.now)})
		}
		next()
	})
}

// determinismClient writes rows whose values come from the clock and the
// random generator: the replicas must still be identical.
func (s *sim) determinismClient(c int) {
	s.write(&store.Request{Stmts: []rlog.Statement{{SQL: verify.DetSQL}}}, func(result) {
		s.ops["determinism"]++
		s.think(func() { s.determinismClient(c) })
	})
}
