package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/store"
)

// Metrics counts what the node serves, for GET /metrics in Prometheus'
// text format (github.com/prometheus/client_golang, on a registry of the
// node's own).
type Metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	writes      prometheus.Counter
	errors      prometheus.Counter
	peerRefused prometheus.Counter
}

// NewMetrics returns the node's metrics, with Go's and the process's own.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ddb_requests_total",
			Help: "Client requests by command and HTTP status."}, []string{"command", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ddb_request_duration_seconds",
			Help:    "Client request latency.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}, []string{"command"}),
		writes:      prometheus.NewCounter(prometheus.CounterOpts{Name: "ddb_writes_total", Help: "Writes committed through this node."}),
		errors:      prometheus.NewCounter(prometheus.CounterOpts{Name: "ddb_errors_total", Help: "Requests answered with a 5xx status."}),
		peerRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "ddb_peer_refused_total", Help: "Node-to-node requests refused for a bad signature."}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.writes, m.errors, m.peerRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Request records one client request.
func (m *Metrics) Request(command string, code int, d time.Duration) {
	m.requests.WithLabelValues(command, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(command).Observe(d.Seconds())
}

// Write counts a committed write.
func (m *Metrics) Write() { m.writes.Inc() }

// Error counts a server-side error (5xx).
func (m *Metrics) Error() { m.errors.Inc() }

// PeerRefused counts a refused node-to-node request.
func (m *Metrics) PeerRefused() { m.peerRefused.Inc() }

// nodeCollector reports the database's and the replication engine's
// numbers, read when /metrics is asked.
type nodeCollector struct{ s *Server }

var (
	descApplied       = prometheus.NewDesc("ddb_applied_index", "Last log index applied to this node's database.", nil, nil)
	descTerm          = prometheus.NewDesc("ddb_raft_term", "Current Raft term.", nil, nil)
	descCommit        = prometheus.NewDesc("ddb_raft_commit_index", "Last log index known committed.", nil, nil)
	descIsLeader      = prometheus.NewDesc("ddb_raft_is_leader", "1 on the node that leads.", nil, nil)
	descLeaderChanges = prometheus.NewDesc("ddb_raft_leader_changes_total", "Leaders this node has seen take over (counted when observed).", nil, nil)
	descPending       = prometheus.NewDesc("ddb_raft_proposals_pending", "Proposals waiting to be applied.", nil, nil)
	descLag           = prometheus.NewDesc("ddb_replication_lag_entries", "Entries a node is behind the commit index (reported by the leader).", []string{"node"}, nil)
	descBatches       = prometheus.NewDesc("ddb_raft_send_batches_total", "Batches of Raft messages sent to other nodes.", nil, nil)
	descRoundTrip     = prometheus.NewDesc("ddb_raft_send_round_trip_seconds_total", "Round trips of those batches, summed (divide by the batches for the mean).", nil, nil)
	descSnapshots     = prometheus.NewDesc("ddb_raft_snapshots_installed_total", "Snapshots this node installed since it started.", nil, nil)
	descChecks        = prometheus.NewDesc("ddb_consistency_checks_total", "Consistency checks this node compared (its digest against the leader's, or on the leader against every node's).", nil, nil)
	descSQLiteMemory  = prometheus.NewDesc("ddb_sqlite_memory_bytes", "Memory SQLite holds in this process (page caches, statements).", nil, nil)
	descSQLiteHigh    = prometheus.NewDesc("ddb_sqlite_memory_highwater_bytes", "The most memory SQLite has held in this process since it started.", nil, nil)
	descDiverged      = prometheus.NewDesc("ddb_consistency_diverged_nodes", "Nodes the last consistency check found differing from the leader (on a follower: 1 when it is this node).", nil, nil)
)

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descApplied, descTerm, descCommit, descIsLeader, descLeaderChanges, descPending, descLag, descBatches, descRoundTrip, descSnapshots, descChecks, descDiverged, descSQLiteMemory, descSQLiteHigh} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.s.admin.Metrics()
	leader := 0.0
	if v.Leader {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(c.s.st.Applied()))
	cs := c.s.admin.Consistency()
	ch <- prometheus.MustNewConstMetric(descChecks, prometheus.CounterValue, float64(cs.Checks))
	ch <- prometheus.MustNewConstMetric(descDiverged, prometheus.GaugeValue, float64(len(cs.DivergedNodes)))
	ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(v.Term))
	ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(v.Commit))
	ch <- prometheus.MustNewConstMetric(descIsLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descLeaderChanges, prometheus.CounterValue, float64(v.LeaderChanges))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(v.ProposalsPending))
	for id, lag := range v.Lag {
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(lag), strconv.Itoa(id))
	}
	ch <- prometheus.MustNewConstMetric(descBatches, prometheus.CounterValue, float64(v.Batches))
	ch <- prometheus.MustNewConstMetric(descRoundTrip, prometheus.CounterValue, v.RoundTripSeconds)
	ch <- prometheus.MustNewConstMetric(descSnapshots, prometheus.CounterValue, float64(v.SnapshotsInstalled))
	used, high := sqlite.Memory(false)
	ch <- prometheus.MustNewConstMetric(descSQLiteMemory, prometheus.GaugeValue, float64(used))
	ch <- prometheus.MustNewConstMetric(descSQLiteHigh, prometheus.GaugeValue, float64(high))
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermStatus, http.MethodGet, http.MethodHead) {
		return
	}
	s.metricsHandler.ServeHTTP(w, r)
}

// SetStatus adds key to /status, its value f's answer at each request
// (set before the server serves).
func (s *Server) SetStatus(key string, f func() any) {
	if s.statusFields == nil {
		s.statusFields = map[string]func() any{}
	}
	s.statusFields[key] = f
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
	es := s.admin.Status()
	st["role"] = es.Role
	st["raft"] = es
	for k, v := range s.rqStatus(es) {
		st[k] = v
	}
	for k, f := range s.statusFields {
		st[k] = f()
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
	why := s.admin.Ready()
	if why != "" {
		writeError(w, http.StatusServiceUnavailable, "not ready: "+why)
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"status":"ok","role":"`+string(s.admin.Status().Role)+`"}`+"\n"))
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
	writeJSON(w, http.StatusOK, []byte(`{"status":"alive","instance":"`+s.admin.Instance()+`"}`+"\n"))
}

var storeLimitsNone = store.Limits{}
