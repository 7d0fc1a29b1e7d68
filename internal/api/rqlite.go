package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/store"
)

// rqlite's data API (docs/RQLITE.md): /db/execute, /db/query and
// /db/request, beside the original protocol. A statement's failure is its
// result's "error" at HTTP 200, as rqlite answers it: a 4xx or 5xx makes
// rqlite's clients try another node, which for a write that did apply
// would apply it twice. Every write on this API, schema changes included,
// goes to the leader.

// rqFlags are the query-string flags of a data API request. rqlite's
// flags are present or absent (?timings, not ?timings=true); a value of
// "false" or "0" counts as absent.
// rqLevel is a read consistency level of rqlite's API.
type rqLevel string

// rqlite's levels (any other reads as weak; see rqReadable).
const (
	rqNone         rqLevel = "none"         // this node's data, as it is
	rqWeak         rqLevel = "weak"         // the leader's, confirmed with it
	rqLinearizable rqLevel = "linearizable" // the leader's, confirmed with a majority
	rqStrong       rqLevel = "strong"
	rqAuto         rqLevel = "auto" // none on a learner, else weak
)

type rqFlags struct {
	transaction, timings, associative, pretty, blobArray bool
	redirect, queue, wait, raftIndex                     bool
	level                                                rqLevel
	freshness                                            time.Duration
	freshnessStrict                                      bool
	timeout                                              time.Duration
}

func parseRqFlags(q url.Values) (rqFlags, error) {
	on := func(name string) bool {
		v, ok := q[name]
		if !ok {
			return false
		}
		return len(v) == 0 || (v[0] != "false" && v[0] != "0")
	}
	f := rqFlags{
		transaction: on("transaction"), timings: on("timings"), associative: on("associative"),
		pretty: on("pretty"), blobArray: on("blob_array"), redirect: on("redirect"),
		queue: on("queue"), wait: on("wait"), raftIndex: on("raft_index"),
		freshnessStrict: on("freshness_strict"),
		level:           rqLevel(strings.ToLower(q.Get("level"))),
	}
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{{"freshness", &f.freshness}, {"timeout", &f.timeout}, {"db_timeout", &f.timeout}} {
		v := q.Get(d.name)
		if v == "" {
			continue
		}
		dur, err := time.ParseDuration(v)
		if err != nil {
			// rqlite also takes a number of seconds.
			secs, ferr := strconv.ParseFloat(v, 64)
			if ferr != nil || secs < 0 {
				return f, fmt.Errorf("%s=%q is not a duration (for example 2s or 500ms)", d.name, v)
			}
			dur = time.Duration(secs * float64(time.Second))
		}
		*d.to = dur
	}
	return f, nil
}

// parseRqStatements reads a data API request's statements: a JSON array
// whose elements are an SQL string or [sql, params...] (positional
// values, or one object of named values), or a text/plain body holding
// one SQL string.
func parseRqStatements(body []byte, contentType string) ([]rlog.Statement, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, errors.New("empty request body: send a JSON array of statements")
	}
	if trimmed[0] != '[' {
		if strings.HasPrefix(contentType, "application/json") && (trimmed[0] == '{' || trimmed[0] == '"') {
			return nil, errors.New("the body must be a JSON array of statements, for example [\"SELECT 1\"]")
		}
		return []rlog.Statement{{SQL: string(trimmed)}}, nil // text/plain: one SQL string
	}
	if err := checkText(trimmed); err != nil {
		return nil, err
	}
	// (A body without '{' holds no object, so no key twice.)
	if bytes.IndexByte(trimmed, '{') >= 0 {
		if err := checkKeys(trimmed); err != nil {
			return nil, err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	var raw []any
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("the body is not a JSON array of statements: %v", err)
	}
	if dec.More() {
		return nil, errors.New("the body holds more than one JSON value")
	}
	if len(raw) == 0 {
		return nil, errors.New("no statements: the array is empty")
	}
	stmts := make([]rlog.Statement, len(raw))
	for i, r := range raw {
		st, err := parseRqStatement(r)
		if err != nil {
			return nil, fmt.Errorf("statement %d: %v", i+1, err)
		}
		stmts[i] = st
	}
	return stmts, nil
}

