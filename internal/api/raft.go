package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
)

func (s *Server) handleForward(w http.ResponseWriter, r *http.Request, body []byte) {
	req, ok := s.decodeForward(w, body)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout+s.cfg.AckTimeout)
	defer cancel()
	b, _ := json.Marshal(s.admin.HandleForward(ctx, req))
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request, body []byte) {
	var req replication.JoinRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad join: "+err.Error())
		return
	}
	resp, err := s.admin.HandleJoin(r.Context(), &req)
	if err != nil {
		var refused *replication.JoinRefusedError
		if errors.As(err, &refused) {
			writeError(w, http.StatusConflict, refused.Reason)
			return
		}
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	b, _ := json.Marshal(resp)
	writeJSON(w, http.StatusOK, b)
}

// readID reads {"id": N} from a membership request.
func readID(w http.ResponseWriter, r *http.Request, what string) (uint64, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, `use POST with {"id": N}`)
		return 0, false
	}
	var id *int
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err == nil {
		var req map[string]json.RawMessage
		if req, err = decodeObject(body); err == nil && req["id"] != nil {
			err = json.Unmarshal(req["id"], &id)
		}
	}
	if err != nil || id == nil || *id < 0 {
		writeError(w, http.StatusBadRequest, `send {"id": N}, the id of the node `+what+` (0: the master, i: slave i)`)
		return 0, false
	}
	return cluster.RaftID(*id), true
}

// handleTransfer hands leadership to another voter by hand (POST {"id": N}
// to the leader). With a users file it needs the "remove" permission,
// which covers membership and leadership changes.
func (s *Server) handleTransfer(w http.ResponseWriter, r *http.Request) {
	if s.users != nil {
		if _, status, msg := s.users.check(w, r, PermRemove); status != 0 {
			writeError(w, status, msg)
			return
		}
	}
	id, ok := readID(w, r, "to hand leadership to")
	if !ok {
		return
	}
	if !s.repl.IsLeader() {
		writeError(w, http.StatusForbidden, "leadership is handed over by the leader: send this request to "+s.repl.LeaderURL())
		return
	}
	if err := s.admin.TransferLeadership(r.Context(), id); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"status":"success"}`+"\n"))
}

// indexRequest reads a peer's {"index": N}; a body that is not one is
// answered 400 here (ok false).
func indexRequest(w http.ResponseWriter, body []byte) (index uint64, ok bool) {
	var req struct {
		Index uint64 `json:"index"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request: "+err.Error())
		return 0, false
	}
	return req.Index, true
}

// handleApplied answers the leader's question for ack=all: has this node
// applied {"index": N}? It waits up to -ack-timeout.
func (s *Server) handleApplied(w http.ResponseWriter, r *http.Request, body []byte) {
	index, ok := indexRequest(w, body)
	if !ok {
		return
	}
	if err := s.repl.WaitApplied(r.Context(), index, s.cfg.AckTimeout); err != nil {
		writeError(w, http.StatusGatewayTimeout, err.Error())
		return
	}
	b, _ := json.Marshal(map[string]uint64{"applied": s.st.Applied()})
	writeJSON(w, http.StatusOK, b)
}

// handleDigest answers another node's request for this node's digest as
// of an index (a consistency check), once this node has applied the index
// and computed it (within the request's deadline: 504 past it).
func (s *Server) handleDigest(w http.ResponseWriter, r *http.Request, body []byte) {
	index, ok := indexRequest(w, body)
	if !ok {
		return
	}
	for {
		if d, ok := s.st.DigestAt(index); ok {
			b, _ := json.Marshal(d)
			writeJSON(w, http.StatusOK, b)
			return
		}
		if !s.st.DigestExpected(index) {
			// Past it without a digest: this node installed a snapshot
			// over the index, or restarted meanwhile.
			writeError(w, http.StatusNotFound, fmt.Sprintf("this node has no digest as of index %d (it is at %d, and did not apply that entry itself: it installed a snapshot over it, or restarted)", index, s.st.Applied()))
			return
		}
		select {
		case <-r.Context().Done():
			writeError(w, http.StatusGatewayTimeout, fmt.Sprintf("no digest as of index %d yet (this node is at %d)", index, s.st.Applied()))
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// countRefused counts the requests h refuses for their signature (403).
func (s *Server) countRefused(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r)
		if sw.status == http.StatusForbidden {
			s.metrics.PeerRefused()
		}
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// copyPath is the peer endpoint that answers with a copy of the leader's
// database: a follower whose data a consistency check found different from
// the leader's replaces its own with it (consensus: repair).
const copyPath = "/_ddb/copy"

// Headers of a copy: its applied index, its SHA-256 (hex), and their MAC
// (cluster.Auth.CopyMAC), which the requester checks.
const (
	headerCopyIndex  = "X-Ddb-Copy-Index"
	headerCopySHA256 = "X-Ddb-Copy-Sha256"
	headerCopyMAC    = "X-Ddb-Copy-Mac"
)

func (s *Server) handleCopy(w http.ResponseWriter, r *http.Request, _ []byte) {
	if !s.repl.IsLeader() {
		writeError(w, http.StatusServiceUnavailable, "this node does not lead: ask the leader for its copy")
		return
	}
	path, index, err := s.st.Snapshot(r.Context(), s.cfg.Dir)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "copy the database: "+err.Error())
		return
	}
	defer os.Remove(path)
	f, size, sum, err := cluster.OpenHashed(path)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	defer f.Close()
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(6 * time.Hour))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set(headerCopyIndex, strconv.FormatUint(index, 10))
	w.Header().Set(headerCopySHA256, sum)
	w.Header().Set(headerCopyMAC, s.auth.CopyMAC(r, index, sum))
	io.Copy(w, f)
}
