package store

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
)

// What a node stores depends on the log alone, transaction boundaries
// included: the same entries, applied one at a time, in random groups, or
// all at once (how Raft may hand them over: a follower catching up gets
// many in one batch), give byte-identical database files. The entries
// write to an FTS4 table with automerge (which merges its index at COMMIT,
// in proportion to what the transaction wrote: a node that applied entries
// in bigger batches built another index, and a write that read its
// segment count stored another value), an FTS3 table, an R-Tree and
// ordinary tables.
func TestTransactionBoundariesAreTheLogs(t *testing.T) {
	var ws []rlog.Write
	ws = append(ws, rlog.Write{AllowSchema: true, Stmts: stmts(
		"CREATE VIRTUAL TABLE f4 USING fts4(body)",
		"INSERT INTO f4(f4) VALUES ('automerge=8')",
		"CREATE VIRTUAL TABLE f3 USING fts3(body)",
		"CREATE VIRTUAL TABLE rt USING rtree(id, x0, x1)",
		"CREATE TABLE seen (n INTEGER, m INTEGER)",
	)})
	for i := range 150 {
		ws = append(ws, rlog.Write{Stmts: stmts(
			fmt.Sprintf("INSERT INTO f4(body) VALUES ('document %d about word%d and word%d')", i, i%7, i%13),
			fmt.Sprintf("INSERT INTO f3(body) VALUES ('document %d about word%d')", i, i%11),
			fmt.Sprintf("INSERT INTO rt VALUES (%d, %d, %d)", i, i, i+5),
		)})
		if i%10 == 9 {
			// What the index looks like is readable, and may be stored.
			ws = append(ws, rlog.Write{Stmts: stmts("INSERT INTO seen SELECT (SELECT count(*) FROM f4_segdir), (SELECT count(*) FROM f3_segdir)")})
		}
	}
	ws = append(ws, rlog.Write{Stmts: stmts("INSERT INTO f3(f3) VALUES ('optimize')")})

	sameWhateverTheGrouping(t, ws, "SELECT group_concat(n || '/' || m, ' ') FROM seen", true)
}

// Without virtual tables entries share transactions (see isolating), and
// where those end changes nothing a client can read: the same log applied
// in any grouping gives the same content, through inserts, updates and
// deletes that split and merge pages, free them and reuse them, large
// values on overflow pages, indexes, WITHOUT ROWID and AUTOINCREMENT
// tables, triggers, and schema changes in the middle; and once a virtual
// table is made in the middle of a batch, entries commit alone from that
// entry on. (The files differ in
// where SQLite placed cells and which free pages it reused, which no
// statement can observe: the pragmas about the file are refused.)
func TestTransactionBoundariesOfOrdinaryTablesChangeNothing(t *testing.T) {
	ws := []rlog.Write{{AllowSchema: true, Stmts: stmts(
		"CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT, v BLOB)",
		"CREATE INDEX a_k ON a(k)",
		"CREATE TABLE w (k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
		"CREATE TABLE log (what TEXT)",
		"CREATE TRIGGER a_del AFTER DELETE ON a BEGIN INSERT INTO log VALUES ('deleted ' || old.id); END",
	)}}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 400 {
		var q string
		switch rng.IntN(6) {
		case 0, 1:
			q = fmt.Sprintf("INSERT INTO a (k, v) VALUES ('key%d', randomblob(%d))", rng.IntN(1000), rng.IntN(6000))
		case 2:
			q = fmt.Sprintf("UPDATE a SET v = zeroblob(%d) WHERE id %% 7 = %d", rng.IntN(3000), rng.IntN(7))
		case 3:
			q = fmt.Sprintf("DELETE FROM a WHERE id %% 5 = %d", rng.IntN(5))
		case 4:
			q = fmt.Sprintf("INSERT INTO w VALUES ('w%d', %d) ON CONFLICT(k) DO UPDATE SET n = n + 1", rng.IntN(300), i)
		default:
			q = fmt.Sprintf("DELETE FROM w WHERE n %% 3 = %d", rng.IntN(3))
		}
		ws = append(ws, rlog.Write{Stmts: stmts(q)})
		if i == 200 {
			ws = append(ws, rlog.Write{AllowSchema: true, Stmts: stmts("ALTER TABLE a ADD COLUMN extra TEXT DEFAULT 'x'", "CREATE INDEX w_n ON w(n)", "DROP INDEX a_k")})
		}
		if i == 300 {
			// A virtual table made in the middle of a batch: from the entry
			// that makes it on, every entry commits alone.
			ws = append(ws, rlog.Write{AllowSchema: true, Stmts: stmts("CREATE VIRTUAL TABLE late USING fts4(body)", "INSERT INTO late(late) VALUES ('automerge=2')", "INSERT INTO late(body) VALUES ('first')")})
		}
		if i > 300 {
			ws[len(ws)-1].Stmts = append(ws[len(ws)-1].Stmts, rlog.Statement{SQL: fmt.Sprintf("INSERT INTO late(body) VALUES ('entry %d')", i)})
		}
	}
	sameWhateverTheGrouping(t, ws, "SELECT count(*) || '/' || (SELECT count(*) FROM w) || '/' || (SELECT count(*) FROM log) || '/' || sum(length(v)) || '/' || (SELECT count(*) FROM late_segdir) FROM a", false)
}

