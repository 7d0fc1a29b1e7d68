package cluster

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func signed(a *Auth, body string) *http.Request {
	r, _ := http.NewRequest("POST", "http://n/_ddb/raft?x=1", bytes.NewBufferString(body))
	a.Sign(r, "master", BodyHash([]byte(body)))
	return r
}

func TestPeerSignatureAcceptsTheSignedRequestOnce(t *testing.T) {
	a := NewAuth("s3cret", nil)
	r := signed(a, `{"entries":[]}`)
	if err := a.Verify(r, BodyHash([]byte(`{"entries":[]}`))); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(r, BodyHash([]byte(`{"entries":[]}`))); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
}

func TestPeerSignatureRefusesTamperingWrongSecretAndNoSignature(t *testing.T) {
	a := NewAuth("s3cret", nil)
	body := `{"entries":[]}`
	r := signed(a, body)
	if err := a.Verify(r, BodyHash([]byte(`{"entries":[1]}`))); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered body: %v", err)
	}
	r = signed(a, body)
	r.URL.Path = "/_ddb/join"
	if err := a.Verify(r, BodyHash([]byte(body))); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("lifted onto another path: %v", err)
	}
	r = signed(a, body)
	r.Header.Set(HeaderNode, "slave9")
	if err := a.Verify(r, BodyHash([]byte(body))); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("other node name: %v", err)
	}
	other := NewAuth("other", nil)
	if err := other.Verify(signed(a, body), BodyHash([]byte(body))); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong secret: %v", err)
	}
	plain, _ := http.NewRequest("POST", "http://n/_ddb/raft", nil)
	if err := a.Verify(plain, BodyHash(nil)); !errors.Is(err, ErrNoSignature) {
		t.Fatalf("unsigned: %v", err)
	}
}

func TestPeerSignatureRefusesStaleTimestamps(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	a := NewAuth("k", clock)
	r := signed(a, "x")
	now = now.Add(Window + time.Second)
	if err := a.Verify(r, BodyHash([]byte("x"))); !errors.Is(err, ErrStale) {
		t.Fatalf("stale: %v", err)
	}
	// Nonces are remembered across the window rotation.
	now = time.Unix(1_900_000_000, 0)
	r = signed(a, "y")
	if err := a.Verify(r, BodyHash([]byte("y"))); err != nil {
		t.Fatal(err)
	}
	now = now.Add(Window/2 + time.Second)
	a.Verify(signed(a, "z"), BodyHash([]byte("z"))) // rotates
	now = now.Add(Window/2 - 2*time.Second)
	if err := a.Verify(r, BodyHash([]byte("y"))); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay after rotation: %v", err)
	}
}

func TestNodesSharingADirectoryAgreeOnOneGeneratedSecret(t *testing.T) {
	t.Setenv("DDB_CLUSTER_SECRET", "")
	dir := t.TempDir()
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := ResolveSecret("", dir)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}(i)
	}
	wg.Wait()
	for _, s := range got {
		if s == "" || s != got[0] {
			t.Fatalf("secrets differ: %q", got)
		}
	}
	st, err := os.Stat(filepath.Join(dir, SecretFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", st, err)
	}
	if s, _ := ResolveSecret("explicit", dir); s != "explicit" {
		t.Fatal("flag must win")
	}
	t.Setenv("DDB_CLUSTER_SECRET", "fromenv")
	if s, _ := ResolveSecret("", dir); s != "fromenv" {
		t.Fatal("environment must win over the file")
	}
}

func TestArgumentsFollowTheOriginalCommands(t *testing.T) {
	c, err := ParseArgs(Slave, []string{"2", "3", "-port", "9000"}, os.Stderr)
	if err != nil || c.ID != 2 || c.NumSlaves != 3 || c.Port != 9000 || c.URL() != "http://localhost:9002" || c.MasterAddr() != "http://localhost:9000" || filepath.Base(c.DBPath()) != "slave2.db" {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = ParseArgs(Master, []string{"-ack", "all", "2"}, os.Stderr)
	if err != nil || c.NumSlaves != 2 || c.Ack != "all" || c.SlaveURL(2) != "http://localhost:8082" || c.ListenAddr() != ":8080" {
		t.Fatalf("%+v %v", c, err)
	}
	var sink bytes.Buffer
	for _, bad := range [][]string{{}, {"x"}, {"1", "2", "3"}, {"-ack", "most", "2"}} {
		if _, err := ParseArgs(Master, bad, &sink); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if _, err := ParseArgs(Slave, []string{"0", "2"}, &sink); err == nil {
		t.Error("slave id 0 accepted")
	}
}

// Found by FuzzVerify: hex decoding ignored case, so a genuine signature
// re-encoded in upper case passed as a different header value.
func TestSignatureHasExactlyOneAcceptedEncoding(t *testing.T) {
	a := NewAuth("s3cret", nil)
	r := signed(a, "x")
	r.Header.Set(HeaderSignature, strings.ToUpper(r.Header.Get(HeaderSignature)))
	if err := a.Verify(r, BodyHash([]byte("x"))); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("upper-case signature: %v", err)
	}
}
