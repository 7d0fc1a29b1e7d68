// Package cluster holds what nodes agree on to talk to each other: the
// node configuration (roles, ports, URLs), the cluster secret, and the
// authentication of node-to-node requests.
package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Header names of a signed peer request.
const (
	HeaderTime      = "X-Ddb-Time"
	HeaderNonce     = "X-Ddb-Nonce"
	HeaderSignature = "X-Ddb-Signature"
	HeaderNode      = "X-Ddb-Node"
	// HeaderProtocol carries the version of the node-to-node protocol
	// (see peer.Version). From version 2 on the signature covers it, so
	// that a frame cannot be read as another version's.
	HeaderProtocol = "X-Ddb-Peer-Protocol"
)

// Window is how far a peer request's timestamp may be from the receiver's
// clock. Nonces are remembered for twice as long, so a request cannot be
// replayed while its timestamp is still acceptable.
const Window = 30 * time.Second

// Auth signs and verifies peer requests with the cluster secret: an
// HMAC-SHA256 over the method, the path and query, the node name, a
// timestamp, a random nonce and the SHA-256 of the body. A signature
// cannot be lifted onto another request (any change breaks it) nor
// replayed (the nonce is remembered until the timestamp is too old).
type Auth struct {
	key     []byte
	now     func() time.Time
	mu      sync.Mutex
	seen    map[string]struct{} // nonces since rotated
	prev    map[string]struct{} // nonces of the window before
	rotated time.Time
}

// NewAuth returns an Auth for secret. now may be nil (time.Now).
func NewAuth(secret string, now func() time.Time) *Auth {
	if now == nil {
		now = time.Now
	}
	return &Auth{key: []byte(secret), now: now, seen: map[string]struct{}{}, prev: map[string]struct{}{}, rotated: now()}
}

// BodyHash is the SHA-256 of a request body, as Sign and Verify take it.
func BodyHash(body []byte) []byte {
	h := sha256.Sum256(body)
	return h[:]
}

func (a *Auth) mac(method, uri, node, ts, nonce, version string, bodyHash []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	fmt.Fprintf(m, "%s\n%s\n%s\n%s\n%s\n", method, uri, node, ts, nonce)
	if version != "" && version != "1" {
		fmt.Fprintf(m, "v%s\n", version)
	}
	m.Write(bodyHash)
	return m.Sum(nil)
}

// Sign adds the authentication headers to r, whose body hashes to
// bodyHash. The signature covers r's HeaderProtocol, set beforehand.
func (a *Auth) Sign(r *http.Request, node string, bodyHash []byte) {
	var n [16]byte
	_, _ = rand.Read(n[:])
	nonce := hex.EncodeToString(n[:])
	ts := strconv.FormatInt(a.now().UnixMilli(), 10)
	r.Header.Set(HeaderNode, node)
	r.Header.Set(HeaderTime, ts)
	r.Header.Set(HeaderNonce, nonce)
	r.Header.Set(HeaderSignature, hex.EncodeToString(a.mac(r.Method, r.URL.RequestURI(), node, ts, nonce, r.Header.Get(HeaderProtocol), bodyHash)))
}

// Errors Verify returns.
var (
	ErrNoSignature  = errors.New("peer request is not signed")
	ErrBadSignature = errors.New("peer request signature does not match (wrong cluster secret, or the request was altered)")
	ErrStale        = errors.New("peer request timestamp is outside the accepted window (replayed, or the clocks differ by more than 30s)")
	ErrReplayed     = errors.New("peer request was already received once (replay)")
)

// Signed reports whether r carries a peer signature at all.
func Signed(r *http.Request) bool { return r.Header.Get(HeaderSignature) != "" }

// Verify checks r's signature for a body that hashes to bodyHash, and
// remembers its nonce so the same request is refused next time.
func (a *Auth) Verify(r *http.Request, bodyHash []byte) error {
	sig, ts, nonce, node := r.Header.Get(HeaderSignature), r.Header.Get(HeaderTime), r.Header.Get(HeaderNonce), r.Header.Get(HeaderNode)
	if sig == "" || ts == "" || nonce == "" {
		return ErrNoSignature
	}
	// Exactly one encoding of the signature is accepted (lowercase hex),
	// compared in constant time: a signature cannot be re-encoded into a
	// "different" request.
	want := hex.EncodeToString(a.mac(r.Method, r.URL.RequestURI(), node, ts, nonce, r.Header.Get(HeaderProtocol), bodyHash))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return ErrBadSignature
	}
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrBadSignature
	}
	now := a.now()
	if d := now.Sub(time.UnixMilli(ms)); d > Window || d < -Window {
		return ErrStale
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// Two generations of nonces, each at least Window long, cover every
	// timestamp that is still accepted.
	if now.Sub(a.rotated) > Window {
		a.prev, a.seen, a.rotated = a.seen, map[string]struct{}{}, now
	}
	_, dup1 := a.seen[nonce]
	_, dup2 := a.prev[nonce]
	if dup1 || dup2 {
		return ErrReplayed
	}
	a.seen[nonce] = struct{}{}
	return nil
}

// SessionKey is a key that the two ends of a signed request r derive, and
// nobody without the cluster secret can: it authenticates the frames of a
// stream that the request opens (see peer.StreamPath). It differs for
// every request (the nonce) and from r's signature, which travels in clear.
func (a *Auth) SessionKey(r *http.Request) []byte {
	return a.mac("SESSION", r.URL.RequestURI(), r.Header.Get(HeaderNode), r.Header.Get(HeaderTime), r.Header.Get(HeaderNonce), r.Header.Get(HeaderProtocol), nil)
}

// CopyMAC authenticates a copy of a database sent in answer to the signed
// request r: both ends compute it over the copy's index and SHA-256 with
// r's session key (see SessionKey), so the receiver knows the copy comes
// from a node of the cluster, in answer to this very request.
func (a *Auth) CopyMAC(r *http.Request, index uint64, sum string) string {
	m := hmac.New(sha256.New, a.SessionKey(r))
	fmt.Fprintf(m, "COPY\n%d\n%s", index, sum)
	return hex.EncodeToString(m.Sum(nil))
}
