package consensus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

func TestMessagesSurviveTheirFraming(t *testing.T) {
	msgs := []pb.Message{
		{Type: pb.MsgApp, To: 2, From: 1, Term: 3, Index: 7, Entries: []pb.Entry{{Index: 8, Term: 3, Data: []byte("x")}}},
		{Type: pb.MsgHeartbeat, To: 3, From: 1, Term: 3},
	}
	for _, applied := range []uint64{0, 1, 300, math.MaxUint64} {
		b, err := EncodeMessages(applied, msgs)
		if err != nil {
			t.Fatal(err)
		}
		report, got, err := DecodeMessages(b)
		if err != nil || !reflect.DeepEqual(got, msgs) || report.Applied != applied || applied > 0 && report.From != 1 {
			t.Fatalf("applied %d: decoded %+v %v, %v", applied, report, got, err)
		}
		if _, _, err := DecodeMessages(b[:len(b)-1]); err == nil {
			t.Fatalf("applied %d: a truncated frame decoded", applied)
		}
	}
	// A node of an earlier version reads the report as a message of its
	// own, of a type Raft refuses from the network.
	b, _ := EncodeMessages(42, msgs)
	var old []pb.Message
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		var m pb.Message
		if k <= 0 || n > uint64(len(b)-k) || m.Unmarshal(b[k:k+int(n)]) != nil {
			t.Fatal("an earlier version cannot read the frames")
		}
		old, b = append(old, m), b[k+int(n):]
	}
	if len(old) != 3 || !raft.IsLocalMsg(old[0].Type) || !reflect.DeepEqual(old[1:], msgs) {
		t.Fatalf("an earlier version reads %v", old)
	}
}

// Three replicas over real HTTP, with signed requests: they elect a
// leader, replicate SQL, and an unsigned or forged request is refused.
func TestReplicasOverSignedHTTP(t *testing.T) {
	for _, mode := range []string{"streams", "streams over TLS", "requests"} {
		t.Run(mode, func(t *testing.T) { testReplicasOverSignedHTTP(t, mode != "requests", mode == "streams over TLS") })
	}
}

// testReplicasOverSignedHTTP: with streams, every node serves replication.StreamPath
// and batches travel over streams only; without, the nodes are of an
// earlier version (no replication.StreamPath: 404), and every batch is a request.
func testReplicasOverSignedHTTP(t *testing.T, streams, tls bool) {
	auth := cluster.NewAuth("a cluster secret", nil)
	ids := []uint64{1, 2, 3}
	var mu sync.Mutex
	reps := map[uint64]*Replica{}
	servers := map[uint64]*httptest.Server{}
	trs := map[uint64]*HTTPTransport{}
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
		trs[id] = NewHTTPTransport(auth, fmt.Sprintf("node%d", id), client, nil)
		defer trs[id].Close()
		node := func() *Node {
			mu.Lock()
			defer mu.Unlock()
			if r := reps[id]; r != nil {
				return r.Node()
			}
			return nil
		}
		mux := http.NewServeMux()
		raft := Handler(auth, node, nil)
		mux.HandleFunc(replication.RaftPath, func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			raft(w, r)
		})
		if streams {
			mux.HandleFunc(replication.StreamPath, trs[id].StreamHandler(node))
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
		tr.SetUnreachable(r.Node().ReportUnreachable)
		tr.SetSnapshots(r.Node(), dir)
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
	body, _ := EncodeMessages(0, []pb.Message{{Type: pb.MsgHeartbeat, To: 1, From: 2, Term: 99}})
	resp, err := client.Post(servers[1].URL+replication.RaftPath, "application/octet-stream", bytes.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an unsigned raft request: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPost, servers[1].URL+replication.RaftPath, bytes.NewReader(body))
	cluster.NewAuth("another secret", nil).Sign(req, "intruder", cluster.BodyHash(body))
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
	nodeOf := func(id uint64) func() *Node {
		return func() *Node {
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
		mux.HandleFunc(replication.RaftPath, Handler(auth, nodeOf(id), nil))
		snap := SnapshotHandler(auth, nodeOf(id), dir, 1<<30, nil)
		mux.HandleFunc(replication.SnapshotPath, func(w http.ResponseWriter, r *http.Request) {
			r.Body = &slowBody{r: r.Body, read: &read, advance: func() {
				mu.Lock()
				clock = time.Now().Add(3 * cluster.Window)
				mu.Unlock()
			}, restore: func() {
				mu.Lock()
				clock = time.Time{}
				mu.Unlock()
			}}
			snap(w, r)
		})
		servers[id] = httptest.NewServer(mux)
		defer servers[id].Close()
	}
	ticks := map[uint64]chan time.Time{}
	stores := map[uint64]*store.Store{}
	start := func(id uint64) {
		tr := NewHTTPTransport(cluster.NewAuth(secret, nil), fmt.Sprintf("node%d", id), http.DefaultClient, nil)
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
		tr.SetUnreachable(r.Node().ReportUnreachable)
		tr.SetSnapshots(r.Node(), dir)
		tr.SetSnapshots(r.Node(), dir)
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
	resp, err := http.Post(servers[3].URL+replication.SnapshotPath, "application/octet-stream", bytes.NewReader(make([]byte, 1<<20)))
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
	req, _ := http.NewRequest(http.MethodPost, servers[3].URL+replication.SnapshotPath, bytes.NewReader(bytes.Repeat([]byte("y"), 1000)))
	req.Header.Set(headerRaftMessage, base64.StdEncoding.EncodeToString(msg))
	req.Header.Set(headerSnapshotSHA256, hex.EncodeToString(sum[:]))
	cluster.NewAuth(secret, nil).Sign(req, "node1", cluster.BodyHash(snapshotSigned(msg, hex.EncodeToString(sum[:]))))
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a tampered snapshot: %v %v", resp, err)
	}
	resp.Body.Close()
	if n := reps[3].Node().SnapshotsInstalled(); n != 1 {
		t.Fatalf("a tampered snapshot was installed")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "raft-snapshot-*"))
	if len(left) > 0 {
		t.Fatalf("received snapshot files left behind: %v", left)
	}
}

