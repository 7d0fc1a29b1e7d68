package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

func enableChanges(t testing.TB, s *Store, keep int64) {
	t.Helper()
	out := s.CommitBatch([]*Request{{SetChanges: true, ChangesKeep: keep}}, time.Now)
	if out[0].Err != nil {
		t.Fatal(out[0].Err)
	}
}

func allChanges(t testing.TB, s *Store, since uint64) []ChangeEntry {
	t.Helper()
	var all []ChangeEntry
	for {
		got, next, err := s.Changes(context.Background(), since, 100)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got...)
		if next > s.Applied() {
			return all
		}
		since = next
	}
}

func TestTheChangeStreamRecordsEachEntrysRowChanges(t *testing.T) {
	s := openTemp(t, "c.db")
	if _, _, err := s.Changes(context.Background(), 1, 10); !errors.Is(err, ErrChangesOff) {
		t.Fatalf("before it is on: %v", err)
	}
	mustCommit(t, s, time.Now, "CREATE TABLE before_on (a)", "INSERT INTO before_on VALUES (1)")
	enableChanges(t, s, 1000)
	start := s.Applied() + 1
	mustCommit(t, s, time.Now,
		"CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, data BLOB, r REAL)",
		"INSERT INTO t(name, data, r) VALUES ('a', x'00ff', 2.0), ('b', NULL, 1e300)",
		"UPDATE t SET name = 'c' WHERE name = 'a'",
		"DELETE FROM t WHERE name = 'b'",
		"INSERT OR REPLACE INTO t(name, r) VALUES ('c', 3)",
		"INSERT INTO before_on VALUES (2)",
		"SELECT 1",
	)
	got := allChanges(t, s, start)
	var ops []string
	for _, e := range got {
		for _, c := range e.Changes {
			ops = append(ops, c.Op+" "+c.Table)
		}
	}
	want := []string{"schema ", "insert t", "insert t", "update t", "delete t", "delete t", "insert t", "insert before_on"}
	if len(ops) != len(want) {
		t.Fatalf("got %v, want %v", ops, want)
	}
	for i := range ops {
		if ops[i] != want[i] {
			t.Fatalf("got %v, want %v", ops, want)
		}
	}
	ins := got[1].Changes[0]
	if b, ok := ins.After[2].([]byte); !ok || len(b) != 2 || b[1] != 0xff {
		t.Fatalf("blob value: %#v", ins.After)
	}
	if r, ok := ins.After[3].(float64); !ok || r != 2 {
		t.Fatalf("real value: %#v", ins.After)
	}
	if got[0].Changes[0].SQL == "" {
		t.Fatal("the schema change has no SQL")
	}
	if _, _, err := s.Changes(context.Background(), start-1, 10); err == nil {
		t.Fatal("the entry that turned it on has no changes to read, yet it was served")
	}
}

func quoteIdents(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quoteIdent(n)
	}
	return strings.Join(q, ", ")
}

func marks(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }

// tableContents reads every user table of c with its rowid (where it has one).
func tableContents(t *testing.T, c *sqlite.Conn) map[string][][]any {
	t.Helper()
	tables, err := c.All(`SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND name NOT LIKE '\_ddb\_%' ESCAPE '\'`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][]any{}
	for _, tb := range tables {
		name := tb[0].(string)
		q := "SELECT rowid, * FROM " + quoteIdent(name) + " ORDER BY rowid"
		if tb[1] == int64(1) {
			q = "SELECT * FROM " + quoteIdent(name) + " ORDER BY 1, 2"
		}
		rows, err := c.All(q)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = rows
	}
	return out
}

