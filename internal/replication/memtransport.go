package replication

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// MemNetwork is an in-memory Transport between nodes of one process, with
// hooks to inject faults. Tests use it to run the protocol without sockets.
type MemNetwork struct {
	mu      sync.Mutex
	masters map[string]MasterHandler
	slaves  map[string]SlaveHandler

	// Fault hooks, consulted for every call to url (nil = no fault); set
	// them with SetFaults.
	drop, dropReply, duplicate func(url string) bool
}

// Faults are the hooks a MemNetwork consults for every call (nil = none).
type Faults struct {
	Drop      func(url string) bool // the request never arrives
	DropReply func(url string) bool // it is handled, but the reply is lost
	Duplicate func(url string) bool // it is delivered twice
}

// SetFaults replaces the fault hooks.
func (n *MemNetwork) SetFaults(f Faults) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drop, n.dropReply, n.duplicate = f.Drop, f.DropReply, f.Duplicate
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{masters: map[string]MasterHandler{}, slaves: map[string]SlaveHandler{}}
}

// AddMaster makes h reachable at url.
func (n *MemNetwork) AddMaster(url string, h MasterHandler) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.masters[url] = h
}

// AddSlave makes h reachable at url (replacing any previous one).
func (n *MemNetwork) AddSlave(url string, h SlaveHandler) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.slaves[url] = h
}

// Remove makes url unreachable.
func (n *MemNetwork) Remove(url string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.masters, url)
	delete(n.slaves, url)
}

var errMemUnreachable = errors.New("connection refused")

func (n *MemNetwork) fault(which *func(string) bool, url string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return *which != nil && (*which)(url)
}

func (n *MemNetwork) slave(url string) (SlaveHandler, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	h, ok := n.slaves[url]
	if !ok || (n.drop != nil && n.drop(url)) {
		return nil, fmt.Errorf("dial %s: %w", url, errMemUnreachable)
	}
	return h, nil
}

func (n *MemNetwork) master(url string) (MasterHandler, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	h, ok := n.masters[url]
	if !ok || (n.drop != nil && n.drop(url)) {
		return nil, &UnavailableError{Reason: fmt.Sprintf("dial %s: connection refused", url)}
	}
	return h, nil
}

// Append implements Transport.
func (n *MemNetwork) Append(ctx context.Context, url string, req *AppendRequest) (*AppendResponse, error) {
	h, err := n.slave(url)
	if err != nil {
		return nil, err
	}
	resp := h.HandleAppend(req)
	if n.fault(&n.duplicate, url) {
		resp = h.HandleAppend(req)
	}
	if n.fault(&n.dropReply, url) {
		return nil, fmt.Errorf("read reply from %s: connection reset", url)
	}
	return resp, nil
}

// InstallSnapshot implements Transport.
func (n *MemNetwork) InstallSnapshot(ctx context.Context, url string, index uint64, path string) (*AppendResponse, error) {
	h, err := n.slave(url)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return h.HandleSnapshot(index, f)
}

// Forward implements Transport.
func (n *MemNetwork) Forward(ctx context.Context, url string, req *ForwardRequest) (*ForwardResponse, error) {
	h, err := n.master(url)
	if err != nil {
		return nil, err
	}
	resp := h.HandleForward(ctx, req)
	if n.fault(&n.dropReply, url) {
		return nil, &UnknownOutcomeError{Reason: "reply lost"}
	}
	return resp, nil
}

// ReadIndex implements Transport.
func (n *MemNetwork) ReadIndex(ctx context.Context, url string) (uint64, error) {
	h, err := n.master(url)
	if err != nil {
		return 0, err
	}
	return h.HandleReadIndex(), nil
}

// Join implements Transport.
func (n *MemNetwork) Join(ctx context.Context, url string, req *JoinRequest) error {
	h, err := n.master(url)
	if err != nil {
		return err
	}
	return h.HandleJoin(req)
}

// FakeClock is a Clock that moves only when Advance is called.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

// NewFakeClock starts at t.
func NewFakeClock(t time.Time) *FakeClock { return &FakeClock{now: t} }

// Now implements Clock.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After implements Clock.
func (c *FakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock forward and fires every timer that is due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	sort.Slice(c.waiters, func(i, j int) bool { return c.waiters[i].at.Before(c.waiters[j].at) })
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}
