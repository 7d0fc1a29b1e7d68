package sim

import (
	"fmt"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/verify"
)

// convergeWithin is how long, once every fault healed, the cluster has to
// come back whole: every node running, in the configuration it was named
// in, and at the leader's applied index.
const convergeWithin = 2 * time.Minute

// end stops the workloads and the faults.
func (s *sim) end() {
	s.ended = true
	s.log("end of workloads and faults")
}

// converge heals every fault and waits for the cluster to come back whole.
func (s *sim) converge() {
	s.net.calm()
	clear(s.net.cut)
	for _, nd := range s.nodes {
		nd.offset, nd.slowTill = 0, 0
		s.restart(nd)
	}
	deadline := s.now + convergeWithin
	var why string
	done := false
	var poll func()
	poll = func() {
		why = s.whole(true)
		if why == "" || s.now >= deadline {
			done = true
			return
		}
		s.after(500*time.Millisecond, "", poll)
	}
	s.after(0, "", poll)
	s.runUntil(func() bool { return done })
	if why != "" {
		s.anomaly("converge: the cluster did not come back whole within %v of healing: %s", convergeWithin, why)
	}
	s.log("converged")
}

// whole says what keeps the cluster from being whole ("" when nothing):
// a leader, and every node running, a voter, and at the leader's applied
// index, and with idle, no operation waiting.
func (s *sim) whole(idle bool) string {
	lead := s.leader()
	if lead == nil {
		return "no leader"
	}
	st := lead.n.RecentStatus()
	var why []string
	for _, nd := range s.nodes {
		if !nd.up {
			why = append(why, fmt.Sprintf("node %d is down", nd.i))
			continue
		}
		if _, ok := st.Config.Voters[0][nd.id]; !ok {
			why = append(why, fmt.Sprintf("node %d is not a voter", nd.i))
		}
		if a := nd.st.Applied(); a != lead.st.Applied() || a < st.Commit {
			why = append(why, fmt.Sprintf("node %d applied %d, the leader (node %d) %d of %d", nd.i, a, lead.i, lead.st.Applied(), st.Commit))
		}
		if idle && len(nd.ops) > 0 {
			why = append(why, fmt.Sprintf("node %d has %d operations waiting", nd.i, len(nd.ops)))
		}
	}
	return strings.Join(why, "; ")
}

// check stops every node and runs the checkers on their databases and the
// clients' histories.
func (s *sim) check() {
	s.closeAll()
	var dbs []*inspect.Database
	for _, nd := range s.nodes {
		d, err := inspect.Load(nd.path)
		if err != nil {
			s.anomaly("read node %d's database: %v", nd.i, err)
			return
		}
		dbs = append(dbs, d)
	}
	var found []string
	found = append(found, verify.Replicas(dbs)...)
	found = append(found, verify.Appends(dbs, s.appended)...)
	found = append(found, verify.Bank(dbs)...)
	found = append(found, verify.Counter(dbs, s.counterAcked, s.counterUnknown)...)
	if s.o.Changes {
		var paths []string
		for _, nd := range s.nodes {
			paths = append(paths, nd.path)
		}
		found = append(found, verify.ChangeStreams(paths, s.o.Dir)...)
	}
	reg, did, _ := verify.Register(s.regOps, time.Minute)
	found = append(found, reg...)
	for _, a := range found {
		s.anomaly("%s", a)
	}
	if did != "" {
		s.log(did)
	}
}
