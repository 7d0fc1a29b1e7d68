// Package client is the Go client of the replicated database: Exec, Query
// and atomic batches over the original protocol, against a list of nodes.
//
// It finds the leader and sends writes there, fails over to another node
// when one dies, and retries what can be retried: every write carries a
// request_id, so a write sent again after a broken connection or an
// election applies at most once. It keeps the highest log index it has
// seen and reads at least that far on any node (read-your-writes), and
// offers the ack levels, strong reads and min_index of the protocol.
//
// Errors are typed: *SQLError (the statement failed; nothing applied),
// *NoLeaderError (no node could take the write before the retry timeout;
// nothing applied), *TimeoutError (with whether the outcome is known),
// *NotLeaderError, and *Error for the rest. See docs/CLIENT.md.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

// Client talks to one cluster. It is safe for concurrent use; clients made
// with With share its connections, its knowledge of the leader and its
// read-your-writes index.
type Client struct {
	s    *shared
	opts callOpts
}

type shared struct {
	endpoints []string
	hc        *http.Client
	user      string
	pass      string
	auth      bool
	retry     time.Duration
	leader    atomic.Pointer[string]
	next      atomic.Uint64
	seen      atomic.Uint64
	tlsConfig *tls.Config
}

type callOpts struct {
	ack         string
	consistency string
	minIndex    uint64
}

// Option configures a Client.
type Option func(*shared) error

// WithHTTPClient sends requests with hc (its timeout bounds each attempt).
func WithHTTPClient(hc *http.Client) Option {
	return func(s *shared) error { s.hc = hc; return nil }
}

// WithBasicAuth sends these credentials (a users file is in force).
func WithBasicAuth(user, pass string) Option {
	return func(s *shared) error { s.user, s.pass, s.auth = user, pass, true; return nil }
}

// WithTLSConfig uses cfg for https endpoints (for example a private CA).
func WithTLSConfig(cfg *tls.Config) Option {
	return func(s *shared) error { s.tlsConfig = cfg; return nil }
}

// WithRetryTimeout is how long a call keeps retrying while no node can
// serve it (an election, a node down), when its context has no earlier
// deadline. Default 10 s.
func WithRetryTimeout(d time.Duration) Option {
	return func(s *shared) error {
		if d <= 0 {
			return errors.New("the retry timeout must be positive")
		}
		s.retry = d
		return nil
	}
}

// CallOption sets how calls made through a Client run (see With).
type CallOption func(*callOpts)

// Ack sets the acknowledgement level of writes: "quorum" (the default:
// committed by a majority) or "all" (also applied on every node).
func Ack(level string) CallOption { return func(o *callOpts) { o.ack = level } }

// Strong makes reads see every write acknowledged before they started,
// on any node (a read index confirmed by a majority).
func Strong() CallOption { return func(o *callOpts) { o.consistency = "strong" } }

// Local makes reads answer from the node's own data (the default), still
// at least as far as this client's own writes (read-your-writes).
func Local() CallOption { return func(o *callOpts) { o.consistency = "local" } }

// MinIndex makes reads wait until the node has applied index.
func MinIndex(index uint64) CallOption { return func(o *callOpts) { o.minIndex = index } }

// New returns a client for the cluster whose nodes are at endpoints
// ("http://host:port", or "host:port"; credentials may be in the URL).
func New(endpoints []string, opts ...Option) (*Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("no endpoint: give the URL of at least one node")
	}
	s := &shared{retry: 10 * time.Second}
	for _, e := range endpoints {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "http://" + e
		}
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("endpoint %q is not an http(s) URL of a node", e)
		}
		if u.User != nil {
			p, _ := u.User.Password()
			s.user, s.pass, s.auth = u.User.Username(), p, true
			u.User = nil
		}
		s.endpoints = append(s.endpoints, strings.TrimRight(u.String(), "/"))
	}
	if len(s.endpoints) == 0 {
		return nil, errors.New("no endpoint: give the URL of at least one node")
	}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if s.hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		tr.TLSClientConfig = s.tlsConfig
		s.hc = &http.Client{Transport: tr}
	}
	return &Client{s: s}, nil
}

// With returns a client that runs its calls with opts; it shares c's
// connections, leader and read-your-writes index.
func (c *Client) With(opts ...CallOption) *Client {
	n := &Client{s: c.s, opts: c.opts}
	for _, o := range opts {
		o(&n.opts)
	}
	return n
}

// Endpoints are the nodes the client was given.
func (c *Client) Endpoints() []string { return append([]string(nil), c.s.endpoints...) }

