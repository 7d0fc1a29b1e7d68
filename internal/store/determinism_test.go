package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// replicate applies every entry of the log of from to each of to: to the
// first one entry per transaction, to the others all in one.
func replicate(t *testing.T, from *Store, to ...*Store) {
	t.Helper()
	entries, err := from.LogRange(context.Background(), 1, 1<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range to {
		if i > 0 {
			if _, err := s.Apply(entries); err != nil {
				t.Fatalf("apply: %v", err)
			}
		}
		for _, e := range entries {
			if _, err := s.Apply([]rlog.Entry{e}); err != nil {
				t.Fatalf("apply entry %d: %v", e.Index, err)
			}
		}
		if s.Applied() != from.Applied() {
			t.Fatalf("replica at %d, leader at %d", s.Applied(), from.Applied())
		}
	}
}

// differences lists how the stores' files differ from the first one's
// (user content, SQLite's own sqlite_sequence and sqlite_stat tables
// included); nil when they are identical.
func differences(t *testing.T, limit int, stores ...*Store) []string {
	t.Helper()
	var dbs []*inspect.Database
	for _, s := range stores {
		d, err := inspect.Load(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		dbs = append(dbs, d)
	}
	return inspect.Compare(dbs, limit)
}

// sameContent fails unless every store's file holds the same content.
func sameContent(t *testing.T, stores ...*Store) {
	t.Helper()
	if diffs := differences(t, 10, stores...); len(diffs) > 0 {
		t.Fatalf("replicas differ:\n%s", strings.Join(diffs, "\n"))
	}
}

func TestConnectionStateFunctionsAreTheSameOnEveryReplica(t *testing.T) {
	leader, replica := openTemp(t, "leader.db"), openTemp(t, "replica.db")
	now := fixedClock(time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC))
	mustCommit(t, leader, now,
		"CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)",
		"CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER, c INTEGER, tc INTEGER)",
		"CREATE TABLE seen (lid INTEGER, c INTEGER, tc INTEGER)",
		"CREATE TABLE other (x)")
	// The leader's connection has history the replica's lacks.
	mustCommit(t, leader, now, "INSERT INTO other VALUES (1), (2), (3)", "UPDATE other SET x = x + 1")
	out := leader.CommitBatch([]*Request{{Stmts: stmts(
		"INSERT INTO parent (name) VALUES ('p')",
		"INSERT INTO child (parent_id, c, tc) VALUES (last_insert_rowid(), changes(), total_changes())",
		"INSERT INTO seen VALUES (last_insert_rowid(), changes(), total_changes())",
	)}, {Stmts: stmts("INSERT INTO seen VALUES (last_insert_rowid(), changes(), total_changes())")}}, now)
	for _, o := range out {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
	}
	// The replica gets the entries in other transactions, after other work.
	mustCommitOn(t, replica)
	replicate(t, leader, replica)
	sameContent(t, leader, replica)
	// And the values are those of a fresh connection running the entry.
	want := [][]any{{int64(1), int64(1), int64(2)}, {int64(0), int64(0), int64(0)}}
	if got := dump(t, replica, "seen"); !reflect.DeepEqual(got, want) {
		t.Fatalf("seen = %v, want %v", got, want)
	}
	if got := dump(t, replica, "child"); !reflect.DeepEqual(got[0][1], int64(1)) {
		t.Fatalf("child's parent_id = %v, want the parent's id 1", got[0][1])
	}
}

// mustCommitOn gives a replica's writer a connection history of its own
// (it never happens on a real replica, whose writer only applies, but a
// restarted leader or a replica that became leader has one).
func mustCommitOn(t *testing.T, s *Store) {
	t.Helper()
	if _, err := s.Read(context.Background(), stmts("SELECT changes(), last_insert_rowid(), total_changes()"), Limits{}); err != nil {
		t.Fatal(err)
	}
}

func TestRandomRowidAfterTheLargestRowidIsTheSameOnEveryReplica(t *testing.T) {
	leader, replica := openTemp(t, "leader.db"), openTemp(t, "replica.db")
	now := fixedClock(time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC))
	mustCommit(t, leader, now, "CREATE TABLE t (v)", "INSERT INTO t (rowid, v) VALUES (9223372036854775807, 'max')")
	for i := 0; i < 20; i++ {
		mustCommit(t, leader, now, "INSERT INTO t (v) VALUES ('picked at random')")
	}
	// Another connection of the process draws from SQLite's generator
	// meanwhile (as another store of a test process would).
	other := openTemp(t, "other.db")
	mustCommit(t, other, now, "CREATE TABLE t (v)", "INSERT INTO t (rowid, v) VALUES (9223372036854775807, 'max')", "INSERT INTO t (v) VALUES (1)")
	replicate(t, leader, replica)
	sameContent(t, leader, replica)
}

