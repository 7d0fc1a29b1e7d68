package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/testcluster"
)

// docExample is one curl command of the docs and the answer the docs show
// for it ("" when they show none).
type docExample struct {
	file    string
	line    int
	command string
	answer  string
}

// curlExamples finds the curl commands in a Markdown file's bash blocks:
// a command runs on until its single quotes balance and no line ends in
// a backslash; a following "# {...}" or "# [...]" line is its answer.
func curlExamples(t *testing.T, path string) []docExample {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []docExample
	lines := strings.Split(string(b), "\n")
	inBash := false
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.HasPrefix(l, "```bash"):
			inBash = true
			continue
		case strings.HasPrefix(l, "```"):
			inBash = false
			continue
		}
		if !inBash || !strings.HasPrefix(l, "curl ") {
			continue
		}
		ex := docExample{file: filepath.Base(path), line: i + 1}
		cmd := l
		for (strings.Count(cmd, "'")%2 == 1 || strings.HasSuffix(cmd, "\\")) && i+1 < len(lines) {
			i++
			cmd += "\n" + lines[i]
		}
		ex.command = stripComment(cmd)
		if i+1 < len(lines) && (strings.HasPrefix(lines[i+1], "# {") || strings.HasPrefix(lines[i+1], "# [")) {
			i++
			ex.answer = strings.TrimPrefix(lines[i], "# ")
			// Further answer lines: an answer in JSON lines.
			for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "# {") {
				i++
				ex.answer += "\n" + strings.TrimPrefix(lines[i], "# ")
			}
		}
		out = append(out, ex)
	}
	return out
}

// stripComment drops a trailing "# ..." outside quotes.
func stripComment(cmd string) string {
	quoted := false
	for i, r := range cmd {
		switch {
		case r == '\'':
			quoted = !quoted
		case r == '#' && !quoted && i > 0 && cmd[i-1] == ' ':
			return strings.TrimSpace(cmd[:i])
		}
	}
	return cmd
}