// changeWorkload is a random mix of writes over tables of every kind of
// key: an integer primary key, a WITHOUT ROWID table, and a table keyed
// by its rowid alone; with REPLACE and upserts, key changes, writes that
// fail whole or in part, columns added, renamed and dropped, and tables
// made and dropped.
func changeWorkload(r *rand.Rand) (*Request, string) {
	val := func() string {
		switch r.IntN(7) {
		case 0:
			return "NULL"
		case 1:
			return strconv.FormatInt(r.Int64()-r.Int64(), 10)
		case 2:
			return strconv.FormatFloat(r.NormFloat64()*1e6, 'g', -1, 64)
		case 3:
			return fmt.Sprintf("x'%x'", r.Uint64())
		case 4:
			return "9223372036854775807"
		default:
			return fmt.Sprintf("'s%d'", r.IntN(50))
		}
	}
	u := func() string { return fmt.Sprintf("'u%d'", r.IntN(30)) }
	id := func() int { return r.IntN(40) }
	one := func() string {
		switch r.IntN(22) {
		case 0, 1:
			return fmt.Sprintf("INSERT INTO t1(u, v) VALUES (%s, %s)", u(), val())
		case 2:
			return fmt.Sprintf("INSERT OR REPLACE INTO t1(id, u, v) VALUES (%d, %s, %s)", id(), u(), val())
		case 3:
			return fmt.Sprintf("INSERT INTO t1(u, v) VALUES (%s, %s) ON CONFLICT(u) DO UPDATE SET v = excluded.v", u(), val())
		case 4:
			return fmt.Sprintf("UPDATE t1 SET v = %s WHERE id %% 3 = %d", val(), r.IntN(3))
		case 5:
			return fmt.Sprintf("UPDATE t1 SET id = id + 100 WHERE id = %d", id())
		case 6:
			return fmt.Sprintf("UPDATE OR REPLACE t1 SET u = %s WHERE id = %d", u(), id())
		case 7:
			return fmt.Sprintf("DELETE FROM t1 WHERE id %% 7 = %d", r.IntN(7))
		case 8:
			return fmt.Sprintf("INSERT OR IGNORE INTO t1(id, u) VALUES (%d, %s)", id(), u())
		case 9:
			return fmt.Sprintf("INSERT INTO t1(id, u) VALUES (%d, %s)", id(), u()) // may fail: a key taken
		case 10, 11:
			return fmt.Sprintf("INSERT OR REPLACE INTO t2(a, b, c) VALUES (%s, %d, %s)", u(), r.IntN(3), val())
		case 12:
			return fmt.Sprintf("UPDATE t2 SET b = b + 1, c = %s WHERE a = %s", val(), u())
		case 13:
			return fmt.Sprintf("DELETE FROM t2 WHERE b = %d", r.IntN(4))
		case 14, 15:
			return fmt.Sprintf("INSERT INTO t3(x, y) VALUES (%s, %s)", val(), u())
		case 16:
			return fmt.Sprintf("REPLACE INTO t3(x, y) VALUES (%s, %s)", val(), u())
		case 17:
			return "DELETE FROM t3"
		case 18:
			return fmt.Sprintf("UPDATE t3 SET x = %s WHERE rowid %% 2 = %d", val(), r.IntN(2))
		case 19:
			switch r.IntN(4) {
			case 0:
				return fmt.Sprintf("ALTER TABLE t3 ADD COLUMN c%d DEFAULT %s", r.IntN(1000000), val())
			case 1:
				return "CREATE TABLE IF NOT EXISTS t4 (k INTEGER PRIMARY KEY, w)"
			case 2:
				return "DROP TABLE IF EXISTS t4"
			default:
				return fmt.Sprintf("ALTER TABLE t2 RENAME COLUMN c TO c%d", r.IntN(1000000)) // fails once renamed
			}
		case 20:
			return fmt.Sprintf("INSERT INTO t4(w) VALUES (%s)", val()) // fails while t4 does not exist
		default:
			return fmt.Sprintf("INSERT INTO t1(u, v) SELECT 'copy' || id, v FROM t1 WHERE id = %d", id())
		}
	}
	n := 1 + r.IntN(4)
	var sqls []string
	for range n {
		sqls = append(sqls, one())
	}
	req := &Request{Stmts: stmts(sqls...), AllowSchema: true}
	if r.IntN(4) == 0 {
		req.Each = true // statements fail alone, as rqlite's API runs them
	}
	return req, strings.Join(sqls, "; ")
}