func TestLocaltimeIsUTCOnEveryNode(t *testing.T) {
	s := openTemp(t, "a.db")
	res, err := s.Read(context.Background(), stmts("SELECT datetime(0, 'unixepoch', 'localtime'), datetime(0, 'unixepoch', 'utc')"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].Rows[0]; got[0] != "1970-01-01 00:00:00" || got[1] != "1970-01-01 00:00:00" {
		t.Fatalf("localtime/utc of the epoch = %v, want UTC for both", got)
	}
}

func TestAnswerCountersAreTheStatementsOwn(t *testing.T) {
	s := openTemp(t, "a.db")
	now := fixedClock(time.Now())
	out := mustCommit(t, s, now,
		"CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
	if r := out[0].Results[0]; r.RowsAffected != 0 || r.LastInsertID != 0 {
		t.Fatalf("CREATE TABLE answered rows_affected %d, last_insert_id %d; want 0, 0", r.RowsAffected, r.LastInsertID)
	}
	out = mustCommit(t, s, now, "INSERT INTO users (username) VALUES ('a'), ('b')")
	if r := out[0].Results[0]; r.RowsAffected != 2 || r.LastInsertID != 2 {
		t.Fatalf("INSERT answered %d, %d; want 2, 2", r.RowsAffected, r.LastInsertID)
	}
	out = mustCommit(t, s, now, "UPDATE users SET email = 'x' WHERE id = 1", "UPDATE users SET email = 'y' WHERE id = 99", "CREATE INDEX users_email ON users(email)")
	for i, want := range []int64{1, 0, 0} {
		if r := out[i].Results[0]; r.RowsAffected != want || r.LastInsertID != 0 {
			t.Fatalf("statement %d answered %d, %d; want %d, 0", i, r.RowsAffected, r.LastInsertID, want)
		}
	}
}

func TestWritesMayNotReadWhatDiffersBetweenNodes(t *testing.T) {
	s := openTemp(t, "a.db")
	now := fixedClock(time.Now())
	mustCommit(t, s, now, "CREATE TABLE u (x)", "CREATE VIEW roots AS SELECT rootpage FROM sqlite_schema", "ANALYZE")
	for _, q := range []string{
		"INSERT INTO u SELECT rootpage FROM sqlite_schema",
		"INSERT INTO u SELECT * FROM roots",
		"INSERT INTO u SELECT page_count FROM pragma_page_count()",
		"INSERT INTO u SELECT file FROM pragma_database_list",
		"INSERT INTO u SELECT rowid FROM sqlite_stat1",
		"UPDATE u SET x = (SELECT freelist_count FROM pragma_freelist_count)",
		"CREATE TABLE v AS SELECT data_version FROM pragma_data_version",
		"CREATE TRIGGER tr AFTER INSERT ON u BEGIN INSERT INTO u SELECT rootpage FROM sqlite_schema; END",
	} {
		out := s.CommitBatch([]*Request{{Stmts: stmts(q), AllowSchema: true}}, now)
		var fe *ForbiddenError
		if !errors.As(out[0].Err, &fe) || !strings.Contains(fe.Reason, "differs from node to node") {
			t.Errorf("%s: got %v, want a refusal naming what differs between nodes", q, out[0].Err)
		}
	}
	// Reads may, and so may writes reading what depends on the schema alone.
	if _, err := s.Read(context.Background(), stmts("SELECT rootpage FROM sqlite_schema", "SELECT * FROM pragma_page_count()"), Limits{}); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, now, "INSERT INTO u SELECT name FROM pragma_table_info('u')", "DROP VIEW roots")
}

func TestRequestIDAppliesOnceAndAnswersTheFirstOutcome(t *testing.T) {
	leader, replica := openTemp(t, "leader.db"), openTemp(t, "replica.db")
	now := fixedClock(time.Now())
	mustCommit(t, leader, now, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
	req := func() *Request {
		return &Request{Stmts: stmts("INSERT INTO t (v) VALUES (random()) RETURNING id, v"), Collect: true, RequestID: "req-1"}
	}
	first := leader.CommitBatch([]*Request{req(), req()}, now) // twice in one batch
	again := leader.CommitBatch([]*Request{req()}, now)        // and once more later
	if first[0].Err != nil || first[0].Duplicate || !first[1].Duplicate || !again[0].Duplicate {
		t.Fatalf("outcomes: %+v / %+v", first, again)
	}
	for _, o := range []Outcome{first[1], again[0]} {
		if o.Index != first[0].Index || !reflect.DeepEqual(o.Results, first[0].Results) {
			t.Fatalf("duplicate answered %d %v, first %d %v", o.Index, o.Results, first[0].Index, first[0].Results)
		}
	}
	if n := len(dump(t, leader, "t")); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
	// A replica records the id with the entry: were it to lead, it would
	// answer a retry the same way.
	replicate(t, leader, replica)
	dup := replica.CommitBatch([]*Request{req()}, now)
	if !dup[0].Duplicate || dup[0].Index != first[0].Index || !reflect.DeepEqual(dup[0].Results, first[0].Results) {
		t.Fatalf("replica answered %+v, want the first outcome %+v", dup[0], first[0])
	}
}

func TestRequestIDSentWithAnotherRequestIsRefusedAndChangesNothing(t *testing.T) {
	leader, replica := openTemp(t, "leader.db"), openTemp(t, "replica.db")
	now := fixedClock(time.Now())
	mustCommit(t, leader, now, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
	insert := func(v any) []rlog.Statement {
		return []rlog.Statement{{SQL: "INSERT INTO t (v) VALUES (?)", Pos: []any{v}}}
	}
	first := leader.CommitBatch([]*Request{{Stmts: insert(int64(1)), RequestID: "k"}}, now)[0]
	if first.Err != nil {
		t.Fatal(first.Err)
	}
	// The same request through another node (which did not lead, and has
	// other limits) is a retry: it answers the first outcome.
	retry := &Request{Stmts: insert(int64(1)), RequestID: "k", AllowSchema: true, Limits: Limits{MaxRows: 5, MaxBytes: 1 << 20}}
	// Anything else sent with the same id is another request.
	others := map[string]*Request{
		"another value":      {Stmts: insert(int64(2))},
		"the value as text":  {Stmts: insert("1")},
		"the value as real":  {Stmts: insert(1.0)},
		"another statement":  {Stmts: stmts("DELETE FROM t")},
		"one more statement": {Stmts: append(insert(int64(1)), stmts("DELETE FROM t")...)},
		"named parameters":   {Stmts: []rlog.Statement{{SQL: "INSERT INTO t (v) VALUES (:v)", Named: map[string]any{"v": int64(1)}}}},
		"sent as a query":    {Stmts: insert(int64(1)), Collect: true},
		"statements each":    {Stmts: insert(int64(1)), Each: true},
	}
	names := slices.Sorted(maps.Keys(others))
	reqs := []*Request{retry}
	for _, name := range names {
		r := others[name]
		r.RequestID = "k"
		reqs = append(reqs, r)
	}
	check := func(node string, st *Store, out []Outcome) {
		t.Helper()
		if !out[0].Duplicate || out[0].Err != nil || out[0].Index != first.Index || !reflect.DeepEqual(out[0].Results, first.Results) {
			t.Errorf("%s: the retry answered %+v, want the first outcome %+v", node, out[0], first)
		}
		for i, name := range names {
			var reused *RequestIDReusedError
			if o := out[i+1]; !errors.As(o.Err, &reused) || reused.Index != first.Index || o.Duplicate {
				t.Errorf("%s: %s with the same request_id answered %+v, want a RequestIDReusedError naming index %d", node, name, o, first.Index)
			}
		}
		if rows := dump(t, st, "t"); len(rows) != 1 || rows[0][1] != int64(1) {
			t.Errorf("%s: rows %v, want the first request's one row", node, rows)
		}
	}
	check("leader", leader, leader.CommitBatch(reqs, now))
	// Every node decides alike, from the log alone.
	replicate(t, leader, replica)
	check("replica", replica, replica.CommitBatch(reqs, now))
	// Nor was anything recorded under the id: a new id applies.
	if out := leader.CommitBatch([]*Request{{Stmts: insert(int64(2)), RequestID: "k2"}}, now); out[0].Err != nil || out[0].Duplicate {
		t.Fatalf("a new request id: %+v", out[0])
	}

	// An id recorded before requests had fingerprints (its result alone, a
	// JSON array) answers any request with its first outcome, as it did.
	legacy := leader.CommitBatch([]*Request{{Stmts: insert(int64(3)), RequestID: "old"}}, now)[0]
	leader.wmu.Lock()
	leader.wconn.auth.reset(policyReplica)
	err := leader.w.Exec("UPDATE _ddb_requests SET result = CAST(json_extract(result, '$.results') AS BLOB) WHERE id = 'old'")
	leader.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	out := leader.CommitBatch([]*Request{{Stmts: insert(int64(4)), RequestID: "old"}}, now)[0]
	if !out.Duplicate || out.Index != legacy.Index || !reflect.DeepEqual(out.Results, legacy.Results) {
		t.Fatalf("an id recorded without a fingerprint answered %+v, want %+v", out, legacy)
	}
}

func TestCleanCloseLeavesOneSelfContainedFile(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Path: filepath.Join(dir, "a.db")})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, fixedClock(time.Now()), "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")
	if _, err := s.Read(context.Background(), stmts("SELECT * FROM t"), Limits{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(filepath.Join(dir, "a.db"+suffix)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a.db%s is left after a clean close (%v)", suffix, err)
		}
	}
	d, err := inspect.Load(filepath.Join(dir, "a.db"))
	if err != nil || d.RowCount() != 1 {
		t.Fatalf("the file alone holds %v rows (%v), want 1", d, err)
	}
}

func TestOpenRefusesAFileWithAnotherDatabasesWAL(t *testing.T) {
	dir := t.TempDir()
	now := fixedClock(time.Now())
	// b.db is a live node's database, with a WAL of its own.
	b, err := Open(Options{Path: filepath.Join(dir, "b.db")})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, b, now, "CREATE TABLE small (x)", "INSERT INTO small VALUES (1)")
	a, err := Open(Options{Path: filepath.Join(dir, "a.db")})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		mustCommit(t, a, now, "CREATE TABLE IF NOT EXISTS big (x)", "INSERT INTO big SELECT randomblob(3000) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)")
	}
	a.Close()
	for i := 0; i < 30; i++ {
		mustCommit(t, b, now, "INSERT INTO small SELECT randomblob(2000)")
	}
	if err := b.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		mustCommit(t, b, now, "INSERT INTO small SELECT randomblob(2000)")
	}
	wal, err := os.ReadFile(filepath.Join(dir, "b.db-wal"))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	// Restored by copying another node's file over it, the old WAL left behind.
	data, err := os.ReadFile(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "b.db"), data, 0o644)
	os.WriteFile(filepath.Join(dir, "b.db-wal"), wal, 0o644)
	before, _ := os.ReadFile(filepath.Join(dir, "b.db"))
	_, err = Open(Options{Path: filepath.Join(dir, "b.db")})
	if err == nil || !strings.Contains(err.Error(), "belongs to another database") && !strings.Contains(err.Error(), "integrity check") {
		t.Fatalf("Open = %v, want a refusal naming the WAL or the failed integrity check", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "b.db"))
	if !reflect.DeepEqual(before, after) {
		t.Fatal("the refused file was changed")
	}
}

