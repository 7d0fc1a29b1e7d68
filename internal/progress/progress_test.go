package progress

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// An operation is listed while under way, with what it has done; its
// progress is logged every interval (by the tracker's clock), whether or
// not it counted anything meanwhile, and
// its end once; a nil tracker tracks nothing and costs nothing.
func TestOperationsAreListedAndLoggedWhileUnderWay(t *testing.T) {
	var logs bytes.Buffer
	tr := New(slog.New(slog.NewTextHandler(&logs, nil)), 5*time.Second)
	clock := time.Unix(1000, 0)
	tr.now = func() time.Time { return clock }
	load := tr.Start("load", "dump.sql", "bytes", 4<<20)
	snap := tr.Start("snapshot-send", "node 2", "bytes", 0)
	io.Copy(io.Discard, load.Reader(bytes.NewReader(make([]byte, 1<<20))))
	tr.logUnderWay() // (what Run does every interval)
	if strings.Contains(logs.String(), "under way") {
		t.Fatalf("progress logged before the interval:\n%s", logs.String())
	}
	clock = clock.Add(6 * time.Second)
	load.Add(1 << 20)
	load.Add(1)
	tr.logUnderWay()
	tr.logUnderWay() // at once again: nothing new
	if n := strings.Count(logs.String(), "load under way"); n != 1 || !strings.Contains(logs.String(), "percent=50%") || !strings.Contains(logs.String(), "total=\"4.0 MB\"") {
		t.Fatalf("%d progress lines:\n%s", n, logs.String())
	}
	// An operation that counted nothing meanwhile (a long step) is
	// reported too.
	if n := strings.Count(logs.String(), "snapshot-send under way"); n != 1 {
		t.Fatalf("%d progress lines of the snapshot:\n%s", n, logs.String())
	}
	got := tr.UnderWay()
	if len(got) != 2 || got[0].Op != "load" || got[0].Done != 2<<20+1 || got[0].Percent < 50 || got[0].ElapsedSeconds != 6 || got[1].Total != 0 || got[1].Percent != 0 {
		t.Fatalf("under way: %+v", got)
	}
	load.End(nil)
	snap.End(errors.New("the peer went away"))
	if len(tr.UnderWay()) != 0 || !strings.Contains(logs.String(), "load done") || !strings.Contains(logs.String(), "snapshot-send failed") {
		t.Fatalf("after the end: %+v\n%s", tr.UnderWay(), logs.String())
	}
	var none *Tracker
	op := none.Start("backup", "x", "bytes", 1)
	op.Add(1)
	op.End(nil)
	if none.UnderWay() != nil || op.Reader(strings.NewReader("x")) == nil {
		t.Fatal("a nil tracker tracks")
	}
}
