package testcluster

import (
	"fmt"
	"log"
	"os"
	"sync"
)

// Standalone is a TB for programs (the benchmark tool) that run clusters
// outside a test: failures end the program, cleanups run at Close.
type Standalone struct {
	mu       sync.Mutex
	cleanups []func()
	dirs     []string
	failed   bool
	Verbose  bool
}

// Helper implements TB.
func (s *Standalone) Helper() {}

// Fatalf implements TB: it runs the cleanups and exits.
func (s *Standalone) Fatalf(format string, args ...any) {
	s.failed = true
	s.Close()
	log.Fatalf(format, args...)
}

// Logf implements TB.
func (s *Standalone) Logf(format string, args ...any) {
	if s.Verbose || s.failed {
		log.Printf(format, args...)
	}
}

// Cleanup implements TB.
func (s *Standalone) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// TempDir implements TB.
func (s *Standalone) TempDir() string {
	d, err := os.MkdirTemp("", "ddb-run-")
	if err != nil {
		panic(fmt.Sprintf("temp dir: %v", err))
	}
	s.mu.Lock()
	s.dirs = append(s.dirs, d)
	s.mu.Unlock()
	return d
}

// Failed implements TB.
func (s *Standalone) Failed() bool { return s.failed }

// Close runs the cleanups (last first) and removes the temporary directories.
func (s *Standalone) Close() {
	s.mu.Lock()
	cl, dirs := s.cleanups, s.dirs
	s.cleanups, s.dirs = nil, nil
	s.mu.Unlock()
	for i := len(cl) - 1; i >= 0; i-- {
		cl[i]()
	}
	for _, d := range dirs {
		os.RemoveAll(d)
	}
}
