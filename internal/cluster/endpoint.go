package cluster

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// PeerProtocol is the version of the node-to-node protocol this build
// speaks (see HeaderProtocol). A node refuses requests of a later version
// with 400 and says so; a later version reads this one's.
const PeerProtocol = 1

// RequestProtocol is the protocol version r was sent with (1 when it
// does not say: a node that predates the header).
func RequestProtocol(r *http.Request) (int, error) {
	v := r.Header.Get(HeaderProtocol)
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bad %s header %q", HeaderProtocol, v)
	}
	return n, nil
}

// Endpoint describes a node-to-node endpoint for PeerEndpoint: what its
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
	// Error writes a refusal (nil: http.Error, as text).
	Error func(w http.ResponseWriter, status int, msg string)
}

// PeerEndpoint wraps a node-to-node endpoint, the one way every such
// endpoint is authenticated: POST only (else 405); a request without a
// signature is refused (403) before anything in it is read; the signature
// is checked (403) over the body, or over what Covered says for a
// streamed body, before the handler sees anything; a request of a later
// protocol version than this node's is refused (400, saying so). Every
// answer carries this node's version. The handler gets the body when it
// was read whole (nil otherwise).
func (a *Auth) PeerEndpoint(e Endpoint, h func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	fail := e.Error
	if fail == nil {
		fail = func(w http.ResponseWriter, status int, msg string) { http.Error(w, msg, status) }
	}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderProtocol, strconv.Itoa(PeerProtocol))
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			fail(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		if !Signed(r) {
			if e.Refused != nil {
				e.Refused(r, ErrNoSignature)
			}
			fail(w, http.StatusForbidden, ErrNoSignature.Error())
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
		if err := a.Verify(r, BodyHash(covered)); err != nil {
			if e.Refused != nil {
				e.Refused(r, err)
			}
			fail(w, http.StatusForbidden, err.Error())
			return
		}
		if v, err := RequestProtocol(r); err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		} else if v > PeerProtocol {
			fail(w, http.StatusBadRequest, fmt.Sprintf("the node at %s speaks node-to-node protocol %d, this one %d: upgrade this node too", r.RemoteAddr, v, PeerProtocol))
			return
		}
		h(w, r, body)
	}
}
