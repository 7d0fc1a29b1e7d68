package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"

	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// appendValue writes one SQLite value as JSON: integers and reals as
// numbers, text as strings, blobs as base64 strings, NULL as null.
func appendValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			if x > 0 {
				return append(b, `"Infinity"`...)
			} else if x < 0 {
				return append(b, `"-Infinity"`...)
			}
			return append(b, "null"...)
		}
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return strconv.AppendFloat(b, x, 'f', 1, 64)
		}
		return strconv.AppendFloat(b, x, 'g', -1, 64)
	case string:
		return appendString(b, x)
	case []byte:
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, x)
		return append(b, '"')
	}
	j, _ := json.Marshal(v)
	return append(b, j...)
}

func appendString(b []byte, s string) []byte {
	j, _ := json.Marshal(s)
	return append(b, j...)
}

// appendRows writes a result in the requested format. objects: an array of
// row objects with keys in column order (a repeated name keeps its last
// value, as the original did); columns: names, declared types and rows as
// arrays, which keeps order and duplicates.
func appendRows(b []byte, r store.Result, format string) []byte {
	if format == "columns" {
		b = append(b, `{"columns":[`...)
		for i, c := range r.Columns {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, c)
		}
		b = append(b, `],"types":[`...)
		for i, t := range r.Types {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, t)
		}
		b = append(b, `],"rows":[`...)
		for i, row := range r.Rows {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			for j, v := range row {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendValue(b, v)
			}
			b = append(b, ']')
		}
		return append(b, "]}"...)
	}
	// Each name once, at its first place, with its last value.
	type field struct {
		key  []byte
		from int
	}
	var fields []field
	at := map[string]int{}
	for i, c := range r.Columns {
		if k, ok := at[c]; ok {
			fields[k].from = i
			continue
		}
		at[c] = len(fields)
		fields = append(fields, field{key: appendString(nil, c), from: i})
	}
	b = append(b, '[')
	for i, row := range r.Rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		for j, f := range fields {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, f.key...)
			b = append(b, ':')
			b = appendValue(b, row[f.from])
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	b := append([]byte(`{"error":`), appendString(nil, msg)...)
	b = append(b, "}\n"...)
	writeJSON(w, status, b)
}

func writeValue(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.Encode(v)
	writeJSON(w, status, buf.Bytes())
}

// statusOf maps an error to the HTTP status and message a client sees.
func (s *Server) statusOf(err error) (int, string) {
	var (
		br *BadRequest
		fe *store.ForbiddenError
		sd *store.SchemaDeniedError
		se *store.SQLError
		pe *store.ParamError
		tl *store.ResultTooLargeError
		at *replication.AckTimeoutError
		wt *replication.WaitTimeoutError
		uo *replication.UnknownOutcomeError
		pm *permissionError
	)
	switch {
	case errors.As(err, &br):
		return http.StatusBadRequest, br.Msg
	case errors.As(err, &fe):
		return http.StatusForbidden, fe.Reason
	case errors.As(err, &pm) && pm.anonymous:
		return http.StatusUnauthorized, "authentication required: anonymous requests lack the \"" + pm.perm + "\" permission"
	case errors.As(err, &pm):
		return http.StatusForbidden, pm.Error()
	case errors.As(err, &sd) && s.isLeader():
		return http.StatusForbidden, "your user lacks the \"schema\" permission that schema changes need"
	case errors.As(err, &sd) && s.repl.LeaderURL() == "":
		return http.StatusServiceUnavailable, "schema changes run only on the leader, and no leader is known: an election is under way, or a majority of the voters cannot be reached; retry shortly"
	case errors.As(err, &sd):
		return http.StatusForbidden, "schema changes (CREATE, DROP, ALTER of tables, indexes, views, triggers) run only on the leader (normally the master): send this request to " + s.repl.LeaderURL()
	case errors.As(err, &se):
		return http.StatusBadRequest, se.Error()
	case errors.As(err, &pe):
		return http.StatusBadRequest, pe.Msg
	case errors.As(err, &tl):
		return http.StatusBadRequest, tl.Error()
	case errors.As(err, &at):
		return http.StatusGatewayTimeout, at.Error()
	case errors.As(err, &wt):
		return http.StatusGatewayTimeout, wt.Error()
	case errors.As(err, &uo):
		return http.StatusGatewayTimeout, uo.Error()
	case errors.Is(err, replication.ErrUnavailable), errors.Is(err, store.ErrClosed):
		return http.StatusServiceUnavailable, err.Error()
	case errors.Is(err, errQueryDeadline):
		return http.StatusGatewayTimeout, err.Error()
	}
	return http.StatusInternalServerError, err.Error()
}
