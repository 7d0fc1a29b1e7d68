// Package replication is the seam between the HTTP layer and the
// replication engine (package consensus): the Replicator interface the
// client protocol uses, the errors it maps to status codes, and the wire
// form of a write one node forwards to the leader.
package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ddbgo/ddb/internal/cluster"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// ForwardRequest is a client write that entered at a node that does not
// lead, sent on to the leader.
type ForwardRequest struct {
	Origin  int             `json:"origin"`
	Body    json.RawMessage `json:"body"` // rlog.EncodeStatements
	Collect bool            `json:"collect,omitempty"`
	Ack     cluster.Ack     `json:"ack"`
	// RequestID is the write's idempotency key: the client's, or one the
	// node it entered at made. A forward sent again (after a broken connection) with
	// the same key applies at most once.
	RequestID string `json:"request_id"`
	// Schema: the write may change the schema (it came in on rqlite's
	// API, which sends every write to the leader). Each and Atomic: its
	// statements are independent (see rlog.Write).
	Schema bool `json:"schema,omitempty"`
	Each   bool `json:"each,omitempty"`
	Atomic bool `json:"atomic,omitempty"`
	// Replace: the write replaces the whole user database (a load).
	Replace bool `json:"replace,omitempty"`
	// Load: the write is one step of a load sent in several entries.
	Load *rlog.LoadStep `json:"load,omitempty"`
}

// ForwardResponse is the leader's answer to a forwarded write.
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
	// Have: wait_timeout, the index the node had applied.
	Have uint64 `json:"have,omitempty"`
}

// ErrPeerAuth: another node refused this node's signed request: the two
// do not share the cluster secret.
var ErrPeerAuth = errors.New("wrong cluster secret")

// JoinRefusedError: the leader will not take this node (its id is held
// by a live node, or the request is invalid). Retrying cannot help.
type JoinRefusedError struct{ Reason string }

func (e *JoinRefusedError) Error() string { return "the leader refused this node: " + e.Reason }

// Replicator is all the HTTP layer's client protocol needs from
// replication, whatever the engine: it never looks at roles beyond
// IsLeader.
type Replicator interface {
	// Write runs a client write through the log and waits for its ack
	// level (on a node that does not lead: forwards it, and answers once
	// this node has applied it).
	Write(ctx context.Context, req *store.Request, ack cluster.Ack) (store.Outcome, error)
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
	// Serving is nil while this node may answer clients at all, else why
	// not (an *UnavailableError): a node taken out of the cluster's
	// configuration while it ran no longer receives the log, and its data
	// stays as it was.
	Serving() error
}

// ErrUnavailable means no leader can be reached (or this node cannot
// serve yet): writes and strong reads answer 503.
var ErrUnavailable = errors.New("no leader can be reached")

// UnavailableError wraps ErrUnavailable with the reason.
type UnavailableError struct{ Reason string }

func (e *UnavailableError) Error() string {
	return e.Reason + "; nothing was applied: retry shortly (with the same request_id, if the write has one)"
}
func (e *UnavailableError) Unwrap() error { return ErrUnavailable }

// AckTimeoutError: the write is committed at Index, but its
// acknowledgement level was not reached in time. It will still replicate.
type AckTimeoutError struct {
	Index uint64
	Level string
	After time.Duration
}

func (e *AckTimeoutError) Error() string {
	return fmt.Sprintf("write committed at index %d, but not acknowledged at level %q within %v; it stays committed and keeps replicating", e.Index, e.Level, e.After)
}

// UnknownOutcomeError: the request reached the leader but no answer came
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
		sb *store.StepBudgetError
		ri *store.RequestIDReusedError
		at *AckTimeoutError
		wt *WaitTimeoutError
		uo *UnknownOutcomeError
		li *store.LoadInterruptedError
		et *store.EntryTooLargeError
	)
	switch {
	case errors.As(err, &et):
		return &WireError{Kind: "entry_too_large", Index: uint64(et.Bytes)}
	case errors.As(err, &li):
		return &WireError{Kind: "load_interrupted", Message: li.ID}
	case errors.As(err, &sb):
		return &WireError{Kind: "step_budget", Index: uint64(sb.Steps)}
	case errors.As(err, &ri):
		return &WireError{Kind: "request_id_reused", Message: ri.ID, Index: ri.Index}
	case errors.As(err, &wt):
		return &WireError{Kind: "wait_timeout", Message: wt.After.String(), Index: wt.Want, Have: wt.Have}
	case errors.As(err, &uo):
		return &WireError{Kind: "unknown_outcome", Message: uo.Reason}
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
	case "step_budget":
		return &store.StepBudgetError{Steps: int64(w.Index)}
	case "request_id_reused":
		return &store.RequestIDReusedError{ID: w.Message, Index: w.Index}
	case "wait_timeout":
		after, _ := time.ParseDuration(w.Message)
		return &WaitTimeoutError{Want: w.Index, Have: w.Have, After: after}
	case "unknown_outcome":
		return &UnknownOutcomeError{Reason: w.Message}
	case "entry_too_large":
		return &store.EntryTooLargeError{Bytes: int(w.Index)}
	case "load_interrupted":
		return &store.LoadInterruptedError{ID: w.Message}
	}
	// A kind this node does not know (a newer node's): its message, kept
	// whole, answered as an internal error.
	return fmt.Errorf("the leader answered an error of kind %q: %s", w.Kind, w.Message)
}
