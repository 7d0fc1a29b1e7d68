package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

func logEntries(t testing.TB, ws ...rlog.Write) []rlog.Entry {
	t.Helper()
	var out []rlog.Entry
	for i, w := range ws {
		b, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rlog.Entry{Index: uint64(i + 1), TimeMs: time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli() + int64(i), Seed: int64(i*7919 + 1), Body: b})
	}
	return out
}

func describe(os []Outcome) []string {
	var out []string
	for _, o := range os {
		if o.Err != nil {
			out = append(out, fmt.Sprintf("%d error: %v", o.Index, o.Err))
		} else {
			out = append(out, fmt.Sprintf("%d ok: %v", o.Index, o.Results))
		}
	}
	return out
}

// Under consensus every node applies entries nothing ran before: a
// write's failure is its outcome, the same on every node, in every
// grouping of entries into transactions.
func TestApplyLogFailuresAreOutcomesTheSameEverywhere(t *testing.T) {
	w := func(sql string) rlog.Write { return rlog.Write{Stmts: stmts(sql)} }
	entries := logEntries(t,
		rlog.Write{Stmts: stmts("CREATE TABLE t (id INTEGER PRIMARY KEY, v UNIQUE, at DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()))"), AllowSchema: true},
		w("INSERT INTO t (v) VALUES ('a')"),
		w("INSERT INTO t (v) VALUES ('a')"),             // constraint: fails alone
		w("INSERT OR ROLLBACK INTO t (v) VALUES ('a')"), // rolls back the whole transaction
		w("CREATE TABLE u (x)"),                         // a schema change without the leader's consent
		w("SELECT * FROM _ddb_requests"),                // forbidden
		rlog.Write{Stmts: stmts("INSERT INTO t (v) VALUES ('b'), ('c'), ('d') RETURNING id"), Collect: true, MaxRows: 2}, // over its limit
		rlog.Write{Stmts: stmts("INSERT INTO t (v) VALUES ('e') RETURNING id, r"), Collect: true, RequestID: "k"},
		rlog.Write{Stmts: stmts("INSERT INTO t (v) VALUES ('e') RETURNING id, r"), Collect: true, RequestID: "k"}, // a retry
		w("INSERT INTO t (v) VALUES (last_insert_rowid() || '-' || changes())"),
	)
	all, each := openTemp(t, "all.db"), openTemp(t, "each.db")
	got, err := all.ApplyLog(entries)
	if err != nil {
		t.Fatal(err)
	}
	var one []Outcome
	for _, e := range entries {
		o, err := each.ApplyLog([]rlog.Entry{e})
		if err != nil {
			t.Fatal(err)
		}
		one = append(one, o...)
	}
	if a, b := describe(got), describe(one); !reflect.DeepEqual(a, b) {
		t.Fatalf("outcomes differ by grouping:\n%v\n%v", a, b)
	}
	sameContent(t, all, each)
	wantErr := map[uint64]bool{3: true, 4: true, 5: true, 6: true, 7: true}
	for _, o := range got {
		if (o.Err != nil) != wantErr[o.Index] {
			t.Errorf("entry %d: %v", o.Index, o.Err)
		}
	}
	if !got[8].Duplicate || !reflect.DeepEqual(got[8].Results, got[7].Results) {
		t.Fatalf("the retry of request k: %+v, first %+v", got[8], got[7])
	}
	if rows := dump(t, all, "t"); len(rows) != 3 {
		t.Fatalf("t holds %v, want the rows of entries 2, 8 and 10", rows)
	}
	if all.Applied() != uint64(len(entries)) {
		t.Fatalf("applied %d", all.Applied())
	}
}

