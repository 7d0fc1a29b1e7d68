package bench

import (
	"os"
	"testing"
	"time"
)

// CPUTime reads a process's CPU time: this process's grows by about what
// it spends spinning (in ticks of 10 ms).
func TestCPUTimeFollowsAProcessesWork(t *testing.T) {
	before := CPUTime(os.Getpid())
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
	}
	used := CPUTime(os.Getpid()) - before
	if used < 150*time.Millisecond || used > 2*time.Second {
		t.Fatalf("300 ms of spinning counted as %v of CPU", used)
	}
	if CPUTime(-1) != 0 {
		t.Fatal("a process that does not exist has CPU time")
	}
}
