// Package rlog defines the replication log's entries: what one write is,
// in the form every node executes identically, and how it is encoded on
// disk and on the wire.
//
// An entry is a whole client request (one or several statements, one
// atomic unit) plus the time and random seed the master chose for it. The
// body is encoded once by the master and stored and shipped as is.
package rlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Entry is one write at one position of the log.
type Entry struct {
	Index  uint64          `json:"i"`
	TimeMs int64           `json:"t"` // the master's clock, ms since 1970, for 'now'
	Seed   int64           `json:"r"` // seed of random() and randomblob()
	Body   json.RawMessage `json:"b"` // EncodeStatements output
	// Under consensus: the entry's Raft term, and the configuration the
	// log reaches with it (set on configuration changes). They are
	// recorded with the entry's change, so a copy of the database says
	// exactly where in the log it stands.
	Term uint64 `json:"-"`
	Conf []byte `json:"-"`
	// Rejoining, when set, is the consensus package's new record of the
	// nodes being added again after a lost disk, recorded like Conf.
	Rejoining []byte `json:"-"`
}

// Statement is one SQL string (it may hold several statements) and its
// parameters. Values are nil, int64, float64, string or []byte.
type Statement struct {
	SQL   string
	Pos   []any
	Named map[string]any
}

type wireStatement struct {
	Q string                     `json:"q"`
	P []json.RawMessage          `json:"p,omitempty"`
	N map[string]json.RawMessage `json:"n,omitempty"`
}

// EncodeStatements encodes statements for an entry body. Values keep their
// exact SQLite type: integers as JSON numbers, reals as {"r":x}, text as
// strings, blobs as {"b":"base64"}, NULL as null.
func EncodeStatements(stmts []Statement) ([]byte, error) {
	ws := make([]wireStatement, len(stmts))
	for i, s := range stmts {
		ws[i].Q = s.SQL
		for _, v := range s.Pos {
			b, err := EncodeValue(v)
			if err != nil {
				return nil, err
			}
			ws[i].P = append(ws[i].P, b)
		}
		if len(s.Named) > 0 {
			ws[i].N = make(map[string]json.RawMessage, len(s.Named))
			for k, v := range s.Named {
				b, err := EncodeValue(v)
				if err != nil {
					return nil, err
				}
				ws[i].N[k] = b
			}
		}
	}
	return json.Marshal(ws)
}

// DecodeStatements reverses EncodeStatements.
func DecodeStatements(body []byte) ([]Statement, error) {
	var ws []wireStatement
	if err := json.Unmarshal(body, &ws); err != nil {
		return nil, fmt.Errorf("decode entry body: %w", err)
	}
	out := make([]Statement, len(ws))
	for i, w := range ws {
		out[i].SQL = w.Q
		for _, p := range w.P {
			v, err := DecodeValue(p)
			if err != nil {
				return nil, err
			}
			out[i].Pos = append(out[i].Pos, v)
		}
		if len(w.N) > 0 {
			out[i].Named = make(map[string]any, len(w.N))
			for k, p := range w.N {
				v, err := DecodeValue(p)
				if err != nil {
					return nil, err
				}
				out[i].Named[k] = v
			}
		}
	}
	return out, nil
}

// EncodeValue encodes one typed value.
func EncodeValue(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return []byte("null"), nil
	case int64:
		return strconv.AppendInt(nil, x, 10), nil
	case int:
		return strconv.AppendInt(nil, int64(x), 10), nil
	case bool:
		if x {
			return []byte("1"), nil
		}
		return []byte("0"), nil
	case float64:
		switch {
		case math.IsInf(x, 1):
			return []byte(`{"r":"inf"}`), nil
		case math.IsInf(x, -1):
			return []byte(`{"r":"-inf"}`), nil
		case math.IsNaN(x):
			return []byte("null"), nil // SQLite stores NaN as NULL
		}
		b := []byte(`{"r":`)
		b = strconv.AppendFloat(b, x, 'g', -1, 64)
		return append(b, '}'), nil
	case string:
		return json.Marshal(x)
	case []byte:
		return []byte(`{"b":"` + base64.StdEncoding.EncodeToString(x) + `"}`), nil
	default:
		return nil, fmt.Errorf("cannot encode a value of type %T", v)
	}
}

// DecodeValue reverses EncodeValue.
func DecodeValue(b []byte) (any, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("empty value")
	}
	switch b[0] {
	case 'n':
		return nil, nil
	case '"':
		var s string
		err := json.Unmarshal(b, &s)
		return s, err
	case '{':
		var o struct {
			R json.RawMessage `json:"r"`
			B *string         `json:"b"`
		}
		if err := json.Unmarshal(b, &o); err != nil {
			return nil, err
		}
		if o.B != nil {
			return base64.StdEncoding.DecodeString(*o.B)
		}
		switch string(o.R) {
		case `"inf"`:
			return math.Inf(1), nil
		case `"-inf"`:
			return math.Inf(-1), nil
		}
		return strconv.ParseFloat(string(o.R), 64)
	default:
		return strconv.ParseInt(string(b), 10, 64)
	}
}

// MaxEntryBytes bounds one entry's write: every entry must cross the
// stream between nodes, whose frames hold 64 MiB.
const MaxEntryBytes = 32 << 20

// MaxRequestIDLen bounds a client's request_id, in characters.
const MaxRequestIDLen = 128

