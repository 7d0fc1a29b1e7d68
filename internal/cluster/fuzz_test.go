package cluster

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"testing"
	"time"
)

// FuzzVerify: no header values or body make Verify panic or accept any
// request but the one the secret signed, exactly as it was signed.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	a := NewAuth("secret", clock)
	// The one genuine request, signed with a fixed nonce so that every
	// fuzzing process agrees on it.
	ts, nonce := "1800000000000", "00112233445566778899aabbccddeeff"
	genuine := [4]string{"master", ts, nonce, hex.EncodeToString(a.mac("POST", "/_ddb/forward", "master", ts, nonce, "", BodyHash([]byte("body"))))}
	good, _ := http.NewRequest("POST", "http://n/_ddb/forward", bytes.NewBufferString("body"))
	good.Header.Set(HeaderTime, ts)
	good.Header.Set(HeaderNonce, nonce)
	good.Header.Set(HeaderSignature, genuine[3])
	f.Add("master", good.Header.Get(HeaderTime), good.Header.Get(HeaderNonce), good.Header.Get(HeaderSignature), []byte("other body"))
	f.Add("", "", "", "", []byte{})
	f.Add("slave1", "99999999999999999999", "n", "zz", []byte("x"))
	f.Fuzz(func(t *testing.T, node, ts, nonce, sig string, body []byte) {
		r, _ := http.NewRequest("POST", "http://n/_ddb/forward", bytes.NewReader(body))
		r.Header.Set(HeaderNode, node)
		r.Header.Set(HeaderTime, ts)
		r.Header.Set(HeaderNonce, nonce)
		r.Header.Set(HeaderSignature, sig)
		err := NewAuth("secret", clock).Verify(r, BodyHash(body))
		if err == nil && ([4]string{node, ts, nonce, sig} != genuine || string(body) != "body") {
			t.Fatalf("accepted a forged request: node=%q ts=%q nonce=%q sig=%q", node, ts, nonce, sig)
		}
	})
}