// parseRqStatement is one statement of the body as decoded (numbers as
// json.Number): an SQL string, or an array of the SQL and its parameters.
func parseRqStatement(r any) (rlog.Statement, error) {
	if sql, ok := r.(string); ok {
		if strings.TrimSpace(sql) == "" {
			return rlog.Statement{}, errors.New("empty SQL")
		}
		return rlog.Statement{SQL: sql}, nil
	}
	parts, ok := r.([]any)
	if !ok {
		return rlog.Statement{}, errors.New(`a statement is an SQL string or an array ["SQL", params...]`)
	}
	if len(parts) == 0 {
		return rlog.Statement{}, errors.New("empty statement array")
	}
	sql, ok := parts[0].(string)
	if !ok || strings.TrimSpace(sql) == "" {
		return rlog.Statement{}, errors.New("a statement array starts with its SQL string")
	}
	st := rlog.Statement{SQL: sql}
	params := parts[1:]
	if len(params) == 1 {
		if named, ok := params[0].(map[string]any); ok {
			st.Named = make(map[string]any, len(named))
			for k, v := range named {
				val, err := rqParam(v)
				if err != nil {
					return st, fmt.Errorf("parameter %q: %v", k, err)
				}
				st.Named[k] = val
			}
			return st, nil
		}
	}
	for i, v := range params {
		val, err := rqParam(v)
		if err != nil {
			return st, fmt.Errorf("parameter %d: %v", i+1, err)
		}
		st.Pos = append(st.Pos, val)
	}
	return st, nil
}

// rqParam converts a JSON parameter to a SQLite value: integers stay
// int64, other numbers are float64, booleans are 1 and 0, an array of
// byte values or a string x'hex' is a BLOB.
func rqParam(v any) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case json.Number:
		return numberValue(x)
	case bool:
		if x {
			return int64(1), nil
		}
		return int64(0), nil
	case string:
		if b, ok := hexBlob(x); ok {
			return b, nil
		}
		return x, nil
	case []any:
		b := make([]byte, len(x))
		for i, e := range x {
			n, ok := e.(json.Number)
			v, err := n.Int64()
			if !ok || err != nil || v < 0 || v > 255 {
				return nil, errors.New("an array parameter is a BLOB: its elements are byte values 0-255")
			}
			b[i] = byte(v)
		}
		return b, nil
	}
	return nil, errors.New("an object is not a value (named parameters are the statement's only object)")
}

// hexBlob reads SQLite's blob literal x'0A1B'.
func hexBlob(s string) ([]byte, bool) {
	if len(s) < 3 || (s[0] != 'x' && s[0] != 'X') || s[1] != '\'' || s[len(s)-1] != '\'' {
		return nil, false
	}
	b, err := hex.DecodeString(s[2 : len(s)-1])
	return b, err == nil
}

// rqEndpoint is which data endpoint a request came to.
type rqEndpoint int

const (
	rqExecute rqEndpoint = iota
	rqQuery
	rqRequest
)

// rqSequence numbers queued writes; it starts from the clock so that the
// numbers keep increasing across restarts.
var rqSequence atomic.Int64

func init() { rqSequence.Store(time.Now().UnixNano()) }

func (s *Server) handleRqlite(ep rqEndpoint) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		command := [...]string{"rqlite-execute", "rqlite-query", "rqlite-request"}[ep]
		status := s.serveRqlite(w, r, ep, start)
		s.metrics.Request(command, status, time.Since(start))
	}
}

