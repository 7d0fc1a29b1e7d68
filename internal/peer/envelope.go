// Package peer is all of the node-to-node HTTP: one client that signs
// every request (Client), one middleware that authenticates every
// endpoint (Serve), one versioned envelope (the header HeaderVersion on
// every request and answer), and one frame format for Raft messages
// (EncodeFrame). Over them run the Raft transport (RaftTransport: batches
// over streams, snapshots) and the other calls (a write forwarded to the
// leader, a node announcing itself, ack=all, consistency checks, a repair's
// copy, the console's status), with the endpoints that answer them
// (Handlers).
package peer

import (
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/ddbgo/ddb/internal/cluster"
)

// The node-to-node endpoints.
const (
	RaftPath         = "/_ddb/raft"          // a batch of Raft messages (one frame)
	StreamPath       = "/_ddb/raft/stream"   // a long-lived stream of frames
	SnapshotPath     = "/_ddb/raft/snapshot" // a copy of the leader's database
	ForwardPath      = "/_ddb/forward"       // a write forwarded to the leader
	ForwardBatchPath = "/_ddb/forward-batch" // several of them
	JoinPath         = "/_ddb/join"          // a node announcing itself
	AppliedPath      = "/_ddb/applied"       // ack=all: has a node applied an index?
	DigestPath       = "/_ddb/digest"        // a consistency check's digest
	CopyPath         = "/_ddb/copy"          // a repair's copy of the leader's database
	StatusPath       = "/_ddb/status"        // a node's status, for another's console
)

// Version is the version of the node-to-node protocol this build speaks.
// A node refuses requests of a later version with 400 and says so; it
// reads every earlier one. Versions:
//
//	1: a leader's applied index rides as a marked MsgHup among the
//	   messages (see decodeFrameV1).
//	2: a frame starts with the applied index (EncodeFrame).
//	3: a snapshot's SHA-256 follows it, in a trailer (see snapshot.go).
const Version = 3

// HeaderVersion carries Version on every peer request and answer, so
// that nodes of different versions (a rolling upgrade) tell each other
// apart. A request without it comes from a node that predates it: 1.
const HeaderVersion = cluster.HeaderProtocol

// RequestVersion is the protocol version r was sent with (1 when it does
// not say: a node that predates the header).
func RequestVersion(r *http.Request) (int, error) {
	v := r.Header.Get(HeaderVersion)
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bad %s header %q", HeaderVersion, v)
	}
	return n, nil
}

// Sign signs r (whose body, or what stands for it, hashes to bodyHash) as
// node, in this build's version of the envelope.
func Sign(auth *cluster.Auth, r *http.Request, node string, bodyHash []byte) {
	signAs(auth, r, node, bodyHash, Version)
}

// signAs signs r in version v of the envelope (the signature covers it).
func signAs(auth *cluster.Auth, r *http.Request, node string, bodyHash []byte, v int) {
	r.Header.Set(HeaderVersion, strconv.Itoa(v))
	auth.Sign(r, node, bodyHash)
}

// Endpoint describes a node-to-node endpoint for Serve: what its
// requests' signatures cover, and how it answers a refusal.
type Endpoint struct {
	// MaxBody > 0: the body is read whole (at most MaxBody bytes, else
	// 413) and the signature covers it. 0: the body is the handler's to
	// stream, and the signature covers Covered(r).
	MaxBody int64
	// Covered is what the signature of a request whose body is streamed
	// covers (nil: an empty body). An error is the request's fault (400).
	Covered func(r *http.Request) ([]byte, error)
	// Refused is told of every request refused for its signature (nil:
	// nobody).
	Refused func(r *http.Request, err error)
	// Error writes a refusal (nil: writeError, as JSON).
	Error func(w http.ResponseWriter, status int, msg string)
}

// Handler is a node-to-node endpoint's own work, once Serve has
// authenticated the request: body is the request's body when it was read
// whole (nil otherwise), and version the envelope's.
type Handler func(w http.ResponseWriter, r *http.Request, body []byte, version int)

// Serve wraps a node-to-node endpoint, the one way every such endpoint is
// authenticated: POST only (else 405); a request without a signature is
// refused (403) before anything in it is read; the signature is checked
// (403) over the body, or over what Covered says for a streamed body,
// before the handler sees anything; a request of a later protocol
// version than this node's is refused (400, saying so). Every answer
// carries this node's version.
func Serve(auth *cluster.Auth, e Endpoint, h Handler) http.HandlerFunc {
	fail := e.Error
	if fail == nil {
		fail = writeError
	}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderVersion, strconv.Itoa(Version))
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			fail(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		if !cluster.Signed(r) {
			if e.Refused != nil {
				e.Refused(r, cluster.ErrNoSignature)
			}
			fail(w, http.StatusForbidden, cluster.ErrNoSignature.Error())
			return
		}
		var body, covered []byte
		if e.MaxBody > 0 {
			var err error
			if body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, e.MaxBody)); err != nil {
				fail(w, http.StatusRequestEntityTooLarge, "peer request too large")
				return
			}
			covered = body
		} else if e.Covered != nil {
			var err error
			if covered, err = e.Covered(r); err != nil {
				fail(w, http.StatusBadRequest, err.Error())
				return
			}
		}
		if err := auth.Verify(r, cluster.BodyHash(covered)); err != nil {
			if e.Refused != nil {
				e.Refused(r, err)
			}
			fail(w, http.StatusForbidden, err.Error())
			return
		}
		v, err := RequestVersion(r)
		if err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		}
		if v > Version {
			fail(w, http.StatusBadRequest, fmt.Sprintf("the node at %s speaks node-to-node protocol %d, this one %d: upgrade this node too", r.RemoteAddr, v, Version))
			return
		}
		h(w, r, body, v)
	}
}
