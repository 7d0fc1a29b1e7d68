package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// deployGuide is docs/DEPLOY.md's commands, in order: the ddb-master,
// ddb-node and curl lines of its sh blocks, and its users file.
type deployGuide struct {
	commands []string
	users    string
}

func readDeployGuide(t *testing.T) deployGuide {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testcluster.RepoRoot(), "docs", "DEPLOY.md"))
	if err != nil {
		t.Fatal(err)
	}
	var g deployGuide
	block := ""
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "```") && block == "":
			block = strings.TrimPrefix(line, "```")
		case strings.HasPrefix(line, "```"):
			block = ""
		case block == "json":
			g.users += line + "\n"
		case block == "sh":
			for _, p := range []string{"ddb-master ", "ddb-node ", "curl "} {
				if strings.HasPrefix(line, p) {
					g.commands = append(g.commands, line)
				}
			}
		}
	}
	if len(g.commands) < 9 || g.users == "" {
		t.Fatalf("docs/DEPLOY.md: %d commands and users %q: the guide's code blocks changed shape", len(g.commands), g.users)
	}
	return g
}

// deployHosts stands in for the guide's hosts: dbN is 127.0.0.N, 8080 a
// free port, /etc/ddb and each host's /var/lib/ddb temporary directories.
type deployHosts struct {
	t        *testing.T
	etc, dir string
	port     int
	bin      string
	secret   string
	work     string // where curl runs (its -o files land here)
	procs    map[string]*exec.Cmd
	logs     map[string]*testcluster.Output
	client   *http.Client
}

var dbHost = regexp.MustCompile(`\bdb(\d)\b`)

// sub rewrites a line of the guide for this machine.
func (h *deployHosts) sub(line string) string {
	host := ""
	if m := regexp.MustCompile(`-host (db\d)`).FindStringSubmatch(line); m != nil {
		host = m[1]
	}
	// Each host's data directory is dir/hdb1 ...; /etc/ddb/db1.pem is
	// etc/fdb1.pem (the prefixes keep those names from being taken for
	// host names below).
	line = strings.ReplaceAll(line, "/var/lib/ddb", filepath.Join(h.dir, "h"+host))
	line = regexp.MustCompile(`/etc/ddb/(db\d)`).ReplaceAllString(line, h.etc+"/f$1")
	line = strings.ReplaceAll(line, "/etc/ddb", h.etc)
	line = strings.ReplaceAll(line, ":8080", fmt.Sprintf(":%d", h.port))
	line = strings.ReplaceAll(line, "admin:PASSWORD", "admin:admin-pw")
	line = strings.ReplaceAll(line, "app:PASSWORD", "app:app-pw")
	// Host names become addresses, except in file names (db1.pem).
	return dbHost.ReplaceAllStringFunc(line, func(s string) string { return "127.0.0." + s[2:] })
}

// start runs a ddb-master or ddb-node line of the guide as host name,
// with env added to the node's environment.
func (h *deployHosts) start(name, line string, env ...string) *exec.Cmd {
	h.t.Helper()
	f := strings.Fields(h.sub(line))
	bin := filepath.Join(h.bin, strings.TrimPrefix(f[0], "ddb-"))
	cmd := exec.Command(bin, f[1:]...)
	cmd.Env = append(append(os.Environ(), "DDB_CLUSTER_SECRET="+h.secret), env...)
	out := &testcluster.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h.procs[name], h.logs[name] = cmd, out
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("--- %s: %s\n%s", name, strings.Join(cmd.Args, " "), out.String())
		}
	})
	return cmd
}

// curl runs a curl line of the guide until it answers 2xx (up to a
// minute: the cluster may still be starting), and returns its output.
func (h *deployHosts) curl(line string) string {
	h.t.Helper()
	line = h.sub(line)
	deadline := time.Now().Add(time.Minute)
	for {
		cmd := exec.Command("sh", "-c", strings.Replace(line, "curl ", "curl -sS --fail-with-body ", 1))
		cmd.Dir = h.work
		out, err := cmd.CombinedOutput()
		if err == nil {
			return string(out)
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: %v\n%s", line, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// status is host's /status, as admin.
func (h *deployHosts) status(host string) map[string]any {
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.%s:%d/status", host[2:], h.port), nil)
	req.SetBasicAuth("admin", "admin-pw")
	resp, err := h.client.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st map[string]any
	json.NewDecoder(resp.Body).Decode(&st)
	return st
}

// waitFor waits (up to a minute) until cond holds.
func (h *deployHosts) waitFor(what string, cond func() bool) {
	h.t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			h.t.Fatalf("no %s within a minute", what)
		}
	}
}

// waitLog waits (up to 15 s) until host's log says want.
func (h *deployHosts) waitLog(host, want string) {
	h.t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if strings.Contains(h.logOf(host), want) {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s's log does not say %q within 15 s:\n%s", host, want, h.logOf(host))
		}
	}
}