// serveRqlite answers one data API request and returns its status.
func (s *Server) serveRqlite(w http.ResponseWriter, r *http.Request, ep rqEndpoint, start time.Time) int {
	fail := func(status int, msg string) int {
		writeError(w, status, msg)
		return status
	}
	if r.Method != http.MethodPost && !(ep == rqQuery && r.Method == http.MethodGet) {
		if ep == rqQuery {
			w.Header().Set("Allow", "GET, POST")
		} else {
			w.Header().Set("Allow", "POST")
		}
		return fail(http.StatusMethodNotAllowed, "use POST with a JSON array of statements")
	}
	flags, err := parseRqFlags(r.URL.Query())
	if err != nil {
		return fail(http.StatusBadRequest, err.Error())
	}
	var stmts []rlog.Statement
	if r.Method == http.MethodGet {
		q := r.URL.Query().Get("q")
		if strings.TrimSpace(q) == "" {
			return fail(http.StatusBadRequest, "GET /db/query needs the SQL in q=")
		}
		stmts = []rlog.Statement{{SQL: q}}
	} else {
		body, status, msg := s.readBody(w, r)
		if status != 0 {
			return fail(status, msg)
		}
		if stmts, err = parseRqStatements(body, r.Header.Get("Content-Type")); err != nil {
			return fail(http.StatusBadRequest, err.Error())
		}
	}
	release, ok := s.admit(w)
	if !ok {
		return http.StatusServiceUnavailable
	}
	defer release()
	var perms map[string]bool
	if s.users != nil {
		need := PermExecute
		if ep == rqQuery {
			need = PermQuery
		}
		var status int
		var msg string
		if ep != rqRequest { // /db/request: decided below, by what the statements do
			if perms, status, msg = s.users.check(w, r, need); status != 0 {
				return fail(status, msg)
			}
		}
	}
	write := ep == rqExecute
	if ep == rqRequest {
		stmts = splitStatements(stmts)
		kind, err := s.st.Classify(r.Context(), stmts)
		// A statement that cannot be compiled yet (it may use a table an
		// earlier one creates) goes through the log, where it runs in order.
		write = err != nil || kind != store.KindRead
	}
	if s.users != nil && ep == rqRequest {
		need := PermQuery
		if write {
			need = PermExecute
		}
		var status int
		var msg string
		if perms, status, msg = s.users.check(w, r, need); status != 0 {
			return fail(status, msg)
		}
	}
	timeout := s.cfg.QueryTimeout
	if flags.timeout > 0 && flags.timeout < timeout {
		timeout = flags.timeout
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout+s.cfg.AckTimeout)
	defer cancel()
	if !flags.queue {
		s.drained(ctx)
	}
	var resp *rqResponse
	if write {
		if flags.redirect && !s.isLeader() {
			return s.rqRedirect(w, r)
		}
		allowSchema := s.users.SchemaOnRqlite(perms)
		resp, err = s.rqWrite(ctx, stmts, flags, allowSchema, ep)
	} else {
		resp, err = s.rqRead(ctx, w, r, stmts, flags, ep)
		if resp == nil && err == nil {
			return http.StatusMovedPermanently // redirected
		}
	}
	if err != nil {
		var wt *rqWaitTimeout
		if errors.As(err, &wt) {
			return fail(http.StatusRequestTimeout, err.Error())
		}
		status, msg := s.statusOf(err)
		if status == http.StatusInternalServerError {
			s.metrics.Error()
			s.log.Error("internal error", "path", r.URL.Path, "err", err)
		}
		return fail(status, msg)
	}
	if flags.timings {
		resp.time = time.Since(start).Seconds()
	}
	if resp.index > 0 {
		w.Header().Set(IndexHeader, strconv.FormatUint(resp.index, 10))
	}
	b := resp.encode(flags)
	if flags.pretty {
		var buf bytes.Buffer
		if json.Indent(&buf, b, "", "    ") == nil {
			b = buf.Bytes()
		}
	}
	writeJSON(w, http.StatusOK, append(b, '\n'))
	return http.StatusOK
}

// rqRedirect sends the client to the leader: 301 with the leader's URL,
// this request's path and raw query.
func (s *Server) rqRedirect(w http.ResponseWriter, r *http.Request) int {
	leader := s.repl.LeaderURL()
	if leader == "" {
		writeError(w, http.StatusServiceUnavailable, "leader not found: an election is under way, or a majority of the voters cannot be reached; retry shortly")
		return http.StatusServiceUnavailable
	}
	target := leader + r.URL.Path
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	http.Redirect(w, r, target, http.StatusMovedPermanently)
	return http.StatusMovedPermanently
}

// rqWaitTimeout: a queued write with ?wait did not apply in time.
type rqWaitTimeout struct{ after time.Duration }

func (e *rqWaitTimeout) Error() string {
	return fmt.Sprintf("the queued write was not applied within %v; it may still apply", e.after)
}

