package api

import (
	"encoding/json"
	"io"
	"net/http"

	"github.com/ddbgo/ddb/internal/cluster"
)

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
