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
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/errkind"
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
	// SetChanges: the write sets the change stream (see rlog.Write).
	SetChanges  bool  `json:"set_changes,omitempty"`
	ChangesKeep int64 `json:"changes_keep,omitempty"`
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
	// WaitLeader waits until a leader is known, while an election may
	// still produce one; false when none is (no majority is reachable).
	WaitLeader(ctx context.Context) bool
	// Learner reports whether this node receives the log without voting.
	Learner() bool
	// SinceLeaderContact is how long ago a leader last reached this node
	// (0 on the leader).
	SinceLeaderContact() time.Duration
}

// ErrUnavailable means no leader can be reached (or this node cannot
// serve yet): writes and strong reads answer 503.
var ErrUnavailable error = errkind.New(errkind.Unavailable, "no leader can be reached")

// UnavailableError wraps ErrUnavailable with the reason.
type UnavailableError struct{ Reason string }

func (e *UnavailableError) Error() string {
	return e.Reason + "; nothing was applied: retry shortly (with the same request_id, if the write has one)"
}
func (e *UnavailableError) Unwrap() error { return ErrUnavailable }

// The kinds of replication's errors (see package errkind).

func (e *UnavailableError) Kind() errkind.Kind    { return errkind.Unavailable }
func (e *AckTimeoutError) Kind() errkind.Kind     { return errkind.AckTimeout }
func (e *UnknownOutcomeError) Kind() errkind.Kind { return errkind.UnknownOutcome }
func (e *WaitTimeoutError) Kind() errkind.Kind    { return errkind.WaitTimeout }

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

// ToWireError describes err for a forward response: its kind's name
// (package errkind) and the fields its codec carries.
func ToWireError(err error) *WireError {
	k, e := errkind.Of(err)
	w := &WireError{Kind: k.String(), Message: message(err, e)}
	if c, ok := codecs[k]; ok {
		c.encode(e, w)
	}
	return w
}

// FromWireError turns a forward response's error back into the error type.
// A kind this node knows but has no codec for comes back with its kind and
// message; a kind it does not know (a newer node's) is kept whole, as an
// internal error.
func FromWireError(w *WireError, ackTimeout time.Duration) error {
	k, ok := errkind.Parse(w.Kind)
	if !ok || k == errkind.Internal {
		return fmt.Errorf("the leader answered an error of kind %q: %s", w.Kind, w.Message)
	}
	if c, ok := codecs[k]; ok {
		return c.decode(w, ackTimeout)
	}
	return &errkind.Message{K: k, Msg: w.Message}
}

// message is what err says, e being the error of its chain that knows its
// kind: e's own words, or the whole chain's for a sentinel (whose wrappers
// carry the detail).
func message(err, e error) string {
	if _, ok := e.(*errkind.Sentinel); ok {
		return err.Error()
	}
	return e.Error()
}

// codec carries one kind's fields across a forward.
type codec struct {
	encode func(e error, w *WireError)
	decode func(w *WireError, ackTimeout time.Duration) error
}

// codecOf is the codec of the kind whose errors are T's: a T's fields go in
// the wire form; an error of the kind that is not a T keeps its message.
func codecOf[T errkind.Error](enc func(T, *WireError), dec func(*WireError, time.Duration) T) codec {
	return codec{
		encode: func(e error, w *WireError) {
			if t, ok := e.(T); ok {
				enc(t, w)
			}
		},
		decode: func(w *WireError, d time.Duration) error { return dec(w, d) },
	}
}

// codecs: the wire form of each kind a leader can answer a forward with.
var codecs = map[errkind.Kind]codec{
	errkind.Forbidden: codecOf(func(e *store.ForbiddenError, w *WireError) { w.Message = e.Reason },
		func(w *WireError, _ time.Duration) *store.ForbiddenError {
			return &store.ForbiddenError{Reason: w.Message}
		}),
	errkind.Schema: codecOf(func(e *store.SchemaDeniedError, w *WireError) { w.Message = e.Statement },
		func(w *WireError, _ time.Duration) *store.SchemaDeniedError {
			return &store.SchemaDeniedError{Statement: w.Message}
		}),
	errkind.SQL: codecOf(func(e *store.SQLError, w *WireError) { w.Message = e.Error() },
		func(w *WireError, _ time.Duration) *store.SQLError {
			return &store.SQLError{Err: errors.New(w.Message)}
		}),
	errkind.Param: codecOf(func(e *store.ParamError, w *WireError) { w.Message = e.Msg },
		func(w *WireError, _ time.Duration) *store.ParamError { return &store.ParamError{Msg: w.Message} }),
	errkind.TooLarge: codecOf(func(e *store.ResultTooLargeError, w *WireError) { w.Message = e.What },
		func(w *WireError, _ time.Duration) *store.ResultTooLargeError {
			return &store.ResultTooLargeError{What: w.Message}
		}),
	errkind.StepBudget: codecOf(func(e *store.StepBudgetError, w *WireError) { w.Index = uint64(e.Steps) },
		func(w *WireError, _ time.Duration) *store.StepBudgetError {
			return &store.StepBudgetError{Steps: int64(w.Index)}
		}),
	errkind.RequestIDReused: codecOf(func(e *store.RequestIDReusedError, w *WireError) { w.Message, w.Index = e.ID, e.Index },
		func(w *WireError, _ time.Duration) *store.RequestIDReusedError {
			return &store.RequestIDReusedError{ID: w.Message, Index: w.Index}
		}),
	errkind.EntryTooLarge: codecOf(func(e *store.EntryTooLargeError, w *WireError) {
		w.Index, w.Message = uint64(e.Bytes), ""
		if e.Load {
			w.Message = "load"
		}
	}, func(w *WireError, _ time.Duration) *store.EntryTooLargeError {
		return &store.EntryTooLargeError{Bytes: int(w.Index), Load: w.Message == "load"}
	}),
	errkind.LoadInterrupted: codecOf(func(e *store.LoadInterruptedError, w *WireError) { w.Message = e.ID },
		func(w *WireError, _ time.Duration) *store.LoadInterruptedError {
			return &store.LoadInterruptedError{ID: w.Message}
		}),
	errkind.AckTimeout: codecOf(func(e *AckTimeoutError, w *WireError) { w.Message, w.Index = e.Level, e.Index },
		func(w *WireError, d time.Duration) *AckTimeoutError {
			return &AckTimeoutError{Index: w.Index, Level: w.Message, After: d}
		}),
	errkind.WaitTimeout: codecOf(func(e *WaitTimeoutError, w *WireError) {
		w.Message, w.Index, w.Have = e.After.String(), e.Want, e.Have
	}, func(w *WireError, _ time.Duration) *WaitTimeoutError {
		after, _ := time.ParseDuration(w.Message)
		return &WaitTimeoutError{Want: w.Index, Have: w.Have, After: after}
	}),
	errkind.UnknownOutcome: codecOf(func(e *UnknownOutcomeError, w *WireError) { w.Message = e.Reason },
		func(w *WireError, _ time.Duration) *UnknownOutcomeError {
			return &UnknownOutcomeError{Reason: w.Message}
		}),
	// Any unavailable error (a sentinel, a node not a member, ...) comes
	// back as an UnavailableError with its message; the receiver's
	// UnavailableError says the rest.
	errkind.Unavailable: codecOf(func(e *UnavailableError, w *WireError) { w.Message = e.Reason },
		func(w *WireError, _ time.Duration) *UnavailableError { return &UnavailableError{Reason: w.Message} }),
}
