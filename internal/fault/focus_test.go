package fault

import (
	"os"
	"strings"
	"testing"
	"time"
)

// A focused run: chosen faults, a fault about every second, six clients per
// workload, rounds of 40 seconds until one finds an anomaly (at most six).
// It hunts a suspected bug faster than the mixed runs:
//
//	DDB_FAULT_FOCUS=kill-master,wipe DDB_FAULT_WORKLOADS=register go test ./internal/fault -run Focused -v -timeout 0
func TestFocusedRunUnderChosenFaults(t *testing.T) {
	faults := os.Getenv("DDB_FAULT_FOCUS")
	if faults == "" {
		t.Skip("focused run: DDB_FAULT_FOCUS=kill-master,wipe [DDB_FAULT_WORKLOADS=register] go test ./internal/fault -run Focused -v -timeout 0")
	}
	var workloads []string
	if w := os.Getenv("DDB_FAULT_WORKLOADS"); w != "" {
		workloads = strings.Split(w, ",")
	}
	s := runSeed()
	for i := uint64(0); i < 6; i++ {
		rep := Run(t, Options{Seed: s + i, Duration: 40 * time.Second, FaultEvery: time.Second, Faults: strings.Split(faults, ","), Workloads: workloads, Clients: 6, Logf: t.Logf})
		report(t, rep)
		if len(rep.Anomalies) > 0 {
			return
		}
	}
}