// sameAnswer compares a documented answer with the real one. What differs
// from run to run is not compared: log indexes, times, timestamps.
func sameAnswer(doc, got any, key string) bool {
	switch key {
	case "index", "time", "raft_index", "sequence_number", "time_ms", "oldest":
		_, a := doc.(float64)
		_, b := got.(float64)
		if a && b {
			return true
		}
	}
	if s, ok := doc.(string); ok && timestamp.MatchString(s) {
		g, ok := got.(string)
		return ok && timestamp.MatchString(g)
	}
	switch d := doc.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(d) {
			return false
		}
		for k, v := range d {
			if !sameAnswer(v, g[k], k) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(d) {
			return false
		}
		for i := range d {
			if !sameAnswer(d[i], g[i], key) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(doc, got)
}

var timestamp = regexp.MustCompile(`^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d`)

// Every curl example of the README and docs/PROTOCOL.md runs, in order,
// against a live cluster on the ports the docs use (renumbered to free
// ones), and answers what the docs show.
func TestEveryCurlExampleOfTheDocsAnswersAsDocumented(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	runCurlExamples(t, testcluster.Start(t, 2), "README.md", "docs/PROTOCOL.md")
}

// The change stream's guide (docs/CHANGES.md) runs as written, on a
// cluster started as it says.
func TestTheChangeStreamGuideRunsAsWritten(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	b, err := os.ReadFile(filepath.Join(testcluster.RepoRoot(), "docs/CHANGES.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "go run ./cluster -changes-keep 100000 2") {
		t.Fatal("docs/CHANGES.md no longer starts its cluster as this test does")
	}
	c := testcluster.Start(t, 2, "-changes-keep", "100000")
	waitChangesOn(t, c, 0)
	runCurlExamples(t, c, "docs/CHANGES.md")
}

// The backup guide (docs/BACKUP.md) runs as written: its curl commands
// against a live cluster, and every master and node command line it shows
// is one the binaries accept. (Its off-site backups and restores run for
// real in offsite_test.go, on a directory and on SeaweedFS.)
func TestTheBackupGuideRunsAsWritten(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	path := filepath.Join(testcluster.RepoRoot(), "docs/BACKUP.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		var role cluster.Role
		switch {
		case strings.HasPrefix(l, "go run master/main.go "):
			role = cluster.Master
		case strings.HasPrefix(l, "go run node/main.go "):
			role = cluster.Slave
		default:
			continue
		}
		lines++
		args := shellWords(t, strings.SplitN(l, " ", 4)[3])
		if _, err := cluster.ParseArgs(role, args, io.Discard); err != nil {
			t.Fatalf("docs/BACKUP.md: %q is refused: %v", l, err)
		}
	}
	if lines < 4 {
		t.Fatalf("only %d command lines found in docs/BACKUP.md", lines)
	}
	runCurlExamples(t, testcluster.Start(t, 2), "docs/BACKUP.md")
}

// shellWords splits a command line as the shell would, for single quotes.
func shellWords(t *testing.T, s string) []string {
	var out []string
	var cur strings.Builder
	quoted, in := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			quoted, in = !quoted, true
		case r == ' ' && !quoted:
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if quoted {
		t.Fatalf("unbalanced quotes in %q", s)
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

func runCurlExamples(t *testing.T, c *testcluster.Cluster, files ...string) {
	t.Helper()
	root := testcluster.RepoRoot()
	var examples []docExample
	for _, f := range files {
		examples = append(examples, curlExamples(t, filepath.Join(root, f))...)
	}
	if len(examples) < 3 {
		t.Fatalf("only %d curl examples found in the docs", len(examples))
	}
	port := func(id int) string { return strings.TrimPrefix(c.URL(id), "http://127.0.0.1:") }
	work := t.TempDir()
	for _, ex := range examples {
		cmd := ex.command
		for id, p := range map[int]string{0: "8080", 1: "8081", 2: "8082"} {
			cmd = strings.ReplaceAll(cmd, "localhost:"+p, "127.0.0.1:"+port(id))
		}
		run := exec.Command("bash", "-c", cmd)
		run.Dir = work
		var out, errOut bytes.Buffer
		run.Stdout, run.Stderr = &out, &errOut
		if err := run.Run(); err != nil {
			t.Fatalf("%s:%d: %v\n%s\n%s", ex.file, ex.line, err, ex.command, errOut.String())
		}
		if ex.answer == "" {
			continue
		}
		// The nodes name each other by the addresses the docs use.
		answer := out.String()
		for id, p := range map[int]string{0: "8080", 1: "8081", 2: "8082"} {
			answer = strings.ReplaceAll(answer, "127.0.0.1:"+port(id), "localhost:"+p)
		}
		docLines, gotLines := []string{ex.answer}, []string{answer}
		if strings.Contains(ex.answer, "\n") {
			docLines, gotLines = strings.Split(ex.answer, "\n"), strings.Split(strings.TrimSpace(answer), "\n")
		}
		same := len(docLines) == len(gotLines)
		for i := 0; same && i < len(docLines); i++ {
			var doc, got any
			if err := json.Unmarshal([]byte(docLines[i]), &doc); err != nil {
				t.Fatalf("%s:%d: the documented answer is not JSON: %v\n%s", ex.file, ex.line, err, docLines[i])
			}
			same = json.Unmarshal([]byte(gotLines[i]), &got) == nil && sameAnswer(doc, got, "")
		}
		if !same {
			t.Fatalf("%s:%d: %s\ndocumented: %s\nanswered:   %s", ex.file, ex.line, ex.command, ex.answer, out.String())
		}
		// Every node has what the example wrote before the next one reads.
		c.WaitConverged(10*time.Second, 1, 2)
	}
	t.Logf("%d curl examples ran as documented", len(examples))
}

// The Postman collection in docs/ (the original project's users send
// requests with Postman) runs against a fresh cluster: every request, in
// order, gets the status and the answer saved with it.
func TestPostmanCollectionRunsAgainstALiveCluster(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testcluster.RepoRoot(), "docs", "ddb.postman_collection.json"))
	if err != nil {
		t.Fatal(err)
	}
	var coll struct {
		Item []struct {
			Name    string
			Request struct {
				Method string
				Header []struct{ Key, Value string }
				URL    struct{ Raw string }
				Body   struct{ Raw string }
			}
			Response []struct {
				Code int
				Body string
			}
		}
	}
	if err := json.Unmarshal(b, &coll); err != nil {
		t.Fatalf("the collection is not JSON: %v", err)
	}
	if len(coll.Item) < 4 {
		t.Fatalf("the collection holds %d requests", len(coll.Item))
	}
	c := testcluster.Start(t, 2)
	vars := map[string]string{"{{master}}": c.URL(0), "{{slave1}}": c.URL(1), "{{slave2}}": c.URL(2)}
	for _, it := range coll.Item {
		url := it.Request.URL.Raw
		for k, v := range vars {
			url = strings.ReplaceAll(url, k, v)
		}
		req, err := http.NewRequest(it.Request.Method, url, strings.NewReader(it.Request.Body.Raw))
		if err != nil {
			t.Fatalf("%s: %v", it.Name, err)
		}
		for _, h := range it.Request.Header {
			req.Header.Set(h.Key, h.Value)
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", it.Name, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(it.Response) == 0 {
			t.Fatalf("%s: no saved answer", it.Name)
		}
		want := it.Response[0]
		var doc, ans any
		json.Unmarshal([]byte(want.Body), &doc)
		if resp.StatusCode != want.Code || json.Unmarshal(got, &ans) != nil || !sameAnswer(doc, ans, "") {
			t.Fatalf("%s: answered %d %s\nsaved: %d %s", it.Name, resp.StatusCode, got, want.Code, want.Body)
		}
		c.WaitConverged(10*time.Second, 1, 2)
	}
}
