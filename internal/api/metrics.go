package api

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ddbgo/ddb/internal/store"
)

// Metrics counts what the node serves, for GET /metrics (Prometheus text
// format). Hand-written: a handful of counters and one histogram do not
// justify a dependency.
type Metrics struct {
	mu       sync.Mutex
	requests map[[2]string]uint64 // {command, code} -> count
	buckets  []float64            // latency bucket upper bounds, seconds
	counts   map[string][]uint64  // command -> cumulative bucket counts (+Inf last)
	sums     map[string]float64
	totals   map[string]uint64

	writes      atomic.Uint64
	errors      atomic.Uint64
	peerRefused atomic.Uint64
}

// NewMetrics returns empty metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: map[[2]string]uint64{},
		buckets:  []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		counts:   map[string][]uint64{},
		sums:     map[string]float64{},
		totals:   map[string]uint64{},
	}
}

// Request records one client request.
func (m *Metrics) Request(command string, code int, d time.Duration) {
	sec := d.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[[2]string{command, fmt.Sprint(code)}]++
	c := m.counts[command]
	if c == nil {
		c = make([]uint64, len(m.buckets)+1)
		m.counts[command] = c
	}
	for i, b := range m.buckets {
		if sec <= b {
			c[i]++
		}
	}
	c[len(m.buckets)]++
	m.sums[command] += sec
	m.totals[command]++
}

// Write counts a committed write.
func (m *Metrics) Write() { m.writes.Add(1) }

// Error counts a server-side error (5xx).
func (m *Metrics) Error() { m.errors.Add(1) }

// PeerRefused counts a refused node-to-node request.
func (m *Metrics) PeerRefused() { m.peerRefused.Add(1) }

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermStatus, http.MethodGet, http.MethodHead) {
		return
	}
	m := s.metrics
	var b strings.Builder
	m.mu.Lock()
	b.WriteString("# HELP ddb_requests_total Client requests by command and HTTP status.\n# TYPE ddb_requests_total counter\n")
	keys := make([][2]string, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		fmt.Fprintf(&b, "ddb_requests_total{command=%q,code=%q} %d\n", k[0], k[1], m.requests[k])
	}
	b.WriteString("# HELP ddb_request_duration_seconds Client request latency.\n# TYPE ddb_request_duration_seconds histogram\n")
	cmds := make([]string, 0, len(m.counts))
	for c := range m.counts {
		cmds = append(cmds, c)
	}
	sort.Strings(cmds)
	for _, c := range cmds {
		for i, le := range m.buckets {
			fmt.Fprintf(&b, "ddb_request_duration_seconds_bucket{command=%q,le=\"%g\"} %d\n", c, le, m.counts[c][i])
		}
		fmt.Fprintf(&b, "ddb_request_duration_seconds_bucket{command=%q,le=\"+Inf\"} %d\n", c, m.counts[c][len(m.buckets)])
		fmt.Fprintf(&b, "ddb_request_duration_seconds_sum{command=%q} %g\n", c, m.sums[c])
		fmt.Fprintf(&b, "ddb_request_duration_seconds_count{command=%q} %d\n", c, m.totals[c])
	}
	m.mu.Unlock()
	fmt.Fprintf(&b, "# HELP ddb_writes_total Writes committed through this node.\n# TYPE ddb_writes_total counter\nddb_writes_total %d\n", m.writes.Load())
	fmt.Fprintf(&b, "# HELP ddb_errors_total Requests answered with a 5xx status.\n# TYPE ddb_errors_total counter\nddb_errors_total %d\n", m.errors.Load())
	fmt.Fprintf(&b, "# HELP ddb_peer_refused_total Node-to-node requests refused for a bad signature.\n# TYPE ddb_peer_refused_total counter\nddb_peer_refused_total %d\n", m.peerRefused.Load())
	fmt.Fprintf(&b, "# HELP ddb_applied_index Last log index applied to this node's database.\n# TYPE ddb_applied_index gauge\nddb_applied_index %d\n", s.st.Applied())
	b.Write(s.eng.Metrics(nil))
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	w.Write([]byte(b.String()))
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermStatus, http.MethodGet, http.MethodHead) {
		return
	}
	st := map[string]any{
		"role":           string(s.cfg.Role),
		"id":             s.cfg.ID,
		"url":            s.cfg.URL(),
		"applied_index":  s.st.Applied(),
		"database":       s.st.Path(),
		"uptime_seconds": time.Since(s.started).Seconds(),
	}
	es := s.eng.Status()
	st["role"] = es.Role
	st["raft"] = es
	for k, v := range s.rqStatus(es) {
		st[k] = v
	}
	if key := r.URL.Query().Get("key"); key != "" {
		v, ok := selectKey(st, key)
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Sprintf("/status has no key %q", key))
			return
		}
		writeValue(w, http.StatusOK, v)
		return
	}
	writeValue(w, http.StatusOK, st)
}

// handleHealth is readiness: 200 when this node can serve writes at its
// default ack level (and reads), 503 with the reason otherwise. A load
// balancer sends traffic only to ready nodes; /livez says whether the
// process should be restarted, which is another question.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if _, err := s.st.Read(r.Context(), nil, storeLimitsNone); err != nil {
		writeError(w, http.StatusServiceUnavailable, "database unavailable: "+err.Error())
		return
	}
	why := s.eng.Ready()
	if why != "" {
		writeError(w, http.StatusServiceUnavailable, "not ready: "+why)
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"status":"ok","role":"`+s.eng.Status().Role+`"}`+"\n"))
}

// handleLive is liveness: 200 while the process serves HTTP and can read
// its database, whatever the rest of the cluster does.
func (s *Server) handleLive(w http.ResponseWriter, r *http.Request) {
	if _, err := s.st.Read(r.Context(), nil, storeLimitsNone); err != nil {
		writeError(w, http.StatusServiceUnavailable, "database unavailable: "+err.Error())
		return
	}
	// The process's token: a node that finds this id at another address
	// can tell the same process from an impostor.
	writeJSON(w, http.StatusOK, []byte(`{"status":"alive","instance":"`+s.eng.Instance()+`"}`+"\n"))
}

var storeLimitsNone = store.Limits{}
