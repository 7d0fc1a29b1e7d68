package api

import (
	"encoding/json"
	"net/http"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
)

// maxPeerBody bounds a peer request read into memory (forwards, joins).
const maxPeerBody = 256 << 20

// peer wraps a node-to-node endpoint (cluster.Auth.PeerEndpoint): POST
// only, signature checked over the exact body before anything is decoded.
func (s *Server) peer(h func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	return s.auth.PeerEndpoint(cluster.Endpoint{MaxBody: maxPeerBody, Error: writeError,
		Refused: func(r *http.Request, err error) {
			s.log.Warn("refused peer request", "path", r.URL.Path, "from", r.RemoteAddr, "err", err)
			s.metrics.PeerRefused()
		}}, h)
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
