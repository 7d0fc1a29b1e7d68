package verify

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/store"
)

// The checker finds nothing in streams that agree and replay, and finds a
// stream that differs between nodes, and one that does not replay to the
// database.
func TestChangeStreamsFindsWhatIsWrong(t *testing.T) {
	dir := t.TempDir()
	ws := []rlog.Write{{SetChanges: true, ChangesKeep: 1000}}
	for _, q := range Schema {
		ws = append(ws, rlog.Write{AllowSchema: true, Stmts: []rlog.Statement{{SQL: q}}})
	}
	for i := range 20 {
		ws = append(ws, rlog.Write{Stmts: []rlog.Statement{{SQL: AppendSQL, Pos: []any{int64(i), int64(1), int64(i)}}}},
			rlog.Write{Stmts: []rlog.Statement{{SQL: DetSQL}}}, rlog.Write{Stmts: []rlog.Statement{{SQL: CounterSQL}}})
	}
	var entries []rlog.Entry
	for i, w := range ws {
		b, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, rlog.Entry{Index: uint64(i + 1), TimeMs: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli() + int64(i), Seed: int64(i), Body: b})
	}
	var paths []string
	for n := range 2 {
		p := filepath.Join(dir, fmt.Sprintf("n%d.db", n))
		s, err := store.Open(store.Options{Path: p})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyLog(entries); err != nil {
			t.Fatal(err)
		}
		s.Close()
		paths = append(paths, p)
	}
	if found := ChangeStreams(paths, t.TempDir()); len(found) > 0 {
		t.Fatalf("agreeing streams: %v", found)
	}
	c, err := sqlite.Open(paths[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Exec("DELETE FROM _ddb_changes WHERE idx = 12")
	c.Close()
	if found := ChangeStreams(paths, t.TempDir()); len(found) != 1 || !strings.Contains(found[0], "node 1 stores 66 entries' changes, node 0 67") {
		t.Fatalf("a stream that lost an entry: %v", found)
	}
	c, err = sqlite.Open(paths[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Exec("UPDATE counter SET n = n + 1")
	c.Close()
	if found := ChangeStreams(paths[:1], t.TempDir()); len(found) != 1 || !strings.Contains(found[0], "table counter replayed from the stream") {
		t.Fatalf("a database changed behind the stream's back: %v", found)
	}
}
