package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// brokenReplicator commits every write at index 42 and answers it with
// results whose rows do not match their columns, as stale column metadata
// once produced.
type brokenReplicator struct{}

func (brokenReplicator) Write(context.Context, *store.Request, cluster.Ack) (store.Outcome, error) {
	return store.Outcome{Index: 42, Results: []store.Result{{HasRows: true, Columns: []string{"a", "b", "c"}, Types: []string{"", "", ""}, Rows: [][]any{{int64(1)}}}}}, nil
}
func (brokenReplicator) ReadIndex(context.Context) (uint64, error)                { return 0, nil }
func (brokenReplicator) WaitApplied(context.Context, uint64, time.Duration) error { return nil }
func (brokenReplicator) IsLeader() bool                                           { return true }
func (brokenReplicator) LeaderURL() string                                        { return "http://leader" }
func (brokenReplicator) Serving() error                                           { return nil }
func (brokenReplicator) WaitLeader(context.Context) bool                          { return true }
func (brokenReplicator) Learner() bool                                            { return false }
func (brokenReplicator) SinceLeaderContact() time.Duration                        { return 0 }

// A committed write whose answer cannot be built is answered 500 with its
// index, in JSON, and the node goes on serving.
func TestACommittedWritesAnswerIsNeverDroppedByAPanic(t *testing.T) {
	st, err := store.Open(store.Options{Path: filepath.Join(t.TempDir(), "a.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	body, _ := (&rlog.Write{Stmts: []rlog.Statement{{SQL: "CREATE TABLE t (x)"}}, AllowSchema: true}).Encode()
	out, err := st.ApplyLog([]rlog.Entry{{Index: 1, TimeMs: time.Now().UnixMilli(), Body: body}})
	if err != nil || out[0].Err != nil {
		t.Fatal(err, out)
	}
	cfg := &cluster.Config{Role: cluster.Master}
	cfg.Defaults()
	s := &Server{cfg: cfg, st: st, repl: brokenReplicator{}, sem: make(chan struct{}, 4), metrics: NewMetrics(), log: slog.New(slog.DiscardHandler)}
	for i := 0; i < 2; i++ {
		w := httptest.NewRecorder()
		s.handleClient(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"command":"query","query":"INSERT INTO t VALUES (1) RETURNING *"}`)))
		var body struct {
			Error string `json:"error"`
			Index uint64 `json:"index"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != 500 || body.Index != 42 || !strings.Contains(body.Error, "committed at index 42") || w.Header().Get(IndexHeader) != "42" {
			t.Fatalf("answer %d %q (%v), header %q", w.Code, w.Body.String(), err, w.Header().Get(IndexHeader))
		}
	}
}