// rqWrite runs statements through the log, each on its own unless the
// request is a transaction, and answers each statement's result.
func (s *Server) rqWrite(ctx context.Context, stmts []rlog.Statement, flags rqFlags, allowSchema bool, ep rqEndpoint) (*rqResponse, error) {
	req := &store.Request{Stmts: stmts, AllowSchema: allowSchema, Collect: true, Each: true, Atomic: flags.transaction,
		Limits: s.limits()}
	if flags.queue {
		seq, done := s.enqueue(req)
		if flags.wait {
			wait := flags.timeout
			if wait <= 0 {
				wait = 30 * time.Second
			}
			select {
			case err := <-done:
				if err != nil {
					return nil, err
				}
			case <-time.After(wait):
				return nil, &rqWaitTimeout{after: wait}
			}
		}
		return &rqResponse{sequence: seq, results: []rqResult{}}, nil
	}
	out, err := s.repl.Write(ctx, req, s.cfg.Ack)
	if err != nil {
		return nil, s.deadline(ctx, err)
	}
	s.metrics.Write()
	resp := &rqResponse{index: out.Index, raftIndex: flags.raftIndex}
	if out.Err != nil {
		// The write failed as a whole (a statement rolled back the whole
		// transaction): its failure is the statements' answer.
		st, msg := s.statusOf(out.Err)
		if st >= 500 {
			return nil, out.Err
		}
		resp.results = []rqResult{{err: &store.StatementError{Message: msg}}}
		return resp, nil
	}
	for _, r := range out.Results {
		// On /db/execute, a statement answers rows when it returns them
		// (RETURNING); of a query holding several, the last one decides.
		resp.results = append(resp.results, rqResultOf(r, ep != rqExecute || (r.HasRows && !r.RowsBeforeLast)))
	}
	return resp, nil
}

// rqRead serves reads at the request's level (see readLevel). A write
// sent to /db/query fails alone, per statement. It returns nil, nil once
// it has redirected the client.
func (s *Server) rqRead(ctx context.Context, w http.ResponseWriter, r *http.Request, stmts []rlog.Statement, flags rqFlags, ep rqEndpoint) (*rqResponse, error) {
	if err := s.rqReadable(ctx, w, r, flags); err != nil || w.Header().Get("Location") != "" {
		return nil, err
	}
	resp := &rqResponse{index: s.st.Applied(), raftIndex: flags.raftIndex}
	// The result limits hold for the request, all its statements together,
	// as on the original protocol.
	all := s.limits()
	lim := all
	var rows, bytes int
	for _, st := range stmts {
		// A statement that would change something is refused by Read
		// before it runs (compiled once, on the connection that runs it,
		// where a Classify first would compile it on another).
		res, err := s.st.Read(ctx, []rlog.Statement{st}, lim)
		if nr := (*store.NotReadError)(nil); errors.As(err, &nr) {
			resp.results = append(resp.results, rqResult{err: &store.StatementError{Message: "attempt to change database via query operation"}})
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, s.deadline(ctx, err)
			}
			var tl *store.ResultTooLargeError
			if errors.Is(err, store.ErrClosed) || errors.As(err, &tl) {
				return nil, err // (over the request's limits: refused whole, 400)
			}
			resp.results = append(resp.results, rqResult{err: rqStatementError(err)})
			continue
		}
		r, b := store.Spent(res)
		rows, bytes = rows+r, bytes+b
		if lim, err = all.Less(rows, bytes); err != nil {
			return nil, err
		}
		for _, r := range res {
			resp.results = append(resp.results, rqResultOf(r, true))
		}
	}
	return resp, nil
}

// rqReadable waits until this node may answer at the request's level:
//
//   - none: this node's data as it is (with freshness: refused when this
//     node has not heard from a leader for longer than that);
//   - weak, and any level rqlite does not define: the leader's data; a
//     follower first learns the leader's commit index (as strong does),
//     which is stronger than rqlite's weak read, never weaker;
//   - strong and linearizable: a read index confirmed by a majority
//     (Raft's ReadIndex), then this node's data once it has applied it;
//   - auto: none on a learner, weak elsewhere.
//
// With redirect, a follower asked for weak or stronger sends the client to
// the leader instead.
func (s *Server) rqReadable(ctx context.Context, w http.ResponseWriter, r *http.Request, flags rqFlags) error {
	if err := s.repl.Serving(); err != nil {
		return err
	}
	level := flags.level
	if level == rqAuto {
		level = rqWeak
		if s.repl.Learner() {
			level = rqNone
		}
	}
	if level == rqNone {
		if flags.freshness > 0 {
			if age := s.repl.SinceLeaderContact(); age > flags.freshness {
				return &store.ForbiddenError{Reason: fmt.Sprintf("stale read: this node last heard from a leader %v ago, more than freshness=%v", age.Round(time.Millisecond), flags.freshness)}
			}
		}
		return nil
	}
	if flags.redirect && !s.isLeader() {
		s.rqRedirect(w, r)
		return nil
	}
	if level == rqWeak && s.isLeader() {
		return nil
	}
	idx, err := s.repl.ReadIndex(ctx)
	if err != nil {
		return err
	}
	if s.st.Applied() >= idx {
		return nil
	}
	return s.repl.WaitApplied(ctx, idx, s.cfg.ReadTimeout)
}

