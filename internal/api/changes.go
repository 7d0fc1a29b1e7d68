package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// The change stream (GET /db/changes, docs/CHANGES.md): every row change
// each log entry made, from an index on, as JSON lines or server-sent
// events, following the log live until the client goes.

// PermChanges lets a user read the change stream (so does PermQuery: the
// stream holds what a query could read).
const PermChanges = "changes"

// changesBatch is how many entries one read of the stream's table takes.
const changesBatch = 256

// changesHeartbeat is how often a stream with nothing to send says so:
// a line (or an SSE comment) that keeps proxies from closing it and lets
// either side see a dead connection.
const changesHeartbeat = 5 * time.Second

// ChangesFilter selects what a stream carries.
type ChangesFilter struct {
	// Tables are names or glob patterns (path.Match: * and ?); none: all.
	Tables []string
	// KeysOnly: an event's before and after hold its key's columns only.
	KeysOnly bool
}

// match reports whether the filter takes changes of table. Schema changes
// and loads are always taken: they concern every table.
func (f ChangesFilter) match(table string) bool {
	if len(f.Tables) == 0 || table == "" {
		return true
	}
	for _, p := range f.Tables {
		if ok, _ := path.Match(p, table); ok || strings.EqualFold(p, table) {
			return true
		}
	}
	return false
}

func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, "use GET")
		return
	}
	if s.users != nil {
		perms, status, msg := s.users.check(w, r, "")
		if status == 0 && !has(perms, PermChanges) && !has(perms, PermQuery) {
			if _, _, authenticated := r.BasicAuth(); !authenticated {
				w.Header().Set("WWW-Authenticate", `Basic realm="ddb"`)
				status, msg = http.StatusUnauthorized, `authentication required: anonymous requests lack the "changes" (or "query") permission`
			} else {
				status, msg = http.StatusForbidden, `permission "changes" (or "query") required`
			}
		}
		if status != 0 {
			writeError(w, status, msg)
			return
		}
	}
	if err := s.repl.Serving(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	q := r.URL.Query()
	var f ChangesFilter
	for _, t := range q["tables"] {
		for _, p := range strings.Split(t, ",") {
			if p = strings.TrimSpace(p); p != "" {
				if _, err := path.Match(p, ""); err != nil {
					writeError(w, http.StatusBadRequest, fmt.Sprintf("tables: %q is not a valid pattern: %v", p, err))
					return
				}
				f.Tables = append(f.Tables, p)
			}
		}
	}
	var err error
	if f.KeysOnly, err = boolParam(q, "keys_only"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	follow := true
	if q.Has("follow") {
		if follow, err = boolParam(q, "follow"); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	sse := strings.Contains(r.Header.Get("Accept"), "text/event-stream")
	since := s.st.Applied() + 1 // from now on
	switch v := q.Get("since"); {
	case v == "oldest":
		cs, err := s.st.ChangeSetting(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, "read the change stream's setting: "+err.Error())
			return
		}
		since = max(cs.Oldest, 1)
	case v != "":
		if since, err = strconv.ParseUint(v, 10, 64); err != nil || since == 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("since=%s: give the first log index to send (1 or more), or oldest", v))
			return
		}
	case r.Header.Get("Last-Event-ID") != "":
		// An EventSource reconnecting: on from the event after its last.
		last, err := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Last-Event-ID must be a log index")
			return
		}
		since = last + 1
	}
	entries, next, err := s.st.Changes(r.Context(), since, changesBatch)
	var gone *store.ChangesGoneError
	switch {
	case errors.Is(err, store.ErrChangesOff):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case errors.As(err, &gone):
		b := append([]byte(`{"error":`), appendString(nil, err.Error())...)
		b = append(b, `,"oldest":`...)
		b = strconv.AppendUint(b, gone.Oldest, 10)
		writeJSON(w, http.StatusGone, append(b, "}\n"...))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "read the change stream: "+err.Error())
		return
	}
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{}) // a stream lasts as long as the client reads it
	// It ends when the client goes or the node stops.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	if sse {
		w.Header().Set("Content-Type", "text/event-stream")
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(IndexHeader, strconv.FormatUint(next-1, 10))
	w.WriteHeader(http.StatusOK)
	var buf []byte
	for {
		buf = buf[:0]
		for _, e := range entries {
			buf = appendChangeEntry(buf, e, f, sse)
		}
		if len(buf) > 0 {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
		rc.Flush()
		if next <= s.st.Applied() {
			since = next // more are there already
		} else {
			if !follow {
				return
			}
			since = next
			for {
				err := s.repl.WaitApplied(ctx, since, changesHeartbeat)
				if ctx.Err() != nil {
					return
				}
				if err == nil {
					break
				}
				if s.repl.SinceLeaderContact() > changesHeartbeat {
					// Cut off from the leader, this node's stream stalls:
					// it ends, and the client goes on at another node.
					return
				}
				if sse {
					buf = append(buf[:0], ": waiting for index "...)
					buf = append(strconv.AppendUint(buf, since, 10), "\n\n"...)
				} else {
					buf = append(buf[:0], `{"heartbeat":true,"next":`...)
					buf = append(strconv.AppendUint(buf, since, 10), "}\n"...)
				}
				if _, err := w.Write(buf); err != nil {
					return
				}
				rc.Flush()
			}
		}
		entries, next, err = s.st.Changes(ctx, since, changesBatch)
		if err != nil {
			// The stream was turned off, or its start left the retention
			// while the client was behind: it ends, and the client's next
			// request says which.
			if ctx.Err() == nil {
				s.log.Warn("a change stream ended", "since", since, "err", err)
			}
			return
		}
	}
}

