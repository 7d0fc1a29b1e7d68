package fault

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestFocus(t *testing.T) {
	f := os.Getenv("DDB_FOCUS")
	if f == "" {
		t.Skip()
	}
	s := runSeed()
	for i := 0; i < 6; i++ {
		rep := Run(t, Options{Seed: s + uint64(i), Duration: 40 * time.Second, FaultEvery: time.Second, Faults: strings.Split(f, ","), Workloads: []string{"register"}, Clients: 6, Logf: t.Logf})
		report(t, rep)
		if len(rep.Anomalies) > 0 {
			return
		}
	}
}