func rqStatementError(err error) *store.StatementError {
	var se *store.StatementError
	if errors.As(err, &se) {
		return se
	}
	var sq *store.SQLError
	if errors.As(err, &sq) {
		return store.StatementErrorOf(sq.Err)
	}
	return &store.StatementError{Message: err.Error()}
}

// rqResult is one statement's answer.
type rqResult struct {
	err          *store.StatementError
	rows         bool // a query's form: columns, types, values
	columns      []string
	types        []string
	values       [][]any
	lastInsertID int64
	rowsAffected int64
}

func rqResultOf(r store.Result, asRows bool) rqResult {
	if r.Err != nil {
		return rqResult{err: r.Err}
	}
	if asRows && (r.HasRows || len(r.Columns) > 0) {
		types := make([]string, len(r.Types))
		for i, t := range r.Types {
			types[i] = strings.ToLower(t)
		}
		return rqResult{rows: true, columns: r.Columns, types: types, values: rqTyped(r.Rows, types)}
	}
	return rqResult{lastInsertID: r.LastInsertID, rowsAffected: r.RowsAffected}
}

// rqTyped converts values the way rqlite's SQLite driver hands them to
// rqlite, by the column's declared type: in a DATE, DATETIME or TIMESTAMP
// column an integer is Unix time (in milliseconds beyond 10^12) and a text
// in one of SQLite's time formats is that time, both answered as RFC 3339
// in UTC; in a BOOLEAN column an integer is true or false. A text that is
// no time stays as it is (rqlite's driver answers the zero time for it).
func rqTyped(rows [][]any, types []string) [][]any {
	conv := false
	for _, t := range types {
		switch t {
		case "date", "datetime", "timestamp", "boolean":
			conv = true
		}
	}
	if !conv {
		return rows
	}
	out := make([][]any, len(rows))
	for i, row := range rows {
		nr := make([]any, len(row))
		copy(nr, row)
		for j, v := range row {
			if j >= len(types) {
				break
			}
			switch types[j] {
			case "date", "datetime", "timestamp":
				if t, ok := rqTime(v); ok {
					nr[j] = t.UTC().Format(time.RFC3339Nano)
				}
			case "boolean":
				if n, ok := v.(int64); ok {
					nr[j] = n > 0
				}
			}
		}
		out[i] = nr
	}
	return out
}