// openTestStream opens a stream to url as the transport would, signed with
// auth, and returns the connection and the frames' key.
func openTestStream(t *testing.T, auth *cluster.Auth, url string) (io.ReadWriteCloser, []byte, int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+replication.StreamPath, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", streamProtocol)
	auth.Sign(req, "tester", cluster.BodyHash(nil))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, nil, resp.StatusCode
	}
	return resp.Body.(io.ReadWriteCloser), auth.SessionKey(req), resp.StatusCode
}

func writeTestFrame(w io.Writer, key []byte, seq uint64, msgs []pb.Message) {
	payload, _ := EncodeMessages(0, msgs)
	b := binary.AppendUvarint(nil, uint64(len(payload)))
	b = append(append(b, payload...), frameMAC(key, seq, payload)...)
	w.Write(b)
}

// A stream of Raft messages takes only what its key authenticates, in
// order: a stream opened with another secret is refused, and a frame that
// is altered or replayed closes the stream without reaching Raft.
func TestStreamTakesOnlyAuthenticatedFramesInOrder(t *testing.T) {
	g := newGroup(t, 1)
	g.waitLeader(100)
	auth := cluster.NewAuth("a cluster secret", nil)
	tr := NewHTTPTransport(auth, "node1", http.DefaultClient, nil)
	defer tr.Close()
	srv := httptest.NewServer(tr.StreamHandler(func() *Node { return g.nodes[1] }))
	defer srv.Close()
	if _, _, status := openTestStream(t, cluster.NewAuth("another secret", nil), srv.URL); status != http.StatusForbidden {
		t.Fatalf("a stream signed with another secret: %d", status)
	}
	term := g.nodes[1].Status().Term
	bump := []pb.Message{{Type: pb.MsgHeartbeat, To: 1, From: 2, Term: term + 50}}
	closed := func(c io.ReadWriteCloser) bool {
		done := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 64)); done <- err }()
		select {
		case err := <-done:
			return err != nil
		case <-time.After(5 * time.Second):
			return false
		}
	}
	// Altered: the right key, the wrong content.
	c, key, _ := openTestStream(t, auth, srv.URL)
	payload, _ := EncodeMessages(0, bump)
	mac := frameMAC(key, 1, payload)
	payload[len(payload)-1] ^= 1
	c.Write(append(append(binary.AppendUvarint(nil, uint64(len(payload))), payload...), mac...))
	if !closed(c) {
		t.Fatal("an altered frame did not close the stream")
	}
	// Replayed: the first copy is taken (and acknowledged), the second
	// closes the stream.
	c, key, _ = openTestStream(t, auth, srv.URL)
	hello := []pb.Message{{Type: pb.MsgHeartbeatResp, To: 1, From: 1, Term: term}}
	writeTestFrame(c, key, 1, hello)
	ack := make([]byte, 8+ackMACLen)
	if _, err := io.ReadFull(c, ack); err != nil || binary.BigEndian.Uint64(ack) != 1 || !bytes.Equal(ack[8:], ackMAC(key, 1)) {
		t.Fatalf("the first frame's acknowledgement: %x %v", ack, err)
	}
	writeTestFrame(c, key, 1, bump)
	if !closed(c) {
		t.Fatal("a replayed frame did not close the stream")
	}
	if st := g.nodes[1].Status(); st.Term != term {
		t.Fatalf("a refused frame moved the term from %d to %d", term, st.Term)
	}
}

