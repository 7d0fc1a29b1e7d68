package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/rlog"
)

// Command is what a request asks: a write or a read.
type Command string

// The commands.
const (
	CommandExec  Command = "exec"
	CommandQuery Command = "query"
)

// Consistency is what a read must see.
type Consistency string

// The read consistencies.
const (
	ConsistencyLocal  Consistency = "local"  // this node's data (and min_index)
	ConsistencyStrong Consistency = "strong" // every write acknowledged before the read
)

// Format is how a read's rows are answered.
type Format string

// The row formats.
const (
	FormatObjects Format = "objects" // an array of row objects
	FormatColumns Format = "columns" // names, declared types, rows as arrays
	FormatTyped   Format = "typed"   // the columns form, values in their exact types
)

// Request is a decoded, validated client request (SPEC section 2).
type Request struct {
	Command      Command
	Stmts        []rlog.Statement
	Multi        bool // sent as "queries"
	IsReplicated bool
	Ack          cluster.Ack
	Consistency  Consistency
	MinIndex     uint64
	Format       Format
	RequestID    string          // idempotency key of a write ("" if none)
	perms        map[string]bool // the user's, when a users file is in force
	anonymous    bool            // sent without credentials
}

// BadRequest is a client error worth a 400 with its message.
type BadRequest struct{ Msg string }

func (e *BadRequest) Error() string { return e.Msg }

// Kind is bad_request (see package errkind).
func (e *BadRequest) Kind() errkind.Kind { return errkind.BadRequest }

func bad(format string, args ...any) error { return &BadRequest{Msg: fmt.Sprintf(format, args...)} }

// DecodeRequest parses and validates a request body. Unknown fields are
// ignored (older clients send extra ones); every known field must have the
// documented type. The common shape takes a one-pass fast path
// (decodeFast); everything else, errors included, the full decoder.
func DecodeRequest(body []byte, defaultAck cluster.Ack) (*Request, error) {
	if r := decodeFast(body, defaultAck); r != nil {
		return r, nil
	}
	if err := checkText(body); err != nil {
		return nil, err
	}
	if err := checkKeys(body); err != nil {
		return nil, err
	}
	return decodeFull(body, defaultAck)
}

// decodeObject decodes a small JSON object of an operations endpoint by
// its exact keys (a struct would also take "ID" or "Id" for "id"), none
// of them twice.
func decodeObject(body []byte) (map[string]json.RawMessage, error) {
	if err := checkKeys(body); err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, bad("the request body must be a JSON object")
	}
	return m, nil
}

// checkKeys refuses a JSON object that holds one key twice. Go's decoder
// keeps the last, other readers keep the first: a proxy, an audit log or
// a firewall in front of the node would see another request than the one
// that runs ({"query": "SELECT ...", "query": "DELETE ..."}). Malformed
// JSON passes: the decoder says what is wrong with it.
func checkKeys(body []byte) error {
	type object struct {
		keys    map[string]bool
		wantKey bool
	}
	var stack []*object // nil entries are arrays
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		var top *object
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.wantKey {
			if k, ok := tok.(string); ok {
				if top.keys[k] {
					return bad("malformed JSON: the key %q appears twice in one object", k)
				}
				top.keys[k] = true
				top.wantKey = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &object{keys: map[string]bool{}, wantKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, nil)
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the object around it expects its next key.
		if len(stack) == 0 {
			return nil
		}
		if o := stack[len(stack)-1]; o != nil {
			o.wantKey = true
		}
	}
}

// checkText refuses text that Go's JSON decoder would silently replace by
// U+FFFD: bytes that are not UTF-8, and \u escapes of UTF-16 surrogates
// that do not form a pair. What a client sends is stored exactly, or not
// at all.
func checkText(body []byte) error {
	if !utf8.Valid(body) {
		i := 0
		for i < len(body) {
			r, n := utf8.DecodeRune(body[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			i += n
		}
		return bad("the request body is not valid UTF-8 (byte %d): send text as UTF-8, and binary values as blobs", i)
	}
	for i := 0; i < len(body); i++ {
		if body[i] != '\\' {
			continue
		}
		i++
		if i >= len(body) || body[i] != 'u' {
			continue // \" \\ \n ...: one escaped character
		}
		hi, ok := hex4(body, i+1)
		if !ok {
			continue // malformed: the decoder says so
		}
		i += 4
		switch {
		case hi >= 0xDC00 && hi <= 0xDFFF:
			return bad("invalid JSON string: \\u%04x is the second half of a UTF-16 surrogate pair without its first half", hi)
		case hi >= 0xD800 && hi <= 0xDBFF:
			lo, ok := rune(0), i+2 < len(body) && body[i+1] == '\\' && body[i+2] == 'u'
			if ok {
				lo, ok = hex4(body, i+3)
			}
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return bad("invalid JSON string: \\u%04x is the first half of a UTF-16 surrogate pair without its second half", hi)
			}
			i += 6
		}
	}
	return nil
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[at:at+4]), 16, 32)
	return rune(v), err == nil
}

