package bench

import (
	"slices"
	"testing"
	"time"
)

func TestMergeAddsSlicesOfOneWorkload(t *testing.T) {
	a := Result{Name: "w", Ops: 100, Errors: 1, FirstErr: "first", Duration: time.Second, NodeCPU: 50 * time.Millisecond,
		Latencies: []time.Duration{1, 4, 9}}
	b := Result{Name: "w", Ops: 300, Errors: 2, FirstErr: "second", Duration: time.Second, NodeCPU: 70 * time.Millisecond,
		Latencies: []time.Duration{2, 3, 10}}
	r := Merge(a, b)
	if r.Name != "w" || r.Ops != 400 || r.Errors != 3 || r.FirstErr != "first" || r.Duration != 2*time.Second || r.NodeCPU != 120*time.Millisecond {
		t.Fatalf("merged: %+v", r)
	}
	if r.Rate() != 200 {
		t.Fatalf("rate %v, want 200 (400 operations in 2 s)", r.Rate())
	}
	if !slices.Equal(r.Latencies, []time.Duration{1, 2, 3, 4, 9, 10}) {
		t.Fatalf("latencies %v, want both slices' in order", r.Latencies)
	}
	if r.CPUPerOp() != 300*time.Microsecond {
		t.Fatalf("CPU per op %v", r.CPUPerOp())
	}
}