func TestTheChangeStreamReplaysToTheSameDatabase(t *testing.T) {
	for seed := uint64(1); seed <= 12; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			s := openTemp(t, "live.db")
			enableChanges(t, s, 1<<40)
			start := s.Applied() + 1
			mustCommit(t, s, time.Now,
				"CREATE TABLE t1 (id INTEGER PRIMARY KEY, u TEXT UNIQUE, v)",
				"CREATE TABLE t2 (a TEXT, b INTEGER, c, PRIMARY KEY (a, b)) WITHOUT ROWID",
				"CREATE TABLE t3 (x, y UNIQUE)")
			r := rand.New(rand.NewPCG(seed, seed))
			for range 60 {
				var reqs []*Request
				for range 1 + r.IntN(8) {
					req, _ := changeWorkload(r)
					reqs = append(reqs, req)
				}
				s.CommitBatch(reqs, time.Now)
			}
			replica, err := sqlite.Open(filepath.Join(t.TempDir(), "replay.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer replica.Close()
			all := allChanges(t, s, start)
			n := map[string]int{}
			for _, e := range all {
				for _, c := range e.Changes {
					n[c.Op]++
				}
			}
			t.Logf("%d entries with changes: %v", len(all), n)
			if err := ApplyChanges(replica, all); err != nil {
				t.Fatal(err)
			}
			live, err := sqlite.Open(s.Path(), url.Values{"mode": {"ro"}})
			if err != nil {
				t.Fatal(err)
			}
			defer live.Close()
			want, got := tableContents(t, live), tableContents(t, replica)
			if !reflect.DeepEqual(want, got) {
				for name := range want {
					if !reflect.DeepEqual(want[name], got[name]) {
						t.Errorf("table %s:\n live   %v\n replay %v", name, want[name], got[name])
					}
				}
				t.Fatalf("the replayed stream differs from the database")
			}
		})
	}
}