// A peer that takes the stream but never acknowledges (paused, or a link
// that drops everything without closing the connection) loses it after
// streamTimeout: the next batch opens a new one.
func TestUnacknowledgedStreamIsClosedAndOpenedAgain(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	srv, opened := silentStreamServer(t, auth)
	tr := NewHTTPTransport(auth, "node1", http.DefaultClient, nil)
	defer tr.Close()
	tr.SetPeer(2, srv.URL)
	deadline := time.Now().Add(3*streamTimeout + 2*time.Second)
	for opened.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the stream was opened %d times in %v without an acknowledgement", opened.Load(), 3*streamTimeout)
		}
		tr.Send([]pb.Message{{Type: pb.MsgHeartbeat, To: 2, From: 1, Term: 1}})
		time.Sleep(100 * time.Millisecond)
	}
}

// Batches stay under maxBatchBytes (plus one message): 200 appends of
// 100 KB queued at once reach the peer whole, in requests it accepts.
func TestBatchesOfLargeAppendsStayUnderTheLimit(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	var mu sync.Mutex
	var sizes []int
	got := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != replication.RaftPath {
			http.NotFound(w, r) // no streams: every batch is a request
			return
		}
		body, _ := io.ReadAll(r.Body)
		_, msgs, err := DecodeMessages(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		sizes, got = append(sizes, len(body)), got+len(msgs)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	tr := NewHTTPTransport(auth, "node1", http.DefaultClient, nil)
	defer tr.Close()
	tr.SetPeer(2, srv.URL)
	var msgs []pb.Message
	for i := range 200 {
		msgs = append(msgs, pb.Message{Type: pb.MsgApp, To: 2, From: 1, Term: 1, Index: uint64(i), Entries: []pb.Entry{{Index: uint64(i + 1), Term: 1, Data: make([]byte, 100<<10)}}})
	}
	tr.Send(msgs)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := got
		mu.Unlock()
		if n == len(msgs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived", n, len(msgs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range sizes {
		if s > maxBatchBytes+200<<10 {
			t.Fatalf("a batch of %d bytes (limit %d)", s, maxBatchBytes)
		}
	}
	if len(sizes) < 3 {
		t.Fatalf("20 MB went in %d batches", len(sizes))
	}
}

// silentStreamServer takes streams of Raft messages signed with auth and
// reads them without ever acknowledging; opened counts the streams.
func silentStreamServer(t *testing.T, auth *cluster.Auth) (srv *httptest.Server, opened *atomic.Int64) {
	opened = new(atomic.Int64)
	var mu sync.Mutex
	var hijacked []net.Conn
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := auth.Verify(r, cluster.BodyHash(nil)); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		opened.Add(1)
		conn, rw, _ := http.NewResponseController(w).Hijack()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + streamProtocol + "\r\n\r\n")
		rw.Flush()
		mu.Lock()
		hijacked = append(hijacked, conn)
		mu.Unlock()
		go io.Copy(io.Discard, conn)
	}))
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range hijacked {
			c.Close()
		}
	})
	return srv, opened
}

// A peer that moves (its address changes) gets the next batches at its new
// address: the stream to the old one is closed.
func TestStreamFollowsAPeerThatMoves(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	old, openedOld := silentStreamServer(t, auth)
	moved, openedNew := silentStreamServer(t, auth)
	tr := NewHTTPTransport(auth, "node1", http.DefaultClient, nil)
	defer tr.Close()
	heartbeat := []pb.Message{{Type: pb.MsgHeartbeat, To: 2, From: 1, Term: 1}}
	tr.SetPeer(2, old.URL)
	for deadline := time.Now().Add(5 * time.Second); openedOld.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no stream to the peer's first address")
		}
		tr.Send(heartbeat)
	}
	tr.SetPeer(2, moved.URL)
	for deadline := time.Now().Add(streamTimeout / 2); openedNew.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no stream to the peer's new address within %v", streamTimeout/2)
		}
		tr.Send(heartbeat)
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