// decodeFull is the reference decoder: any JSON, every error message.
func decodeFull(body []byte, defaultAck cluster.Ack) (*Request, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		if len(bytes.TrimSpace(body)) == 0 {
			return nil, bad("empty request body: send a JSON object such as {\"command\": \"query\", \"query\": \"SELECT 1\"}")
		}
		return nil, bad("malformed JSON: %v", err)
	}
	if raw == nil {
		return nil, bad("the request body must be a JSON object")
	}
	if dec.More() {
		return nil, bad("malformed JSON: more than one JSON value in the body")
	}
	r := &Request{Ack: defaultAck, Consistency: ConsistencyLocal, Format: FormatObjects}
	str := func(field string) (string, bool, error) {
		v, ok := raw[field]
		if !ok || string(v) == "null" {
			return "", false, nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", true, bad("%q must be a string", field)
		}
		return s, true, nil
	}
	boolean := func(field string) (bool, error) {
		v, ok := raw[field]
		if !ok || string(v) == "null" {
			return false, nil
		}
		var b bool
		if err := json.Unmarshal(v, &b); err != nil {
			return false, bad("%q must be true or false", field)
		}
		return b, nil
	}
	cmd, ok, err := str("command")
	if err != nil {
		return nil, err
	}
	if !ok || cmd == "" {
		return nil, bad(`missing "command": use "exec" or "query"`)
	}
	if err := r.setCommand(cmd); err != nil {
		return nil, err
	}
	if _, err := boolean("is_master"); err != nil { // accepted and ignored
		return nil, err
	}
	if r.IsReplicated, err = boolean("is_replicated"); err != nil {
		return nil, err
	}
	if s, ok, err := str("ack"); err != nil {
		return nil, err
	} else if ok {
		if err := r.setAck(s); err != nil {
			return nil, err
		}
	}
	if s, ok, err := str("consistency"); err != nil {
		return nil, err
	} else if ok {
		if err := r.setConsistency(s); err != nil {
			return nil, err
		}
	}
	if s, ok, err := str("format"); err != nil {
		return nil, err
	} else if ok {
		if err := r.setFormat(s); err != nil {
			return nil, err
		}
	}
	if s, ok, err := str("request_id"); err != nil {
		return nil, err
	} else if ok {
		if err := r.setRequestID(s); err != nil {
			return nil, err
		}
	}
	if v, ok := raw["min_index"]; ok && string(v) != "null" {
		n, err := strconv.ParseUint(strings.TrimSpace(string(v)), 10, 64)
		if err != nil {
			return nil, bad(`"min_index" must be a non-negative whole number`)
		}
		r.MinIndex = n
	}
	q, hasQuery, err := str("query")
	if err != nil {
		return nil, err
	}
	qs, hasQueries := raw["queries"]
	if hasQueries && string(qs) == "null" {
		hasQueries = false
	}
	switch {
	case hasQuery && hasQueries:
		return nil, bad(`send either "query" or "queries", not both`)
	case hasQueries:
		var items []json.RawMessage
		if err := json.Unmarshal(qs, &items); err != nil {
			return nil, bad(`"queries" must be an array of {"query": ..., "params": ...} objects`)
		}
		if len(items) == 0 {
			return nil, bad(`"queries" is empty`)
		}
		for i, it := range items {
			// Keys match exactly (a struct would also take "QUERY" or
			// "Query" for "query"), and an item has no others.
			var item map[string]json.RawMessage
			var query string
			if err := json.Unmarshal(it, &item); err != nil || item == nil {
				return nil, bad(`"queries"[%d] must be an object with a string "query" and optional "params"`, i)
			}
			if q, ok := item["query"]; ok && json.Unmarshal(q, &query) != nil {
				return nil, bad(`"queries"[%d]: "query" must be a string`, i)
			}
			for k := range item {
				if k != "query" && k != "params" {
					return nil, bad(`"queries"[%d] has an unknown key %q: an item holds "query" and optional "params"`, i, k)
				}
			}
			if strings.TrimSpace(query) == "" {
				return nil, bad(`"queries"[%d] has no "query"`, i)
			}
			st, err := statement(query, item["params"])
			if err != nil {
				return nil, bad(`"queries"[%d]: %v`, i, err)
			}
			r.Stmts = append(r.Stmts, st)
		}
		r.Multi = true
	default:
		if strings.TrimSpace(q) == "" {
			return nil, bad(`missing "query": the SQL statement to run`)
		}
		st, err := statement(q, raw["params"])
		if err != nil {
			return nil, err
		}
		r.Stmts = []rlog.Statement{st}
	}
	return r, nil
}

