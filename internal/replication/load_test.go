package replication

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// fakeLog is a Replicator that records the writes it is sent and answers
// them through answer.
type fakeLog struct {
	sent   []*store.Request
	answer func(n int, req *store.Request) (store.Outcome, error)
}

func (f *fakeLog) Write(_ context.Context, req *store.Request, _ cluster.Ack) (store.Outcome, error) {
	f.sent = append(f.sent, req)
	return f.answer(len(f.sent), req)
}
func (f *fakeLog) ReadIndex(context.Context) (uint64, error)                { return 0, nil }
func (f *fakeLog) WaitApplied(context.Context, uint64, time.Duration) error { return nil }
func (f *fakeLog) IsLeader() bool                                           { return true }
func (f *fakeLog) LeaderURL() string                                        { return "" }
func (f *fakeLog) Serving() error                                           { return nil }
func (f *fakeLog) WaitLeader(context.Context) bool                          { return true }
func (f *fakeLog) Learner() bool                                            { return false }
func (f *fakeLog) SinceLeaderContact() time.Duration                        { return 0 }

func plan(t *testing.T) *store.LoadPlan {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "load.sql")
	os.WriteFile(path, []byte("CREATE TABLE t (x);\n"+strings.Repeat("INSERT INTO t VALUES ('"+strings.Repeat("v", 1<<20)+"');\n", 10)), 0o644)
	p, err := store.PlanLoad(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if p.Chunks() < 3 {
		t.Fatalf("%d chunks", p.Chunks())
	}
	return p
}

// A load is its chunks in order, each with a request id of its own made
// from the load's, then the commit with the client's request id; an entry
// whose outcome is unknown is sent again with the same id.
func TestALoadSendsItsChunksThenItsCommitAgainUntilKnown(t *testing.T) {
	p := plan(t)
	f := &fakeLog{answer: func(n int, req *store.Request) (store.Outcome, error) {
		if n == 2 || n == 3 {
			return store.Outcome{}, &UnknownOutcomeError{Reason: "leader lost"}
		}
		return store.Outcome{Index: uint64(100 + n)}, nil
	}}
	track := progress.New(slog.New(slog.DiscardHandler), time.Second)
	op := track.Start("load", "test", "chunks", 0)
	out, err := Load(context.Background(), f, p, "client-key", false, cluster.AckQuorum, store.Limits{MaxSteps: 7}, op)
	if err != nil {
		t.Fatal(err)
	}
	if st := track.UnderWay(); len(st) != 1 || st[0].Done != int64(p.Chunks())+1 || st[0].Total != st[0].Done {
		t.Fatalf("the load's progress: %+v (%d chunks and the commit)", st, p.Chunks())
	}
	want := p.Chunks() + 3 // two resends, and the commit
	if len(f.sent) != want || out.Index != uint64(100+want) {
		t.Fatalf("%d writes sent, answer %d", len(f.sent), out.Index)
	}
	if f.sent[1].RequestID != f.sent[2].RequestID || f.sent[1].RequestID != f.sent[3].RequestID {
		t.Fatal("a chunk sent again with another request id")
	}
	seq := int64(0)
	for i, req := range f.sent[:len(f.sent)-1] {
		if i == 2 || i == 3 {
			continue
		}
		if req.Load.Op != rlog.LoadStage || req.Load.Seq != seq || req.Limits.MaxSteps != 0 {
			t.Fatalf("write %d: %+v", i, req.Load)
		}
		seq++
	}
	commit := f.sent[len(f.sent)-1]
	if commit.Load.Op != rlog.LoadCommit || commit.Load.Seq != int64(p.Chunks()) || commit.RequestID != "client-key" || commit.Limits.MaxSteps != 7 {
		t.Fatalf("commit: %+v %q", commit.Load, commit.RequestID)
	}
}

// A chunk refused for good ends the load with its error, and the load's
// staged chunks are dropped; a node that cannot reach a leader gives up
// after three tries.
func TestALoadStopsAtARefusalAndAbortsItsChunks(t *testing.T) {
	p := plan(t)
	f := &fakeLog{answer: func(n int, req *store.Request) (store.Outcome, error) {
		if n == 2 {
			return store.Outcome{}, &store.SQLError{Err: errors.New("disk full")}
		}
		return store.Outcome{Index: 1}, nil
	}}
	if _, err := Load(context.Background(), f, p, "", false, cluster.AckQuorum, store.Limits{}, nil); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("load: %v", err)
	}
	last := f.sent[len(f.sent)-1]
	if len(f.sent) != 3 || last.Load.Op != rlog.LoadAbort || last.Load.ID != f.sent[0].Load.ID {
		t.Fatalf("%d writes, last %+v", len(f.sent), last.Load)
	}
	// A client key used before for another load: the answer names the
	// client's key, not the chunk's.
	f = &fakeLog{answer: func(n int, req *store.Request) (store.Outcome, error) {
		if n == 1 {
			return store.Outcome{}, &store.RequestIDReusedError{ID: req.RequestID, Index: 8}
		}
		return store.Outcome{Index: 1}, nil
	}}
	var ri *store.RequestIDReusedError
	if _, err := Load(context.Background(), f, p, "L1", false, cluster.AckQuorum, store.Limits{}, nil); !errors.As(err, &ri) || ri.ID != "L1" || ri.Index != 8 {
		t.Fatalf("a reused client key: %v", err)
	}
	f = &fakeLog{answer: func(int, *store.Request) (store.Outcome, error) {
		return store.Outcome{}, &UnavailableError{Reason: "not a member"}
	}}
	if _, err := Load(context.Background(), f, p, "", false, cluster.AckQuorum, store.Limits{}, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("load on a node without a leader: %v", err)
	}
	if len(f.sent) != 6 { // three for the first chunk, three for the abort
		t.Fatalf("%d writes sent", len(f.sent))
	}
}
