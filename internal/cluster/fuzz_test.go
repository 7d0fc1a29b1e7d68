package cluster

import (
	"bytes"
	"net/http"
	"testing"
)

// FuzzVerify: no header values or body make Verify panic or accept a
// request the secret did not sign.
func FuzzVerify(f *testing.F) {
	a := NewAuth("secret", nil)
	good, _ := http.NewRequest("POST", "http://n/_ddb/append", bytes.NewBufferString("body"))
	a.Sign(good, "master", BodyHash([]byte("body")))
	f.Add("master", good.Header.Get(HeaderTime), good.Header.Get(HeaderNonce), good.Header.Get(HeaderSignature), []byte("other body"))
	f.Add("", "", "", "", []byte{})
	f.Add("slave1", "99999999999999999999", "n", "zz", []byte("x"))
	f.Fuzz(func(t *testing.T, node, ts, nonce, sig string, body []byte) {
		r, _ := http.NewRequest("POST", "http://n/_ddb/append", bytes.NewReader(body))
		r.Header.Set(HeaderNode, node)
		r.Header.Set(HeaderTime, ts)
		r.Header.Set(HeaderNonce, nonce)
		r.Header.Set(HeaderSignature, sig)
		if err := NewAuth("secret", nil).Verify(r, BodyHash(body)); err == nil {
			t.Fatalf("accepted a forged request: node=%q ts=%q nonce=%q sig=%q", node, ts, nonce, sig)
		}
	})
}
