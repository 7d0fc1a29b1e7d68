package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"ddb/internal/cluster"
	"ddb/internal/replication"
)

// maxPeerBody bounds a peer request read into memory (appends, forwards).
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
			s.logf("refused peer request %s from %s: %v", r.URL.Path, r.RemoteAddr, err)
			s.metrics.PeerRefused()
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		h(w, r, body)
	}
}

func (s *Server) handleAppend(w http.ResponseWriter, r *http.Request, body []byte) {
	if s.slave == nil {
		writeError(w, http.StatusConflict, "this node is the master; it does not take appends")
		return
	}
	req, err := replication.DecodeAppend(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad append: "+err.Error())
		return
	}
	b, _ := json.Marshal(s.slave.HandleAppend(req))
	writeJSON(w, http.StatusOK, b)
}

// handleSnapshot streams the body to a file while hashing it; the
// signature is checked over that hash before the snapshot is installed.
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	if s.slave == nil {
		writeError(w, http.StatusConflict, "this node is the master; it does not take snapshots")
		return
	}
	if !cluster.Signed(r) {
		writeError(w, http.StatusForbidden, cluster.ErrNoSignature.Error())
		return
	}
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(30 * time.Minute))
	rc.SetWriteDeadline(time.Now().Add(30 * time.Minute))
	index, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "snapshot needs ?index=N")
		return
	}
	h := sha256.New()
	tmp, err := spool(io.TeeReader(r.Body, h), s.cfg.Dir)
	if err != nil {
		writeError(w, http.StatusBadRequest, "receive snapshot: "+err.Error())
		return
	}
	defer tmp.close()
	if err := s.auth.Verify(r, h.Sum(nil)); err != nil {
		s.logf("refused snapshot from %s: %v", r.RemoteAddr, err)
		s.metrics.PeerRefused()
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	resp, err := s.slave.HandleSnapshot(index, tmp.f)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("install snapshot: %v", err))
		return
	}
	b, _ := json.Marshal(resp)
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) handleForward(w http.ResponseWriter, r *http.Request, body []byte) {
	if s.master == nil {
		writeError(w, http.StatusConflict, "this node is not the master; forward writes to "+s.masterURL)
		return
	}
	req, ok := s.decodeForward(w, body)
	if !ok {
		return
	}
	// The same deadline as for the master's own clients' SQL.
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	b, _ := json.Marshal(s.master.HandleForward(ctx, req))
	writeJSON(w, http.StatusOK, b)
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

func (s *Server) handleReadIndex(w http.ResponseWriter, r *http.Request, body []byte) {
	if s.master == nil {
		writeError(w, http.StatusConflict, "this node is not the master")
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"index":`+strconv.FormatUint(s.master.HandleReadIndex(), 10)+"}"))
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request, body []byte) {
	if s.master == nil {
		writeError(w, http.StatusServiceUnavailable, "this node is not the master")
		return
	}
	var req replication.JoinRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad join: "+err.Error())
		return
	}
	if err := s.master.HandleJoin(&req); err != nil {
		var inUse *replication.IDInUseError
		if errors.As(err, &inUse) {
			writeError(w, http.StatusConflict, err.Error())
			return
		}
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{}`))
}
