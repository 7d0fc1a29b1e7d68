package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Error is an error a node answered that has no type of its own here
// (a bad request, a permission, a forbidden statement...). Kind is the
// protocol's stable name for it (docs/PROTOCOL.md).
type Error struct {
	Status  int    // HTTP status (0: no node answered)
	Kind    string // "bad_request", "permission", "forbidden", ...
	Message string
	Index   uint64 // for ack_timeout: the committed write's index
	Leader  string // for not_leader: the leader's URL
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return e.Message
	}
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Kind)
}

// SQLError: SQLite refused the statement (syntax, constraint, missing
// table...). Nothing was applied; sending it again fails the same way.
type SQLError struct{ Message string }

func (e *SQLError) Error() string { return "SQL error: " + e.Message }

// ErrNoLeader is what a *NoLeaderError matches with errors.Is.
var ErrNoLeader = errors.New("no leader")

// NoLeaderError: no node could serve the call before the retry timeout
// (an election that did not end, a majority down, every node
// unreachable). A write answered so was not applied.
type NoLeaderError struct{ Message string }

func (e *NoLeaderError) Error() string {
	return "no leader could serve the request (nothing was applied): " + e.Message
}

// Is makes errors.Is(err, ErrNoLeader) true.
func (e *NoLeaderError) Is(target error) bool { return target == ErrNoLeader }

// NotLeaderError: the node that answered does not lead, and the leader it
// named could not be reached in time.
type NotLeaderError struct {
	Leader  string // the leader's URL, as the node knew it
	Message string
}

func (e *NotLeaderError) Error() string { return "not the leader: " + e.Message }

// TimeoutError: the call ran out of time. OutcomeKnown says whether the
// client knows what became of a write: Committed (the write is in the log
// at Index; its ack level was not reached in time, and it keeps
// replicating) or not applied. When the outcome is unknown, send the write
// again with RequestID (the protocol's request_id): it applies at most
// once.
type TimeoutError struct {
	OutcomeKnown bool
	Committed    bool
	Index        uint64
	RequestID    string
	Message      string
}

func (e *TimeoutError) Error() string { return "timeout: " + e.Message }

// parseError reads a node's error answer.
func parseError(status int, body []byte) *Error {
	var b struct {
		Error  string `json:"error"`
		Kind   string `json:"kind"`
		Index  uint64 `json:"index"`
		Leader string `json:"leader"`
	}
	if json.Unmarshal(body, &b) != nil || b.Error == "" {
		b.Error = string(body)
	}
	if b.Kind == "" {
		switch status {
		case http.StatusServiceUnavailable:
			b.Kind = "unavailable"
		case http.StatusUnauthorized:
			b.Kind = "unauthorized"
		default:
			b.Kind = "bad_request"
		}
	}
	return &Error{Status: status, Kind: b.Kind, Message: b.Error, Index: b.Index, Leader: b.Leader}
}
