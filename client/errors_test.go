package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// When no node can serve a call, the error names every node tried and
// what each said, not only the last.
func TestNoLeaderNamesEveryNode(t *testing.T) {
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"no leader is known: an election is under way","kind":"unavailable"}`))
	}))
	defer busy.Close()
	var dead []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead = append(dead, "http://"+ln.Addr().String())
		ln.Close() // nothing listens there now: the connection is refused
	}
	c, err := New(append(dead, busy.URL), WithRetryTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Query(context.Background(), "SELECT 1")
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("got %v, want a NoLeaderError", err)
	}
	for _, want := range append(dead, busy.URL, "election is under way", "refused") {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %q: %v", want, err)
		}
	}
}