func (h *deployHosts) logOf(host string) string { return h.logs[host].String() }

// deployCerts makes a CA and a certificate for each of db1..db5 (as
// 127.0.0.N) in etc, as section 2 of the guide does with openssl.
func deployCerts(t *testing.T, etc string) *x509.CertPool {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ddb-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(etc, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	for n := 1; n <= 5; n++ {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(n + 1)), Subject: pkix.Name{CommonName: fmt.Sprintf("db%d", n)},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IPAddresses: []net.IP{net.ParseIP(fmt.Sprintf("127.0.0.%d", n))},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		write(fmt.Sprintf("fdb%d.pem", n), "CERTIFICATE", der)
		write(fmt.Sprintf("fdb%d.key", n), "EC PRIVATE KEY", kb)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

// docs/DEPLOY.md, followed as written on 127.0.0.1-5: three hosts with
// TLS, a users file and a shared secret; a fourth node added and
// removed; a dead host replaced; a backup; and each mistake of its last
// table, which the node must name in its own log within seconds.
func TestTheDeploymentGuideAsWritten(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed; .ci/run installs it")
	}
	g := readDeployGuide(t)
	bin, err := testcluster.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	port, err := testcluster.FreeBasePort(1)
	if err != nil {
		t.Fatal(err)
	}
	h := &deployHosts{t: t, etc: t.TempDir(), dir: t.TempDir(), work: t.TempDir(), port: port, bin: bin, procs: map[string]*exec.Cmd{}, logs: map[string]*testcluster.Output{}}
	pool := deployCerts(t, h.etc)
	h.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	h.secret = strings.Repeat("5e", 32)
	// The users file: the guide's, with hashes ddb-master -hash-password made.
	users := g.users
	for _, pw := range []string{"admin-pw", "app-pw"} {
		cmd := exec.Command(filepath.Join(bin, "master"), "-hash-password")
		cmd.Stdin = strings.NewReader(pw + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("-hash-password: %v", err)
		}
		users = strings.Replace(users, "<hash>", strings.TrimSpace(string(out)), 1)
	}
	if err := os.WriteFile(filepath.Join(h.etc, "users.json"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	next := 0
	take := func(prefix string) string {
		t.Helper()
		if next >= len(g.commands) || !strings.HasPrefix(g.commands[next], prefix) {
			t.Fatalf("the guide's command %d is not a %q line: %q", next, prefix, g.commands[min(next, len(g.commands)-1)])
		}
		next++
		return g.commands[next-1]
	}

	// 3. Start the three nodes, and check them with curl.
	for _, host := range []string{"db1", "db2", "db3"} {
		line := take("ddb-")
		if !strings.Contains(line, "-host "+host+" ") {
			t.Fatalf("the guide's command for %s: %s", host, line)
		}
		h.start(host, line)
	}
	for _, host := range []string{"db1", "db2", "db3"} {
		h.waitLog(host, "msg=serving")
		for _, want := range []string{"users=on", "tls=on", "secret=DDB_CLUSTER_SECRET", "peers="} {
			if !strings.Contains(h.logOf(host), want) {
				t.Fatalf("%s's start-up line lacks %s:\n%s", host, want, h.logOf(host))
			}
		}
	}
	if out := h.curl(take("curl ")); !strings.Contains(out, `"leader"`) && !strings.Contains(out, "leader_url") {
		t.Fatalf("status: %s", out)
	}
	if out := h.curl(take("curl ")); !strings.Contains(out, `"rows_affected":1`) {
		t.Fatalf("execute: %s", out)
	}
	if out := h.curl(take("curl ")); !strings.Contains(out, `[[1]]`) {
		t.Fatalf("a strong read on db3: %s", out)
	}

	// 4. A fourth node joins as a learner, and is removed.
	h.start("db4", take("ddb-node "))
	h.waitFor("db4 holding the data as a learner", func() bool {
		st := h.status("db4")
		raft, _ := st["raft"].(map[string]any)
		return raft != nil && raft["role"] == "learner" && st["applied_index"] != nil && st["applied_index"] == h.status("db1")["applied_index"]
	})
	if out := h.curl(take("curl ")); !strings.Contains(out, "success") {
		t.Fatalf("remove: %s", out)
	}
	h.procs["db4"].Process.Kill()

	// 5. db3 dies; db5 takes slave 2's place with an empty directory.
	h.procs["db3"].Process.Kill()
	h.procs["db3"].Wait()
	h.start("db5", take("ddb-node "))
	h.waitFor("db5 voting with the data", func() bool {
		st := h.status("db5")
		raft, _ := st["raft"].(map[string]any)
		return raft != nil && raft["role"] == "follower" && st["applied_index"] == h.status("db1")["applied_index"]
	})

	// 6. A backup: a SQLite file with the data.
	h.curl(take("curl "))
	db, err := sqlite.Open(filepath.Join(h.work, "backup.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	row, err := db.QueryRow("SELECT count(*) FROM t")
	db.Close()
	if err != nil || len(row) != 1 || fmt.Sprint(row[0]) != "1" {
		t.Fatalf("the backup: %v %v", row, err)
	}
	if next != len(g.commands) {
		t.Fatalf("the guide has %d commands this test does not run: %q", len(g.commands)-next, g.commands[next:])
	}

	// The mistakes of the guide's last table, each named in the node's
	// own log within seconds.
	command := func(prefix string) string {
		for _, c := range g.commands {
			if strings.HasPrefix(c, prefix) {
				return c
			}
		}
		t.Fatalf("the guide has no %q command", prefix)
		return ""
	}
	db4, db2 := command("ddb-node -host db4 "), command("ddb-node -host db2 ")
	h.dir = t.TempDir() // (fresh data directories)
	h.start("db4", db4, "DDB_CLUSTER_SECRET=not-the-cluster-secret")
	h.waitLog("db4", "refuses this node: wrong cluster secret")
	// It serves no data: a client is told why, with 503.
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("https://127.0.0.4:%d/db/query", port), strings.NewReader(`["SELECT count(*) FROM t"]`))
	req.SetBasicAuth("app", "app-pw")
	if resp, err := h.client.Do(req); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a query on the node with the wrong secret: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	h.procs["db4"].Process.Kill()
	h.dir = t.TempDir()
	h.start("db4", strings.Replace(db4, "-listen db4:8080", "-listen db4:8080 -advertise https://db9:8080", 1))
	h.waitLog("db4", "has heard from no leader")
	h.procs["db4"].Process.Kill()
	h.dir = t.TempDir()
	taken := h.start("db2-again", db2)
	if err := taken.Wait(); err == nil || !strings.Contains(h.logOf("db2-again"), "address already in use (is another node using this port?)") {
		t.Fatalf("a node on a taken port: %v\n%s", err, h.logOf("db2-again"))
	}
	req, _ = http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/status", port), nil)
	req.Host = "lb.example"
	if resp, err := h.client.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a request naming another host: %v %v", resp, err)
	}
	h.waitLog("db1", "request for an unknown host refused")
}

// The systemd units of deploy/systemd pass systemd-analyze verify (with
// their binaries' paths pointed at this build's, which must exist for it):
// no error, and no line ignored. A unit with a mistake is caught.
func TestServiceUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the units are not checked on this machine")
	}
	bin, err := testcluster.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	verify := func(units ...string) string {
		args := []string{"verify", "--man=no"}
		for _, u := range units {
			args = append(args, filepath.Join(dir, u))
		}
		out, err := exec.Command(analyze, args...).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("%v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, u := range []struct{ src, dst string }{{"ddb-master.service", "ddb-master.service"}, {"ddb-node@.service", "ddb-node@1.service"}} {
		b, err := os.ReadFile(filepath.Join(testcluster.RepoRoot(), "deploy", "systemd", u.src))
		if err != nil {
			t.Fatal(err)
		}
		unit := strings.NewReplacer("/usr/local/bin/ddb-master", filepath.Join(bin, "master"), "/usr/local/bin/ddb-node", filepath.Join(bin, "node")).Replace(string(b))
		if err := os.WriteFile(filepath.Join(dir, u.dst), []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		if bad := strings.Replace(unit, "Type=simple", "Type=bogus", 1); bad != unit {
			os.WriteFile(filepath.Join(dir, "bad-"+u.dst), []byte(bad), 0o644)
		}
	}
	if out := verify("ddb-master.service", "ddb-node@1.service"); out != "" {
		t.Fatalf("systemd-analyze verify:\n%s", out)
	}
	if out := verify("bad-ddb-master.service"); out == "" {
		t.Fatal("systemd-analyze verify found nothing wrong in a unit with a bad Type=")
	}
}
