package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ddbgo/ddb/internal/testcluster"
)

// browser starts headless Chromium (Debian's chromium package; .ci/run
// installs it). Without it the test is skipped, unless DDB_REQUIRE_BROWSER
// is set (CI sets it), in which case it fails.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("DDB_REQUIRE_BROWSER") != "" {
			t.Fatal("chromium is not installed (apt-get install chromium)")
		}
		t.Skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// Start the browser on this context (a browser started under a
	// shorter-lived one would close with it).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// The web console in a real browser: the page loads, shows three nodes
// and the leader, runs a query and shows its rows, shows an error in plain
// words, shows the write in the live tail of the change stream, and shows
// the new leader after the leader is killed.
func TestWebConsoleInABrowser(t *testing.T) {
	ctx := browser(t)
	c := testcluster.Start(t, 2, "-changes-keep", "1000")
	waitChangesOn(t, c, 1)
	c.Exec(0, "CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT)")
	c.Exec(1, "INSERT INTO pets (name) VALUES ('rex'), ('tom')")
	do := func(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	get := func(what string, a chromedp.Action[string]) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(sctx, a)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	do("open the console on slave 1", 30*time.Second, chromedp.Navigate(c.URL(1)+"/"), chromedp.WaitVisible(`#nodes tr[data-id="2"]`))
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#nodes tr").length`))
	leader := get("leader", chromedp.Evaluate[string](`document.getElementById("leader").dataset.leader`))
	if err != nil || rows != 3 || leader != "0" {
		t.Fatalf("the console shows %d nodes (%v) and leader %q", rows, err, leader)
	}
	do("run a query", 15*time.Second,
		chromedp.SetValue(`#sql`, "SELECT id, name FROM pets ORDER BY id"),
		chromedp.Click(`#run`),
		chromedp.WaitVisible(`#result table`))
	if cells := get("rows", chromedp.Text(`#result`)); !strings.Contains(cells, "rex") || !strings.Contains(cells, "tom") || !strings.Contains(cells, "name") {
		t.Fatalf("the query's rows: %q", cells)
	}
	do("run a write", 15*time.Second,
		chromedp.SetValue(`#sql`, "INSERT INTO pets (name) VALUES ('kit')"),
		chromedp.Click(`#run`),
		chromedp.WaitVisible(`#index:not(:empty)`))
	msg, index := get("message", chromedp.Text(`#message`)), get("index", chromedp.Text(`#index`))
	if !strings.Contains(msg, "1 row(s) changed") || !strings.HasPrefix(index, "log index ") {
		t.Fatalf("the write: %q %q", msg, index)
	}
	do("see the write in the change stream's tail", 15*time.Second, chromedp.WaitVisible(`#changes div[data-index="`+strings.TrimPrefix(index, "log index ")+`"]`))
	if tail := get("tail", chromedp.Text(`#changes`)); !strings.Contains(tail, `insert pets {"id":3} {"id":3,"name":"kit"}`) {
		t.Fatalf("the change stream's tail: %q", tail)
	}
	do("show an error", 15*time.Second,
		chromedp.SetValue(`#sql`, "SELECT * FROM nowhere"),
		chromedp.Click(`#run`),
		chromedp.WaitVisible(`#error:not(:empty)`))
	if e := get("error", chromedp.Text(`#error`)); !strings.Contains(e, "The database refused the statement: no such table: nowhere") {
		t.Fatalf("the error: %q", e)
	}
	if shot := os.Getenv("DDB_CONSOLE_SCREENSHOT"); shot != "" {
		do("let the chart fill", 10*time.Second, chromedp.SetValue(`#sql`, "SELECT id, name FROM pets ORDER BY id"), chromedp.Click(`#run`), chromedp.Sleep(4*time.Second))
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(shot, png, 0o644)
	}
	c.Node(0).Kill()
	do("see the new leader", 20*time.Second, chromedp.WaitVisible(`#nodes tr[data-id="0"] td.down`))
	leader = get("new leader", chromedp.Evaluate[string](`document.getElementById("leader").dataset.leader`))
	deadline := time.Now().Add(15 * time.Second)
	for leader != "1" && leader != "2" && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		leader = get("new leader", chromedp.Evaluate[string](`document.getElementById("leader").dataset.leader`))
	}
	down := get("master", chromedp.Text(`#nodes tr[data-id="0"] td.down`))
	if leader != "1" && leader != "2" || !strings.HasPrefix(down, "no") {
		t.Fatalf("after the master's death: leader %q, master shown %q", leader, down)
	}
}
