package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

type fakeRepl struct {
	leader bool
	url    string
}

func (f fakeRepl) Write(context.Context, *store.Request, cluster.Ack) (store.Outcome, error) {
	return store.Outcome{}, nil
}
func (f fakeRepl) ReadIndex(context.Context) (uint64, error)                { return 0, nil }
func (f fakeRepl) WaitApplied(context.Context, uint64, time.Duration) error { return nil }
func (f fakeRepl) IsLeader() bool                                           { return f.leader }
func (f fakeRepl) LeaderURL() string                                        { return f.url }
func (f fakeRepl) Serving() error                                           { return nil }
func (f fakeRepl) WaitLeader(context.Context) bool                          { return f.url != "" }
func (f fakeRepl) Learner() bool                                            { return false }
func (f fakeRepl) SinceLeaderContact() time.Duration                        { return 0 }

// Every error a request can meet maps to its status and kind, wrapped or
// not, and the answer's body carries what the kind promises.
func TestEveryErrorHasItsStatusAndKind(t *testing.T) {
	follower := &Server{repl: fakeRepl{url: "http://leader:8080"}}
	leader := &Server{repl: fakeRepl{leader: true, url: "http://leader:8080"}}
	orphan := &Server{repl: fakeRepl{}}
	cases := []struct {
		s      *Server
		err    error
		status int
		kind   string
		body   string
	}{
		{follower, &BadRequest{Msg: "x"}, 400, "bad_request", ""},
		{follower, &store.ForbiddenError{Reason: "no"}, 403, "forbidden", ""},
		{follower, &permissionError{perm: "query", anonymous: true}, 401, "unauthorized", ""},
		{follower, &permissionError{perm: "query"}, 403, "permission", ""},
		{leader, &store.SchemaDeniedError{Statement: "CREATE"}, 403, "permission", ""},
		{orphan, &store.SchemaDeniedError{Statement: "CREATE"}, 503, "unavailable", ""},
		{follower, &store.SchemaDeniedError{Statement: "CREATE"}, 403, "not_leader", `"leader":"http://leader:8080"`},
		{follower, &store.SQLError{Err: errors.New("near x: syntax error")}, 400, "sql", ""},
		{follower, &store.ParamError{Msg: "p"}, 400, "bad_request", ""},
		{follower, &store.ResultTooLargeError{What: "rows"}, 400, "too_large", ""},
		{follower, &store.StepBudgetError{Steps: 7}, 400, "too_large", ""},
		{follower, &store.RequestIDReusedError{ID: "k", Index: 3}, 400, "request_id_reused", ""},
		{follower, &replication.AckTimeoutError{Index: 42, Level: "all"}, 504, "ack_timeout", `"index":42`},
		{follower, &replication.WaitTimeoutError{Want: 2}, 504, "wait_timeout", ""},
		{follower, &replication.UnknownOutcomeError{Reason: "r"}, 504, "unknown_outcome", ""},
		{follower, &replication.UnavailableError{Reason: "r"}, 503, "unavailable", ""},
		{follower, store.ErrClosed, 503, "unavailable", ""},
		{follower, errQueryDeadline, 504, "deadline", ""},
		{follower, &store.EntryTooLargeError{Bytes: 40 << 20}, 413, "too_large", ""},
		{follower, &store.LoadInterruptedError{ID: "abc"}, 409, "conflict", ""},
		{follower, errors.New("boom"), 500, "internal", ""},
	}
	covered := map[errkind.Kind]bool{}
	for _, c := range cases {
		k, _ := errkind.Of(c.err)
		covered[k] = true
		for _, err := range []error{c.err, fmt.Errorf("wrapped: %w", c.err)} {
			w := c.s.describe(err)
			if w.status != c.status || w.kind != c.kind {
				t.Errorf("%T: %d %s, want %d %s", c.err, w.status, w.kind, c.status, c.kind)
			}
			if body := string(w.body()); c.body != "" && !strings.Contains(body, c.body) {
				t.Errorf("%T: body %s lacks %s", c.err, body, c.body)
			}
		}
	}
	for _, k := range errkind.All() {
		if !covered[k] && k != errkind.NotLeader { // NotLeader: Schema on a follower
			t.Errorf("kind %s has no error type in this test", k)
		}
	}
}

