package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/ddbgo/ddb/internal/store"
)

// Backups and loads (rqlite's /db/backup and /db/load, docs/RQLITE.md).

// handleBackup sends a consistent copy of the database from this node,
// taken without stopping writes: a SQLite file, or with ?fmt=sql the SQL
// text that recreates it. X-Ddb-Index says which log index it holds.
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermBackup, http.MethodGet) {
		return
	}
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(30 * time.Minute))
	switch f := r.URL.Query().Get("fmt"); f {
	case "sql":
		// The dump is built in memory first: its index goes in a header,
		// and a failure midway answers an error, not half a dump.
		var buf bytes.Buffer
		index, err := s.st.Dump(r.Context(), &buf)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "dump: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/sql")
		w.Header().Set(IndexHeader, strconv.FormatUint(index, 10))
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		w.Write(buf.Bytes())
	case "", "binary", "db":
		path, index, err := s.st.Snapshot(r.Context(), s.cfg.Dir)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "backup: "+err.Error())
			return
		}
		defer os.Remove(path)
		if err := store.Standalone(path); err != nil {
			writeError(w, http.StatusInternalServerError, "backup: "+err.Error())
			return
		}
		f, err := os.Open(path)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "backup: "+err.Error())
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", `attachment; filename="backup.db"`)
		w.Header().Set(IndexHeader, strconv.FormatUint(index, 10))
		w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
		io.Copy(w, f)
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("fmt=%s: use fmt=sql for SQL text, or leave it out for a SQLite file", f))
	}
}

// handleLoad loads a SQLite file (which replaces the whole database) or
// SQL text (which runs as one write, like a dump read back by SQLite's
// shell) through the log, so that every node gets it. BEGIN, COMMIT and
// PRAGMA foreign_keys statements of a dump are left out: the load is one
// transaction of its own.
func (s *Server) handleLoad(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermLoad, http.MethodPost) {
		return
	}
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(10 * time.Minute))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("could not read the body (at most %d bytes, see -max-body): %v", s.cfg.MaxBodyBytes, err))
		return
	}
	req, err := store.LoadRequest(body, s.cfg.Dir)
	var pe *store.ParamError
	switch {
	case errors.Is(err, store.ErrNothingToLoad), errors.As(err, &pe):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout+s.cfg.AckTimeout)
	defer cancel()
	req.Ctx = ctx
	req.Limits = store.Limits{MaxSteps: s.limits().MaxSteps}
	out, err := s.repl.Write(ctx, req, s.cfg.Ack)
	if err == nil {
		err = out.Err
	}
	if err != nil {
		status, msg := s.statusOf(s.deadline(ctx, err))
		if status == http.StatusBadRequest || status == http.StatusForbidden {
			msg = "load refused, nothing changed: " + msg
		}
		writeError(w, status, msg)
		return
	}
	s.metrics.Write()
	w.Header().Set(IndexHeader, strconv.FormatUint(out.Index, 10))
	writeJSON(w, http.StatusOK, fmt.Appendf(nil, `{"results":[{}],"raft_index":%d}`+"\n", out.Index))
}