// sameWhateverTheGrouping applies ws one entry at a time, in random
// groups, and all at once, and compares what query reads in each, the
// dumps of their whole content (shadow tables included), the applied
// index and, bytewise, the files byte for byte.
func sameWhateverTheGrouping(t *testing.T, ws []rlog.Write, query string, bytewise bool) {
	t.Helper()
	entries := logEntries(t, ws...)
	groupings := map[string]func(n int, rng *rand.Rand) int{
		"one at a time": func(int, *rand.Rand) int { return 1 },
		"random groups": func(n int, rng *rand.Rand) int { return 1 + rng.IntN(min(n, 40)) },
		"all at once":   func(n int, _ *rand.Rand) int { return n },
	}
	files, seen := map[string][]byte{}, map[string]string{}
	for name, size := range groupings {
		path := filepath.Join(t.TempDir(), "n.db")
		s, err := Open(Options{Path: path, Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		// The file's own identity (and its Raft log's) is drawn at random
		// when it is created: the same here, so the rest can be compared.
		s.wconn.auth.reset(policyReplica)
		if err := s.w.Exec("UPDATE _ddb_meta SET value = '000000000000000000000000' WHERE key = 'file_id'"); err != nil {
			t.Fatal(err)
		}
		if err := s.w.Exec("UPDATE _ddb_raft_state SET value = zeroblob(length(value)) WHERE key = 'log_id'"); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		for rest := entries; len(rest) > 0; {
			k := size(len(rest), rng)
			out, err := s.ApplyLog(rest[:k])
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range out {
				if o.Err != nil {
					t.Fatalf("%s: entry %d: %v", name, o.Index, o.Err)
				}
			}
			rest = rest[k:]
		}
		res, err := s.Read(context.Background(), stmts(query), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		seen[name] = fmt.Sprint(res[0].Rows)
		var dump strings.Builder
		if _, err := s.Dump(context.Background(), &dump); err != nil {
			t.Fatal(err)
		}
		seen[name] += dump.String()
		// The page of _ddb_meta holds the applied index, updated at every
		// commit: its free space keeps the history of those updates (a
		// value that grew a byte moved), so that page, and that page
		// only, depends on the number of transactions. Its content is
		// compared instead.
		s.wconn.auth.reset(policyReplica)
		meta, err := s.w.All("SELECT key, value FROM _ddb_meta ORDER BY key")
		if err != nil {
			t.Fatal(err)
		}
		seen[name] += fmt.Sprint(meta)
		roots, err := s.w.All("SELECT rootpage FROM sqlite_master WHERE tbl_name = '_ddb_meta'")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pageSize := int(b[16])<<8 | int(b[17])
		for _, r := range roots {
			page := int(r[0].(int64))
			at := (page - 1) * pageSize
			if page == 1 {
				at += 100
			}
			if b[at] != 0x0d && b[at] != 0x0a { // a leaf: the whole b-tree
				t.Fatalf("_ddb_meta's page %d is not a leaf", page)
			}
			clear(b[(page-1)*pageSize : page*pageSize])
		}
		files[name] = b
	}
	for name, v := range seen {
		if v != seen["one at a time"] {
			t.Errorf("applied %s, %q or the dump reads otherwise than one entry at a time", name, query)
		}
	}
	for name, b := range files {
		if !bytewise {
			break
		}
		if !bytes.Equal(b, files["one at a time"]) {
			o := files["one at a time"]
			for i := range min(len(b), len(o)) {
				if b[i] != o[i] {
					t.Logf("first difference at byte %d (page %d, offset %d)", i, i/4096+1, i%4096)
					break
				}
			}
			t.Errorf("applied %s, the file differs from the one applied one entry at a time (%d and %d bytes)", name, len(b), len(files["one at a time"]))
		}
	}
}