// A copy of the database says where it stands in the log: the applied
// entry's term is right after every batch, though a batch in the term the
// database already holds does not write it again; after a restart, after
// a snapshot of another term was installed, and after the term moves.
func TestTheAppliedTermFollowsEveryBatch(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Path: dir + "/a.db"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	index := uint64(0)
	apply := func(st *Store, term uint64, sql string) {
		t.Helper()
		index++
		es := logEntries(t, rlog.Write{Stmts: stmts(sql), AllowSchema: true})
		es[0].Index, es[0].Term = index, term
		if out, err := st.ApplyLog(es); err != nil || len(out) != 1 || out[0].Err != nil {
			t.Fatalf("apply %q: %v %v", sql, out, err)
		}
	}
	position := func(st *Store, wantTerm uint64) {
		t.Helper()
		path, _, err := st.Snapshot(t.Context(), dir)
		if err != nil {
			t.Fatal(err)
		}
		defer removeCopy(path)
		p, err := SnapshotPosition(path)
		if err != nil || p.Index != index || p.Term != wantTerm {
			t.Fatalf("a copy stands at %+v (%v), want index %d term %d", p, err, index, wantTerm)
		}
	}
	apply(s, 2, "CREATE TABLE t (x)")
	position(s, 2)
	apply(s, 2, "INSERT INTO t VALUES (1)")
	position(s, 2)
	apply(s, 3, "INSERT INTO t VALUES (2)")
	position(s, 3)

	// Another database, further on in term 5, is installed here as a
	// snapshot: a copy then says term 5, and 6 once an entry of term 6 is
	// applied.
	other, err := Open(Options{Path: dir + "/b.db"})
	if err != nil {
		t.Fatal(err)
	}
	saved := index
	index = 0
	apply(other, 5, "CREATE TABLE t (x)")
	for range 5 {
		apply(other, 5, "INSERT INTO t VALUES (9)")
	}
	path, _, err := other.Snapshot(t.Context(), dir)
	other.Close()
	if err != nil {
		t.Fatal(err)
	}
	if saved >= index {
		t.Fatalf("the other database is not ahead: %d, %d", saved, index)
	}
	if err := s.InstallRaftSnapshot(path, index, 5, nil); err != nil {
		t.Fatal(err)
	}
	position(s, 5)
	apply(s, 6, "INSERT INTO t VALUES (3)")
	position(s, 6)

	// A restart forgets what the writer knew; the file still says it.
	s.Close()
	if s, err = Open(Options{Path: dir + "/a.db"}); err != nil {
		t.Fatal(err)
	}
	position(s, 6)
	apply(s, 6, "INSERT INTO t VALUES (4)")
	position(s, 6)
	apply(s, 7, "INSERT INTO t VALUES (5)")
	position(s, 7)
}