// Every kind maps to its table's status and client name, and only an
// error no type claims is a 500.
func TestNoKnownErrorIsA500(t *testing.T) {
	s := &Server{repl: fakeRepl{url: "http://leader:8080"}}
	for _, k := range errkind.All() {
		w := s.describe(fmt.Errorf("context: %w", errkind.New(k, "m")))
		if k == errkind.Schema {
			if w.kind != "not_leader" || w.status != 403 {
				t.Errorf("schema on a follower: %d %s", w.status, w.kind)
			}
			continue
		}
		if w.status != k.Status() || w.kind != k.Client() || w.msg != "context: m" {
			t.Errorf("%s: %d %s %q", k, w.status, w.kind, w.msg)
		}
		if (w.status == 500) != (k == errkind.Internal) {
			t.Errorf("%s answers %d", k, w.status)
		}
	}
}

// A write forwarded to the leader over HTTP comes back with its error in
// the forward's wire form: every error the leader can answer keeps its
// kind, status and message across it (before, a step budget, a reused
// request id, an unknown outcome or a wait timeout came back as 500
// "internal").
func TestEveryForwardedErrorKeepsItsKind(t *testing.T) {
	s := &Server{repl: fakeRepl{url: "http://leader:8080"}}
	for _, err := range []error{
		&store.ForbiddenError{Reason: "no"},
		&store.SchemaDeniedError{Statement: "CREATE"},
		&store.SQLError{Err: errors.New("UNIQUE constraint failed: t.id")},
		&store.ParamError{Msg: "p"},
		&store.ResultTooLargeError{What: "more than 5 rows"},
		&store.StepBudgetError{Steps: 100_000_000},
		&store.RequestIDReusedError{ID: "k1", Index: 17},
		&replication.AckTimeoutError{Index: 42, Level: "all", After: 5 * time.Second},
		&replication.WaitTimeoutError{Want: 9, Have: 7, After: 2 * time.Second},
		&replication.UnknownOutcomeError{Reason: "no answer came"},
		&replication.UnavailableError{Reason: "leadership changed"},
		&store.EntryTooLargeError{Bytes: 40 << 20},
		&store.LoadInterruptedError{ID: "abc"},
	} {
		before := s.describe(err)
		if before.kind == "internal" {
			t.Fatalf("%T is not in the table of kinds", err)
		}
		w := replication.ToWireError(fmt.Errorf("apply: %w", err))
		back := replication.FromWireError(w, 5*time.Second)
		after := s.describe(back)
		if after.status != before.status || after.kind != before.kind || after.msg != before.msg {
			t.Errorf("%T across a forward: %d %s %q, want %d %s %q", err, after.status, after.kind, after.msg, before.status, before.kind, before.msg)
		}
	}
	// A kind only a newer leader knows keeps its message.
	if err := replication.FromWireError(&replication.WireError{Kind: "from_the_future", Message: "m"}, 0); !strings.Contains(err.Error(), "from_the_future") || !strings.Contains(err.Error(), "m") {
		t.Errorf("unknown kind: %v", err)
	}
}

// A request's Host must be a name the node is known by, an IP address or
// a loopback name: anything else is a DNS rebinding's, refused.
func TestHostsANodeAnswersFor(t *testing.T) {
	cfg, err := cluster.ParseArgs(cluster.Slave, []string{"-host", "db2", "-advertise", "https://db2.internal:8081", "-allow-hosts", "lb.example", "1", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{hosts: cfg.KnownHosts()}
	for host, want := range map[string]bool{
		"db2:8081": true, "DB2.:8081": true, "db2.internal": true, "lb.example:443": true, "localhost:8081": true,
		"10.1.2.3:8081": true, "[fe80::1]:8081": true, "127.0.0.1": true, "": true,
		"evil.example:8081": false, "db2.evil.example": false, "localhost.evil.example:8081": false, "db3:8081": false,
	} {
		if got := s.hostAllowed(host); got != want {
			t.Errorf("Host %q: allowed %v, want %v", host, got, want)
		}
	}
}
