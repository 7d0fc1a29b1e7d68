package replication

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Notify wakes exactly the waiters whose condition holds, in any order of
// registration and change; the others keep waiting until theirs does, their
// deadline passes, or their context ends.
func TestProgressWakesOnlyTheWaitersWhoseConditionHolds(t *testing.T) {
	var p Progress
	var level atomic.Uint64
	clock := NewFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	const n = 20
	woke := make([]chan bool, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		woke[i] = make(chan bool, 1)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ok, err := waitUntil(context.Background(), clock, &p, time.Hour, func() bool { return level.Load() >= uint64(i) })
			if err != nil {
				t.Error(err)
			}
			woke[i] <- ok
		}(i)
	}
	// Every waiter registers (or finds its condition true at once: i = 0).
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		registered := len(p.waiters)
		p.mu.Unlock()
		if registered == n-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d waiters registered", registered, n-1)
		}
		time.Sleep(time.Millisecond)
	}
	if ok := <-woke[0]; !ok {
		t.Fatal("waiter 0 was not satisfied at once")
	}
	level.Store(7)
	p.Notify()
	for i := 1; i <= 7; i++ {
		if ok := <-woke[i]; !ok {
			t.Fatalf("waiter %d woke unsatisfied", i)
		}
	}
	select {
	case <-woke[8]:
		t.Fatal("waiter 8 woke before its condition held")
	case <-time.After(50 * time.Millisecond):
	}
	p.mu.Lock()
	left := len(p.waiters)
	p.mu.Unlock()
	if left != n-8 {
		t.Fatalf("%d waiters left, want %d", left, n-8)
	}
	level.Store(n)
	p.Notify()
	wg.Wait()
	for i := 8; i < n; i++ {
		if ok := <-woke[i]; !ok {
			t.Fatalf("waiter %d woke unsatisfied", i)
		}
	}

	// A deadline passing answers false and unregisters; so does a context
	// that ends (with its error).
	done := make(chan bool)
	go func() {
		ok, _ := waitUntil(context.Background(), clock, &p, time.Second, func() bool { return false })
		done <- ok
	}()
	for i := 0; ; i++ {
		clock.Advance(time.Second)
		select {
		case ok := <-done:
			if ok {
				t.Fatal("timed-out wait answered true")
			}
		case <-time.After(time.Millisecond):
			continue
		}
		break
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := waitUntil(ctx, clock, &p, time.Hour, func() bool { return false })
		done <- err == context.Canceled
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if !<-done {
		t.Fatal("cancelled wait did not answer with the context's error")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.waiters) != 0 {
		t.Fatalf("%d waiters left registered after timeout and cancel", len(p.waiters))
	}
}
