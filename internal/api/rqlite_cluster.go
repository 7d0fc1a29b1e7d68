package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
)

// rqlite's cluster API (docs/RQLITE.md): /nodes, /readyz, /leader, and
// rqlite's fields in /status.

// rqNodeID is a node's id as rqlite's API spells it: a string, the
// command line's id (0: the master, i: slave i).
func rqNodeID(id int) string { return strconv.Itoa(id) }

// hostOf is a URL's host:port (rqlite's "addr").
func hostOf(u string) string {
	if p, err := url.Parse(u); err == nil && p.Host != "" {
		return p.Host
	}
	return u
}

// rqStatus is rqlite's part of /status, beside this project's fields.
func (s *Server) rqStatus(es replication.Status) map[string]any {
	leader := map[string]any{"addr": "", "node_id": ""}
	if es.LeaderID != nil {
		leader = map[string]any{"addr": hostOf(es.LeaderURL), "node_id": rqNodeID(*es.LeaderID)}
	}
	// No "metadata" map of API addresses: without it rqlite's clients ask
	// /nodes, and so learn every reachable node, not only the leader,
	// which lets them go on when the leader dies.
	var nodes []map[string]any
	for _, m := range s.admin.Members() {
		if m.URL == "" {
			continue
		}
		nodes = append(nodes, map[string]any{"id": rqNodeID(m.ID), "addr": hostOf(m.URL), "suffrage": map[bool]string{true: "Voter", false: "Nonvoter"}[m.Voter]})
	}
	auth := "disabled"
	if s.users != nil {
		auth = "enabled"
	}
	return map[string]any{
		"store": map[string]any{
			"node_id": rqNodeID(es.ID),
			"addr":    hostOf(s.cfg.URL()),
			"leader":  leader,
			"nodes":   nodes,
			"dir":     s.cfg.Dir,
			"raft": map[string]any{
				"state":         rqState(es.Role),
				"term":          es.Term,
				"commit_index":  es.Commit,
				"applied_index": es.Applied,
				"voter":         es.Role != replication.RoleLearner,
			},
		},
		"http": map[string]any{"bind_addr": s.cfg.ListenAddr(), "auth": auth},
		"node": map[string]any{"start_time": s.started.UTC().Format(time.RFC3339Nano), "uptime": time.Since(s.started).String()},
	}
}

// rqState is rqlite's spelling of a Raft role.
func rqState(role replication.Role) string {
	switch role {
	case replication.RoleLeader:
		return "Leader"
	case replication.RoleCandidate:
		return "Candidate"
	}
	return "Follower"
}

// selectKey narrows a status document to the sub-object a dotted key
// names (rqlite's ?key=store.raft).
func selectKey(doc map[string]any, key string) (any, bool) {
	b, _ := json.Marshal(doc)
	var v any
	json.Unmarshal(b, &v)
	for _, part := range strings.Split(key, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[part]; !ok {
			return nil, false
		}
	}
	return v, true
}

// rqNode is one node in /nodes.
type rqNode struct {
	ID        string  `json:"id"`
	APIAddr   string  `json:"api_addr"`
	Addr      string  `json:"addr"`
	Voter     bool    `json:"voter"`
	Reachable bool    `json:"reachable"`
	Leader    bool    `json:"leader"`
	Time      float64 `json:"time"`
	TimeS     string  `json:"time_s"`
	Error     string  `json:"error,omitempty"`
}

// handleNodes lists the cluster's nodes, each checked from here: a node is
// reachable when it answers its liveness check within the timeout (?timeout,
// 5 s by default). Learners are listed with ?nonvoters; ?ver=2 gives a list
// instead of rqlite's legacy map keyed by id.
func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermStatus, http.MethodGet) {
		return
	}
	flags, err := parseRqFlags(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	timeout := flags.timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	_, nonvoters := r.URL.Query()["nonvoters"]
	var members []replication.Member
	for _, m := range s.admin.Members() {
		if m.Voter || nonvoters {
			members = append(members, m)
		}
	}
	nodes := make([]rqNode, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		nodes[i] = rqNode{ID: rqNodeID(m.ID), APIAddr: m.URL, Addr: hostOf(m.URL), Voter: m.Voter, Leader: m.Leader}
		wg.Add(1)
		go func(n *rqNode, m replication.Member) {
			defer wg.Done()
			start := time.Now()
			err := s.probe(r.Context(), m, timeout)
			d := time.Since(start)
			n.Time, n.TimeS = d.Seconds(), d.String()
			if err != nil {
				n.Error = err.Error()
				return
			}
			n.Reachable = true
		}(&nodes[i], m)
	}
	wg.Wait()
	if r.URL.Query().Get("ver") == "2" {
		writeValue(w, http.StatusOK, map[string]any{"nodes": nodes})
		return
	}
	legacy := make(map[string]rqNode, len(nodes))
	for _, n := range nodes {
		legacy[n.ID] = n
	}
	writeValue(w, http.StatusOK, legacy)
}

