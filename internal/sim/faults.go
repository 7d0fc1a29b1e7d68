package sim

import (
	"fmt"
	"time"
)

// fault injects one fault drawn from Options.Faults, and schedules the
// next. Faults that stop nodes leave a majority running (a cluster without
// one only waits).
func (s *sim) fault() {
	if s.ended {
		return
	}
	defer func() { s.after(s.exp(s.o.FaultEvery), "fault", s.fault) }()
	kind := pick(s, s.o.Faults)
	up := s.upNodes()
	down := len(s.nodes) - len(up)
	victim := pick(s, up)
	note := func(format string, args ...any) {
		f := fmt.Sprintf("%.1fs %s ", s.now.Seconds(), kind) + fmt.Sprintf(format, args...)
		s.faults = append(s.faults, f)
		s.log("FAULT " + f)
	}
	switch kind {
	case "crash", "crash-master", "wipe":
		if down >= (len(s.nodes)-1)/2 {
			return
		}
		if kind == "wipe" && s.rejoining() {
			// A node that lost its data rejoins through the leader; a
			// second loss before the first is repaired could leave a
			// majority without the log, which no cluster survives.
			return
		}
		if kind == "crash-master" || kind == "wipe" && s.chance(0.5) {
			if victim = s.leader(); victim == nil {
				return
			}
		}
		victim.stop()
		if kind == "wipe" {
			victim.wipe()
			victim.wiped = true
		}
		d := s.between(300*time.Millisecond, 4*time.Second)
		note("node %d, back in %v", victim.i, d.Round(time.Millisecond))
		s.after(d, fmt.Sprintf("restart %d", victim.i), func() { s.restart(victim) })
	case "isolate":
		d := s.between(500*time.Millisecond, 5*time.Second)
		note("node %d for %v", victim.i, d.Round(time.Millisecond))
		for _, o := range s.nodes {
			if o != victim {
				s.cutFor(d, victim.id, o.id)
				s.cutFor(d, o.id, victim.id)
			}
		}
	case "split", "one-way":
		a, b := pick(s, s.nodes), pick(s, s.nodes)
		if a == b {
			return
		}
		d := s.between(500*time.Millisecond, 5*time.Second)
		note("%d->%d for %v", a.i, b.i, d.Round(time.Millisecond))
		s.cutFor(d, a.id, b.id)
		if kind == "split" {
			s.cutFor(d, b.id, a.id)
		}
	case "lossy":
		d := s.between(time.Second, 5*time.Second)
		s.net.drop, s.net.dup = 0.05+0.25*s.rng.Float64(), 0.1*s.rng.Float64()
		s.net.maxDelay = s.between(10*time.Millisecond, 300*time.Millisecond)
		note("drop %.2f dup %.2f delay up to %v, for %v", s.net.drop, s.net.dup, s.net.maxDelay, d.Round(time.Millisecond))
		s.after(d, "calm", func() { s.net.calm() })
	case "clock":
		j := s.between(-time.Minute, time.Minute)
		victim.offset += j
		note("node %d's clock jumps %v", victim.i, j.Round(time.Millisecond))
	case "slow-apply":
		d := s.between(time.Second, 5*time.Second)
		victim.slowTill = s.now + d
		note("node %d applies slowly for %v", victim.i, d.Round(time.Millisecond))
	}
}

// restart starts a stopped node again.
func (s *sim) restart(nd *node) {
	if nd.up {
		return
	}
	if err := s.start(nd); err != nil {
		s.anomaly("node: node %d does not start again: %v", nd.i, err)
	}
}

// cutFor cuts the link from a to b for d.
func (s *sim) cutFor(d time.Duration, a, b uint64) {
	k := [2]uint64{a, b}
	s.net.cut[k]++
	s.after(d, "", func() { s.net.cut[k]-- })
}

// rejoining says whether a node that lost its data is not yet back: a
// voter holding the leader's log.
func (s *sim) rejoining() bool {
	lead := s.leader()
	for _, nd := range s.nodes {
		if !nd.wiped {
			continue
		}
		if lead == nil || !nd.up {
			return true
		}
		st := lead.n.RecentStatus()
		if _, voter := st.Config.Voters[0][nd.id]; !voter || nd.st.Applied() < st.Commit {
			return true
		}
		nd.wiped = false
	}
	return false
}