func TestOpenRefusesALogThatDisagreesWithTheData(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, fixedClock(time.Now()), "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")
	s.wconn.auth.reset(policyReplica)
	// A log the former engine kept, which runs past the data.
	if err := s.w.ExecScript(preRaftSchema + "UPDATE _ddb_meta SET value = 1 WHERE key = 'applied'; INSERT INTO _ddb_log(idx, time_ms, seed, body) VALUES (1, 0, 0, '[]'), (2, 0, 0, '[]')"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(Options{Path: path}); err == nil || !strings.Contains(err.Error(), "its log ends at index 2 but its data is at index 1") {
		t.Fatalf("Open = %v, want a refusal naming the disagreement", err)
	}
}

func TestAnswersAfterASchemaChangeDescribeTheCurrentColumns(t *testing.T) {
	s := openTemp(t, "a.db")
	now := fixedClock(time.Now())
	mustCommit(t, s, now, "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b, c)", "INSERT INTO t VALUES (1, 'A', 'B', 'C')")
	read := func() Result {
		t.Helper()
		res, err := s.Read(context.Background(), stmts("SELECT * FROM t"), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		return res[0]
	}
	returning := func() Result {
		t.Helper()
		out := s.CommitBatch([]*Request{{Stmts: stmts("UPDATE t SET a = a RETURNING *"), Collect: true}}, now)
		if out[0].Err != nil {
			t.Fatal(out[0].Err)
		}
		return out[0].Results[0]
	}
	// Every read connection and the writer compile and cache the statements.
	for i := 0; i < 8; i++ {
		read()
		returning()
	}
	mustCommit(t, s, now, "ALTER TABLE t DROP COLUMN b", "ALTER TABLE t ADD COLUMN z DEFAULT 'zzz'")
	want := []string{"id", "a", "c", "z"}
	for i := 0; i < 8; i++ {
		for _, r := range []Result{read(), returning()} {
			if !reflect.DeepEqual(r.Columns, want) || len(r.Rows[0]) != len(want) || r.Rows[0][3] != "zzz" {
				t.Fatalf("answer after the change: columns %v, row %v; want columns %v", r.Columns, r.Rows, want)
			}
		}
	}
}

// Found by the determinism fuzzer: the snapshot was compacted with VACUUM,
// which renumbers the rowids of tables without an INTEGER PRIMARY KEY, so
// a replica installed from it no longer matched row for row.
func TestSnapshotKeepsRowidsOfTablesWithoutIntegerPrimaryKey(t *testing.T) {
	leader, replica := openTemp(t, "leader.db"), openTemp(t, "replica.db")
	now := fixedClock(time.Now())
	mustCommit(t, leader, now, "CREATE TABLE t (v)", "INSERT INTO t (rowid, v) VALUES (5, 'a'), (900, 'b'), (-7, 'c')", "DELETE FROM t WHERE rowid = 5")
	path, _, err := leader.Snapshot(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := replica.Restore(f, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	sameContent(t, leader, replica)
}

// Found by the determinism fuzzer: changes() read inside a trigger, after
// the trigger had already run for an earlier row of the same statement,
// gave the connection's count from before the entry.
func TestChangesInsideATriggerIsTheSameOnEveryReplica(t *testing.T) {
	leader, replica, batched := openTemp(t, "leader.db"), openTemp(t, "replica.db"), openTemp(t, "batched.db")
	now := fixedClock(time.Now())
	mustCommit(t, leader, now, "CREATE TABLE a (x)", "CREATE TABLE b (c, at DEFAULT CURRENT_TIMESTAMP)",
		"CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO b (c) VALUES (changes()); END")
	// One batch: the second entry follows the first on the leader's
	// connection, but not on the replica's, which applies one at a time.
	mustCommit(t, leader, now, "INSERT INTO b (c) VALUES (1), (2), (3), (4), (5)", "INSERT INTO a VALUES (1), (2), (3)")
	replicate(t, leader, replica, batched)
	sameContent(t, leader, replica, batched)
}

func TestOpenRefusesAFileThatFailsTheIntegrityCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, fixedClock(time.Now()), "CREATE TABLE t (x)", "CREATE INDEX tx ON t (x)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT i FROM n")
	s.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Scribble over the middle of the file: index and table pages.
	for i := len(b) / 2; i < len(b)/2+4096; i++ {
		b[i] = 0x5a
	}
	os.WriteFile(path, b, 0o644)
	if _, err := Open(Options{Path: path}); err == nil || !strings.Contains(err.Error(), "integrity check") {
		t.Fatalf("Open = %v, want a refusal naming the failed integrity check", err)
	}
	after, _ := os.ReadFile(path)
	if !reflect.DeepEqual(b, after) {
		t.Fatal("the refused file was changed")
	}
}

// The limits on rows hold for a request as a whole, on every path: two
// statements of 60 rows each pass a 100-row limit neither does alone.
func TestResultLimitsHoldForTheWholeRequest(t *testing.T) {
	s := openTemp(t, "a.db")
	now := fixedClock(time.Now())
	mustCommit(t, s, now, "CREATE TABLE l (v)",
		"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 60) INSERT INTO l SELECT x FROM n")
	lim := Limits{MaxRows: 100}
	var tl *ResultTooLargeError
	if _, err := s.Read(context.Background(), stmts("SELECT * FROM l", "SELECT * FROM l"), lim); !errors.As(err, &tl) {
		t.Fatalf("a read of 120 rows in two statements: %v", err)
	}
	if _, err := s.Read(context.Background(), stmts("SELECT * FROM l; SELECT * FROM l"), lim); !errors.As(err, &tl) {
		t.Fatalf("a read of 120 rows in one string: %v", err)
	}
	out := s.CommitBatch([]*Request{{Collect: true, Limits: lim,
		Stmts: stmts("UPDATE l SET v = v RETURNING v", "UPDATE l SET v = v + 1 RETURNING v")}}, now)
	if !errors.As(out[0].Err, &tl) {
		t.Fatalf("a transaction returning 120 rows: %v", out[0].Err)
	}
	if got := dump(t, s, "l"); got[0][0] != int64(1) {
		t.Fatalf("the refused transaction changed rows: %v", got[0])
	}
	if _, err := s.Read(context.Background(), stmts("SELECT * FROM l LIMIT 50", "SELECT * FROM l LIMIT 50"), lim); err != nil {
		t.Fatalf("100 rows in two statements: %v", err)
	}
}

// A node killed in the middle of a checkpoint leaves a file whose pages
// are half copied from its WAL: unreadable alone, whole with the WAL. It
// must start again (found by the fault suite's long run: the master
// refused to restart with "read slave0.db without its WAL: database disk
// image is malformed").
func TestOpenAcceptsAFileLeftHalfWayThroughACheckpoint(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, fixedClock(time.Now()), "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")
	s.Close() // a clean close: the file is whole, no WAL

	// Another process writes the internal table's page in a transaction
	// that stays in the WAL, then is killed: copy the file and its WAL
	// while it still holds them.
	raw, err := sqlite.Open(path, url.Values{"_journal_mode": {"WAL"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.ExecScript("PRAGMA wal_autocheckpoint = 0; INSERT INTO _ddb_meta(key, value) VALUES ('test_marker', 'x'); INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	row, err := raw.QueryRow("SELECT rootpage FROM sqlite_schema WHERE name = '_ddb_meta'")
	if err != nil {
		t.Fatal(err)
	}
	page := row[0].(int64)
	file, _ := os.ReadFile(path)
	wal, _ := os.ReadFile(path + "-wal")
	raw.Close()
	if len(wal) == 0 {
		t.Fatal("the test needs a WAL")
	}
	// The checkpoint had begun overwriting that page when the kill came.
	for i := (page - 1) * 4096; i < page*4096; i++ {
		file[i] = 0
	}
	killed := filepath.Join(dir, "killed.db")
	os.WriteFile(killed, file, 0o644)
	os.WriteFile(killed+"-wal", wal, 0o644)
	if _, err := fileID(killed, url.Values{"immutable": {"1"}}); err == nil {
		t.Fatal("the test needs a file that cannot be read without its WAL")
	}
	s, err = Open(Options{Path: killed})
	if err != nil {
		t.Fatalf("a node killed during a checkpoint cannot start: %v", err)
	}
	defer s.Close()
	rows, err := s.Read(context.Background(), stmts("SELECT count(*) FROM t"), Limits{})
	if err != nil || rows[0].Rows[0][0] != int64(2) {
		t.Fatalf("after the restart: %v %v", rows, err)
	}
}

// A write that runs too long cannot be stopped by a clock: each node would
// stop it at another point. Its step budget (rlog.Write.MaxSteps) stops it
// at the same instruction on every node, and it fails as a whole; the
// writes around it apply. Before, a write that never ended held every
// node's apply loop forever, restarts included (the entry was committed).
func TestAWriteStopsAtItsStepBudgetOnEveryNode(t *testing.T) {
	leader, replica := openTemp(t, "leader.db"), openTemp(t, "replica.db")
	now := fixedClock(time.Now())
	mustCommit(t, leader, now, "CREATE TABLE t (x)")
	forever := "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
	req := func(sql string, steps int64) *Request {
		return &Request{Stmts: stmts(sql), Limits: Limits{MaxSteps: steps}}
	}
	out := leader.CommitBatch([]*Request{req("INSERT INTO t VALUES ('before')", 1e6), req(forever, 2e6), req("INSERT INTO t VALUES ('after')", 1e6)}, now)
	var spent *StepBudgetError
	if out[0].Err != nil || !errors.As(out[1].Err, &spent) || out[2].Err != nil {
		t.Fatalf("outcomes: %v / %v / %v", out[0].Err, out[1].Err, out[2].Err)
	}
	if rows := dump(t, leader, "t"); len(rows) != 2 || rows[0][0] != "before" || rows[1][0] != "after" {
		t.Fatalf("rows %v: the stopped write left something, or took its neighbours with it", rows)
	}
	replicate(t, leader, replica)
	sameContent(t, leader, replica)

	// At the budget's edge, the outcome is the same on a node that ran the
	// statement before (its prepared statement has a count of its own
	// past) as on one that never did.
	bounded := "INSERT INTO t SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c) WHERE x < 0"
	fails := map[bool]int{}
	for steps := int64(40000); steps >= 4000; steps -= 250 { // down: the warm node has run it, whole, before it fails
		warm := leader.CommitBatch([]*Request{req(bounded, steps)}, now)[0].Err
		fresh := openTemp(t, "fresh.db")
		mustCommit(t, fresh, now, "CREATE TABLE t (x)")
		cold := fresh.CommitBatch([]*Request{req(bounded, steps)}, now)[0].Err
		fresh.Close()
		if (warm == nil) != (cold == nil) {
			t.Fatalf("with %d steps: %v on a node that ran it before, %v on one that did not", steps, warm, cold)
		}
		fails[warm != nil]++
	}
	if fails[true] == 0 || fails[false] == 0 {
		t.Fatalf("the sweep never crossed the budget's edge: %v", fails)
	}
}

// randomblob() (the project's, on every connection) keeps SQLite's limits
// and counts what it makes: a length past sqlite.MaxLength fails as "string
// or blob too big" before anything is made, in a read and in a write
// (randomblob(9223372036854775807) once crashed the process, so every node
// as a write), and in a write its bytes cost steps like zeroblob()'s, the
// same on every node, so a write that makes too many fails on its budget.
func TestRandomblobKeepsItsLimitsAndCountsItsBytes(t *testing.T) {
	s := openTemp(t, "rb.db")
	now := fixedClock(time.Now())
	mustCommit(t, s, now, "CREATE TABLE b (x)")
	for _, n := range []string{"9223372036854775807", fmt.Sprint(sqlite.MaxLength + 1)} {
		q := "SELECT length(randomblob(" + n + "))"
		if _, err := s.Read(context.Background(), stmts(q), Limits{}); err == nil || !strings.Contains(err.Error(), "too big") {
			t.Fatalf("a read of %s: %v", q, err)
		}
		out := s.CommitBatch([]*Request{{Stmts: stmts("INSERT INTO b " + q)}}, now)
		if err := out[0].Err; err == nil || !strings.Contains(err.Error(), "too big") {
			t.Fatalf("a write of %s: %v", q, err)
		}
	}
	// 40 blobs of 1 MB cost 10 million steps of what they make: a budget
	// of 5 million stops the write, one of 20 million does not.
	const many = "INSERT INTO b WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40) SELECT length(randomblob(1000000)) FROM s"
	out := s.CommitBatch([]*Request{
		{Stmts: stmts(many), Limits: Limits{MaxSteps: 5_000_000}},
		{Stmts: stmts(many), Limits: Limits{MaxSteps: 20_000_000}},
	}, now)
	var spent *StepBudgetError
	if !errors.As(out[0].Err, &spent) || out[1].Err != nil {
		t.Fatalf("outcomes: %v / %v", out[0].Err, out[1].Err)
	}
	if n := scalar(t, s, "SELECT count(*) FROM b"); n != int64(40) {
		t.Fatalf("b holds %v rows", n)
	}
}

// preRaftSchema is what the engine before Raft kept in every database.
const preRaftSchema = `CREATE TABLE _ddb_log (idx INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, seed INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE _ddb_members (id INTEGER PRIMARY KEY, url TEXT NOT NULL);
`

// A database the engine before Raft wrote (its own log of writes and its
// members in the database) opens through one migration: its data and
// applied index stay, the former tables go, and it opens the same way
// again.
func TestADatabaseTheFormerEngineWroteOpensThroughOneMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, fixedClock(time.Now()), "CREATE TABLE t (x)", "INSERT INTO t VALUES (1), (2)")
	applied := s.Applied()
	s.wconn.auth.reset(policyReplica)
	if err := s.w.ExecScript(preRaftSchema + fmt.Sprintf("INSERT INTO _ddb_log(idx, time_ms, seed, body) VALUES (%d, 0, 0, '[]'); INSERT INTO _ddb_members VALUES (0, 'http://localhost:8080')", applied)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for range 2 {
		s, err := Open(Options{Path: path})
		if err != nil {
			t.Fatalf("open the former engine's database: %v", err)
		}
		if s.Applied() != applied {
			t.Fatalf("applied index %d after the migration, want %d", s.Applied(), applied)
		}
		if n := scalar(t, s, "SELECT count(*) FROM t"); n != int64(2) {
			t.Fatalf("%v rows after the migration, want 2", n)
		}
		if n := scalar(t, s, "SELECT count(*) FROM sqlite_schema WHERE name IN ('_ddb_log', '_ddb_members')"); n != int64(0) {
			t.Fatalf("%v former tables left after the migration", n)
		}
		s.Close()
	}
}

// A clean stop leaves a note of the file it left; the next start skips
// SQLite's quick check (minutes on a large database) while the file is
// exactly what the note names, and checks it otherwise. The note goes at
// every start, so a node killed after it started is checked again. The
// damage below is made behind the file's back (its time of change put
// back), which only a start without the note sees: what a clean stop
// trades is the check of a file nobody changed since.
func TestACleanStopSparesTheNextStartItsCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, fixedClock(time.Now()), "CREATE TABLE t (x)", "CREATE INDEX tx ON t (x)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT i FROM n")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-clean"); err != nil {
		t.Fatalf("a clean stop left no note: %v", err)
	}
	damage := func() {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		for i := len(b) / 2; i < len(b)/2+4096; i++ {
			b[i] = 0x5a
		}
		os.WriteFile(path, b, 0o644)
		os.Chtimes(path, fi.ModTime(), fi.ModTime())
	}
	damage()
	s, err = Open(Options{Path: path})
	if err != nil {
		t.Fatalf("the start after a clean stop checked the file: %v", err)
	}
	if _, err := os.Stat(path + "-clean"); !os.IsNotExist(err) {
		t.Fatalf("the note is still there once the node started: %v", err)
	}
	s.Close()
	// Without the note (a kill, a crash), the start checks the file.
	os.Remove(path + "-clean")
	if _, err := Open(Options{Path: path}); err == nil || !strings.Contains(err.Error(), "integrity check") {
		t.Fatalf("Open without the note = %v, want a refusal naming the failed integrity check", err)
	}
}
