package replication

import (
	"context"
	"sync"
	"time"

	"ddb/internal/store"
)

// Clock is the time source of the replication logic; tests use a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Progress lets goroutines wait for their own condition without polling.
// Each waiter registers its condition; Notify, called after every change
// that could satisfy one, re-checks the conditions and wakes only the
// waiters whose condition now holds. (Waking every waiter at every change
// — a commit, an acknowledgement — cost the master a goroutine wake-up per
// waiting client per change.)
type Progress struct {
	mu      sync.Mutex
	waiters []*waiter
}

type waiter struct {
	cond func() bool
	done chan struct{}
}

// Notify wakes the waiters whose condition holds now.
func (p *Progress) Notify() {
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := p.waiters[:0]
	for _, w := range p.waiters {
		if w.cond() {
			close(w.done)
		} else {
			keep = append(keep, w)
		}
	}
	clear(p.waiters[len(keep):])
	p.waiters = keep
}

func (p *Progress) add(w *waiter) {
	p.mu.Lock()
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()
}

func (p *Progress) remove(w *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.waiters {
		if x == w {
			last := len(p.waiters) - 1
			p.waiters[i] = p.waiters[last]
			p.waiters[last] = nil
			p.waiters = p.waiters[:last]
			return
		}
	}
}

// waitUntil waits until cond() holds, for at most timeout: cond is checked
// now and then at each Notify of p that could make it true. It returns
// false on timeout and ctx's error when ctx ends. cond must be cheap and
// must not call into p.
func waitUntil(ctx context.Context, clock Clock, p *Progress, timeout time.Duration, cond func() bool) (bool, error) {
	if cond() {
		return true, nil
	}
	w := &waiter{cond: cond, done: make(chan struct{})}
	p.add(w)
	// A change between the first check and the registration had no waiter
	// to wake: check again now that a Notify will see this one.
	if cond() {
		p.remove(w)
		return true, nil
	}
	select {
	case <-w.done:
		return true, nil
	case <-clock.After(timeout):
		p.remove(w)
		return cond(), nil
	case <-ctx.Done():
		p.remove(w)
		return false, ctx.Err()
	}
}

// waitApplied waits until st has applied index, re-checking at each Notify
// of p; it gives a WaitTimeoutError after timeout.
func waitApplied(ctx context.Context, clock Clock, p *Progress, st *store.Store, index uint64, timeout time.Duration) error {
	ok, err := waitUntil(ctx, clock, p, timeout, func() bool { return st.Applied() >= index })
	if err != nil {
		return err
	}
	if !ok {
		return &WaitTimeoutError{Want: index, Have: st.Applied(), After: timeout}
	}
	return nil
}
