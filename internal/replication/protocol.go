// Package replication turns the nodes' databases into one replicated
// database. The master sequences every write (from any node) into one
// durable log, in the same transaction as the change; one shipper per
// slave streams the log from that slave's acknowledged index; slaves apply
// it in order, exactly once, and acknowledge; writers wait for their ack
// level. Slaves forward writes to the master and answer only once they
// have applied them themselves.
//
// Nodes talk through the Transport interface: HTTP in production (package
// api), in memory in tests, so the protocol is tested without sockets.
package replication

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"ddb/internal/rlog"
	"ddb/internal/store"
)

// AppendRequest carries log entries (possibly none: a heartbeat) from the
// master to a slave.
type AppendRequest struct {
	Master  string       `json:"master"`
	Entries []rlog.Entry `json:"entries"`
	Commit  uint64       `json:"commit"` // the master's last index
}

// AppendResponse is the slave's acknowledgement.
type AppendResponse struct {
	Applied      uint64 `json:"applied"`
	NeedSnapshot bool   `json:"need_snapshot,omitempty"`
	Error        string `json:"error,omitempty"`
}

// ForwardRequest is a client write that entered at a slave.
type ForwardRequest struct {
	Origin  int             `json:"origin"`
	Body    json.RawMessage `json:"body"` // rlog.EncodeStatements
	Collect bool            `json:"collect,omitempty"`
	Ack     string          `json:"ack"`
	// RequestID is the write's idempotency key: the client's, or one the
	// slave made. A forward sent again (after a broken connection) with
	// the same key applies at most once.
	RequestID string `json:"request_id"`
}

// ForwardResponse is the master's answer to a forwarded write.
type ForwardResponse struct {
	Index   uint64       `json:"index"`
	Results []WireResult `json:"results,omitempty"`
	Error   *WireError   `json:"error,omitempty"`
}

// WireResult is a store.Result with exactly typed values.
type WireResult = store.WireResult

// WireError carries an error's kind across a forward.
type WireError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Index   uint64 `json:"index,omitempty"`
}

// JoinRefusedError: the master will not take this slave (its id is held
// by a live node, or the request is invalid). Retrying cannot help.
type JoinRefusedError struct{ Reason string }

func (e *JoinRefusedError) Error() string { return "the master refused this node: " + e.Reason }

// JoinRequest announces a slave to the master.
type JoinRequest struct {
	ID  int    `json:"id"`
	URL string `json:"url"`
}

// Transport carries the protocol between nodes.
type Transport interface {
	Append(ctx context.Context, slaveURL string, req *AppendRequest) (*AppendResponse, error)
	InstallSnapshot(ctx context.Context, slaveURL string, index uint64, snapshot string) (*AppendResponse, error)
	Forward(ctx context.Context, masterURL string, req *ForwardRequest) (*ForwardResponse, error)
	ReadIndex(ctx context.Context, masterURL string) (uint64, error)
	Join(ctx context.Context, masterURL string, req *JoinRequest) error
}

// Replicator is all the HTTP layer's client protocol needs from
// replication, whatever the engine: it never looks at roles beyond
// IsLeader.
type Replicator interface {
	// Write runs a client write through the log and waits for its ack
	// level (on a node that does not lead: forwards it, and answers once
	// this node has applied it).
	Write(ctx context.Context, req *store.Request, ack string) (store.Outcome, error)
	// ReadIndex is an index covering every write acknowledged before the
	// call.
	ReadIndex(ctx context.Context) (uint64, error)
	// WaitApplied waits (up to timeout) until this node has applied index.
	WaitApplied(ctx context.Context, index uint64, timeout time.Duration) error
	// IsLeader reports whether this node orders writes (and so accepts
	// schema changes on the original protocol).
	IsLeader() bool
	// LeaderURL is the URL of the node that leads ("" if none is known).
	LeaderURL() string
}

var (
	_ Replicator = (*Master)(nil)
	_ Replicator = (*Slave)(nil)
)

// SlaveHandler is what a slave serves to the master.
type SlaveHandler interface {
	HandleAppend(req *AppendRequest) *AppendResponse
	HandleSnapshot(index uint64, r io.Reader) (*AppendResponse, error)
}

// MasterHandler is what the master serves to slaves.
type MasterHandler interface {
	HandleForward(ctx context.Context, req *ForwardRequest) *ForwardResponse
	HandleReadIndex() uint64
	HandleJoin(req *JoinRequest) error
}

// ErrUnavailable means the master cannot be reached (or this node cannot
// serve yet): writes and strong reads answer 503.
var ErrUnavailable = errors.New("the master cannot be reached")

// UnavailableError wraps ErrUnavailable with the reason.
type UnavailableError struct{ Reason string }

func (e *UnavailableError) Error() string {
	return e.Reason + "; nothing was applied: retry shortly (with the same request_id, if the write has one)"
}
func (e *UnavailableError) Unwrap() error { return ErrUnavailable }

// AckTimeoutError: the write is committed on the master at Index, but its
// acknowledgement level was not reached in time. It will still replicate.
type AckTimeoutError struct {
	Index uint64
	Level string
	After time.Duration
}

func (e *AckTimeoutError) Error() string {
	return fmt.Sprintf("write committed on the master at index %d, but not acknowledged at level %q within %v; it stays committed and keeps replicating", e.Index, e.Level, e.After)
}

