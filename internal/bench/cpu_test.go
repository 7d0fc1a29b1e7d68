package bench

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// A /proc/PID/stat line gives the process's user and system time (fields
// 14 and 15, in ticks of 10 ms), whatever its command name holds.
func TestCPUTimeOfStatReadsUserAndSystemTime(t *testing.T) {
	for _, c := range []struct {
		stat string
		want time.Duration
	}{
		{"4242 (node) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 9 0 100 0 0", 12900 * time.Millisecond},
		{"7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0", 70 * time.Millisecond},
		{"7 (short) R 1 7", 0},
		{"no parenthesis here", 0},
	} {
		if got := cpuTimeOfStat([]byte(c.stat)); got != c.want {
			t.Errorf("%q: %v, want %v", c.stat, got, c.want)
		}
	}
	if CPUTime(-1) != 0 {
		t.Fatal("a process that does not exist has CPU time")
	}
}

// CPUTime of this process agrees with what the kernel's getrusage says of
// it, to three ticks: read on either side of it, after this process has spent
// some CPU (waiting for the work, not for a clock).
func TestCPUTimeAgreesWithGetrusage(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for x := 0; rusage() < 50*time.Millisecond; x++ {
		for i := 0; i < 1e6; i++ {
			x ^= i
		}
	}
	// /proc rounds down to ticks, and samples the time a tick may be
	// behind getrusage.
	const tick = 3 * time.Second / clockTicks
	before := CPUTime(os.Getpid())
	ru := rusage()
	after := CPUTime(os.Getpid())
	if before == 0 || before > ru+tick || ru > after+tick {
		t.Fatalf("/proc says %v then %v, getrusage %v between them", before, after, ru)
	}
}
