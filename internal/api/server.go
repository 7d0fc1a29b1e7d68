// Package api is a node's HTTP face: the client protocol (SPEC section 2),
// the authenticated node-to-node endpoints, the operations endpoints, and
// the HTTP implementation of replication.Transport.
package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// Server serves one node.
type Server struct {
	// closing is closed when the node stops: open change streams end.
	closing   chan struct{}
	closeOnce sync.Once
	cfg       *cluster.Config
	st        *store.Store
	repl      replication.Replicator // the client protocol's only view of replication
	admin     replication.Admin      // membership, status, node-to-node endpoints
	tr        *peer.Client           // signed calls to other nodes
	// progress is where long operations are reported (nil: nowhere).
	progress *progress.Tracker
	// hosts are the names requests may give in Host (see hostAllowed).
	hosts []string
	// statusFields are keys other parts of the node add to /status.
	statusFields map[string]func() any
	auth         *cluster.Auth
	users        *Users // nil: no client authentication
	sem          chan struct{}
	metrics      *Metrics
	// metricsHandler serves the metrics' registry, with the node's own
	// collector.
	metricsHandler http.Handler
	mux            *http.ServeMux
	log            *slog.Logger
	started        time.Time
	queue          rqQueue // rqlite's queued writes, in the order queued
}

// SetProgress sets where the server reports its long operations (loads,
// backups), which /status and the console show.
func (s *Server) SetProgress(t *progress.Tracker) { s.progress = t }

// SetLogger sets where the server logs (requests at debug level, refused
// requests, internal errors).
func (s *Server) SetLogger(l *slog.Logger) { s.log = l }

// crossOrigin refuses requests that a browser sends on behalf of a page
// of another origin (cross-site request forgery): without it, any web page
// a user of the cluster opens could POST {"command": "exec", "query":
// "DROP TABLE ..."} to a node the browser reaches (a local cluster, an
// internal network) as a "simple" request, which needs no CORS approval.
// Browsers mark such requests (Sec-Fetch-Site, Origin); curl, scripts, the
// Go client and the nodes themselves send neither, and the console is of
// the node's own origin. Reads by GET stay allowed: a browser does not let
// another origin read their answers.
var crossOrigin http.CrossOriginProtection

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// rqlite's clients read the server's version from this header.
	w.Header().Set("X-RQLITE-VERSION", version)
	if !s.hostAllowed(r.Host) {
		s.log.Warn("request for an unknown host refused", "host", r.Host, "method", r.Method, "path", r.URL.Path, "from", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, appendHostError(r.Host))
		return
	}
	if err := crossOrigin.Check(r); err != nil {
		s.log.Warn("cross-origin request refused", "method", r.Method, "path", r.URL.Path, "origin", r.Header.Get("Origin"), "from", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, []byte(`{"error":"cross-origin request refused: a web page of another origin had this browser send it; nothing was run. Send requests from a program (curl, a client library), or from this node's own console","kind":"forbidden"}`+"\n"))
		return
	}
	if !s.log.Enabled(r.Context(), slog.LevelDebug) {
		s.mux.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(sw, r)
	s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start), "from", r.RemoteAddr)
}

// version names this build in the X-RQLITE-VERSION header.
var version = func() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return "ddb " + bi.Main.Version
	}
	return "ddb (devel)"
}()

// errQueryDeadline: a statement ran past -query-timeout and was interrupted.
var errQueryDeadline error = errkind.New(errkind.Deadline, "the query ran past its deadline and was stopped")

func (s *Server) isLeader() bool { return s.repl.IsLeader() }

