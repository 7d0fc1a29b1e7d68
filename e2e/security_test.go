package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	raftpb "go.etcd.io/raft/v3/raftpb"
	"golang.org/x/crypto/bcrypt"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/testcluster"
)

func peerPost(t *testing.T, c *testcluster.Cluster, node int, path string, body []byte, sign func(*http.Request)) int {
	t.Helper()
	req, _ := http.NewRequest("POST", c.URL(node)+path, bytes.NewReader(body))
	if sign != nil {
		sign(req)
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestForgedReplayedAndTamperedPeerRequestsChangeNothing(t *testing.T) {
	c := testcluster.Start(t, 1)
	c.Exec(0, "CREATE TABLE p (x)")
	c.WaitConverged(10*time.Second, 1)
	secret, err := os.ReadFile(filepath.Join(c.Dir, cluster.SecretFile))
	if err != nil {
		t.Fatalf("the local cluster should have created its secret: %v", err)
	}
	auth := cluster.NewAuth(strings.TrimSpace(string(secret)), nil)
	body, _ := rlog.EncodeStatements([]rlog.Statement{{SQL: "INSERT INTO p VALUES ('forged')"}})
	// A forged leader's append, at a term far ahead, carrying a write.
	evil, _ := peer.EncodeFrame(0, 1, []raftpb.Message{{Type: raftpb.MsgApp, To: 2, From: 1, Term: 1000, Index: c.Applied(1), LogTerm: 1000,
		Entries: []raftpb.Entry{{Index: c.Applied(1) + 1, Term: 1000, Data: append(make([]byte, 24), body...)}}, Commit: c.Applied(1) + 1}})

	if st := peerPost(t, c, 1, peer.RaftPath, evil, nil); st != 403 {
		t.Fatalf("unsigned raft message: %d", st)
	}
	wrong := cluster.NewAuth("not the secret", nil)
	if st := peerPost(t, c, 1, peer.RaftPath, evil, func(r *http.Request) { peer.Sign(wrong, r, "master", cluster.BodyHash(evil)) }); st != 403 {
		t.Fatalf("raft message signed with the wrong secret: %d", st)
	}
	empty, _ := peer.EncodeFrame(0, 0, nil) // a frame of no messages
	var signed http.Header
	if st := peerPost(t, c, 1, peer.RaftPath, empty, func(r *http.Request) {
		peer.Sign(auth, r, "master", cluster.BodyHash(empty))
		signed = r.Header.Clone()
	}); st != 204 {
		t.Fatalf("a correctly signed (empty) request: %d", st)
	}
	if st := peerPost(t, c, 1, peer.RaftPath, empty, func(r *http.Request) { r.Header = signed }); st != 403 {
		t.Fatalf("replayed request: %d", st)
	}
	if st := peerPost(t, c, 1, peer.RaftPath, evil, func(r *http.Request) { peer.Sign(auth, r, "master", cluster.BodyHash(empty)) }); st != 403 {
		t.Fatalf("tampered body: %d", st)
	}
	if st := peerPost(t, c, 1, peer.SnapshotPath, []byte("not a database"), nil); st != 403 {
		t.Fatalf("unsigned snapshot: %d", st)
	}
	fwd := []byte(`{"origin":1,"body":` + string(body) + `,"ack":"master"}`)
	if st := peerPost(t, c, 0, peer.ForwardPath, fwd, nil); st != 403 {
		t.Fatalf("forged forward to the master: %d", st)
	}
	if st := c.Role(1); st != "follower" {
		t.Fatalf("slave 1 is %q after the forged messages", st)
	}
	r, _ := c.Post(1, `{"command":"exec","query":"INSERT INTO p VALUES ('forged')","is_replicated":true,"is_master":true}`)
	if r.Status != 403 {
		t.Fatalf("client claiming replication: %v", r)
	}
	for id := 0; id <= 1; id++ {
		if rows := c.Query(id, "SELECT * FROM p"); len(rows) != 0 {
			t.Fatalf("node %d was changed: %v", id, rows)
		}
	}
	metrics, _ := c.Client.Get(c.URL(1) + "/metrics")
	b := new(bytes.Buffer)
	b.ReadFrom(metrics.Body)
	metrics.Body.Close()
	if !strings.Contains(b.String(), "ddb_peer_refused_total 5") {
		t.Fatalf("refused peer requests are not counted:\n%s", b)
	}
}

func TestUsersFileAuthenticatesAndAuthorizes(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	hash, _ := bcrypt.GenerateFromPassword([]byte("secret-admin"), bcrypt.MinCost)
	os.WriteFile(users, []byte(`[
	  {"username": "admin", "password": "`+string(hash)+`", "perms": ["all"]},
	  {"username": "app", "password": "app-pass", "perms": ["execute", "query"]},
	  {"username": "reader", "password": "read-pass", "perms": ["query"]}
	]`), 0o600)
	c := testcluster.Start(t, 1, "-auth", users, "-log-level", "debug", "-log-format", "json")
	do := func(node int, user, pass, body string) (int, http.Header, string) {
		req, _ := http.NewRequest("POST", c.URL(node)+"/", strings.NewReader(body))
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b := new(bytes.Buffer)
		b.ReadFrom(resp.Body)
		return resp.StatusCode, resp.Header, b.String()
	}
	create := `{"command":"exec","query":"CREATE TABLE u (x)"}`
	if st, h, _ := do(0, "", "", create); st != 401 || h.Get("WWW-Authenticate") == "" {
		t.Fatalf("anonymous: %d %v", st, h)
	}
	if st, _, _ := do(0, "admin", "wrong", create); st != 401 {
		t.Fatalf("wrong password: %d", st)
	}
	if st, _, body := do(0, "app", "app-pass", create); st != 403 || !strings.Contains(body, "schema") {
		t.Fatalf("DDL by a user without schema: %d %s", st, body)
	}
	if st, _, body := do(0, "admin", "secret-admin", create); st != 200 {
		t.Fatalf("admin (bcrypt password) creates a table: %d %s", st, body)
	}
	if st, _, body := do(1, "app", "app-pass", `{"command":"exec","query":"INSERT INTO u VALUES (1)"}`); st != 200 {
		t.Fatalf("app writes through the slave: %d %s", st, body)
	}
	if st, _, _ := do(0, "reader", "read-pass", `{"command":"exec","query":"INSERT INTO u VALUES (2)"}`); st != 403 {
		t.Fatalf("reader writes: %d", st)
	}
	if st, _, _ := do(0, "reader", "read-pass", `{"command":"query","query":"INSERT INTO u VALUES (3) RETURNING x"}`); st != 403 {
		t.Fatalf("reader writes through a query: %d", st)
	}
	if st, _, body := do(1, "reader", "read-pass", `{"command":"query","query":"SELECT * FROM u","consistency":"strong"}`); st != 200 || body != "[{\"x\":1}]\n" {
		t.Fatalf("reader reads: %d %s", st, body)
	}
	resp, _ := c.Client.Get(c.URL(0) + "/status")
	if resp.StatusCode != 401 {
		t.Fatalf("status without credentials: %d", resp.StatusCode)
	}
	page, _ := http.NewRequest("GET", c.URL(1)+"/", nil)
	page.Header.Set("Accept", "text/html")
	resp, _ = c.Client.Do(page)
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("the console without credentials: %d", resp.StatusCode)
	}
	page.SetBasicAuth("admin", "secret-admin")
	resp, _ = c.Client.Do(page)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("the console with credentials: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	logs, _ := os.ReadFile(c.Node(0).Log)
	if strings.Contains(string(logs), "app-pass") || strings.Contains(string(logs), "secret-admin") {
		t.Fatal("a password reached the log")
	}
	// -log-format json: every line is one JSON record naming the node;
	// at debug level every request is logged with its status and duration.
	requests := 0
	for _, line := range strings.Split(strings.TrimSpace(string(logs)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["node"] != "master" || rec["level"] == nil || rec["msg"] == nil {
			t.Fatalf("not a JSON log record: %q (%v)", line, err)
		}
		if rec["msg"] == "request" && rec["status"] != nil && rec["duration"] != nil && rec["path"] != nil {
			requests++
		}
	}
	if requests < 8 {
		t.Fatalf("%d requests logged at debug level:\n%s", requests, logs)
	}
}

func TestLimitsStopRunawayQueriesOverloadAndSlowClients(t *testing.T) {
	c := testcluster.Start(t, 1, "-query-timeout", "1s", "-max-concurrent", "2")
	forever := `{"command":"query","query":"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n) SELECT count(*) FROM n"}`
	start := time.Now()
	r, _ := c.Post(0, forever)
	if r.Status != 504 || !strings.Contains(string(r.Body), "deadline") || time.Since(start) > 5*time.Second {
		t.Fatalf("runaway query: %v after %v", r, time.Since(start))
	}
	start = time.Now()
	if rows := c.Query(0, "SELECT 1 AS one"); len(rows) != 1 || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("the next request waited %v", time.Since(start))
	}
	// Two runaway queries fill the cap; a third request gets 503 and Retry-After.
	// Each is sent again until then: a runaway query that met the cap full
	// (the other one and a probe below) was refused and holds nothing.
	var wg sync.WaitGroup
	full := make(chan struct{})
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c.Post(0, forever)
				select {
				case <-full:
					return
				default:
				}
			}
		}()
	}
	// Once both hold their places (a request answers 503), the cap is
	// full: that answer carries Retry-After.
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err = c.Client.Post(c.URL(0)+"/", "application/json", strings.NewReader(`{"command":"query","query":"SELECT 1"}`))
		if err != nil || resp.StatusCode == 503 || time.Now().After(deadline) {
			break
		}
		resp.Body.Close()
	}
	close(full)
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the cap: %v %v", resp, err)
	}
	resp.Body.Close()
	wg.Wait()
	// A client that never finishes its headers is cut off.
	conn, err := net.Dial("tcp", strings.TrimPrefix(c.URL(0), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\n"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start = time.Now()
	_, err = bufio.NewReader(conn).ReadByte()
	if err == nil || time.Since(start) > 9*time.Second {
		t.Fatalf("slow client kept its connection for %v (%v)", time.Since(start), err)
	}
}

func TestTLSForClientsAndBetweenNodes(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ddb test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600)
		return p
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile, caFile := write("node.pem", "CERTIFICATE", der), write("node.key", "EC PRIVATE KEY", kb), write("ca.pem", "CERTIFICATE", caDER)

	c := testcluster.New(t, 2, "-tls-cert", certFile, "-tls-key", keyFile, "-tls-ca", caFile)
	c.Scheme = "https"
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c.Client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for i := 0; i <= 2; i++ {
		c.StartNode(i)
	}
	c.WaitReady()
	c.Exec(0, "CREATE TABLE s (x)")
	c.Exec(1, "INSERT INTO s VALUES ('over TLS')")
	r, _ := c.Do(2, map[string]any{"command": "query", "query": "SELECT x FROM s", "consistency": "strong"})
	if r.Status != 200 || !strings.Contains(string(r.Body), "over TLS") {
		t.Fatalf("replication over TLS: %v", r)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get(strings.Replace(c.URL(0), "https", "http", 1) + "/health"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP was served on a TLS node")
	}
}

// Release binaries carry no deliberate defect: the fault suite's switch
// exists only in builds with the ddb_faults tag, which the test harness
// sets, and the defects' code is compiled out of the others.
func TestReleaseBinariesCannotSwitchOnDefects(t *testing.T) {
	dir := t.TempDir()
	for _, build := range []struct {
		tags string
		want bool
	}{{"", false}, {"ddb_faults", true}} {
		bin := filepath.Join(dir, "node"+build.tags)
		args := []string{"build", "-o", bin}
		if build.tags != "" {
			args = append(args, "-tags", build.tags)
		}
		cmd := exec.Command("go", append(args, "./node")...)
		cmd.Dir = testcluster.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"DDB_INJECT_BUG", "ack-before-commit", "stale-strong-read", "skip-entry", "partial-apply", "unpinned-clock", "transfer-mid-rejoin", "rejoin-once", "admit-fresh-voter", "create-alone"} {
			if has := bytes.Contains(b, []byte(s)); has != build.want {
				t.Errorf("build with tags %q: %q in the binary = %v", build.tags, s, has)
			}
		}
	}
}