// UnknownOutcomeError: the request reached the master but no answer came
// back; the write may or may not be committed.
type UnknownOutcomeError struct {
	Reason    string
	RequestID string // the client's idempotency key, if it sent one
}

func (e *UnknownOutcomeError) Error() string {
	if e.RequestID != "" {
		return "outcome unknown: " + e.Reason + "; the write may be committed. Send it again with the same request_id (" + e.RequestID + "): it applies at most once"
	}
	return "outcome unknown: " + e.Reason + "; the write may be committed. Check with a read before retrying, or send writes with a request_id, which makes a retry safe"
}

// WaitTimeoutError: a min_index or strong read waited too long.
type WaitTimeoutError struct {
	Want, Have uint64
	After      time.Duration
}

func (e *WaitTimeoutError) Error() string {
	return fmt.Sprintf("this node has applied index %d, not %d, after waiting %v", e.Have, e.Want, e.After)
}

// ToWireError describes err for a forward response.
func ToWireError(err error) *WireError {
	var (
		fe *store.ForbiddenError
		sd *store.SchemaDeniedError
		se *store.SQLError
		pe *store.ParamError
		tl *store.ResultTooLargeError
		at *AckTimeoutError
	)
	switch {
	case errors.As(err, &fe):
		return &WireError{Kind: "forbidden", Message: fe.Reason}
	case errors.As(err, &sd):
		return &WireError{Kind: "schema", Message: sd.Statement}
	case errors.As(err, &se):
		return &WireError{Kind: "sql", Message: se.Error()}
	case errors.As(err, &pe):
		return &WireError{Kind: "param", Message: pe.Msg}
	case errors.As(err, &tl):
		return &WireError{Kind: "too_large", Message: tl.What}
	case errors.As(err, &at):
		return &WireError{Kind: "ack_timeout", Message: at.Level, Index: at.Index}
	case errors.Is(err, ErrUnavailable):
		msg := err.Error()
		if ue := (*UnavailableError)(nil); errors.As(err, &ue) {
			msg = ue.Reason // the receiver's UnavailableError says the rest
		}
		return &WireError{Kind: "unavailable", Message: msg}
	}
	return &WireError{Kind: "internal", Message: err.Error()}
}

// FromWireError turns a forward response's error back into the error type.
func FromWireError(w *WireError, ackTimeout time.Duration) error {
	switch w.Kind {
	case "forbidden":
		return &store.ForbiddenError{Reason: w.Message}
	case "schema":
		return &store.SchemaDeniedError{Statement: w.Message}
	case "sql":
		return &store.SQLError{Err: errors.New(w.Message)}
	case "param":
		return &store.ParamError{Msg: w.Message}
	case "too_large":
		return &store.ResultTooLargeError{What: w.Message}
	case "ack_timeout":
		return &AckTimeoutError{Index: w.Index, Level: w.Message, After: ackTimeout}
	case "unavailable":
		return &UnavailableError{Reason: w.Message}
	}
	return errors.New(w.Message)
}

// EncodeAppend frames an AppendRequest compactly for the wire: a header
// (commit index, master URL) then each entry as index, time, seed, body
// length and body. Entry bodies are copied as they are, never re-parsed.
func EncodeAppend(req *AppendRequest) []byte {
	n := 8 + 4 + len(req.Master) + 4
	for _, e := range req.Entries {
		n += 28 + len(e.Body)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint64(b, req.Commit)
	b = binary.BigEndian.AppendUint32(b, uint32(len(req.Master)))
	b = append(b, req.Master...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(req.Entries)))
	for _, e := range req.Entries {
		b = binary.BigEndian.AppendUint64(b, e.Index)
		b = binary.BigEndian.AppendUint64(b, uint64(e.TimeMs))
		b = binary.BigEndian.AppendUint64(b, uint64(e.Seed))
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.Body)))
		b = append(b, e.Body...)
	}
	return b
}

// ErrBadFrame is a malformed append frame.
var ErrBadFrame = errors.New("malformed append frame")

// DecodeAppend reverses EncodeAppend. Entry bodies alias b.
func DecodeAppend(b []byte) (*AppendRequest, error) {
	var req AppendRequest
	if len(b) < 12 {
		return nil, ErrBadFrame
	}
	req.Commit = binary.BigEndian.Uint64(b)
	ml := int(binary.BigEndian.Uint32(b[8:]))
	b = b[12:]
	if ml > len(b) {
		return nil, ErrBadFrame
	}
	req.Master, b = string(b[:ml]), b[ml:]
	if len(b) < 4 {
		return nil, ErrBadFrame
	}
	n := int(binary.BigEndian.Uint32(b))
	b = b[4:]
	if n > len(b)/28 {
		return nil, ErrBadFrame
	}
	req.Entries = make([]rlog.Entry, 0, n)
	for i := 0; i < n; i++ {
		if len(b) < 28 {
			return nil, ErrBadFrame
		}
		e := rlog.Entry{Index: binary.BigEndian.Uint64(b), TimeMs: int64(binary.BigEndian.Uint64(b[8:])), Seed: int64(binary.BigEndian.Uint64(b[16:]))}
		bl := int(binary.BigEndian.Uint32(b[24:]))
		b = b[28:]
		if bl > len(b) {
			return nil, ErrBadFrame
		}
		e.Body, b = b[:bl:bl], b[bl:]
		req.Entries = append(req.Entries, e)
	}
	if len(b) != 0 {
		return nil, ErrBadFrame
	}
	return &req, nil
}