// hostAllowed says whether a request naming host (its Host header) is
// for this node: an IP address, a loopback name, or a name the node is
// known by (cluster.Config.KnownHosts). Any other name is what a browser
// sends after a DNS rebinding (a page of another site whose name now
// points here): such a request is refused before anything runs.
func (s *Server) hostAllowed(host string) bool {
	if host == "" {
		return true // HTTP/1.0, without a Host: no browser sends that
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = cluster.HostName(host)
	if _, err := netip.ParseAddr(host); err == nil || cluster.IsLoopbackHost(host) { // (no allocation: every request passes here)
		return true
	}
	return slices.Contains(s.hosts, host)
}

// appendHostError is the answer to a request for an unknown host.
func appendHostError(host string) []byte {
	b := append([]byte(`{"error":`), appendString(nil, "this node is not known as "+host+": requests must name one of its own host names (-host, -listen, -advertise, a loopback name or an IP address), or one -allow-hosts adds; a browser sends another name only after a DNS rebinding")...)
	return append(b, `,"kind":"forbidden"}`+"\n"...)
}

func (s *Server) handleClient(w http.ResponseWriter, r *http.Request) {
	if wantsConsole(r) {
		s.handleConsole(w, r)
		return
	}
	start := time.Now()
	if r.URL.Path != "/" && r.URL.Path != "/query" {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s: send queries to POST / or POST /query", r.URL.Path))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, "use POST with a JSON body")
		return
	}
	body, status, msg := s.readBody(w, r)
	if status != 0 {
		s.metrics.Request("invalid", status, time.Since(start))
		writeError(w, status, msg)
		return
	}
	release, ok := s.admit(w)
	if !ok {
		s.metrics.Request("overload", http.StatusServiceUnavailable, time.Since(start))
		return
	}
	defer release()
	var perms map[string]bool
	if s.users != nil {
		var status int
		var msg string
		if perms, status, msg = s.users.check(w, r, ""); status != 0 {
			s.metrics.Request("unauthorized", status, time.Since(start))
			writeError(w, status, msg)
			return
		}
	}
	req, err := DecodeRequest(body, s.cfg.Ack)
	if err != nil {
		s.metrics.Request("invalid", http.StatusBadRequest, time.Since(start))
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.IsReplicated {
		// The original's loop-stopping flag: honoured only on requests a
		// peer signed with the cluster secret.
		if err := s.auth.Verify(r, cluster.BodyHash(body)); err != nil {
			s.log.Warn("refused is_replicated request", "from", r.RemoteAddr, "err", err)
			s.metrics.Request(string(req.Command), http.StatusForbidden, time.Since(start))
			writeError(w, http.StatusForbidden, "is_replicated is reserved for authenticated node-to-node requests: "+err.Error())
			return
		}
	}
	req.perms = perms
	_, _, hasCreds := r.BasicAuth()
	req.anonymous = !hasCreds
	status, out, index := s.serveSafely(r.Context(), req)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="ddb"`)
	}
	s.metrics.Request(string(req.Command), status, time.Since(start))
	if index > 0 {
		w.Header().Set(IndexHeader, strconv.FormatUint(index, 10))
	}
	writeJSON(w, status, out)
}

// readBody reads a client's request body before the request takes one of
// the -max-concurrent places, under a short deadline: a client that
// trickles its body holds nothing the others need, and is cut off. A
// status other than 0 is the answer to give (the connection is then
// closed: what is left of the body is never read, since waiting for it is
// what a slow sender wants).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, int, string) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		w.Header().Set("Connection", "close")
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", s.cfg.MaxBodyBytes)
		}
		return nil, http.StatusRequestTimeout, fmt.Sprintf("could not read the request body within %v: %v", s.cfg.BodyTimeout, err)
	}
	rc.SetReadDeadline(time.Time{})
	return body, 0, ""
}

// admit takes one of the -max-concurrent places for a request, or answers
// 503 with Retry-After when none is free.
func (s *Server) admit(w http.ResponseWriter) (release func(), ok bool) {
	select {
	case s.sem <- struct{}{}:
		return func() { <-s.sem }, true
	default:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many requests in progress (limit %d); retry shortly", s.cfg.MaxConcurrent))
		return nil, false
	}
}

// guard admits a request to an operations endpoint: one of methods, and
// with a users file the permission perm. It has answered when it says no.
func (s *Server) guard(w http.ResponseWriter, r *http.Request, perm string, methods ...string) bool {
	allowed := false
	for _, m := range methods {
		allowed = allowed || r.Method == m
	}
	if !allowed {
		w.Header().Set("Allow", strings.Join(methods, ", "))
		writeError(w, http.StatusMethodNotAllowed, "use "+strings.Join(methods, " or "))
		return false
	}
	if s.users != nil {
		if _, status, msg := s.users.check(w, r, perm); status != 0 {
			writeError(w, status, msg)
			return false
		}
	}
	return true
}

// Limits are what one request may return, and what a write may run (its
// step budget, from -query-timeout), under cfg: the client API's, and
// those of the writes a leader takes forwarded.
func Limits(cfg *cluster.Config) store.Limits {
	return store.Limits{MaxRows: cfg.MaxResultRows, MaxBytes: cfg.MaxResultBytes, MaxSteps: store.WriteStepBudget(cfg.QueryTimeout)}
}

func (s *Server) limits() store.Limits { return Limits(s.cfg) }

// IndexHeader carries, on every successful answer, the log index it
// reflects: a write's own index (whatever command carried it), or the
// index this node had applied when it read. A later query's min_index set
// to it reads at least that.
const IndexHeader = "X-Ddb-Index"

// serveSafely is serve, with a panic turned into a 500 that is logged and
// answered: a committed write's answer is never dropped without a word.
func (s *Server) serveSafely(ctx context.Context, req *Request) (status int, body []byte, index uint64) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("internal error", "command", req.Command, "panic", p, "stack", string(debug.Stack()))
			s.metrics.Error()
			status, index = http.StatusInternalServerError, 0
			body = append(append([]byte(`{"error":`), appendString(nil, fmt.Sprintf("internal error: %v; this is a bug, please report it", p))...), "}\n"...)
		}
	}()
	return s.serve(ctx, req)
}

// serve runs a decoded request and returns the status, the body and the
// index the answer reflects.
func (s *Server) serve(ctx context.Context, req *Request) (int, []byte, uint64) {
	fail := func(err error) (int, []byte, uint64) {
		we := s.describe(err)
		if we.status == http.StatusInternalServerError {
			s.log.Error("internal error", "err", err)
		}
		if we.status >= 500 {
			s.metrics.Error()
		}
		return we.status, we.body(), 0
	}
	if !s.permitted(req, req.Command) {
		return fail(&permissionError{perm: map[Command]string{CommandExec: PermExecute, CommandQuery: PermQuery}[req.Command], anonymous: req.anonymous})
	}
	lim := s.limits()
	if req.Command == CommandQuery {
		if err := s.waitReadable(ctx, req); err != nil {
			return fail(err)
		}
		qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
		defer cancel()
		results, err := s.st.Read(qctx, req.Stmts, lim)
		var nr *store.NotReadError
		var se *store.SQLError
		switch {
		case errors.As(err, &nr):
			if !s.permitted(req, CommandExec) {
				return fail(&permissionError{perm: PermExecute, anonymous: req.anonymous})
			}
			return s.write(ctx, req, true, fail)
		case errors.As(err, &se) && se.Compile && !s.isLeader() && s.permitted(req, CommandExec):
			// It cannot be compiled against this node's schema, which may
			// lag the leader's (a write right after the CREATE of its
			// table): the leader decides, as for exec.
			return s.write(ctx, req, true, fail)
		case err != nil:
			return fail(s.deadline(qctx, err))
		}
		seen := s.st.VisibleIndex() // covers what the read saw
		return http.StatusOK, s.queryBody(req, results, seen), seen
	}
	if !s.isLeader() && s.repl.LeaderURL() == "" {
		// An election is under way (at start, or after the leader died):
		// wait for its outcome, so a schema change sent to the node that
		// wins it is accepted, and any write goes to the new leader.
		s.awaitLeader(ctx)
	}
	if !s.isLeader() {
		// (A write on the leader starts no timer of its own: it runs in
		// the log, whose deadlines are the engine's.)
		qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
		defer cancel()
		kind, err := s.st.Classify(qctx, req.Stmts)
		var fe *store.ForbiddenError
		switch {
		case errors.As(err, &fe):
			return fail(err)
		case err == nil && kind == store.KindSchema:
			return fail(&store.SchemaDeniedError{})
		case err == nil && kind == store.KindRead:
			results, err := s.st.Read(qctx, req.Stmts, lim)
			if err != nil {
				return fail(s.deadline(qctx, err))
			}
			seen := s.st.VisibleIndex()
			return http.StatusOK, s.execBody(req, results, seen), seen
		}
		// A write, or a statement that cannot be compiled here yet (it
		// may use a table an earlier statement creates): the master decides.
	}
	return s.write(ctx, req, false, fail)
}

// awaitLeader waits until a leader is known, while an election may still
// produce one (see replication.Replicator.WaitLeader).
func (s *Server) awaitLeader(ctx context.Context) {
	s.repl.WaitLeader(ctx)
}

// permitted reports whether the request's user may run command.
func (s *Server) permitted(req *Request, command Command) bool {
	if s.users == nil {
		return true
	}
	if command == CommandExec {
		return has(req.perms, PermExecute)
	}
	return has(req.perms, PermQuery)
}

// NewServer builds the handler for a node: the client protocol, the
// operations endpoints, and the engine's node-to-node endpoints.
func NewServer(cfg *cluster.Config, st *store.Store, repl replication.Replicator, admin replication.Admin, tr *peer.Client, users *Users) *Server {
	auth := tr.Auth()
	s := &Server{closing: make(chan struct{}), cfg: cfg, st: st, repl: repl, admin: admin, tr: tr, auth: auth, users: users, hosts: cfg.KnownHosts(),
		sem:     make(chan struct{}, cfg.MaxConcurrent),
		metrics: NewMetrics(), mux: http.NewServeMux(), log: slog.Default(), started: time.Now()}
	s.metrics.reg.MustRegister(nodeCollector{s})
	s.metricsHandler = promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelError)})
	s.mux.HandleFunc("/", s.handleClient)
	s.mux.HandleFunc("/query", s.handleClient)
	s.mux.HandleFunc("/status", s.handleStatus)
	s.mux.HandleFunc("/health", s.handleHealth)
	s.mux.HandleFunc("/livez", s.handleLive)
	s.mux.HandleFunc("/remove", s.handleRemove)
	s.mux.HandleFunc("/transfer", s.handleTransfer)
	s.mux.HandleFunc("/metrics", s.handleMetrics)
	s.mux.HandleFunc("/db/execute", s.handleRqlite(rqExecute))
	s.mux.HandleFunc("/db/query", s.handleRqlite(rqQuery))
	s.mux.HandleFunc("/db/request", s.handleRqlite(rqRequest))
	s.mux.HandleFunc("/nodes", s.handleNodes)
	s.mux.HandleFunc("/readyz", s.handleReadyz)
	s.mux.HandleFunc("/leader", s.handleLeader)
	s.mux.HandleFunc("/db/backup", s.handleBackup)
	s.mux.HandleFunc("/db/load", s.handleLoad)
	s.mux.HandleFunc("/db/changes", s.handleChanges)
	// The node-to-node endpoints (package peer): the engine's (Raft), and
	// the others. Every refusal for a signature is counted.
	others := peer.Handlers(peer.Local{Auth: auth, Admin: admin, Repl: repl, Store: st, Dir: cfg.WorkDir(),
		ForwardTimeout: cfg.QueryTimeout + cfg.AckTimeout, AckTimeout: cfg.AckTimeout, DefaultAck: cfg.Ack,
		Progress: func() []progress.Status { return s.progress.UnderWay() },
		Refused: func(r *http.Request, err error) {
			s.log.Warn("refused peer request", "path", r.URL.Path, "from", r.RemoteAddr, "err", err)
		}})
	for _, hs := range []map[string]http.Handler{admin.PeerHandlers(), others} {
		for path, h := range hs {
			s.mux.Handle(path, s.countRefused(h.ServeHTTP))
		}
	}
	s.mux.HandleFunc("/console/cluster", s.handleConsoleCluster)
	return s
}

// Close ends what the server keeps open beyond a request's work (the
// change streams), so that the HTTP server's shutdown need not wait for
// their clients to go.
func (s *Server) Close() { s.closeOnce.Do(func() { close(s.closing) }) }

// Kind: unauthorized when credentials may grant the permission.
func (e *permissionError) Kind() errkind.Kind {
	if e.anonymous {
		return errkind.Unauthorized
	}
	return errkind.Permission
}

// permissionError: the request lacks a permission (anonymous: it came
// without credentials, which may grant it).
type permissionError struct {
	perm      string
	anonymous bool
}

func (e *permissionError) Error() string {
	if e.anonymous {
		return "authentication required: anonymous requests lack the \"" + e.perm + "\" permission"
	}
	return fmt.Sprintf("your user lacks the %q permission this request needs", e.perm)
}

func (s *Server) deadline(ctx context.Context, err error) error {
	if ctx.Err() == context.DeadlineExceeded {
		return s.deadlineError()
	}
	return err
}

func (s *Server) deadlineError() error {
	return fmt.Errorf("%w (limit %v)", errQueryDeadline, s.cfg.QueryTimeout)
}

func (s *Server) write(ctx context.Context, req *Request, collect bool, fail func(error) (int, []byte, uint64)) (status int, body []byte, index uint64) {
	allowSchema := s.isLeader() && (req.perms == nil || has(req.perms, PermSchema))
	sr := &store.Request{Stmts: req.Stmts, AllowSchema: allowSchema, Collect: collect, RequestID: req.RequestID,
		Limits: s.limits()}
	out, err := s.repl.Write(ctx, sr, req.Ack)
	if err != nil {
		// (Never relabelled as a deadline: a write in the log is not
		// stopped by one. What the wait for it met says the truth: an
		// unknown outcome, an ack timeout, or the write's own failure.)
		return fail(err)
	}
	s.metrics.Write()
	// The write is committed: whatever happens while its answer is
	// built, the client learns its index.
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("internal error answering a committed write", "index", out.Index, "panic", p, "stack", string(debug.Stack()))
			s.metrics.Error()
			status, index = http.StatusInternalServerError, out.Index
			body = fmt.Appendf(nil, "{\"error\":%s,\"index\":%d}\n",
				appendString(nil, fmt.Sprintf("the write is committed at index %d, but its answer could not be built: %v; this is a bug, please report it", out.Index, p)), out.Index)
		}
	}()
	if collect {
		return http.StatusOK, s.queryBody(req, out.Results, out.Index), out.Index
	}
	return http.StatusOK, s.execBody(req, out.Results, out.Index), out.Index
}

// waitReadable applies consistency and min_index before a read.
func (s *Server) waitReadable(ctx context.Context, req *Request) error {
	if err := s.repl.Serving(); err != nil {
		return err
	}
	want := req.MinIndex
	if req.Consistency == ConsistencyStrong {
		idx, err := s.repl.ReadIndex(ctx)
		if err != nil {
			return err
		}
		if idx > want {
			want = idx
		}
	}
	if want == 0 || s.st.Applied() >= want {
		return nil
	}
	return s.repl.WaitApplied(ctx, want, s.cfg.ReadTimeout)
}

func (s *Server) execBody(req *Request, results []store.Result, index uint64) []byte {
	b := []byte(`{"status":"success",`)
	if req.Multi {
		b = append(b, `"results":[`...)
		for i, r := range results {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"rows_affected":`...)
			b = strconv.AppendInt(b, r.RowsAffected, 10)
			b = append(b, `,"last_insert_id":`...)
			b = strconv.AppendInt(b, r.LastInsertID, 10)
			b = append(b, '}')
		}
		b = append(b, "],"...)
	} else {
		var r store.Result
		if len(results) > 0 {
			r = results[0]
		}
		b = append(b, `"rows_affected":`...)
		b = strconv.AppendInt(b, r.RowsAffected, 10)
		b = append(b, `,"last_insert_id":`...)
		b = strconv.AppendInt(b, r.LastInsertID, 10)
		b = append(b, ',')
	}
	b = append(b, `"index":`...)
	b = strconv.AppendUint(b, index, 10)
	return append(b, "}\n"...)
}

// queryBody: one statement gives its rows (an array of objects, or the
// columns form); "queries" gives {"results": [...], "index": N}.
func (s *Server) queryBody(req *Request, results []store.Result, index uint64) []byte {
	if !req.Multi {
		var r store.Result
		if len(results) > 0 {
			r = results[0]
		}
		return append(appendRows(nil, r, req.Format), '\n')
	}
	b := []byte(`{"results":[`)
	for i, r := range results {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendRows(b, r, req.Format)
	}
	b = append(b, `],"index":`...)
	b = strconv.AppendUint(b, index, 10)
	return append(b, "}\n"...)
}

// handleRemove takes a node out of the membership (POST {"id": N} to the
// leader). With a users file it needs the "remove" permission.
func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	if s.users != nil {
		if _, status, msg := s.users.check(w, r, PermRemove); status != 0 {
			writeError(w, status, msg)
			return
		}
	}
	id, ok := readID(w, r, "to remove")
	if !ok {
		return
	}
	if !s.repl.IsLeader() {
		writeError(w, http.StatusForbidden, "membership changes go to the leader: send this request to "+s.repl.LeaderURL())
		return
	}
	if err := s.admin.Remove(r.Context(), id); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"status":"success"}`+"\n"))
}