// The record of nodes being added back (written with a configuration
// change) is the data's place in the log, like the configuration: a
// snapshot copy carries it, and a node that installs the copy reads it.
func TestSnapshotCarriesTheRecordOfRejoiningNodes(t *testing.T) {
	leader := openTemp(t, "l.db")
	record := []byte(`{"3":{"url":"http://h:8082","voter":true}}`)
	if _, err := leader.ApplyLog([]rlog.Entry{{Index: 1, Term: 2, Conf: []byte{1}, Rejoining: record}}); err != nil {
		t.Fatal(err)
	}
	pos, err := leader.DataPosition(context.Background())
	if err != nil || string(pos.Rejoining) != string(record) {
		t.Fatalf("after apply: %q %v", pos.Rejoining, err)
	}
	path, _, err := leader.Snapshot(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	follower := openTemp(t, "f.db")
	if err := follower.InstallRaftSnapshot(path, 1, 2, nil); err != nil {
		t.Fatal(err)
	}
	pos, err = follower.DataPosition(context.Background())
	if err != nil || string(pos.Rejoining) != string(record) {
		t.Fatalf("after install: %q %v", pos.Rejoining, err)
	}
}

// A database an earlier version wrote kept the consensus log in its own
// tables. At open, the log and hard state move into the log file, and
// the database keeps only where its data stands.
func TestALogKeptInTheDatabaseMovesToTheLogFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, suf := range []string{"", "-wal", "-shm"} {
		os.Remove(RaftLogPath(path) + suf)
	}
	c, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ExecScript(`
CREATE TABLE _ddb_raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL, data BLOB);
INSERT INTO _ddb_raft_log VALUES (5, 2, 0, x'01'), (6, 2, 0, x'02');
DELETE FROM _ddb_raft_state;
INSERT INTO _ddb_raft_state VALUES ('hard_state', x'0a0b'), ('snap_index', 4), ('snap_term', 1), ('conf_state', x'0c'), ('node_id', 1);
`); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for range 2 { // the second open finds it moved already
		s, err := Open(Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.LoadRaftState(context.Background())
		if err != nil || string(st.HardState) != "\x0a\x0b" || st.SnapIndex != 4 || st.SnapTerm != 1 || string(st.ConfState) != "\x0c" {
			t.Fatalf("moved state: %+v %v", st, err)
		}
		ents, err := s.RaftEntries(context.Background(), 5, 7, 0)
		if err != nil || len(ents) != 2 || ents[1].Index != 6 || string(ents[1].Data) != "\x02" {
			t.Fatalf("moved entries: %+v %v", ents, err)
		}
		if empty, _ := s.RaftStateEmpty(context.Background()); empty || s.RaftLogDiscarded {
			t.Fatal("the moved log reads as empty, or was discarded")
		}
		row, _ := s.w.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = '_ddb_raft_log'")
		if row[0].(int64) != 0 {
			t.Fatal("the database still holds the log table")
		}
		s.Close()
	}
}

// A log file beside a database that is not its own (the database was
// wiped, or replaced by a copy) is emptied at open: the node starts
// without Raft state instead of with another database's log.
func TestALogFileBesideAnotherDatabaseIsEmptied(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRaft(RaftSave{Entries: []RaftEntry{{Index: 1, Term: 1, Data: []byte("x")}}, HardState: []byte("hs")}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, suf := range []string{"", "-wal", "-shm"} {
		os.Remove(path + suf) // the database is wiped; its log file stays
	}
	s, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if empty, err := s.RaftStateEmpty(context.Background()); !empty || err != nil || !s.RaftLogDiscarded {
		t.Fatalf("empty %v, discarded %v, %v", empty, s.RaftLogDiscarded, err)
	}
}

// A write that fails on one node for that machine's sake (its disk full:
// here the connection's page limit, which SQLite reports as the disk
// full, while a directory SQLite may use has no room: /proc, as
// SQLITE_TMPDIR) is not the write's outcome: recorded as the entry's
// failure, it would leave that node without what every other node applied.
// ApplyLog fails instead, keeping nothing of the batch; once the node has
// room, the same entries apply as on a node that never lacked it. For a
// write of independent statements (rqlite's API) and for an ordinary one,
// with entries before it in the batch. The same error from the SQL itself
// (an AUTOINCREMENT counter at its end) fails the entry, as on every node,
// while the disk has room (with the disk nearly full it would stop the
// node: SQLite reports both alike).
func TestAFullDiskStopsTheApplyInsteadOfFailingTheEntry(t *testing.T) {
	var st syscall.Statfs_t
	if syscall.Statfs("/proc", &st) != nil || st.Bavail != 0 {
		t.Skip("needs /proc, a file system without room")
	}
	auto := openTemp(t, "auto.db")
	out := applyNext(t, auto,
		rlog.Write{Stmts: stmts("CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v)", "INSERT INTO a VALUES (9223372036854775807, 1)"), AllowSchema: true},
		rlog.Write{Stmts: stmts("INSERT INTO a (v) VALUES (2)")},
		rlog.Write{Stmts: stmts("INSERT INTO a (v) VALUES (3)"), Each: true},
	)
	if out[0].Err != nil || out[1].Err == nil || !strings.Contains(out[1].Err.Error(), "full") || out[2].Err == nil || auto.Applied() != 3 {
		t.Fatalf("an AUTOINCREMENT at its end: %v", describe(out))
	}
	t.Setenv("SQLITE_TMPDIR", "/proc")
	for _, each := range []bool{false, true} {
		full, roomy := openTemp(t, "full.db"), openTemp(t, "roomy.db")
		for _, s := range []*Store{full, roomy} {
			applyNext(t, s, rlog.Write{Stmts: stmts("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)", "INSERT INTO t (b) VALUES (x'00')"), AllowSchema: true})
		}
		pages := scalar(t, full, "PRAGMA page_count").(int64)
		full.wconn.auth.reset(policyReplica)
		if err := full.w.Exec(fmt.Sprintf("PRAGMA max_page_count = %d", pages+8)); err != nil {
			t.Fatal(err)
		}
		ws := []rlog.Write{
			{Stmts: stmts("INSERT INTO t (b) VALUES (x'01')")},
			{Stmts: stmts("INSERT INTO t (b) VALUES (x'02')", "INSERT INTO t (b) VALUES (zeroblob(200000))", "INSERT INTO t (b) VALUES (x'03')"), Each: each},
			{Stmts: stmts("INSERT INTO t (b) VALUES (x'04')")},
		}
		es := logEntries(t, ws...)
		for i := range es {
			es[i].Index += full.Applied()
		}
		before := full.Applied()
		out, err := full.ApplyLog(es)
		if err == nil || !sqlite.Environmental(err, t.TempDir()) {
			t.Fatalf("each=%v: a full disk: %v, outcomes %v", each, err, describe(out))
		}
		if full.Applied() != before || scalar(t, full, "SELECT count(*) FROM t") != int64(1) {
			t.Fatalf("each=%v: the failed batch left something: applied %d (was %d)", each, full.Applied(), before)
		}
		full.wconn.auth.reset(policyReplica)
		if err := full.w.Exec("PRAGMA max_page_count = 1073741823"); err != nil {
			t.Fatal(err)
		}
		got, err := full.ApplyLog(es)
		if err != nil {
			t.Fatal(err)
		}
		want, err := roomy.ApplyLog(es)
		if err != nil {
			t.Fatal(err)
		}
		if g, w := describe(got), describe(want); !slices.Equal(g, w) {
			t.Fatalf("each=%v: once it has room:\n%v\nwhere a node never short of it:\n%v", each, g, w)
		}
		sameContent(t, full, roomy)
	}
}