func rqTime(v any) (time.Time, bool) {
	switch x := v.(type) {
	case int64:
		if x > 1e12 || x < -1e12 {
			return time.Unix(0, x*int64(time.Millisecond)), true
		}
		return time.Unix(x, 0), true
	case string:
		s := strings.TrimSuffix(x, "Z")
		for _, f := range sqlite3.SQLiteTimestampFormats {
			if t, err := time.ParseInLocation(f, s, time.UTC); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}

// rqResponse is a data API answer's envelope.
type rqResponse struct {
	results   []rqResult
	time      float64
	sequence  int64
	index     uint64
	raftIndex bool
}

func (resp *rqResponse) encode(f rqFlags) []byte {
	b := []byte(`{"results":[`)
	for i, r := range resp.results {
		if i > 0 {
			b = append(b, ',')
		}
		b = r.encode(b, f)
	}
	b = append(b, ']')
	if resp.time > 0 {
		b = append(b, `,"time":`...)
		b = strconv.AppendFloat(b, resp.time, 'g', -1, 64)
	}
	if resp.sequence != 0 {
		b = append(b, `,"sequence_number":`...)
		b = strconv.AppendInt(b, resp.sequence, 10)
	}
	if resp.raftIndex && resp.index > 0 {
		b = append(b, `,"raft_index":`...)
		b = strconv.AppendUint(b, resp.index, 10)
	}
	return append(b, '}')
}

func (r rqResult) encode(b []byte, f rqFlags) []byte {
	switch {
	case r.err != nil:
		b = append(b, `{"error":`...)
		b = appendString(b, r.err.Message)
		if r.err.Code != 0 {
			b = append(b, `,"error_v2":{"message":`...)
			b = appendString(b, r.err.Message)
			b = fmt.Appendf(b, `,"sqlite":{"code":%d,"extended_code":%d}}`, r.err.Code, r.err.Extended)
		}
		return append(b, '}')
	case r.rows && f.associative:
		b = append(b, `{"types":{`...)
		for i, c := range r.columns {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, c)
			b = append(b, ':')
			b = appendString(b, r.types[i])
		}
		b = append(b, `},"rows":[`...)
		for i, row := range r.values {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			for j, v := range row {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendString(b, r.columns[j])
				b = append(b, ':')
				b = appendRqValue(b, v, f.blobArray)
			}
			b = append(b, '}')
		}
		return append(b, "]}"...)
	case r.rows:
		b = append(b, `{"columns":`...)
		b = appendStrings(b, r.columns)
		b = append(b, `,"types":`...)
		b = appendStrings(b, r.types)
		if len(r.values) > 0 {
			b = append(b, `,"values":`...)
			b = appendRowArrays(b, r.values, func(b []byte, v any) []byte { return appendRqValue(b, v, f.blobArray) })
		}
		return append(b, '}')
	}
	b = append(b, '{')
	sep := false
	if r.lastInsertID != 0 {
		b = append(b, `"last_insert_id":`...)
		b = strconv.AppendInt(b, r.lastInsertID, 10)
		sep = true
	}
	if r.rowsAffected != 0 {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"rows_affected":`...)
		b = strconv.AppendInt(b, r.rowsAffected, 10)
	}
	return append(b, '}')
}

// appendRqValue writes a value as rqlite does: integers and reals as JSON
// numbers, text as a string, a BLOB as base64 (or an array of byte values
// with blob_array), NULL as null. JSON has no infinities: they are null.
func appendRqValue(b []byte, v any, blobArray bool) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return append(b, "null"...)
		}
		j, _ := json.Marshal(x)
		return append(b, j...)
	case string:
		return appendString(b, x)
	case bool:
		return strconv.AppendBool(b, x)
	case []byte:
		if blobArray {
			b = append(b, '[')
			for i, c := range x {
				if i > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendUint(b, uint64(c), 10)
			}
			return append(b, ']')
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, x)
		return append(b, '"')
	}
	return appendString(b, fmt.Sprint(v))
}

// controlsTransaction says whether sql, one statement, begins or ends a
// transaction or savepoint (its first word, comments aside).
func controlsTransaction(sql string) bool {
	for {
		sql = strings.TrimSpace(sql)
		switch {
		case strings.HasPrefix(sql, "--"):
			_, sql, _ = strings.Cut(sql, "\n")
			continue
		case strings.HasPrefix(sql, "/*"):
			_, sql, _ = strings.Cut(sql, "*/")
			continue
		}
		break
	}
	words := strings.FieldsFunc(sql, func(r rune) bool { return !unicode.IsLetter(r) })
	if len(words) == 0 {
		return false
	}
	switch strings.ToUpper(words[0]) {
	case "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE":
		return true
	}
	return false
}

// splitStatements gives each SQL statement of a /db/request its own place
// (and so its own result, as rqlite answers): a string without parameters
// that holds several statements ("SELECT 1; SELECT 2") becomes one entry
// for each, as SQLite reads them. A string with parameters stays whole
// (which statement they belong to would be a guess), and so does one that
// controls its own transaction.
func splitStatements(stmts []rlog.Statement) []rlog.Statement {
	out := make([]rlog.Statement, 0, len(stmts))
	for _, st := range stmts {
		if len(st.Pos) > 0 || len(st.Named) > 0 || !strings.Contains(st.SQL, ";") {
			out = append(out, st)
			continue
		}
		parts := sqlite.Split(st.SQL)
		if len(parts) <= 1 || slices.ContainsFunc(parts, controlsTransaction) {
			// (A string that opens or ends its own transaction means its
			// statements to go together: it stays whole, and is refused
			// whole, applying none of them.)
			out = append(out, st)
			continue
		}
		for _, p := range parts {
			out = append(out, rlog.Statement{SQL: p})
		}
	}
	return out
}
