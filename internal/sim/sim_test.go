package sim

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"testing/cryptotest"
	"time"
)

var (
	seedFlag     = flag.Uint64("seed", 0, "run this seed only (0: the fixed list)")
	durationFlag = flag.Duration("sim-duration", 0, "simulated time of workloads and faults (0: each test's own)")
)

// simulate runs o with crypto/rand fixed to the seed (Raft's randomized
// election timeouts draw from it), and fails t on any anomaly, with the
// command that replays the run.
func simulate(t *testing.T, o Options) Report {
	t.Helper()
	cryptotest.SetGlobalRandom(t, o.Seed)
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if *durationFlag > 0 {
		o.Duration = *durationFlag
	}
	if testing.Verbose() && *seedFlag != 0 && o.Log == nil && os.Getenv("DDB_SIM_LONG") == "" {
		// One seed asked for by name, verbosely: print its trace.
		o.Log = func(line string) { fmt.Println(line) }
	}
	start, cpu0 := time.Now(), cpuTime()
	rep, err := Run(o)
	cpu := cpuTime() - cpu0
	if err != nil {
		t.Fatalf("seed %d: %v\nreplay: go test ./internal/sim -run Sim -seed %d -v", o.Seed, err, o.Seed)
	}
	t.Logf("seed %d: %v simulated in %v, %v of CPU (%.0f simulated seconds per CPU second), %d events, ops %v, %d faults, trace %s", rep.Seed, rep.Simulated.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), cpu.Round(time.Millisecond), rep.Simulated.Seconds()/cpu.Seconds(), rep.Events, rep.Ops, len(rep.Faults), rep.Trace[:16])
	return rep
}

// regressionSeeds found bugs (with the options TestSimFindsNoAnomaly
// runs), and run in CI forever after. 27: a node that lost its data was
// admitted, with no leader known, by a node that was behind, voted for it,
// and elected a leader without the entries it had acknowledged (see
// consensus.DecideJoin). 1100: the master lost its data while the others
// were out of reach, created a cluster of its own, and voted a node that
// was behind into leadership (see consensus.MayCreate).
var regressionSeeds = []uint64{27, 1100}

// CI runs seeds 1 to 100 and the regression seeds, each 30 simulated
// seconds of every workload under every kind of fault, then healing; even
// seeds with the change stream on (and judged).
func TestSimFindsNoAnomaly(t *testing.T) {
	var seeds []uint64
	for s := uint64(1); s <= 100; s++ {
		seeds = append(seeds, s)
	}
	seeds = append(seeds, regressionSeeds...)
	if *seedFlag != 0 {
		seeds = []uint64{*seedFlag}
	}
	for _, seed := range seeds {
		rep := simulate(t, Options{Seed: seed, Changes: seed%2 == 0})
		if len(rep.Anomalies) > 0 {
			t.Errorf("seed %d found %d anomalies:\n%s\nfaults: %s\nreplay: go test ./internal/sim -run Sim -seed %d -v",
				seed, len(rep.Anomalies), strings.Join(rep.Anomalies, "\n"), strings.Join(rep.Faults, "; "), seed)
		}
	}
}

// cpuTime is the CPU time the process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(m.Run())
}

// Running a seed twice gives the same run: the digests of the two traces
// (every event, every message with its term, index and commit, every
// apply, every fault) are equal.
func TestSimReplaysASeedExactly(t *testing.T) {
	seed := uint64(7)
	if *seedFlag != 0 {
		seed = *seedFlag
	}
	o := Options{Seed: seed, Duration: 10 * time.Second, FaultEvery: time.Second, Changes: true}
	a := simulate(t, o)
	b := simulate(t, o)
	if a.Trace != b.Trace || a.Events != b.Events {
		t.Fatalf("seed %d ran differently twice: %d events, trace %s; then %d events, trace %s", seed, a.Events, a.Trace, b.Events, b.Trace)
	}
	if len(a.Faults) == 0 || a.Ops["register"] == 0 {
		t.Fatalf("the run did too little to show anything: faults %v, ops %v", a.Faults, a.Ops)
	}
}

// The long mode: DDB_SIM_LONG=30m runs consecutive seeds from -seed (or 1)
// for that long, and reports what they did (docs/RELIABILITY.md).
func TestSimLong(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("DDB_SIM_LONG"))
	if err != nil || d <= 0 {
		t.Skip("set DDB_SIM_LONG (e.g. 30m) to run the long mode")
	}
	seed := max(*seedFlag, 1)
	start := time.Now()
	var runs, faults, ops, anomalies int
	var simulated time.Duration
	for time.Since(start) < d {
		rep := simulate(t, Options{Seed: seed, Changes: seed%2 == 0})
		runs++
		faults += len(rep.Faults)
		for _, n := range rep.Ops {
			ops += n
		}
		simulated += rep.Simulated
		if len(rep.Anomalies) > 0 {
			anomalies += len(rep.Anomalies)
			t.Errorf("seed %d found %d anomalies:\n%s\nfaults: %s\nreplay: go test ./internal/sim -run Sim -seed %d -v",
				seed, len(rep.Anomalies), strings.Join(rep.Anomalies, "\n"), strings.Join(rep.Faults, "; "), seed)
		}
		seed++
	}
	t.Logf("SIM LONG RUN: %d runs (seeds %d..%d) in %v, %v simulated (%.0f×), %d faults, %d operations, %d anomalies",
		runs, seed-uint64(runs), seed-1, time.Since(start).Round(time.Second), simulated.Round(time.Second),
		simulated.Seconds()/time.Since(start).Seconds(), faults, ops, anomalies)
}
