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

	"github.com/ddbgo/ddb/internal/replication"
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
		path, index, err := s.st.Snapshot(r.Context(), s.cfg.WorkDir())
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
		op := s.progress.Start("backup", "to "+r.RemoteAddr, "bytes", st.Size())
		_, err = io.Copy(w, op.Reader(f))
		op.End(err)
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("fmt=%s: use fmt=sql for SQL text, or leave it out for a SQLite file", f))
	}
}

// handleLoad loads a SQLite file (which replaces the whole database) or
// SQL text (which runs as it is, like a dump read back by SQLite's shell)
// through the log, so that every node gets it: in chunks small enough for
// one entry each, then one entry that runs them all, so the load is all or
// nothing, at one index (replication.Load). BEGIN, COMMIT and PRAGMA
// foreign_keys statements of a dump are left out: the load is one
// transaction of its own. Everything that can be checked before anything
// enters the log is: the body's size, a damaged file, a statement too
// long for one entry. ?request_id= makes the load idempotent like a write.
func (s *Server) handleLoad(w http.ResponseWriter, r *http.Request) {
	if !s.guard(w, r, PermLoad, http.MethodPost) {
		return
	}
	var rq Request
	if err := rq.setRequestID(r.URL.Query().Get("request_id")); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(30 * time.Minute))
	recv := s.progress.Start("load-body", "from "+r.RemoteAddr, "bytes", r.ContentLength)
	body, err := store.WriteTemp(recv.Reader(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)), s.cfg.WorkDir(), "load-body-*")
	recv.End(err)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes (-max-body); nothing was loaded", s.cfg.MaxBodyBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "could not read the body; nothing was loaded: "+err.Error())
		return
	}
	plan, err := store.PlanLoad(body, s.cfg.WorkDir())
	os.Remove(body)
	if err != nil {
		var pe *store.ParamError
		var tl *store.EntryTooLargeError
		switch {
		case errors.As(err, &tl):
			writeError(w, http.StatusRequestEntityTooLarge, "load refused, nothing changed: "+err.Error())
		case errors.Is(err, store.ErrNothingToLoad), errors.As(err, &pe):
			writeError(w, http.StatusBadRequest, "load refused, nothing changed: "+err.Error())
		default:
			writeError(w, http.StatusInternalServerError, err.Error())
		}
		return
	}
	defer plan.Close()
	rc.SetWriteDeadline(time.Now().Add(replication.LoadTimeout(plan.Bytes) + time.Minute))
	ctx, cancel := context.WithTimeout(r.Context(), replication.LoadTimeout(plan.Bytes))
	defer cancel()
	op := s.progress.Start("load", "from "+r.RemoteAddr, "chunks", int64(plan.Chunks())+1)
	out, err := replication.Load(ctx, s.repl, plan, rq.RequestID, false, s.cfg.Ack, s.limits(), op)
	op.End(err)
	if err != nil {
		wire := s.describe(s.deadline(ctx, err))
		if wire.status == http.StatusBadRequest || wire.status == http.StatusForbidden || wire.status == http.StatusConflict {
			wire.msg = "load refused, nothing changed: " + wire.msg
		}
		writeJSON(w, wire.status, wire.body())
		return
	}
	s.metrics.Write()
	w.Header().Set(IndexHeader, strconv.FormatUint(out.Index, 10))
	writeJSON(w, http.StatusOK, fmt.Appendf(nil, `{"results":[{}],"raft_index":%d}`+"\n", out.Index))
}
