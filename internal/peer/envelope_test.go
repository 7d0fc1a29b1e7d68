package peer

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/ddbgo/ddb/internal/cluster"
)

// unreadable is a body that fails the test if anything reads it.
type unreadable struct{ t *testing.T }

func (u unreadable) Read([]byte) (int, error) {
	u.t.Error("the body of a request refused for its signature was read")
	return 0, io.EOF
}

// Every node-to-node endpoint is authenticated the same way: POST only, an
// unsigned request refused before its body is read, the signature checked
// over the body (or what a streamed body's headers carry) before the
// handler sees anything, and every refusal reported.
func TestEveryPeerEndpointIsAuthenticatedTheSameWay(t *testing.T) {
	auth, other := cluster.NewAuth("0123456789abcdef0123456789abcdef", nil), cluster.NewAuth("another secret, another cluster.", nil)
	var refusals int
	var got []byte
	whole := Serve(auth, Endpoint{MaxBody: 16, Refused: func(*http.Request, error) { refusals++ }},
		func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
			got = body
			w.WriteHeader(http.StatusNoContent)
		})
	streamed := Serve(auth, Endpoint{Covered: func(r *http.Request) ([]byte, error) {
		if r.Header.Get("X-Covered") == "" {
			return nil, errors.New("no covered header")
		}
		return []byte(r.Header.Get("X-Covered")), nil
	}}, func(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
		if body != nil {
			t.Error("a streamed body was read for the handler")
		}
		w.WriteHeader(http.StatusNoContent)
	})
	do := func(h http.HandlerFunc, method string, body io.Reader, prep func(*http.Request)) int {
		r := httptest.NewRequest(method, "/_ddb/x", body)
		if prep != nil {
			prep(r)
		}
		w := httptest.NewRecorder()
		h(w, r)
		return w.Code
	}
	signWith := func(a *cluster.Auth, body []byte) func(*http.Request) {
		return func(r *http.Request) { a.Sign(r, "node", cluster.BodyHash(body)) }
	}
	cases := []struct {
		name string
		code int
		run  func() int
	}{
		{"GET is not allowed", 405, func() int { return do(whole, http.MethodGet, nil, nil) }},
		{"an unsigned request is refused unread", 403, func() int { return do(whole, http.MethodPost, unreadable{t}, nil) }},
		{"another cluster's signature is refused", 403, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), signWith(other, []byte("hi")))
		}},
		{"a signature over another body is refused", 403, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), signWith(auth, []byte("ho")))
		}},
		{"a body over the limit is refused", 413, func() int {
			b := bytes.Repeat([]byte("x"), 17)
			return do(whole, http.MethodPost, bytes.NewReader(b), signWith(auth, b))
		}},
		{"a signed body reaches the handler", 204, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), signWith(auth, []byte("hi")))
		}},
		{"a request of a later protocol is refused, saying so", 400, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), func(r *http.Request) {
				r.Header.Set(HeaderVersion, strconv.Itoa(Version+1))
				auth.Sign(r, "node", cluster.BodyHash([]byte("hi")))
			})
		}},
		{"a signature covers the version it was made for", 403, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), func(r *http.Request) {
				Sign(auth, r, "node", cluster.BodyHash([]byte("hi")))
				r.Header.Set(HeaderVersion, "1")
			})
		}},
		{"a request in this version reaches the handler", 204, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), func(r *http.Request) {
				Sign(auth, r, "node", cluster.BodyHash([]byte("hi")))
			})
		}},
		{"a request that predates the protocol header is taken", 204, func() int {
			return do(whole, http.MethodPost, bytes.NewReader([]byte("hi")), func(r *http.Request) {
				auth.Sign(r, "node", cluster.BodyHash([]byte("hi")))
				r.Header.Del(HeaderVersion)
			})
		}},
		{"a streamed request without what its signature covers is bad", 400, func() int {
			return do(streamed, http.MethodPost, unreadable{t}, signWith(auth, nil))
		}},
		{"a streamed request signed over its headers reaches the handler", 204, func() int {
			return do(streamed, http.MethodPost, unreadable{t}, func(r *http.Request) {
				r.Header.Set("X-Covered", "m")
				auth.Sign(r, "node", cluster.BodyHash([]byte("m")))
			})
		}},
	}
	for _, c := range cases {
		if code := c.run(); code != c.code {
			t.Errorf("%s: %d, want %d", c.name, code, c.code)
		}
	}
	if refusals != 4 {
		t.Errorf("%d refusals reported, want 4 (unsigned, other cluster, other body, other version)", refusals)
	}
	if string(got) != "hi" {
		t.Errorf("the handler got body %q", got)
	}
}