// probe checks that node m answers (this node answers for itself).
func (s *Server) probe(ctx context.Context, m replication.Member, timeout time.Duration) error {
	if m.ID == s.cfg.ID {
		return nil
	}
	if m.URL == "" {
		return errUnknownAddress
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.URL+"/livez", nil)
	if err != nil {
		return err
	}
	resp, err := s.tr.HTTP().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("it answered %s", resp.Status)
	}
	return nil
}

// handleReadyz is rqlite's readiness check: 200 when this node can read its
// database and a leader is known (?noleader leaves the leader out).
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.users != nil {
		if _, status, msg := s.users.check(w, r, PermReady); status != 0 {
			writeError(w, status, msg)
			return
		}
	}
	_, noLeader := r.URL.Query()["noleader"]
	lines := []string{"[+]node ok"}
	ok := true
	if !noLeader {
		if why := s.admin.Ready(); why == "" {
			lines = append(lines, "[+]leader ok")
		} else {
			lines = append(lines, "[-]leader not ok: "+why)
			ok = false
		}
	}
	if m := s.admin.MissingVoters(); len(m) > 0 {
		// Reported, not failed: the node serves; the cluster tolerates
		// fewer failures than its command line says.
		lines = append(lines, fmt.Sprintf("[!]voters missing from the configuration: %v", m))
	}
	if _, err := s.st.Read(r.Context(), nil, storeLimitsNone); err == nil {
		lines = append(lines, "[+]store ok")
	} else {
		lines = append(lines, "[-]store not ok")
		ok = false
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	io.WriteString(w, strings.Join(lines, "\n")+"\n")
}

// handleLeader: GET describes the leader; POST (to the leader) hands
// leadership to another voter, {"id": "N"} or the most caught-up one.
func (s *Server) handleLeader(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		if s.users != nil {
			if _, status, msg := s.users.check(w, r, PermStatus); status != 0 {
				writeError(w, status, msg)
				return
			}
		}
		for _, m := range s.admin.Members() {
			if m.Leader {
				writeValue(w, http.StatusOK, map[string]any{"leader": rqNode{ID: rqNodeID(m.ID), APIAddr: m.URL, Addr: hostOf(m.URL), Voter: m.Voter, Leader: true, Reachable: true}})
				return
			}
		}
		writeError(w, http.StatusServiceUnavailable, "no leader is known: an election is under way, or a majority of the voters cannot be reached")
	case http.MethodPost:
		if s.users != nil {
			if _, status, msg := s.users.check(w, r, PermLeaderOps); status != 0 {
				writeError(w, status, msg)
				return
			}
		}
		var rawID json.RawMessage // the node's id, as a number or a string
		body, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
		if len(strings.TrimSpace(string(body))) > 0 {
			fields, err := decodeObject(body)
			if err != nil {
				writeError(w, http.StatusBadRequest, `send {"id": "N"} (the node to hand leadership to), or nothing`)
				return
			}
			rawID = fields["id"]
		}
		if !s.repl.IsLeader() {
			writeError(w, http.StatusForbidden, "leadership is handed over by the leader: send this request to "+s.repl.LeaderURL())
			return
		}
		target := -1
		if len(rawID) > 0 {
			var str string
			if json.Unmarshal(rawID, &str) != nil {
				str = string(rawID)
			}
			id, err := strconv.Atoi(str)
			if err != nil || id < 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("node id %s is not a node of this cluster", rawID))
				return
			}
			target = id
		} else {
			var best uint64
			self := s.admin.Status()
			for _, n := range self.Nodes {
				if n.ID != self.ID && n.Voter && n.Reachable && (target < 0 || n.Match > best) {
					target, best = n.ID, n.Match
				}
			}
			if target < 0 {
				writeError(w, http.StatusServiceUnavailable, "no other voter can take over now")
				return
			}
		}
		if err := s.admin.TransferLeadership(r.Context(), cluster.RaftID(target)); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, []byte(`{"status":"success"}`+"\n"))
	default:
		w.Header().Set("Allow", "GET, POST")
		writeError(w, http.StatusMethodNotAllowed, "use GET or POST")
	}
}
