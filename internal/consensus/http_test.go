package consensus

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"ddb/internal/cluster"
	"ddb/internal/rlog"
	"ddb/internal/store"
)

func TestMessagesSurviveTheirFraming(t *testing.T) {
	msgs := []pb.Message{
		{Type: pb.MsgApp, To: 2, From: 1, Term: 3, Index: 7, Entries: []pb.Entry{{Index: 8, Term: 3, Data: []byte("x")}}},
		{Type: pb.MsgHeartbeat, To: 3, From: 1, Term: 3},
	}
	b, err := EncodeMessages(msgs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMessages(b)
	if err != nil || !reflect.DeepEqual(got, msgs) {
		t.Fatalf("decoded %v, %v", got, err)
	}
	if _, err := DecodeMessages(b[:len(b)-1]); err == nil {
		t.Fatal("a truncated frame decoded")
	}
}

// Three replicas over real HTTP, with signed requests: they elect a
// leader, replicate SQL, and an unsigned or forged request is refused.
func TestReplicasOverSignedHTTP(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	ids := []uint64{1, 2, 3}
	var mu sync.Mutex
	reps := map[uint64]*Replica{}
	servers := map[uint64]*httptest.Server{}
	trs := map[uint64]*HTTPTransport{}
	for _, id := range ids {
		id := id
		servers[id] = httptest.NewServer(Handler(auth, func() *Node {
			mu.Lock()
			defer mu.Unlock()
			if r := reps[id]; r != nil {
				return r.Node()
			}
			return nil
		}, nil))
		defer servers[id].Close()
	}
	ticks := map[uint64]chan time.Time{}
	dir := t.TempDir()
	for _, id := range ids {
		tr := NewHTTPTransport(auth, fmt.Sprintf("node%d", id), http.DefaultClient, nil)
		defer tr.Close()
		for _, p := range ids {
			tr.SetPeer(p, servers[p].URL)
		}
		trs[id] = tr
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
	// Unsigned, and signed with another secret: refused.
	body, _ := EncodeMessages([]pb.Message{{Type: pb.MsgHeartbeat, To: 1, From: 2, Term: 99}})
	resp, err := http.Post(servers[1].URL+RaftPath, "application/octet-stream", bytes.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an unsigned raft request: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPost, servers[1].URL+RaftPath, bytes.NewReader(body))
	cluster.NewAuth("another secret", nil).Sign(req, "intruder", cluster.BodyHash(body))
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a forged raft request: %v %v", resp, err)
	}
	resp.Body.Close()
	if st := reps[1].Node().Status(); st.Term >= 99 {
		t.Fatalf("a refused message moved the term to %d", st.Term)
	}
}