func (r *Request) setCommand(cmd string) error {
	r.Command = Command(strings.ToLower(strings.TrimSpace(cmd)))
	if r.Command != CommandExec && r.Command != CommandQuery {
		return bad(`unknown command %q: use "exec" or "query"`, cmd)
	}
	return nil
}

func (r *Request) setAck(s string) error {
	if !cluster.ValidAck(cluster.Ack(s)) {
		return bad(`"ack" must be "master", "quorum" or "all", not %q`, s)
	}
	r.Ack = cluster.Ack(s)
	return nil
}

func (r *Request) setConsistency(s string) error {
	if c := Consistency(s); c != ConsistencyLocal && c != ConsistencyStrong {
		return bad(`"consistency" must be "local" or "strong", not %q`, s)
	}
	r.Consistency = Consistency(s)
	return nil
}

func (r *Request) setRequestID(s string) error {
	if len(s) > rlog.MaxRequestIDLen && utf8.RuneCountInString(s) > rlog.MaxRequestIDLen {
		return bad(`"request_id" is longer than %d characters`, rlog.MaxRequestIDLen)
	}
	r.RequestID = s
	return nil
}

func (r *Request) setFormat(s string) error {
	if f := Format(s); f != FormatObjects && f != FormatColumns && f != FormatTyped {
		return bad(`"format" must be "objects", "columns" or "typed", not %q`, s)
	}
	r.Format = Format(s)
	return nil
}

func statement(sql string, params json.RawMessage) (rlog.Statement, error) {
	st := rlog.Statement{SQL: sql}
	p := bytes.TrimSpace(params)
	if len(p) == 0 || string(p) == "null" {
		return st, nil
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.UseNumber()
	switch p[0] {
	case '[':
		var vals []any
		if err := dec.Decode(&vals); err != nil {
			return st, bad(`"params" is not valid JSON: %v`, err)
		}
		for i, v := range vals {
			x, err := paramValue(v)
			if err != nil {
				return st, bad(`"params"[%d]: %v`, i, err)
			}
			st.Pos = append(st.Pos, x)
		}
	case '{':
		var vals map[string]any
		if err := dec.Decode(&vals); err != nil {
			return st, bad(`"params" is not valid JSON: %v`, err)
		}
		st.Named = make(map[string]any, len(vals))
		for k, v := range vals {
			x, err := paramValue(v)
			if err != nil {
				return st, bad(`"params".%s: %v`, k, err)
			}
			st.Named[k] = x
		}
	default:
		return st, bad(`"params" must be an array (for ?) or an object (for :name, @name, $name)`)
	}
	return st, nil
}

// numberValue reads a JSON number as SQLite would store it: an integer
// when it is written as one and fits in 64 bits, a real otherwise.
func numberValue(x json.Number) (any, error) {
	s := x.String()
	if !strings.ContainsAny(s, ".eE") {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("number %s is out of range", s)
	}
	return f, nil
}

func paramValue(v any) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case bool:
		if x {
			return int64(1), nil
		}
		return int64(0), nil
	case string:
		return x, nil
	case json.Number:
		return numberValue(x)
	case map[string]any:
		// An exactly typed value: {"b": "base64"} is a BLOB, {"r": x} a
		// REAL even when x has no fraction ({"r": "inf"}, {"r": "-inf"}).
		if len(x) == 1 {
			if b, ok := x["b"].(string); ok {
				v, err := base64.StdEncoding.DecodeString(b)
				if err != nil {
					return nil, fmt.Errorf(`{"b": ...} holds a BLOB in standard base64: %v`, err)
				}
				return v, nil
			}
			if r, ok := x["r"]; ok {
				switch y := r.(type) {
				case json.Number:
					if f, err := strconv.ParseFloat(y.String(), 64); err == nil {
						return f, nil
					}
				case string:
					switch y {
					case "inf":
						return math.Inf(1), nil
					case "-inf":
						return math.Inf(-1), nil
					}
				}
				return nil, fmt.Errorf(`{"r": ...} holds a REAL: a number, "inf" or "-inf"`)
			}
		}
		return nil, fmt.Errorf(`an object parameter is {"b": "base64"} (a BLOB) or {"r": number} (a REAL)`)
	}
	return nil, fmt.Errorf("a parameter must be a number, string, boolean, null, {\"b\": base64} or {\"r\": number}, not %T", jsonKind(v))
}

type jsonObjectOrArray struct{}

func jsonKind(v any) any {
	switch v.(type) {
	case map[string]any:
		return map[string]any{}
	case []any:
		return []any{}
	}
	return jsonObjectOrArray{}
}
