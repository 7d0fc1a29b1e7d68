package cluster

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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
			s, _, err := ResolveSecret("", dir)
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
	if s, src, _ := ResolveSecret("explicit", dir); s != "explicit" || src != "-secret" {
		t.Fatal("flag must win")
	}
	t.Setenv("DDB_CLUSTER_SECRET", "fromenv")
	if s, src, _ := ResolveSecret("", dir); s != "fromenv" || src != "DDB_CLUSTER_SECRET" {
		t.Fatal("environment must win over the file")
	}
}

func TestArgumentsFollowTheOriginalCommands(t *testing.T) {
	c, err := ParseArgs(Slave, []string{"2", "3", "-port", "9000"}, os.Stderr)
	if err != nil || c.ID != 2 || c.NumSlaves != 3 || c.Port != 9000 || c.URL() != "http://localhost:9002" || c.MasterAddr() != "http://localhost:9000" || filepath.Base(c.DBPath()) != "slave2.db" {
		t.Fatalf("%+v %v", c, err)
	}
	c, err = ParseArgs(Master, []string{"-ack", "all", "2"}, os.Stderr)
	if err != nil || c.NumSlaves != 2 || c.Ack != "all" || c.SlaveURL(2) != "http://localhost:8082" || c.ListenAddr() != "127.0.0.1:8080" {
		t.Fatalf("%+v %v", c, err)
	}
	var sink bytes.Buffer
	for _, bad := range [][]string{{}, {"x"}, {"1", "2", "3"}, {"-ack", "most", "2"}, {"-port", "99999", "2"}, {"-port", "65535", "2"},
		{"-port", "0", "1"}, {"-listen", "8080", "1"}, {"-advertise", "db1:8080", "1"}, {"-bogus", "1"}} {
		sink.Reset()
		if _, err := ParseArgs(Master, bad, &sink); err == nil {
			t.Errorf("%v accepted", bad)
		} else if sink.Len() > 0 || strings.Count(err.Error(), "\n") > 3 {
			t.Errorf("%v: the error is not one short message: %q, and %q printed", bad, err, sink.String())
		}
	}
	if _, err := ParseArgs(Slave, []string{"0", "2"}, &sink); err == nil {
		t.Error("slave id 0 accepted")
	}
	// -h: the usage and every flag, once, and ErrHelp (the binaries exit 0).
	sink.Reset()
	if _, err := ParseArgs(Master, []string{"-h"}, &sink); !errors.Is(err, flag.ErrHelp) || strings.Count(sink.String(), "usage: master") != 1 || !strings.Contains(sink.String(), "-allow-hosts") {
		t.Errorf("-h: %v, printed %q", err, sink.String())
	}
}

// A node listens on loopback unless told otherwise (the default -host is
// localhost), the master as well as the slaves; a non-loopback -host or
// an explicit -listen opens it to the network.
func TestNodesListenOnLoopbackByDefault(t *testing.T) {
	for _, c := range []struct {
		role Role
		args []string
		want string
	}{
		{Master, []string{"2"}, "127.0.0.1:8080"},
		{Slave, []string{"1", "2"}, "127.0.0.1:8081"},
		{Slave, []string{"-host", "127.0.0.2", "1", "2"}, "127.0.0.2:8081"},
		{Master, []string{"-host", "db1.example", "2"}, ":8080"},
		{Master, []string{"-listen", "0.0.0.0:9000", "2"}, "0.0.0.0:9000"},
		{Slave, []string{"-listen", "10.0.0.2:9001", "1", "2"}, "10.0.0.2:9001"},
	} {
		cfg, err := ParseArgs(c.role, c.args, io.Discard)
		if err != nil || cfg.ListenAddr() != c.want {
			t.Errorf("%s %v: listens on %q, want %q (%v)", c.role, c.args, cfg.ListenAddr(), c.want, err)
		}
	}
	cfg, _ := ParseArgs(Master, []string{"-listen", "127.0.0.2:9000", "2"}, io.Discard)
	if cfg.URL() != "http://127.0.0.2:9000" {
		t.Errorf("a master with -listen is reached at %s", cfg.URL())
	}
	for _, h := range []string{"localhost", "LOCALHOST", "app.localhost", "127.0.0.1", "127.3.2.1", "::1", "[::1]"} {
		if !IsLoopbackHost(h) {
			t.Errorf("%s is not taken for loopback", h)
		}
	}
	for _, h := range []string{"", "db1", "10.0.0.1", "0.0.0.0", "localhost.evil.example"} {
		if IsLoopbackHost(h) {
			t.Errorf("%q is taken for loopback", h)
		}
	}
	cfg, _ = ParseArgs(Slave, []string{"-host", "db2", "-listen", "10.0.0.2:8081", "-advertise", "https://db2.internal:8081", "-allow-hosts", "lb.example, other", "1", "2"}, io.Discard)
	got := cfg.KnownHosts()
	for _, h := range []string{"localhost", "db2", "10.0.0.2", "db2.internal", "lb.example", "other"} {
		if !slices.Contains(got, h) {
			t.Errorf("known hosts %v lack %s", got, h)
		}
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