func boolParam(q map[string][]string, name string) (bool, error) {
	v, ok := q[name]
	if !ok {
		return false, nil
	}
	if len(v) == 0 || v[0] == "" {
		return true, nil // ?keys_only
	}
	b, err := strconv.ParseBool(v[0])
	if err != nil {
		return false, fmt.Errorf("%s=%s: use true or false", name, v[0])
	}
	return b, nil
}

// appendChangeEntry writes one entry's events that the filter takes (an
// entry none of whose events it takes is left out): a JSON line, or a
// server-sent event whose id is the index.
func appendChangeEntry(b []byte, e store.ChangeEntry, f ChangesFilter, sse bool) []byte {
	start := len(b)
	if sse {
		b = append(b, "id: "...)
		b = strconv.AppendUint(b, e.Index, 10)
		b = append(b, "\nevent: change\ndata: "...)
	}
	b = append(b, `{"index":`...)
	b = strconv.AppendUint(b, e.Index, 10)
	b = append(b, `,"time":"`...)
	b = time.UnixMilli(e.TimeMs).UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","time_ms":`...)
	b = strconv.AppendInt(b, e.TimeMs, 10)
	b = append(b, `,"events":[`...)
	n := 0
	for _, c := range e.Changes {
		if !f.match(c.Table) {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendChange(b, c, f.KeysOnly)
	}
	if n == 0 {
		return b[:start]
	}
	b = append(b, "]}"...)
	if sse {
		return append(b, "\n\n"...)
	}
	return append(b, '\n')
}

// appendChange writes one event: op, table, key, before and after (or a
// schema change's SQL), values in their exact types (as the "typed"
// query format has them).
func appendChange(b []byte, c store.Change, keysOnly bool) []byte {
	b = append(b, `{"op":`...)
	b = appendString(b, c.Op)
	switch c.Op {
	case "schema":
		b = append(b, `,"sql":`...)
		return append(appendString(b, c.SQL), '}')
	case "load":
		return append(b, '}')
	}
	b = append(b, `,"table":`...)
	b = appendString(b, c.Table)
	row, id := c.After, c.NewRowID
	if c.Op == "delete" {
		row, id = c.Before, c.OldRowID
	}
	b = append(b, `,"key":`...)
	b = appendKey(b, c, row, id)
	if c.Op == "update" && !sameKey(c) {
		b = append(b, `,"old_key":`...)
		b = appendKey(b, c, c.Before, c.OldRowID)
	}
	if c.Before != nil {
		b = append(b, `,"before":`...)
		b = appendRow(b, c, c.Before, keysOnly)
	}
	if c.After != nil {
		b = append(b, `,"after":`...)
		b = appendRow(b, c, c.After, keysOnly)
	}
	return append(b, '}')
}

// appendKey writes a row's key: its primary key's columns, or its rowid.
func appendKey(b []byte, c store.Change, row []any, rowid *int64) []byte {
	if len(c.KeyColumns) == 0 {
		if rowid == nil {
			return append(b, "null"...)
		}
		b = append(b, `{"rowid":`...)
		return append(strconv.AppendInt(b, *rowid, 10), '}')
	}
	return appendColumns(b, c.Columns, row, c.KeyColumns)
}

// appendColumns writes an object of the columns at positions (all of
// them when positions is nil) with their values in row.
func appendColumns(b []byte, cols []string, row []any, positions []int) []byte {
	b = append(b, '{')
	n := len(positions)
	if positions == nil {
		n = len(cols)
	}
	for i := range n {
		p := i
		if positions != nil {
			p = positions[i]
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(appendString(b, cols[p]), ':')
		b = appendTypedValue(b, row[p])
	}
	return append(b, '}')
}

func sameKey(c store.Change) bool {
	if len(c.KeyColumns) == 0 {
		return c.OldRowID == nil || c.NewRowID == nil || *c.OldRowID == *c.NewRowID
	}
	for _, p := range c.KeyColumns {
		x, _ := rlog.EncodeValue(c.Before[p])
		y, _ := rlog.EncodeValue(c.After[p])
		if string(x) != string(y) {
			return false
		}
	}
	return true
}

// appendRow writes a row as an object of its columns (keysOnly: its key's).
func appendRow(b []byte, c store.Change, row []any, keysOnly bool) []byte {
	if !keysOnly {
		return appendColumns(b, c.Columns, row, nil)
	}
	if len(c.KeyColumns) == 0 {
		return append(b, "{}"...)
	}
	return appendColumns(b, c.Columns, row, c.KeyColumns)
}
