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

// Progress lets goroutines wait for "something advanced" without polling:
// Changed returns a channel that is closed at the next Notify.
type Progress struct {
	mu sync.Mutex
	ch chan struct{}
}

// Changed returns the channel closed by the next Notify.
func (p *Progress) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch == nil {
		p.ch = make(chan struct{})
	}
	return p.ch
}

// Notify wakes every waiter.
func (p *Progress) Notify() {
	p.mu.Lock()
	if p.ch != nil {
		close(p.ch)
		p.ch = nil
	}
	p.mu.Unlock()
}

// waitUntil waits until cond() holds, re-checking at every Notify of p, for
// at most timeout. It returns false on timeout and ctx's error when ctx ends.
func waitUntil(ctx context.Context, clock Clock, p *Progress, timeout time.Duration, cond func() bool) (bool, error) {
	var deadline <-chan time.Time
	for {
		ch := p.Changed()
		if cond() {
			return true, nil
		}
		if deadline == nil {
			deadline = clock.After(timeout)
		}
		select {
		case <-ch:
		case <-deadline:
			return cond(), nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
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
