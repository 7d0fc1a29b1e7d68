package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
)

const forwardTestSecret = "forward-test-secret-0123456789abcdef"

// fakeLeader answers forwarded writes (signed, as a leader checks them)
// with the number their request id carries as the index, after hold (or
// once release is closed, if set). It records what it received.
type fakeLeader struct {
	t       *testing.T
	batches bool // it serves ForwardBatchPath
	hold    time.Duration
	release chan struct{}

	mu        sync.Mutex
	requests  int
	ids       []string
	biggest   int
	inflight  int
	maxFlight int
}

func (f *fakeLeader) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == ForwardBatchPath && !f.batches {
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	if err := cluster.NewAuth(forwardTestSecret, nil).Verify(r, cluster.BodyHash(body)); err != nil {
		f.t.Errorf("unsigned forward: %v", err)
	}
	var reqs []*replication.ForwardRequest
	if r.URL.Path == ForwardBatchPath {
		if err := json.Unmarshal(body, &reqs); err != nil {
			f.t.Errorf("bad batch: %v", err)
		}
	} else {
		reqs = make([]*replication.ForwardRequest, 1)
		if err := json.Unmarshal(body, &reqs[0]); err != nil {
			f.t.Errorf("bad forward: %v", err)
		}
	}
	f.mu.Lock()
	f.requests++
	f.inflight++
	f.maxFlight = max(f.maxFlight, f.inflight)
	f.biggest = max(f.biggest, len(reqs))
	for _, q := range reqs {
		f.ids = append(f.ids, q.RequestID)
	}
	f.mu.Unlock()
	if f.release != nil {
		<-f.release
	}
	time.Sleep(f.hold)
	f.mu.Lock()
	f.inflight--
	f.mu.Unlock()
	var out []*replication.ForwardResponse
	for _, q := range reqs {
		n, _ := strconv.Atoi(q.RequestID)
		out = append(out, &replication.ForwardResponse{Index: uint64(n)})
	}
	var b []byte
	if r.URL.Path == ForwardBatchPath {
		b, _ = json.Marshal(out)
	} else {
		b, _ = json.Marshal(out[0])
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (f *fakeLeader) start() string {
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	f.t.Cleanup(srv.Close)
	return srv.URL
}

// forwardMany forwards n writes at once and checks each gets its own answer.
func forwardMany(t *testing.T, url string, n int) {
	tr := NewClient(cluster.NewAuth(forwardTestSecret, nil), "follower", nil, cluster.DefaultTiming())
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := tr.Forward(ctx, url, &replication.ForwardRequest{Origin: 1, Body: json.RawMessage(`[{"sql":"INSERT INTO t VALUES (1)"}]`), Ack: cluster.AckQuorum, RequestID: strconv.Itoa(i)})
			if err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
			if resp.Index != uint64(i) {
				t.Errorf("write %d got the answer of write %d", i, resp.Index)
			}
		})
	}
	wg.Wait()
}

// Writes forwarded together travel in a few requests, never more than
// maxForwardRequests at once, and each gets its own answer.
func TestForwardedWritesGoInBatchesUnderLoad(t *testing.T) {
	f := &fakeLeader{t: t, batches: true, hold: 20 * time.Millisecond}
	forwardMany(t, f.start(), 100)
	if f.requests >= 100 || f.biggest < 2 {
		t.Fatalf("100 writes forwarded at once took %d requests (largest batch %d): they were not batched", f.requests, f.biggest)
	}
	if f.maxFlight > maxForwardRequests {
		t.Fatalf("%d requests were on their way at once (at most %d)", f.maxFlight, maxForwardRequests)
	}
	if len(f.ids) != 100 {
		t.Fatalf("the leader received %d writes, not 100", len(f.ids))
	}
}

// A leader that does not know batches (an older version) gets one write
// per request, and every write is answered.
func TestForwardedWritesFallBackToOnePerRequest(t *testing.T) {
	f := &fakeLeader{t: t, hold: 20 * time.Millisecond}
	forwardMany(t, f.start(), 40)
	if f.biggest != 1 || len(f.ids) != 40 {
		t.Fatalf("largest request %d writes, %d writes received (want 1 and 40)", f.biggest, len(f.ids))
	}
}

// A write that waited for a free request until its deadline was never
// sent: it is unavailable (safe to send again), not of unknown outcome.
func TestAForwardThatWaitedPastItsDeadlineWasNotSent(t *testing.T) {
	f := &fakeLeader{t: t, batches: true, release: make(chan struct{})}
	url := f.start()
	tr := NewClient(cluster.NewAuth(forwardTestSecret, nil), "follower", nil, cluster.DefaultTiming())
	var wg sync.WaitGroup
	var started atomic.Int32
	for i := 1; i <= maxForwardRequests; i++ {
		wg.Go(func() {
			started.Add(1)
			tr.Forward(context.Background(), url, &replication.ForwardRequest{Body: json.RawMessage(`[]`), RequestID: strconv.Itoa(i)})
		})
	}
	for {
		f.mu.Lock()
		n := f.requests
		f.mu.Unlock()
		if n == maxForwardRequests {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := tr.Forward(ctx, url, &replication.ForwardRequest{Body: json.RawMessage(`[]`), RequestID: "999"})
	if !errors.Is(err, replication.ErrUnavailable) {
		t.Fatalf("a write never sent answered %v, want unavailable", err)
	}
	close(f.release)
	wg.Wait()
	for _, id := range f.ids {
		if id == "999" {
			t.Fatal(fmt.Sprint("the write that gave up was sent anyway: ", f.ids))
		}
	}
}
