package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/testcluster"
)

func buildShell(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shell")
	cmd := exec.Command("go", "build", "-o", bin, "./shell")
	cmd.Dir = testcluster.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the shell: %v\n%s", err, out)
	}
	return bin
}

// The shell with piped input: statements and dot commands, aligned
// tables, typed values, errors, failover past a dead node, and an exit
// status that says whether everything succeeded.
func TestShellWithPipedInput(t *testing.T) {
	bin := buildShell(t)
	c := testcluster.Start(t, 2)
	c.Node(2).Kill() // the first node it is given is down: it goes on with the next
	dir := t.TempDir()
	backup := filepath.Join(dir, "b.db")
	script := strings.Join([]string{
		"CREATE TABLE s (id INTEGER PRIMARY KEY, name TEXT, r REAL, b BLOB);",
		"INSERT INTO s (name, r, b) VALUES ('ann', 2.0, x'00ff');",
		".tables",
		".schema s",
		"SELECT * FROM s;",
		".timer on",
		"SELECT count(*) AS n FROM s",
		".timer off",
		".nodes",
		".status",
		".backup " + backup,
		"INSERT INTO s (name) VALUES ('lost by the restore')",
		".restore " + backup,
		"SELECT name FROM s ORDER BY id;",
		"CREATE TABLE pasted (",
		"  a INTEGER, -- a comment; with a semicolon",
		"  b TEXT",
		");",
		".schema pasted",
	}, "\n") + "\n"
	cmd := exec.Command(bin, "-nodes", strings.Join(endpoints(c, 2, 1, 0), ","))
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the shell failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"1 row(s) affected (log index",
		"| name |\n+------+\n| s    |",
		"CREATE TABLE s (id INTEGER PRIMARY KEY, name TEXT, r REAL, b BLOB)",
		"| 1  | ann  | 2.0 | x'00FF' |",
		"Run time:",
		"| 0  | " + c.URL(0) + " | yes    | yes   | yes",
		"leader: node 0 (" + c.URL(0) + ")",
		"backed up",
		"restored " + backup + " on every node",
		`CREATE TABLE pasted (\n  a INTEGER, -- a comment; with a semicolon\n  b TEXT\n)`, // (a newline shows as \n)
	} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("the shell's output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out)[strings.LastIndex(string(out), "restored"):], "lost by the restore") {
		t.Fatalf("the restore did not replace the database:\n%s", out)
	}
	bad := exec.Command(bin, "-nodes", c.URL(1))
	bad.Stdin = strings.NewReader("SELEC nonsense;\n.schema nosuch\nSELECT 1;\n")
	out, err = bad.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), `Error: SQL error: near "SELEC": syntax error`) || !strings.Contains(string(out), "| 1 |") ||
		!strings.Contains(string(out), "Error: no such table: nosuch") {
		t.Fatalf("an error in a script: %v\n%s", err, out)
	}
	// -h: the flags, the commands, and piped mode.
	out, err = exec.Command(bin, "-h").CombinedOutput()
	for _, want := range []string{"-nodes", ".schema [TABLE]", ".restore FILE", "pipe", "exits 1"} {
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("shell -h (%v) lacks %q:\n%s", err, want, out)
		}
	}
}

// The shell in a real terminal (tmux): a prompt, line editing, history
// recalled with the up arrow and kept in ~/.ddb_history.
func TestShellInATerminal(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("DDB_REQUIRE_BROWSER") != "" {
			t.Fatal("tmux is not installed (apt-get install tmux)")
		}
		t.Skip("tmux is not installed; .ci/run installs it")
	}
	bin := buildShell(t)
	c := testcluster.Start(t, 2)
	home := t.TempDir()
	sock := fmt.Sprintf("ddbtest%d", os.Getpid())
	tmux := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("tmux", append([]string{"-L", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("new-session", "-d", "-s", "sh", "-x", "160", "-y", "50", fmt.Sprintf("env HOME=%s %s -nodes %s", home, bin, strings.Join(endpoints(c, 1, 2, 0), ",")))
	t.Cleanup(func() { exec.Command("tmux", "-L", sock, "kill-server").Run() })
	screen := func(want string, n int) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			s := tmux("capture-pane", "-p", "-t", "sh")
			if strings.Count(s, want) >= n {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("the terminal does not show %q %d times:\n%s", want, n, s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	screen("ddb>", 1) // (tmux trims the space after the prompt)
	// Text is sent literally (-l, with ";" escaped: it would end a tmux
	// command), keys by name.
	typeLine := func(text string, keys ...string) {
		tmux("send-keys", "-t", "sh", "-l", strings.ReplaceAll(text, ";", `\;`))
		tmux(append([]string{"send-keys", "-t", "sh"}, keys...)...)
	}
	typeLine("CREATE TABLE t (x);", "Enter")
	screen("row(s) affected", 1)
	typeLine("INSERT INTO t VALUES (7);", "Enter")
	screen("row(s) affected", 2)
	// Line editing: type a mistake, move left, fix it.
	typeLine("SELECT x FROM tt;", "Left", "Left", "BSpace", "Enter")
	screen("| 7 |", 1)
	// History: the up arrow brings the query back.
	tmux("send-keys", "-t", "sh", "Up", "Enter")
	screen("| 7 |", 2)
	// Long transfers show a progress line at a terminal.
	backup := filepath.Join(home, "b.db")
	typeLine(".backup "+backup, "Enter")
	screen("backed up", 1)
	if sc := screen("backing up: ", 1); !strings.Contains(sc, "MB of ") || !strings.Contains(sc, "(100%)") {
		t.Fatalf("no progress line for .backup:\n%s", sc)
	}
	typeLine(".restore "+backup, "Enter")
	screen("restored", 1)
	screen("uploading "+backup+": ", 1)
	typeLine(".quit", "Enter")
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(home, ".ddb_history"))
		if strings.Contains(string(b), "SELECT x FROM t;") && strings.Contains(string(b), ".quit") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("~/.ddb_history holds:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
