package peer

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/cluster"
)

// A copy of the leader's database reaches a repairing follower only when
// it is authenticated: its index and SHA-256 under a MAC keyed by the
// cluster secret and the follower's own request. A copy from a node with
// another secret, one whose MAC belongs to another request, and one
// altered on the way are refused and leave no file behind.
func TestACopyForARepairIsAuthenticated(t *testing.T) {
	body := []byte("the leader's database")
	sum := sha256.Sum256(body)
	hexSum := hex.EncodeToString(sum[:])
	var macOf func(r *http.Request) string
	send := body
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(headerCopyIndex, "42")
		w.Header().Set(headerCopySHA256, hexSum)
		w.Header().Set(headerCopyMAC, macOf(r))
		w.Write(send)
	}))
	defer srv.Close()
	own := cluster.NewAuth("the secret", nil)
	tr := NewClient(own, "slave2", nil, cluster.DefaultTiming())
	dir := t.TempDir()
	fetch := func() (string, uint64, error) { return tr.FetchCopy(t.Context(), srv.URL, dir) }

	macOf = func(r *http.Request) string { return own.CopyMAC(r, 42, hexSum) }
	path, index, err := fetch()
	if err != nil || index != 42 {
		t.Fatalf("an authenticated copy: %v %v", index, err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(body) {
		t.Fatalf("the copy received: %q", got)
	}
	os.Remove(path)

	other := cluster.NewAuth("another secret", nil)
	var earlier *http.Request
	for name, mac := range map[string]func(r *http.Request) string{
		"another secret": func(r *http.Request) string { return other.CopyMAC(r, 42, hexSum) },
		"another index":  func(r *http.Request) string { return own.CopyMAC(r, 41, hexSum) },
		"a replayed answer": func(r *http.Request) string {
			if earlier == nil {
				earlier = r.Clone(r.Context())
				earlier.Header.Set(cluster.HeaderNonce, "0123")
			}
			return own.CopyMAC(earlier, 42, hexSum)
		},
	} {
		macOf = mac
		if _, _, err := fetch(); err == nil || !strings.Contains(err.Error(), "not authenticated") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	macOf = func(r *http.Request) string { return own.CopyMAC(r, 42, hexSum) }
	send = []byte("the leader's databasX")
	if _, _, err := fetch(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("an altered copy: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("refused copies left %d files", len(left))
	}
}