// storedChanges reads the change stream's table as stored, bytes and all.
func storedChanges(t *testing.T, path string) [][]any {
	t.Helper()
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rows, err := c.All("SELECT idx, time_ms, events FROM _ddb_changes ORDER BY idx")
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// Every node stores the same bytes for the same index, whatever batches
// it applied the entries in and however often it restarted in between
// (the triggers are made again, with other numbers, after a restart).
func TestEveryReplicaStoresTheSameChanges(t *testing.T) {
	dir := t.TempDir()
	leader, err := Open(Options{Path: filepath.Join(dir, "leader.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	mustCommit(t, leader, time.Now, "CREATE TABLE t1 (id INTEGER PRIMARY KEY, u TEXT UNIQUE, v)")
	enableChanges(t, leader, 1<<40)
	mustCommit(t, leader, time.Now,
		"CREATE TABLE t2 (a TEXT, b INTEGER, c, PRIMARY KEY (a, b)) WITHOUT ROWID",
		"CREATE TABLE t3 (x, y UNIQUE)",
		"CREATE TABLE t5 (p, q)",
		"CREATE TRIGGER keep AFTER INSERT ON t5 BEGIN INSERT INTO t3(x, y) VALUES (new.p, 'from ' || new.q); END")
	r := rand.New(rand.NewPCG(7, 7))
	for i := range 80 {
		var reqs []*Request
		for range 1 + r.IntN(6) {
			req, _ := changeWorkload(r)
			reqs = append(reqs, req)
		}
		if i%10 == 0 {
			reqs = append(reqs, &Request{Stmts: stmts(fmt.Sprintf("INSERT INTO t5 VALUES (%d, 'x')", i))})
		}
		leader.CommitBatch(reqs, time.Now)
	}
	log, err := leader.LogRange(context.Background(), 1, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	replicaPath := filepath.Join(dir, "replica.db")
	open := func() *Store {
		s, err := Open(Options{Path: replicaPath})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	replica := open()
	for len(log) > 0 {
		n := min(len(log), 1+r.IntN(9))
		if _, err := replica.Apply(log[:n]); err != nil {
			t.Fatal(err)
		}
		log = log[n:]
		if r.IntN(5) == 0 {
			replica.Close()
			replica = open()
		}
	}
	replica.Close()
	want, got := storedChanges(t, leader.Path()), storedChanges(t, replicaPath)
	if len(want) < 50 {
		t.Fatalf("only %d entries with changes", len(want))
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("the replica stored other changes than the leader: %d and %d entries", len(want), len(got))
	}
}

// The consistency checks compare the change stream too: two nodes that
// applied the same log have the same digest, its table included, and a
// change stream altered in one file makes them differ, naming its table.
func TestConsistencyChecksCompareTheChangeStream(t *testing.T) {
	ws := []rlog.Write{{SetChanges: true, ChangesKeep: 1000}, {AllowSchema: true, Stmts: stmts("CREATE TABLE a (id INTEGER PRIMARY KEY, v)")}}
	for i := range 30 {
		ws = append(ws, rlog.Write{Stmts: stmts(fmt.Sprintf("INSERT INTO a (v) VALUES (%d)", i))})
	}
	entries := logEntries(t, ws...)
	dir := t.TempDir()
	var conns []*sqlite.Conn
	for _, name := range []string{"a.db", "b.db"} {
		s, err := Open(Options{Path: filepath.Join(dir, name)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Apply(entries); err != nil {
			t.Fatal(err)
		}
		s.Close()
		c, err := sqlite.Open(filepath.Join(dir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	digest := func(c *sqlite.Conn) *Digest {
		d, err := digestOn(c, 1, newPacer(0))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	da := digest(conns[0])
	if diff := da.Differences(digest(conns[1])); diff != "" {
		t.Fatalf("the same log gave different digests: %s", diff)
	}
	if !slices.ContainsFunc(da.Tables, func(td TableDigest) bool { return td.Name == "_ddb_changes" && td.Rows == 31 }) {
		t.Fatalf("the digest does not cover the change stream: %+v", da.Tables)
	}
	if err := conns[1].Exec("UPDATE _ddb_changes SET time_ms = time_ms + 1 WHERE idx = 10"); err != nil {
		t.Fatal(err)
	}
	if diff := da.Differences(digest(conns[1])); !strings.Contains(diff, "_ddb_changes") {
		t.Fatalf("an altered change stream: %q", diff)
	}
}

// Retention: the stream keeps the changes of the last keep indexes, on
// every node alike, and says so (410 with the oldest kept) across a
// restart; turned off and on again, it starts afresh.
func TestTheChangeStreamKeepsWhatItsRetentionSays(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, time.Now, "CREATE TABLE a (v)")
	enableChanges(t, s, 100)
	for i := range 600 {
		mustCommit(t, s, time.Now, fmt.Sprintf("INSERT INTO a VALUES (%d)", i))
	}
	applied := s.Applied()
	cs, err := s.ChangeSetting(context.Background())
	if err != nil || cs.Oldest != applied+1-100 {
		t.Fatalf("oldest %d (%v), want %d", cs.Oldest, err, applied+1-100)
	}
	var gone *ChangesGoneError
	if _, _, err := s.Changes(context.Background(), cs.Oldest-1, 10); !errors.As(err, &gone) || gone.Oldest != cs.Oldest {
		t.Fatalf("before the oldest: %v", err)
	}
	if got := allChanges(t, s, cs.Oldest); len(got) != 100 || got[0].Index != cs.Oldest {
		t.Fatalf("%d entries from the oldest", len(got))
	}
	s.Close()
	if s, err = Open(Options{Path: path}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if cs2, _ := s.ChangeSetting(context.Background()); cs2 != cs {
		t.Fatalf("after a restart: %+v, before %+v", cs2, cs)
	}
	out := s.CommitBatch([]*Request{{SetChanges: true}}, time.Now)
	if out[0].Err != nil {
		t.Fatal(out[0].Err)
	}
	if _, _, err := s.Changes(context.Background(), 1, 10); !errors.Is(err, ErrChangesOff) {
		t.Fatalf("turned off: %v", err)
	}
	mustCommit(t, s, time.Now, "INSERT INTO a VALUES (-1)") // not captured
	enableChanges(t, s, 100)
	mustCommit(t, s, time.Now, "INSERT INTO a VALUES (-2)")
	cs, _ = s.ChangeSetting(context.Background())
	got := allChanges(t, s, cs.Oldest)
	if len(got) != 1 || got[0].Changes[0].After[0] != int64(-2) {
		t.Fatalf("turned on again: %+v", got)
	}
}

// One entry's changes are bounded: a write whose changes would take more
// fails, alike everywhere, with a message that says what to do, and
// changes nothing; with the stream off, the same write applies.
func TestAWriteWhoseChangesAreTooLargeFailsClearly(t *testing.T) {
	s := openTemp(t, "big.db")
	enableChanges(t, s, 100)
	mustCommit(t, s, time.Now, "CREATE TABLE b (v)",
		"WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 20) INSERT INTO b SELECT zeroblob(1000000) FROM s")
	big := &Request{Stmts: stmts("UPDATE b SET v = zeroblob(1000001)")}
	out := s.CommitBatch([]*Request{big}, time.Now)
	if out[0].Err == nil || !strings.Contains(out[0].Err.Error(), "write fewer rows at a time, or turn the change stream off") {
		t.Fatalf("a write of 40 MB of changes: %v", out[0].Err)
	}
	if res := dump(t, s, "b"); len(res) != 20 || len(res[0][0].([]byte)) != 1000000 {
		t.Fatal("the refused write changed something")
	}
	if out := s.CommitBatch([]*Request{{SetChanges: true}}, time.Now); out[0].Err != nil {
		t.Fatal(out[0].Err)
	}
	if out := s.CommitBatch([]*Request{big}, time.Now); out[0].Err != nil {
		t.Fatalf("with the stream off: %v", out[0].Err)
	}
}

// A node that takes a copy of another's database (a snapshot, a repair)
// captures as the copy's setting says from then on: the simulator found a
// wiped node that caught up from a snapshot and never captured again.
func TestACopyInstalledBringsItsChangeStreamSetting(t *testing.T) {
	dir := t.TempDir()
	var ws []rlog.Write
	ws = append(ws, rlog.Write{SetChanges: true, ChangesKeep: 1000}, rlog.Write{AllowSchema: true, Stmts: stmts("CREATE TABLE a (v)")})
	for i := range 10 {
		ws = append(ws, rlog.Write{Stmts: stmts(fmt.Sprintf("INSERT INTO a VALUES (%d)", i))})
	}
	entries := logEntries(t, ws...)
	leader, err := Open(Options{Path: filepath.Join(dir, "leader.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	if _, err := leader.Apply(entries[:6]); err != nil {
		t.Fatal(err)
	}
	snap, _, err := leader.Snapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	wiped, err := Open(Options{Path: filepath.Join(dir, "wiped.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer wiped.Close()
	f, err := os.Open(snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wiped.Restore(f, dir); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, s := range []*Store{leader, wiped} {
		if _, err := s.Apply(entries[6:]); err != nil {
			t.Fatal(err)
		}
	}
	leader.Close()
	wiped.Close()
	if a, b := storedChanges(t, filepath.Join(dir, "leader.db")), storedChanges(t, filepath.Join(dir, "wiped.db")); len(a) != 11 || !reflect.DeepEqual(a, b) {
		t.Fatalf("the node that took a copy stores %d entries' changes, the leader %d", len(b), len(a))
	}
}

// A read of the stream holds a bounded amount: entries whose changes are
// large come a few at a time, and every one comes, in order.
func TestAReadOfTheStreamIsBounded(t *testing.T) {
	s := openTemp(t, "bounded.db")
	enableChanges(t, s, 1000)
	start := s.Applied() + 1
	mustCommit(t, s, time.Now, "CREATE TABLE b (v)", "INSERT INTO b VALUES (zeroblob(1500000))")
	for range 8 {
		mustCommit(t, s, time.Now, "UPDATE b SET v = randomblob(1500000)")
	}
	since, reads := start, 0
	var got []uint64
	for since <= s.Applied() {
		entries, next, err := s.Changes(context.Background(), since, 256)
		if err != nil {
			t.Fatal(err)
		}
		reads++
		size := 0
		for _, e := range entries {
			got = append(got, e.Index)
			for _, c := range e.Changes {
				for _, v := range append(slices.Clone(c.Before), c.After...) {
					if b, ok := v.([]byte); ok {
						size += len(b)
					}
				}
			}
		}
		if size > maxChangesRead+3_000_000 {
			t.Fatalf("one read took %d entries, %d bytes", len(entries), size)
		}
		since = next
	}
	if len(got) != 10 || reads < 4 || !slices.IsSorted(got) {
		t.Fatalf("%d reads gave %v", reads, got)
	}
}
