package api

import (
	"context"
	_ "embed"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/replication"
)

// The web console: GET / from a browser (Accept: text/html) answers one
// embedded page that loads nothing from elsewhere; POST / stays the API.
// The page polls GET /console/cluster, and runs SQL through
// POST /db/request, with the browser's own credentials.

//go:embed console.html
var consoleHTML []byte

// wantsConsole: a browser asks for the page.
func wantsConsole(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Path == "/" && strings.Contains(r.Header.Get("Accept"), "text/html")
}

func (s *Server) handleConsole(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermStatus, http.MethodGet) {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
	w.Write(consoleHTML)
}

// consoleNode is one node as the console shows it.
type consoleNode struct {
	ID        int              `json:"id"`
	URL       string           `json:"url"`
	Voter     bool             `json:"voter"`
	Reachable bool             `json:"reachable"`
	Role      replication.Role `json:"role"`
	Applied   uint64           `json:"applied_index"`
	Commit    uint64           `json:"commit_index"`
	Term      uint64           `json:"term"`
	Lag       uint64           `json:"lag"`
	Error     string           `json:"error,omitempty"`
	// Progress: the node's long operations under way (loads, backups,
	// snapshots).
	Progress []progress.Status `json:"progress,omitempty"`
}

// handleConsoleCluster asks every node of the configuration for its status
// (a signed node-to-node request, so it needs no user's credentials) and
// answers them together: role, applied and commit index, lag behind the
// highest commit index seen, reachability from this node.
func (s *Server) handleConsoleCluster(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermStatus, http.MethodGet) {
		return
	}
	members := s.admin.Members()
	nodes := make([]consoleNode, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		nodes[i] = consoleNode{ID: m.ID, URL: m.URL, Voter: m.Voter}
		wg.Add(1)
		go func(n *consoleNode, m replication.Member) {
			defer wg.Done()
			var st peer.NodeStatus
			var err error
			switch {
			case m.ID == s.cfg.ID:
				st = peer.NodeStatus{Status: s.admin.Status(), Progress: s.progress.UnderWay()}
			case m.URL == "":
				err = errUnknownAddress
			default:
				ctx, cancel := context.WithTimeout(r.Context(), time.Second)
				st, err = s.tr.Status(ctx, m.URL)
				cancel()
			}
			if err != nil {
				n.Error = err.Error()
				return
			}
			n.Reachable, n.Role, n.Applied, n.Commit, n.Term, n.Progress = true, st.Role, st.Applied, st.Commit, st.Term, st.Progress
		}(&nodes[i], m)
	}
	wg.Wait()
	var commit uint64
	leader := -1
	for _, n := range nodes {
		commit = max(commit, n.Commit)
		if n.Role == replication.RoleLeader {
			leader = n.ID
		}
	}
	for i := range nodes {
		if nodes[i].Reachable && commit > nodes[i].Applied {
			nodes[i].Lag = commit - nodes[i].Applied
		}
	}
	writeValue(w, http.StatusOK, map[string]any{"self": s.cfg.ID, "leader": leader, "commit_index": commit, "nodes": nodes, "missing_voters": s.admin.MissingVoters(), "consistency": s.admin.Consistency(), "time": time.Now().UnixMilli()})
}

// errUnknownAddress: a member this node has no URL for yet.
var errUnknownAddress = errors.New("its address is not known here yet")