// LastIndex is the highest log index this client has seen: its own
// writes' and the indexes its reads reflected.
func (c *Client) LastIndex() uint64 { return c.s.seen.Load() }

func (c *Client) observe(index uint64) {
	for {
		cur := c.s.seen.Load()
		if index <= cur || c.s.seen.CompareAndSwap(cur, index) {
			return
		}
	}
}

// Named binds named parameters (:name, @name, $name) when it is a call's
// only argument.
type Named map[string]any

// Statement is one SQL statement (or several separated by ';') and its
// arguments, for ExecBatch.
type Statement struct {
	SQL  string
	Args []any
}

// Result is a write's outcome.
type Result struct {
	RowsAffected int64
	LastInsertID int64
	Index        uint64 // the write's index in the log
}

// Rows is a query's answer, each value in its exact SQLite type: int64,
// float64, string, []byte or nil.
type Rows struct {
	Columns []string
	Types   []string // declared types, "" for expressions
	Values  [][]any
	Index   uint64 // the index the answer reflects
}

// Exec runs a write (or several statements, atomically) and returns once
// it is acknowledged at the client's ack level.
func (c *Client) Exec(ctx context.Context, sql string, args ...any) (Result, error) {
	params, err := encodeArgs(args)
	if err != nil {
		return Result{}, err
	}
	body := map[string]any{"command": "exec", "query": sql, "request_id": newRequestID()}
	if params != nil {
		body["params"] = params
	}
	if c.opts.ack != "" {
		body["ack"] = c.opts.ack
	}
	var out struct {
		RowsAffected int64  `json:"rows_affected"`
		LastInsertID int64  `json:"last_insert_id"`
		Index        uint64 `json:"index"`
	}
	if err := c.call(ctx, true, body, &out); err != nil {
		return Result{}, err
	}
	return Result{RowsAffected: out.RowsAffected, LastInsertID: out.LastInsertID, Index: out.Index}, nil
}

// ExecBatch runs statements as one atomic write: all apply, or none.
func (c *Client) ExecBatch(ctx context.Context, stmts ...Statement) ([]Result, error) {
	if len(stmts) == 0 {
		return nil, nil
	}
	qs := make([]map[string]any, len(stmts))
	for i, st := range stmts {
		params, err := encodeArgs(st.Args)
		if err != nil {
			return nil, fmt.Errorf("statement %d: %w", i+1, err)
		}
		qs[i] = map[string]any{"query": st.SQL}
		if params != nil {
			qs[i]["params"] = params
		}
	}
	body := map[string]any{"command": "exec", "queries": qs, "request_id": newRequestID()}
	if c.opts.ack != "" {
		body["ack"] = c.opts.ack
	}
	var out struct {
		Results []struct {
			RowsAffected int64 `json:"rows_affected"`
			LastInsertID int64 `json:"last_insert_id"`
		} `json:"results"`
		Index uint64 `json:"index"`
	}
	if err := c.call(ctx, true, body, &out); err != nil {
		return nil, err
	}
	res := make([]Result, len(out.Results))
	for i, r := range out.Results {
		res[i] = Result{RowsAffected: r.RowsAffected, LastInsertID: r.LastInsertID, Index: out.Index}
	}
	return res, nil
}

// Query runs a read. It sees at least this client's own writes, on any
// node; with Strong, every write acknowledged before it started.
func (c *Client) Query(ctx context.Context, sql string, args ...any) (*Rows, error) {
	params, err := encodeArgs(args)
	if err != nil {
		return nil, err
	}
	body := map[string]any{"command": "query", "query": sql, "format": "typed"}
	if params != nil {
		body["params"] = params
	}
	if c.opts.consistency != "" {
		body["consistency"] = c.opts.consistency
	}
	if m := max(c.opts.minIndex, c.s.seen.Load()); m > 0 {
		body["min_index"] = m
	}
	var out struct {
		Columns []string            `json:"columns"`
		Types   []string            `json:"types"`
		Rows    [][]json.RawMessage `json:"rows"`
	}
	var index uint64
	if err := c.callIndex(ctx, false, body, &out, &index); err != nil {
		return nil, err
	}
	rows := &Rows{Columns: out.Columns, Types: out.Types, Index: index, Values: make([][]any, len(out.Rows))}
	for i, r := range out.Rows {
		vals := make([]any, len(r))
		for j, raw := range r {
			v, err := rlog.DecodeValue(raw)
			if err != nil {
				return nil, fmt.Errorf("row %d, column %d: %w", i+1, j+1, err)
			}
			vals[j] = v
		}
		rows.Values[i] = vals
	}
	return rows, nil
}

