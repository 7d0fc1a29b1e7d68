package api

import (
	"encoding/json"
	"io"
	"net/http"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
)

// maxPeerBody bounds a peer request read into memory (forwards, joins).
const maxPeerBody = 256 << 20

func (s *Server) verifyPeer(r *http.Request, body []byte) error {
	return s.auth.Verify(r, cluster.BodyHash(body))
}

// peer wraps a node-to-node endpoint: POST only, signature checked over
// the exact body before anything is decoded.
func (s *Server) peer(h func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			writeError(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPeerBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, "peer request too large")
			return
		}
		if err := s.verifyPeer(r, body); err != nil {
			s.log.Warn("refused peer request", "path", r.URL.Path, "from", r.RemoteAddr, "err", err)
			s.metrics.PeerRefused()
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		h(w, r, body)
	}
}

// decodeForward reads a forwarded write (answering 400 when it cannot);
// an ack level it does not know becomes this node's default.
func (s *Server) decodeForward(w http.ResponseWriter, body []byte) (*replication.ForwardRequest, bool) {
	var req replication.ForwardRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad forward: "+err.Error())
		return nil, false
	}
	if !cluster.ValidAck(req.Ack) {
		req.Ack = s.cfg.Ack
	}
	return &req, true
}
