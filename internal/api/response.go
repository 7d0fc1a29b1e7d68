package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"

	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/rlog"
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

// appendTypedValue writes a value in its exact SQLite type (the "typed"
// format).
func appendTypedValue(b []byte, v any) []byte {
	e, err := rlog.EncodeValue(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, e...)
}

// appendRowArrays writes rows as a JSON array of arrays, each value by val.
func appendRowArrays(b []byte, rows [][]any, val func([]byte, any) []byte) []byte {
	b = append(b, '[')
	for i, row := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		for j, v := range row {
			if j > 0 {
				b = append(b, ',')
			}
			b = val(b, v)
		}
		b = append(b, ']')
	}
	return append(b, ']')
}

// appendStrings writes a JSON array of strings.
func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// appendString appends s as encoding/json writes it. A string of printable
// ASCII that needs no escape (no quote, backslash, or the <, > and & that
// encoding/json escapes) is copied as it is; any other goes through
// encoding/json (most column names and many values are the first kind, and
// encoding/json costs an allocation and a conversion for each).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			j, _ := json.Marshal(s)
			return append(b, j...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendRows writes a result in the requested format. objects: an array of
// row objects with keys in column order (a repeated name keeps its last
// value, as the original did); columns: names, declared types and rows as
// arrays, which keeps order and duplicates; typed: the columns form with
// each value in its exact SQLite type (integers as JSON integers, reals as
// {"r": x}, text as strings, BLOBs as {"b": "base64"}, NULL as null), for
// programs that must tell a BLOB from text and 2.0 from 2.
func appendRows(b []byte, r store.Result, format Format) []byte {
	if format == FormatColumns || format == FormatTyped {
		val := appendValue
		if format == FormatTyped {
			val = appendTypedValue
		}
		b = append(b, `{"columns":`...)
		b = appendStrings(b, r.Columns)
		b = append(b, `,"types":`...)
		b = appendStrings(b, r.Types)
		b = append(b, `,"rows":`...)
		b = appendRowArrays(b, r.Rows, val)
		return append(b, '}')
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

// wireError is what a client learns of an error: the HTTP status, a
// stable machine-readable kind, the message, and for some kinds the
// write's index or the leader's URL.
type wireError struct {
	status int
	kind   string
	msg    string
	index  uint64 // ack_timeout: the write is committed at this index
	leader string // not_leader: where to send the request
}

// describe maps an error to what the client sees: its kind's status and
// name (package errkind holds the one table), its message, and for some
// kinds the write's index or the leader's URL. A schema change the policy
// refused is told apart by this node's role.
func (s *Server) describe(err error) wireError {
	k, e := errkind.Of(err)
	msg := e.Error()
	if _, ok := e.(*errkind.Sentinel); ok {
		msg = err.Error() // the wrappers carry the detail
	}
	w := wireError{}
	switch k {
	case errkind.Schema:
		switch {
		case s.isLeader():
			k, msg = errkind.Permission, "your user lacks the \"schema\" permission that schema changes need"
		case s.repl.LeaderURL() == "":
			k, msg = errkind.Unavailable, "schema changes run only on the leader, and no leader is known: an election is under way, or a majority of the voters cannot be reached; retry shortly"
		default:
			k, msg = errkind.NotLeader, "schema changes (CREATE, DROP, ALTER of tables, indexes, views, triggers) run only on the leader (normally the master): send this request to "+s.repl.LeaderURL()
		}
	case errkind.AckTimeout:
		var at *replication.AckTimeoutError
		if errors.As(err, &at) {
			w.index = at.Index
		}
	}
	if k == errkind.NotLeader {
		w.leader = s.repl.LeaderURL()
	}
	w.status, w.kind, w.msg = k.Status(), k.Client(), msg
	return w
}

// statusOf maps an error to the HTTP status and message a client sees.
func (s *Server) statusOf(err error) (int, string) {
	w := s.describe(err)
	return w.status, w.msg
}

// body is the error's JSON answer: {"error", "kind"} and, for its kind,
// "index" or "leader".
func (w wireError) body() []byte {
	b := append([]byte(`{"error":`), appendString(nil, w.msg)...)
	b = append(b, `,"kind":"`...)
	b = append(b, w.kind...)
	b = append(b, '"')
	if w.index > 0 {
		b = append(b, `,"index":`...)
		b = strconv.AppendUint(b, w.index, 10)
	}
	if w.leader != "" {
		b = append(b, `,"leader":`...)
		b = appendString(b, w.leader)
	}
	return append(b, "}\n"...)
}
