package consensus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// Three replicas over real HTTP, with signed requests: they elect a
// leader, replicate SQL, and an unsigned or forged request is refused.
func TestReplicasOverSignedHTTP(t *testing.T) {
	for _, mode := range []string{"streams", "streams over TLS", "requests"} {
		t.Run(mode, func(t *testing.T) { testReplicasOverSignedHTTP(t, mode != "requests", mode == "streams over TLS") })
	}
}

// testReplicasOverSignedHTTP: with streams, every node serves peer.StreamPath
// and batches travel over streams only; without, the nodes are of an
// earlier version (no peer.StreamPath: 404), and every batch is a request.
func testReplicasOverSignedHTTP(t *testing.T, streams, tls bool) {
	auth := cluster.NewAuth("a cluster secret", nil)
	ids := []uint64{1, 2, 3}
	var mu sync.Mutex
	reps := map[uint64]*Replica{}
	servers := map[uint64]*httptest.Server{}
	trs := map[uint64]*peer.RaftTransport{}
	var requests atomic.Int64
	client := http.DefaultClient
	if tls {
		// Every test server has the same certificate: one's client
		// trusts them all.
		probe := httptest.NewTLSServer(http.NotFoundHandler())
		client = probe.Client()
		probe.Close()
	}
	for _, id := range ids {
		trs[id] = peer.NewRaftTransport(peer.NewClientOver(client, auth, fmt.Sprintf("node%d", id), cluster.DefaultTiming()), nil)
		defer trs[id].Close()
		node := func() peer.RaftNode {
			mu.Lock()
			defer mu.Unlock()
			if r := reps[id]; r != nil {
				return r.Node()
			}
			return nil
		}
		mux := http.NewServeMux()
		handlers := trs[id].Handlers(node, t.TempDir(), 1<<30)
		mux.HandleFunc(peer.RaftPath, func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			handlers[peer.RaftPath].ServeHTTP(w, r)
		})
		if streams {
			mux.Handle(peer.StreamPath, handlers[peer.StreamPath])
		}
		servers[id] = httptest.NewUnstartedServer(mux)
		if tls {
			servers[id].StartTLS()
		} else {
			servers[id].Start()
		}
		defer servers[id].Close()
	}
	ticks := map[uint64]chan time.Time{}
	dir := t.TempDir()
	for _, id := range ids {
		tr := trs[id]
		for _, p := range ids {
			tr.SetPeer(p, servers[p].URL)
		}
		st, err := store.Open(store.Options{Path: filepath.Join(dir, fmt.Sprintf("n%d.db", id)), Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		ticks[id] = make(chan time.Time)
		r, err := StartReplica(context.Background(), st, tr, ReplicaConfig{Node: Config{ID: id, Voters: ids, Ticks: ticks[id]}})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Stop()
		tr.SetNode(id, r.Node(), dir)
		mu.Lock()
		reps[id] = r
		mu.Unlock()
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for _, id := range ids {
				select {
				case ticks[id] <- time.Time{}:
				case <-stop:
					return
				}
			}
		}
	}()
	var leader uint64
	for deadline := time.Now().Add(10 * time.Second); leader == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, id := range ids {
			if reps[id].Node().Status().RaftState == raft.StateLeader {
				leader = id
			}
		}
	}
	if leader == 0 {
		t.Fatal("no leader over HTTP")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, q := range []string{"CREATE TABLE h (v)", "INSERT INTO h VALUES (random())"} {
		if _, err := reps[leader].Write(ctx, &store.Request{Stmts: []rlog.Statement{{SQL: q}}, AllowSchema: true}); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, id := range ids {
		if err := reps[id].WaitApplied(ctx, reps[leader].st.Applied()); err != nil {
			t.Fatalf("node %d: %v", id, err)
		}
	}
	// A follower's write goes to the leader in its Raft messages, and is
	// answered once the leader reported applying it.
	f := ids[0]
	if f == leader {
		f = ids[1]
	}
	for !reps[f].Node().LeaderReports(leader) {
		time.Sleep(time.Millisecond)
	}
	o, err := reps[f].WriteThroughLeader(ctx, &store.Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO h VALUES ('from a follower')"}}, RequestID: "f"})
	if err != nil || reps[leader].st.Applied() < o.Index {
		t.Fatalf("a follower's write: %+v %v", o, err)
	}
	if n := requests.Load(); streams != (n == 0) {
		t.Fatalf("streams %v: %d batches went as requests of their own", streams, n)
	}
	// Unsigned, and signed with another secret: refused.
	body, _ := peer.EncodeFrame(0, 2, []pb.Message{{Type: pb.MsgHeartbeat, To: 1, From: 2, Term: 99}})
	resp, err := client.Post(servers[1].URL+peer.RaftPath, "application/octet-stream", bytes.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an unsigned raft request: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPost, servers[1].URL+peer.RaftPath, bytes.NewReader(body))
	peer.Sign(cluster.NewAuth("another secret", nil), req, "intruder", cluster.BodyHash(body))
	resp, err = client.Do(req)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a forged raft request: %v %v", resp, err)
	}
	resp.Body.Close()
	if st := reps[1].Node().Status(); st.Term >= 99 {
		t.Fatalf("a refused message moved the term to %d", st.Term)
	}
}

// slowBody throttles a request body and, once the first bytes are read,
// moves the receiver's clock past the signature window: the transfer then
// "lasts" longer than the window, as a large snapshot over a slow link does.
type slowBody struct {
	r                io.ReadCloser
	advance, restore func()
	read             *atomic.Int64
	once, done       sync.Once
}

func (b *slowBody) Read(p []byte) (int, error) {
	b.once.Do(b.advance)
	if len(p) > 4096 {
		p = p[:4096]
	}
	time.Sleep(200 * time.Microsecond)
	n, err := b.r.Read(p)
	b.read.Add(int64(n))
	if err != nil {
		b.done.Do(b.restore)
	}
	return n, err
}

func (b *slowBody) Close() error {
	b.done.Do(b.restore)
	return b.r.Close()
}

// A follower behind the compacted log gets a snapshot streamed over signed
// HTTP. The signature (over the message and the copy's hash) is checked
// before the body is read, so a transfer that outlasts the signature's
// window still installs; the body is checked against the signed hash, so
// a tampered copy is refused; an unsigned request is refused unread.
func TestSnapshotStreamsOverSignedHTTPThroughASlowLink(t *testing.T) {
	const secret = "a cluster secret"
	ids := []uint64{1, 2, 3}
	var mu sync.Mutex
	clock := time.Time{} // zero: the real time
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		if clock.IsZero() {
			return time.Now()
		}
		return clock
	}
	recvAuth := cluster.NewAuth(secret, now) // node 3's, whose clock jumps
	reps := map[uint64]*Replica{}
	nodeOf := func(id uint64) func() peer.RaftNode {
		return func() peer.RaftNode {
			mu.Lock()
			defer mu.Unlock()
			if r := reps[id]; r != nil {
				return r.Node()
			}
			return nil
		}
	}
	dir := t.TempDir()
	var read atomic.Int64
	servers := map[uint64]*httptest.Server{}
	for _, id := range ids {
		auth := cluster.NewAuth(secret, nil)
		if id == 3 {
			auth = recvAuth
		}
		mux := http.NewServeMux()
		handlers := peer.NewRaftTransport(peer.NewClientOver(http.DefaultClient, auth, fmt.Sprintf("node%d", id), cluster.DefaultTiming()), nil).Handlers(nodeOf(id), dir, 1<<30)
		mux.Handle(peer.RaftPath, handlers[peer.RaftPath])
		snap := handlers[peer.SnapshotPath]
		mux.HandleFunc(peer.SnapshotPath, func(w http.ResponseWriter, r *http.Request) {
			r.Body = &slowBody{r: r.Body, read: &read, advance: func() {
				mu.Lock()
				clock = time.Now().Add(3 * cluster.Window)
				mu.Unlock()
			}, restore: func() {
				mu.Lock()
				clock = time.Time{}
				mu.Unlock()
			}}
			snap.ServeHTTP(w, r)
		})
		servers[id] = httptest.NewServer(mux)
		defer servers[id].Close()
	}
	ticks := map[uint64]chan time.Time{}
	stores := map[uint64]*store.Store{}
	start := func(id uint64) {
		tr := peer.NewRaftTransport(peer.NewClientOver(http.DefaultClient, cluster.NewAuth(secret, nil), fmt.Sprintf("node%d", id), cluster.DefaultTiming()), nil)
		t.Cleanup(tr.Close)
		for _, p := range ids {
			tr.SetPeer(p, servers[p].URL)
		}
		st, err := store.Open(store.Options{Path: filepath.Join(dir, fmt.Sprintf("n%d.db", id)), Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		tick := make(chan time.Time)
		r, err := StartReplica(context.Background(), st, tr, ReplicaConfig{Node: Config{ID: id, Voters: ids, Ticks: tick, LogKeep: 20}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		tr.SetNode(id, r.Node(), dir)
		mu.Lock()
		reps[id], stores[id], ticks[id] = r, st, tick
		mu.Unlock()
	}
	start(1)
	start(2)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			mu.Lock()
			var chans []chan time.Time
			for _, ch := range ticks {
				chans = append(chans, ch)
			}
			mu.Unlock()
			for _, ch := range chans {
				select {
				case ch <- time.Time{}:
				case <-stop:
					return
				}
			}
		}
	}()
	var leader uint64
	for deadline := time.Now().Add(10 * time.Second); leader == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, id := range []uint64{1, 2} {
			if reps[id].Node().Status().RaftState == raft.StateLeader {
				leader = id
			}
		}
	}
	if leader == 0 {
		t.Fatal("no leader")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	write := func(q string) {
		t.Helper()
		if _, err := reps[leader].Write(ctx, &store.Request{Stmts: []rlog.Statement{{SQL: q}}, AllowSchema: true}); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	write("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)")
	for i := 0; i < 100; i++ {
		write("INSERT INTO big (b) VALUES (randomblob(2000))")
	}
	if first, _ := reps[leader].Node().storage.FirstIndex(); first < 50 {
		t.Fatalf("the log was not compacted (first index %d)", first)
	}

	// Refused unread: no signature.
	resp, err := http.Post(servers[3].URL+peer.SnapshotPath, "application/octet-stream", bytes.NewReader(make([]byte, 1<<20)))
	if err != nil || resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an unsigned snapshot: %v %v", resp, err)
	}
	resp.Body.Close()
	if n := read.Load(); n != 0 {
		t.Fatalf("%d bytes of an unsigned snapshot were read", n)
	}

	start(3)
	for deadline := time.Now().Add(20 * time.Second); stores[3].Applied() < stores[leader].Applied() || reps[3].Node().SnapshotsInstalled() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node 3 stays at %d, the leader is at %d", stores[3].Applied(), stores[leader].Applied())
		}
	}
	if n := reps[3].Node().SnapshotsInstalled(); n != 1 {
		first, _ := reps[leader].Node().storage.FirstIndex()
		t.Fatalf("node 3 installed %d snapshots, want 1 (node 3 at %d, leader %d at %d, its log from %d, now led by %d)", n, stores[3].Applied(), leader, stores[leader].Applied(), first, reps[3].Node().Status().Lead)
	}
	if read.Load() < 100*2000 {
		t.Fatalf("only %d bytes went through the slow link", read.Load())
	}
	write("INSERT INTO big (b) VALUES (randomblob(10))")
	for _, id := range ids {
		if err := reps[id].WaitApplied(ctx, stores[leader].Applied()); err != nil {
			t.Fatalf("node %d: %v", id, err)
		}
	}
	var dbs []*inspect.Database
	for _, id := range ids {
		d, err := inspect.Load(stores[id].Path())
		if err != nil {
			t.Fatal(err)
		}
		dbs = append(dbs, d)
	}
	if diffs := inspect.Compare(dbs, 5); len(diffs) > 0 {
		t.Fatalf("databases differ: %v", diffs)
	}

	// A tampered copy: signed hash of one body, another body sent.
	msg, _ := (&pb.Message{Type: pb.MsgSnap, To: 3, From: leader, Term: 1, Snapshot: &pb.Snapshot{Metadata: pb.SnapshotMetadata{Index: 1, Term: 1}}}).Marshal()
	good := bytes.Repeat([]byte("x"), 1000)
	sum := sha256.Sum256(good)
	req, _ := http.NewRequest(http.MethodPost, servers[3].URL+peer.SnapshotPath, bytes.NewReader(bytes.Repeat([]byte("y"), 1000)))
	// (The wire format of a snapshot request: see package peer.)
	req.Header.Set("X-Ddb-Raft-Message", base64.StdEncoding.EncodeToString(msg))
	req.Header.Set("X-Ddb-Snapshot-Sha256", hex.EncodeToString(sum[:]))
	peer.Sign(cluster.NewAuth(secret, nil), req, "node1", cluster.BodyHash(append(msg, hex.EncodeToString(sum[:])...)))
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a tampered snapshot: %v %v", resp, err)
	}
	resp.Body.Close()
	if n := reps[3].Node().SnapshotsInstalled(); n != 1 {
		t.Fatalf("a tampered snapshot was installed")
	}
	// In version 3 the hash follows the body, in a trailer, with a MAC
	// keyed by the request's signature: a trailer that does not match the
	// body, or whose MAC is not the cluster's, is refused.
	sumY := sha256.Sum256(bytes.Repeat([]byte("y"), 1000))
	for _, c := range []struct {
		name string
		sum  string
		mac  func(req *http.Request, sum string) string
	}{
		{"the hash of another body", hex.EncodeToString(sum[:]), func(req *http.Request, sum string) string { return cluster.NewAuth(secret, nil).CopyMAC(req, 1, sum) }},
		{"a MAC under another secret", hex.EncodeToString(sumY[:]), func(req *http.Request, sum string) string {
			return cluster.NewAuth("another secret", nil).CopyMAC(req, 1, sum)
		}},
	} {
		req, _ := http.NewRequest(http.MethodPost, servers[3].URL+peer.SnapshotPath, bytes.NewReader(bytes.Repeat([]byte("y"), 1000)))
		req.ContentLength = -1
		req.Header.Set("X-Ddb-Raft-Message", base64.StdEncoding.EncodeToString(msg))
		req.Header.Set("X-Ddb-Snapshot-Size", "1000")
		peer.Sign(cluster.NewAuth(secret, nil), req, "node1", cluster.BodyHash(append(msg, "\nsize 1000"...)))
		req.Trailer = http.Header{"X-Ddb-Snapshot-Sha256": {c.sum}, "X-Ddb-Snapshot-Mac": {c.mac(req, c.sum)}}
		resp, err = http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("a snapshot with %s in its trailer: %v %v", c.name, resp, err)
		}
		resp.Body.Close()
	}
	if n := reps[3].Node().SnapshotsInstalled(); n != 1 {
		t.Fatalf("a tampered snapshot was installed")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "raft-snapshot-*"))
	if len(left) > 0 {
		t.Fatalf("received snapshot files left behind: %v", left)
	}
}

// A write whose outcome is unknown is told so once, with its advice once,
// however many layers (the proposal, the forward, the retries) its error
// went through.
func TestUnknownOutcomeIsToldOnce(t *testing.T) {
	first := &UnknownOutcomeError{Err: context.DeadlineExceeded}
	for _, id := range []string{"", "r-1"} {
		msg := unknownOutcome(unknownOutcome(unknownOutcome(first, id), id), id).Error()
		for _, part := range []string{"outcome unknown", "may be committed", "context deadline exceeded"} {
			if n := strings.Count(msg, part); n != 1 {
				t.Errorf("request id %q: %q appears %d times in %q", id, part, n, msg)
			}
		}
		if id != "" && !strings.Contains(msg, "same request_id ("+id+")") {
			t.Errorf("the advice does not name the request id: %q", msg)
		}
	}
}
