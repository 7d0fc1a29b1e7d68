// Package fault is the fault-injection suite: it runs a real cluster whose
// node-to-node traffic goes through proxies it controls, injects faults
// chosen from a printed seed (kill -9, pauses, partitions, wiped slaves)
// while concurrent clients run workloads, and then checks the guarantees:
// nothing acknowledged lost, replicas identical, bank totals conserved,
// strong reads linearizable (with porcupine).
package fault

import (
	"io"
	"net"
	"sync"
	"time"
)

// Link is a TCP proxy for one direction of node-to-node traffic (for
// example "master to slave 1"). It can be cut (new connections refused,
// open ones closed mid-request) and delayed.
type Link struct {
	Name   string
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	delay time.Duration
	conns map[net.Conn]struct{}
}

// NewLink listens on a free loopback port and forwards to target.
func NewLink(name, target string) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{Name: name, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go l.serve()
	return l, nil
}

// URL is the proxy's address as an http URL.
func (l *Link) URL() string { return "http://" + l.ln.Addr().String() }

// Close stops the proxy.
func (l *Link) Close() {
	l.ln.Close()
	l.Cut()
}

func (l *Link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		go l.handle(c)
	}
}

func (l *Link) handle(c net.Conn) {
	l.mu.Lock()
	cut := l.cut
	l.mu.Unlock()
	if cut {
		c.Close()
		return
	}
	up, err := net.DialTimeout("tcp", l.target, time.Second)
	if err != nil {
		c.Close()
		return
	}
	l.mu.Lock()
	if l.cut {
		l.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	l.conns[c], l.conns[up] = struct{}{}, struct{}{}
	l.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { l.pipe(up, c); done <- struct{}{} }()
	go func() { l.pipe(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
	l.mu.Lock()
	delete(l.conns, c)
	delete(l.conns, up)
	l.mu.Unlock()
}

func (l *Link) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.mu.Lock()
			d := l.delay
			l.mu.Unlock()
			if d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

// Cut refuses new connections and drops the open ones, mid-request if need be.
func (l *Link) Cut() {
	l.mu.Lock()
	l.cut = true
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Heal lets traffic through again, without delay.
func (l *Link) Heal() {
	l.mu.Lock()
	l.cut, l.delay = false, 0
	l.mu.Unlock()
}

// Delay slows every chunk of traffic by d.
func (l *Link) Delay(d time.Duration) {
	l.mu.Lock()
	l.delay = d
	l.mu.Unlock()
}
