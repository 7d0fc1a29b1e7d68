// Package errkind is the project's one error vocabulary. Every error type
// a request can meet carries its Kind (it implements Error), and the table
// below maps each kind to the HTTP status a client gets, the "kind" its
// JSON answer names (docs/PROTOCOL.md), and the name the kind travels
// under between nodes (a write forwarded to the leader comes back with its
// error in that form, see package replication).
package errkind

import (
	"errors"
	"net/http"
)

// Kind is one class of error, the same in every layer.
type Kind uint8

const (
	// Internal: an error the code does not know (a bug, or a newer node's
	// kind): 500.
	Internal Kind = iota
	// BadRequest: the request itself is malformed.
	BadRequest
	// Param: a statement's parameters do not fit it.
	Param
	// SQL: SQLite refused the statement (syntax, constraint, ...), the
	// same on every node.
	SQL
	// Forbidden: a statement outside the allowed set.
	Forbidden
	// Unauthorized: an anonymous request lacks a permission that
	// credentials may grant.
	Unauthorized
	// Permission: the user lacks a permission the request needs.
	Permission
	// Schema: a schema change where the policy allows none. The HTTP layer
	// resolves it into Permission, NotLeader or Unavailable by the node's
	// role; sent as is, it reads as NotLeader.
	Schema
	// NotLeader: the request must go to the leader (its URL is in the
	// answer).
	NotLeader
	// RequestIDReused: a request id already used for another write.
	RequestIDReused
	// TooLarge: a result over the configured rows or bytes.
	TooLarge
	// StepBudget: a write ran out of its step budget (400 too_large).
	StepBudget
	// EntryTooLarge: a write or load statement larger than one log entry
	// (413 too_large).
	EntryTooLarge
	// LoadInterrupted: another load replaced this one's staged part (409
	// conflict).
	LoadInterrupted
	// AckTimeout: committed, but the acknowledgement level was not reached
	// in time (the answer carries the index).
	AckTimeout
	// WaitTimeout: a read waited too long for this node to catch up.
	WaitTimeout
	// UnknownOutcome: the write may or may not be committed.
	UnknownOutcome
	// Unavailable: no leader, or this node cannot serve: retry.
	Unavailable
	// Deadline: the request ran past its deadline and was stopped.
	Deadline
	numKinds
)

// spec is what one kind means outside the process.
type spec struct {
	name   string // between nodes
	client string // in a client's answer
	status int
}

// table is the one map from a kind to its status and wire forms.
var table = [numKinds]spec{
	Internal:        {"internal", "internal", http.StatusInternalServerError},
	BadRequest:      {"bad_request", "bad_request", http.StatusBadRequest},
	Param:           {"param", "bad_request", http.StatusBadRequest},
	SQL:             {"sql", "sql", http.StatusBadRequest},
	Forbidden:       {"forbidden", "forbidden", http.StatusForbidden},
	Unauthorized:    {"unauthorized", "unauthorized", http.StatusUnauthorized},
	Permission:      {"permission", "permission", http.StatusForbidden},
	Schema:          {"schema", "not_leader", http.StatusForbidden},
	NotLeader:       {"not_leader", "not_leader", http.StatusForbidden},
	RequestIDReused: {"request_id_reused", "request_id_reused", http.StatusBadRequest},
	TooLarge:        {"too_large", "too_large", http.StatusBadRequest},
	StepBudget:      {"step_budget", "too_large", http.StatusBadRequest},
	EntryTooLarge:   {"entry_too_large", "too_large", http.StatusRequestEntityTooLarge},
	LoadInterrupted: {"load_interrupted", "conflict", http.StatusConflict},
	AckTimeout:      {"ack_timeout", "ack_timeout", http.StatusGatewayTimeout},
	WaitTimeout:     {"wait_timeout", "wait_timeout", http.StatusGatewayTimeout},
	UnknownOutcome:  {"unknown_outcome", "unknown_outcome", http.StatusGatewayTimeout},
	Unavailable:     {"unavailable", "unavailable", http.StatusServiceUnavailable},
	Deadline:        {"deadline", "deadline", http.StatusGatewayTimeout},
}

// Status is the HTTP status a client gets for the kind.
func (k Kind) Status() int { return k.spec().status }

// Client is the kind's name in a client's JSON answer.
func (k Kind) Client() string { return k.spec().client }

// String is the kind's name between nodes.
func (k Kind) String() string { return k.spec().name }

func (k Kind) spec() spec {
	if k >= numKinds {
		return table[Internal]
	}
	return table[k]
}

// Parse is the kind named name between nodes; false for a name this
// version does not know.
func Parse(name string) (Kind, bool) {
	for k, s := range table {
		if s.name == name {
			return Kind(k), true
		}
	}
	return Internal, false
}

// All lists every kind (for tests that walk the vocabulary).
func All() []Kind {
	out := make([]Kind, numKinds)
	for k := range out {
		out[k] = Kind(k)
	}
	return out
}

// Error is an error that knows its kind.
type Error interface {
	error
	Kind() Kind
}

// Of is the kind of the first error in err's chain that knows its kind
// (Internal if none does), and that error.
func Of(err error) (Kind, error) {
	var e Error
	if errors.As(err, &e) {
		return e.Kind(), e
	}
	return Internal, err
}

// Sentinel is an error value with a kind and nothing else to say; wrap it
// (fmt.Errorf("...: %w", s)) to add detail, and compare with errors.Is.
type Sentinel struct {
	kind Kind
	msg  string
}

// New makes a sentinel error of kind k.
func New(k Kind, msg string) *Sentinel { return &Sentinel{kind: k, msg: msg} }

func (e *Sentinel) Error() string { return e.msg }

// Kind is the sentinel's kind.
func (e *Sentinel) Kind() Kind { return e.kind }

// Message is an error of a kind with only its message, as another node
// sent it.
type Message struct {
	K   Kind
	Msg string
}

func (e *Message) Error() string { return e.Msg }

// Kind is the error's kind.
func (e *Message) Kind() Kind { return e.K }