// Leader asks the nodes who leads and returns its URL.
func (c *Client) Leader(ctx context.Context) (string, error) {
	var lastErr error
	for _, e := range c.s.endpoints {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e+"/status", nil)
		if err != nil {
			return "", err
		}
		if c.s.auth {
			req.SetBasicAuth(c.s.user, c.s.pass)
		}
		resp, err := c.s.hc.Do(req)
		if err != nil {
			lastErr = err
			continue
		}
		var st struct {
			Raft struct {
				LeaderURL string `json:"leader_url"`
			} `json:"raft"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
		resp.Body.Close()
		if err == nil && st.Raft.LeaderURL != "" {
			l := st.Raft.LeaderURL
			c.s.leader.Store(&l)
			return l, nil
		}
		lastErr = fmt.Errorf("%s knows no leader", e)
	}
	return "", &NoLeaderError{Message: fmt.Sprint(lastErr)}
}

// Ping checks that at least one node answers.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.Query(ctx, "SELECT 1")
	return err
}

func (c *Client) call(ctx context.Context, write bool, body map[string]any, out any) error {
	var index uint64
	return c.callIndex(ctx, write, body, out, &index)
}

// callIndex sends a request until a node answers it, or it fails for
// good. Writes go to the leader when it is known (else to any node, which
// forwards them); reads go round the nodes.
func (c *Client) callIndex(ctx context.Context, write bool, body map[string]any, out any, index *uint64) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(c.s.retry)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	backoff := 20 * time.Millisecond
	var last error
	unknown := false            // a write attempt whose outcome is unknown
	tried := map[string]error{} // each node's last failure (the final error names them all)
	for attempt := 0; ; attempt++ {
		target := c.pick(write, attempt)
		status, resp, idx, err := c.post(ctx, target, payload)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return c.finalError(ctx.Err(), write, unknown, body, tried)
			}
			// The node is down or the connection broke. A write may have
			// reached it: its request_id makes sending it again safe.
			if write {
				unknown = unknown || !isDialError(err)
				c.forgetLeader(target)
			}
			last = &Error{Status: 0, Kind: "unreachable", Message: fmt.Sprintf("%s: %v", target, err)}
		case status == http.StatusOK:
			if err := json.Unmarshal(resp, out); err != nil {
				return fmt.Errorf("answer of %s: %w", target, err)
			}
			*index = idx
			c.observe(idx)
			return nil
		default:
			e := parseError(status, resp)
			switch e.Kind {
			case "sql":
				return &SQLError{Message: e.Message}
			case "not_leader":
				if e.Leader != "" {
					l := e.Leader
					c.s.leader.Store(&l)
				}
				last = &NotLeaderError{Leader: e.Leader, Message: e.Message}
			case "unavailable", "wait_timeout":
				if write {
					c.forgetLeader(target)
				}
				last = e
			case "unknown_outcome":
				unknown = true
				last = e
			case "ack_timeout":
				return &TimeoutError{OutcomeKnown: true, Committed: true, Index: e.Index, Message: e.Message}
			case "deadline":
				return &TimeoutError{OutcomeKnown: true, Committed: false, Message: e.Message}
			default:
				if status == http.StatusServiceUnavailable || status == http.StatusBadGateway {
					last = e
					break
				}
				return e
			}
		}
		tried[target] = last
		if time.Now().Add(backoff).After(deadline) {
			return c.finalError(last, write, unknown, body, tried)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return c.finalError(ctx.Err(), write, unknown, body, tried)
		}
		if backoff < 300*time.Millisecond {
			backoff *= 2
		}
	}
}

// finalError is what a call that gave up returns; tried holds each node's
// last failure.
func (c *Client) finalError(last error, write, unknown bool, body map[string]any, tried map[string]error) error {
	if write && unknown {
		id, _ := body["request_id"].(string)
		return &TimeoutError{OutcomeKnown: false, RequestID: id, Message: fmt.Sprintf("the write may or may not have applied (last: %v); send it again with request_id %s, which applies it at most once", last, id)}
	}
	var e *Error
	if errors.As(last, &e) && (e.Kind == "unavailable" || e.Kind == "unreachable" || e.Status == http.StatusServiceUnavailable) {
		return &NoLeaderError{Message: c.everyNode(tried)}
	}
	if errors.Is(last, context.DeadlineExceeded) || errors.Is(last, context.Canceled) {
		return last
	}
	if last == nil {
		return &NoLeaderError{Message: "no node answered"}
	}
	return last
}

// everyNode says what became of the call at each node it tried, in the
// order the client was given them (and any leader they named after).
func (c *Client) everyNode(tried map[string]error) string {
	var parts []string
	seen := map[string]bool{}
	say := func(url string) {
		err, ok := tried[url]
		if !ok || seen[url] || err == nil {
			return
		}
		seen[url] = true
		msg := err.Error()
		var e *Error
		if errors.As(err, &e) {
			msg = strings.TrimPrefix(e.Message, url+": ")
		}
		parts = append(parts, url+": "+msg)
	}
	for _, u := range c.s.endpoints {
		say(u)
	}
	for _, u := range slices.Sorted(maps.Keys(tried)) {
		say(u)
	}
	return strings.Join(parts, "; ")
}

// pick chooses the node for an attempt: writes go to the leader while it
// is known, reads round the nodes; a retry moves on to the next node.
func (c *Client) pick(write bool, attempt int) string {
	if write {
		if l := c.s.leader.Load(); l != nil && attempt%2 == 0 {
			return *l
		}
		if attempt == 0 || attempt%4 == 1 {
			// Learn who leads now (cheap; the answer is kept).
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			l, err := c.Leader(ctx)
			cancel()
			if err == nil {
				return l
			}
		}
	}
	n := c.s.next.Add(1)
	return c.s.endpoints[int(n)%len(c.s.endpoints)]
}

func (c *Client) forgetLeader(url string) {
	if l := c.s.leader.Load(); l != nil && *l == url {
		c.s.leader.CompareAndSwap(l, nil)
	}
}

func (c *Client) post(ctx context.Context, target string, payload []byte) (status int, body []byte, index uint64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target+"/", bytes.NewReader(payload))
	if err != nil {
		return 0, nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.s.auth {
		req.SetBasicAuth(c.s.user, c.s.pass)
	}
	resp, err := c.s.hc.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, 0, err
	}
	index, _ = strconv.ParseUint(resp.Header.Get("X-Ddb-Index"), 10, 64)
	return resp.StatusCode, body, index, nil
}

func isDialError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "dial tcp") || strings.Contains(s, "no such host")
}

var idPrefix = func() string {
	var b [6]byte
	rand.Read(b[:])
	return "go-" + hex.EncodeToString(b[:]) + "-"
}()

var idCounter atomic.Uint64

func newRequestID() string { return idPrefix + strconv.FormatUint(idCounter.Add(1), 36) }

// encodeArgs turns call arguments into the protocol's params: positional
// values, or named ones when the only argument is a Named.
func encodeArgs(args []any) (any, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if len(args) == 1 {
		if n, ok := args[0].(Named); ok {
			out := make(map[string]json.RawMessage, len(n))
			for k, v := range n {
				b, err := encodeValue(v)
				if err != nil {
					return nil, fmt.Errorf("parameter %s: %w", k, err)
				}
				out[k] = b
			}
			return out, nil
		}
	}
	out := make([]json.RawMessage, len(args))
	for i, v := range args {
		b, err := encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("parameter %d: %w", i+1, err)
		}
		out[i] = b
	}
	return out, nil
}

// TimeFormat is how a time.Time argument is stored: text SQLite's date and
// time functions read, in the time's own zone offset.
const TimeFormat = "2006-01-02 15:04:05.999999999-07:00"

func encodeValue(v any) (json.RawMessage, error) {
	switch x := v.(type) {
	case int:
		v = int64(x)
	case int8:
		v = int64(x)
	case int16:
		v = int64(x)
	case int32:
		v = int64(x)
	case uint8:
		v = int64(x)
	case uint16:
		v = int64(x)
	case uint32:
		v = int64(x)
	case uint:
		if uint64(x) > 1<<63-1 {
			return nil, fmt.Errorf("%d does not fit in SQLite's 64-bit integer", x)
		}
		v = int64(x)
	case uint64:
		if x > 1<<63-1 {
			return nil, fmt.Errorf("%d does not fit in SQLite's 64-bit integer", x)
		}
		v = int64(x)
	case float32:
		v = float64(x)
	case time.Time:
		v = x.Format(TimeFormat)
	case *string:
		if x == nil {
			v = nil
		} else {
			v = *x
		}
	}
	b, err := rlog.EncodeValue(v)
	return b, err
}