// Write is one client write as a log entry carries it: the statements
// and every choice their execution depends on besides the entry's time
// and seed, so that every node applying the entry does exactly the same.
type Write struct {
	RequestID   string      // idempotency key ("" for none)
	Stmts       []Statement // run in order, as one atomic unit
	AllowSchema bool        // schema changes are allowed (the write entered at the leader)
	Collect     bool        // rows are returned (a write sent as a query, RETURNING)
	MaxRows     int         // limits on the rows returned (0: none)
	MaxBytes    int
	// MaxSteps bounds the instructions of SQLite's virtual machine the
	// write may run, all its statements together (0: none). A clock
	// cannot stop a write that every node runs: each would stop it at
	// another point. A count of instructions stops it at the same one.
	MaxSteps int64
	// Each: the statements are independent, as rqlite's API runs them:
	// each applies or fails alone, in order, and a failure is that
	// statement's result, not the write's. With Atomic as well, the first
	// failure stops the write and undoes its statements (rqlite's
	// transaction flag): the results end at the failed statement.
	Each   bool
	Atomic bool
	// Replace: the write replaces the whole user database (a load of a
	// SQLite file): every user table, index, view and trigger is dropped
	// first, in the same transaction.
	Replace bool
	// Load, when set, makes the write one step of a load too big for one
	// entry (see LoadStep).
	Load *LoadStep
	// Check marks a consistency check (it holds no statements): every node
	// ends its transaction after it and computes a digest of its database
	// as of its index, and the nodes compare their digests.
	Check bool
	// SetChanges sets the change stream for the whole cluster (it holds
	// no statements): on, keeping the row changes of the last ChangesKeep
	// log indexes, or off (ChangesKeep 0). Every node captures, or not,
	// from the same entry on.
	SetChanges  bool
	ChangesKeep int64
	// ChangesDelivered records (when > 0; it holds no statements) that
	// the change stream's webhook received every entry up to this index:
	// a new leader's webhook goes on after it.
	ChangesDelivered uint64
}

// LoadOp is what one step of a load does.
type LoadOp uint8

const (
	// LoadStage keeps the write's SQL text, unexecuted, as chunk Seq of
	// load ID, in the database (so snapshots carry it). Chunk 0 starts the
	// load and forgets any other load's chunks: one load at a time.
	LoadStage LoadOp = iota + 1
	// LoadCommit runs load ID: its Seq staged chunks in order, then the
	// write's own statements, as one atomic write (with Replace, after
	// dropping the user database), and forgets the chunks. If any chunk
	// is missing (another load started meanwhile), nothing runs.
	LoadCommit
	// LoadAbort forgets load ID's chunks.
	LoadAbort
)

// LoadStep is one entry of a load sent in several: every node stages the
// chunks where it applies entries, and runs them all in the commit's
// transaction, so a load is all or nothing, at one index, on every node.
type LoadStep struct {
	ID  string `json:"id"`
	Op  LoadOp `json:"op"`
	Seq int64  `json:"seq"`
}

// Fingerprint identifies what the client asked for: the statements with
// their parameters and the shape of the request (a query or an exec, one
// unit or statements each on their own, a load), without the request id
// or anything the node that took the write chose (whether it led, its
// limits). A request id sent again with another fingerprint is not a
// retry but a different request.
func (w *Write) Fingerprint() ([sha256.Size]byte, error) {
	c := Write{Stmts: w.Stmts, Collect: w.Collect, Each: w.Each, Atomic: w.Atomic, Replace: w.Replace, Load: w.Load}
	b, err := c.encodeBinary()
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// Encode encodes the write for an entry body, in the binary form (see
// binary.go; about ten times cheaper to decode than JSON, and every node
// decodes every entry).
func (w *Write) Encode() ([]byte, error) { return w.encodeBinary() }

type wireWrite struct {
	ID       string          `json:"id,omitempty"`
	S        json.RawMessage `json:"s"`
	Schema   bool            `json:"schema,omitempty"`
	Collect  bool            `json:"collect,omitempty"`
	MaxRows  int             `json:"max_rows,omitempty"`
	MaxBytes int             `json:"max_bytes,omitempty"`
	Each     bool            `json:"each,omitempty"`
	Atomic   bool            `json:"atomic,omitempty"`
	Replace  bool            `json:"replace,omitempty"`
}

// DecodeWriteEntry reverses Write.Encode. It also reads the JSON form
// logs held before the binary one: the statements' array alone
// (EncodeStatements) for a write with no key and no choices, else a
// wireWrite object.
func DecodeWriteEntry(body []byte) (Write, error) {
	if len(body) > 0 && body[0] == binaryVersion {
		return decodeBinary(body[1:])
	}
	b := bytes.TrimSpace(body)
	if len(b) > 0 && b[0] == '{' {
		var ww wireWrite
		if err := json.Unmarshal(b, &ww); err != nil {
			return Write{}, fmt.Errorf("decode entry body: %w", err)
		}
		stmts, err := DecodeStatements(ww.S)
		return Write{RequestID: ww.ID, Stmts: stmts, AllowSchema: ww.Schema, Collect: ww.Collect, MaxRows: ww.MaxRows, MaxBytes: ww.MaxBytes, Each: ww.Each, Atomic: ww.Atomic, Replace: ww.Replace}, err
	}
	stmts, err := DecodeStatements(b)
	return Write{Stmts: stmts}, err
}
