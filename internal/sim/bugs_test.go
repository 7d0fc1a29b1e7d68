//go:build ddb_faults

package sim

import (
	"strings"
	"testing"
	"time"
)

// The simulator finds each deliberate defect (fault builds only) within a
// few seeds: those of the write, read and apply paths that the fault
// suite's checkers catch, and the membership defects the simulator and
// the long fault runs found, brought back.
func TestSimFindsDeliberateBugs(t *testing.T) {
	cases := []struct {
		bug    string
		faults []string
		want   string // an anomaly starting with this
		seeds  int    // seeds tried at most
	}{
		{"ack-before-commit", []string{"crash", "crash-master"}, "append:", 10},
		{"stale-strong-read", []string{"isolate", "split"}, "register:", 10},
		{"endless-lease", []string{"isolate", "split"}, "register:", 30},
		{"partial-apply", []string{"lossy"}, "bank:", 3},
		{"skip-entry", []string{"lossy"}, "append:", 3},
		{"unpinned-clock", []string{"clock"}, "replicas differ", 3},
		{"rejoin-once", []string{"wipe"}, "converge:", 10},
		{"admit-fresh-voter", []string{"wipe", "isolate", "crash"}, "", 30},
		{"create-alone", []string{"wipe", "isolate"}, "", 60},
	}
	for _, c := range cases {
		t.Run(c.bug, func(t *testing.T) {
			start := time.Now()
			var simulated time.Duration
			for seed := uint64(1); seed <= uint64(c.seeds); seed++ {
				rep := simulate(t, Options{Seed: seed, Bug: c.bug, Faults: c.faults, Duration: 20 * time.Second, FaultEvery: 1500 * time.Millisecond})
				simulated += rep.Simulated
				for _, a := range rep.Anomalies {
					if strings.HasPrefix(a, c.want) {
						t.Logf("found with seed %d after %d seeds, %v simulated, %v: %s", seed, seed, simulated.Round(time.Second), time.Since(start).Round(time.Millisecond), a)
						return
					}
				}
			}
			t.Fatalf("%d seeds did not find %q", c.seeds, c.bug)
		})
	}
}
