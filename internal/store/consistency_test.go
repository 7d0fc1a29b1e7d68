package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// At a check entry every node takes a digest of its database as of that
// index: two stores that applied the same log (in other groupings, one
// restarted midway) have the same digest, rows of ordinary, WITHOUT ROWID
// and virtual tables' shadow tables included; a row changed in one file by
// another program makes them differ, naming that table.
func TestDigestsAgreeAndNameTheTableThatDiffers(t *testing.T) {
	ws := []rlog.Write{{AllowSchema: true, Stmts: stmts(
		"CREATE TABLE a (id INTEGER PRIMARY KEY, v)",
		"CREATE TABLE w (k TEXT PRIMARY KEY, n) WITHOUT ROWID",
		"CREATE VIRTUAL TABLE f USING fts4(body)",
	)}}
	for i := range 40 {
		ws = append(ws, rlog.Write{Stmts: stmts(
			fmt.Sprintf("INSERT INTO a (v) VALUES (%d.5)", i),
			fmt.Sprintf("INSERT INTO w VALUES ('k%d', x'%02x')", i, i),
			fmt.Sprintf("INSERT INTO f (body) VALUES ('word%d')", i%5),
		)})
	}
	ws = append(ws, rlog.Write{Check: true})
	entries := logEntries(t, ws...)
	check := entries[len(entries)-1].Index
	dir := t.TempDir()
	digestOf := func(name string, groups ...int) (*Digest, string) {
		path := filepath.Join(dir, name)
		s, err := Open(Options{Path: path, Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *Digest, 1)
		s.OnDigest(func(d *Digest) { got <- d })
		rest := entries
		for _, k := range groups {
			if _, err := s.ApplyLog(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
			s.Close() // a restart between groups
			if s, err = Open(Options{Path: path, Synchronous: "OFF"}); err != nil {
				t.Fatal(err)
			}
			s.OnDigest(func(d *Digest) { got <- d })
		}
		if _, err := s.ApplyLog(rest); err != nil {
			t.Fatal(err)
		}
		d := <-got
		if at, ok := s.DigestAt(check); !ok || at != d {
			t.Fatalf("DigestAt(%d): %v %v", check, at, ok)
		}
		s.Close()
		if d.Err != "" || d.Index != check {
			t.Fatalf("digest: %+v", d)
		}
		return d, path
	}
	one, _ := digestOf("one.db")
	two, path := digestOf("two.db", 7, 20)
	if diff := one.Differences(two); diff != "" || one.Sum == "" {
		t.Fatalf("the same log gave other digests: %s", diff)
	}
	names := []string{}
	for _, td := range one.Tables {
		names = append(names, td.Name)
	}
	if got := strings.Join(names, " "); got != "a f_content f_docsize f_segdir f_segments f_stat w" {
		t.Fatalf("tables digested: %s", got)
	}
	// Another program changes a row of the second file: its next digest
	// names the table.
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE w SET n = x'ff' WHERE k = 'k7'"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(Options{Path: path, Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan *Digest, 1)
	s.OnDigest(func(d *Digest) { got <- d })
	next := logEntries(t, append(ws, rlog.Write{Check: true})...)
	e := next[len(next)-1]
	e.Index = check + 1
	if _, err := s.ApplyLog([]rlog.Entry{e}); err != nil {
		t.Fatal(err)
	}
	changed := <-got
	if diff := one.Differences(changed); !strings.Contains(diff, "table w differs (40 rows against 40), first difference: keys 'k0'..'k9'") || strings.Contains(diff, "table a") {
		t.Fatalf("differences: %q", diff)
	}
}

// A digest says where a table first differs: the key range of the first
// chunk of rows that differs, in tables large enough that chunks merge
// (the digest of 140,000 rows holds at most maxChunks chunks), for a
// changed row, a row only one side holds, and a WITHOUT ROWID table's
// composite key.
func TestDigestsSayWhereATableFirstDiffers(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *sqlite.Conn {
		c, err := sqlite.Open(filepath.Join(dir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a := open("a.db")
	if err := a.ExecScript(`CREATE TABLE big (id INTEGER PRIMARY KEY, v);
		WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 140000) INSERT INTO big SELECT x, x * 3 FROM s;
		CREATE TABLE pairs (a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
		WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 1000) INSERT INTO pairs SELECT 'g' || (x % 7), x, x FROM s`); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec("VACUUM INTO ?", filepath.Join(dir, "b.db")); err != nil {
		t.Fatal(err)
	}
	b := open("b.db")
	digest := func(c *sqlite.Conn) *Digest {
		d, err := digestOn(c, 1, newPacer(0))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	da := digest(a)
	if diff := da.Differences(digest(b)); diff != "" {
		t.Fatalf("copies differ: %s", diff)
	}
	for _, td := range da.Tables {
		if td.Name == "big" && (len(td.Chunks) > maxChunks || len(td.Chunks) < maxChunks/2) {
			t.Fatalf("big's digest has %d chunks", len(td.Chunks))
		}
	}
	for _, tc := range []struct{ change, want string }{
		{"UPDATE big SET v = 0 WHERE id = 100000", "table big differs (140000 rows against 140000), first difference: keys 99841..100352"},
		{"UPDATE big SET v = 300000 WHERE id = 100000; INSERT INTO big VALUES (140001, 0)", "table big differs (140000 rows against 140001), first difference: keys 139521..140000 against 139521..140001"},
		{"DELETE FROM big WHERE id = 140001; UPDATE big SET v = 0 WHERE id = 3", "first difference: keys 1..512"},
		{"UPDATE big SET v = 9 WHERE id = 3; UPDATE pairs SET v = -1 WHERE a = 'g3' AND b = 500", "table pairs differs (1000 rows against 1000), first difference: keys ('g1', 799)..('g3', 584)"},
	} {
		if err := b.ExecScript(tc.change); err != nil {
			t.Fatal(err)
		}
		if diff := da.Differences(digest(b)); !strings.Contains(diff, tc.want) {
			t.Fatalf("after %s: %q, want %q", tc.change, diff, tc.want)
		}
	}
}

// SQLite's own tables are digested by content: sqlite_stat1 rows whose
// rowids differ (they depend on the project's own tables, analysed and
// then deleted) and rows of the project's tables in sqlite_sequence
// change nothing; a changed statistic does.
func TestDigestOfSQLitesOwnTablesIgnoresRowidsAndInternalRows(t *testing.T) {
	entries := logEntries(t,
		rlog.Write{AllowSchema: true, Stmts: stmts("CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v)", "CREATE INDEX a_v ON a(v)")},
		rlog.Write{Stmts: stmts("INSERT INTO a (v) VALUES (1), (2), (2)")},
		rlog.Write{AllowSchema: true, Stmts: stmts("ANALYZE")},
		rlog.Write{Check: true},
	)
	// digest applies the log to a new store, changes its file with tweak
	// (another program), and returns the digest of one more check.
	digest := func(tweak string) *Digest {
		path := filepath.Join(t.TempDir(), "d.db")
		s, err := Open(Options{Path: path, Synchronous: "OFF"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyLog(entries); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if tweak != "" {
			db, err := sql.Open("sqlite3", path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = db.Exec(tweak)
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		if s, err = Open(Options{Path: path, Synchronous: "OFF"}); err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		got := make(chan *Digest, 1)
		s.OnDigest(func(d *Digest) { got <- d })
		e := entries[len(entries)-1]
		e.Index = s.Applied() + 1
		if _, err := s.ApplyLog([]rlog.Entry{e}); err != nil {
			t.Fatal(err)
		}
		d := <-got
		if d.Err != "" {
			t.Fatalf("digest: %s", d.Err)
		}
		return d
	}
	base := digest("")
	for _, c := range []struct {
		tweak string
		same  bool
	}{
		{"UPDATE sqlite_stat1 SET rowid = rowid + 100", true},
		{"INSERT INTO sqlite_sequence VALUES ('_ddb_other', 5)", true},
		{"UPDATE sqlite_stat1 SET stat = stat || ' 1'", false},
	} {
		if diff := base.Differences(digest(c.tweak)); (diff == "") != c.same {
			t.Errorf("%s: differences %q", c.tweak, diff)
		}
	}
}

// A node found diverged installs a copy of the leader's database while it
// runs: its data becomes the leader's, its consensus log file (entries and
// hard state) stays its own, and the entries after the copy's index apply
// from the log as they commit (those before it are skipped). A copy that
// stands before what the node has applied is refused, changing nothing.
func TestADivergedNodeInstallsACopyOfTheLeaders(t *testing.T) {
	ws := []rlog.Write{{AllowSchema: true, Stmts: stmts("CREATE TABLE a (id INTEGER PRIMARY KEY, v)")}}
	for i := range 40 {
		ws = append(ws, rlog.Write{Stmts: stmts(fmt.Sprintf("INSERT INTO a (v) VALUES (%d)", i))})
	}
	entries := logEntries(t, ws...)
	for i := range entries {
		entries[i].Term = 2
	}
	leader, follower := openTemp(t, "leader.db"), openTemp(t, "follower.db")
	if _, err := leader.ApplyLog(entries[:30]); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.ApplyLog(entries[:20]); err != nil {
		t.Fatal(err)
	}
	// The follower's data differs, and its log holds entries of its own.
	applyNext(t, follower, rlog.Write{Stmts: stmts("UPDATE a SET v = -1 WHERE id = 3")})
	log := RaftSave{Entries: []RaftEntry{{Index: 25, Term: 3, Data: []byte("e25")}}, HardState: []byte("own hard state")}
	if err := follower.SaveRaft(log); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	copyOf := func(s *Store) string {
		path, _, err := s.Snapshot(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return path
	}
	at, err := follower.InstallCopy(copyOf(leader))
	if err != nil || at != 30 || follower.Applied() != 30 {
		t.Fatalf("install: at %d, applied %d, %v", at, follower.Applied(), err)
	}
	sameContent(t, leader, follower)
	if rs, err := follower.LoadRaftState(ctx); err != nil || string(rs.HardState) != "own hard state" {
		t.Fatalf("the follower's hard state after the install: %q %v", rs.HardState, err)
	}
	if last, err := follower.RaftLastIndex(ctx); err != nil || last != 25 {
		t.Fatalf("the follower's log after the install ends at %d (%v)", last, err)
	}
	// The log hands entries again from before the copy's index: those up
	// to it are skipped, the rest apply.
	if _, err := leader.ApplyLog(entries[30:35]); err != nil {
		t.Fatal(err)
	}
	if out, err := follower.ApplyLog(entries[20:35]); err != nil || len(out) != 5 || out[0].Index != 31 {
		t.Fatalf("entries after the install: %v %v", describe(out), err)
	}
	sameContent(t, leader, follower)
	// A copy behind what the follower applied is refused.
	stale := openTemp(t, "stale.db")
	if _, err := stale.ApplyLog(entries[:33]); err != nil {
		t.Fatal(err)
	}
	extra := logEntries(t, append(ws[:33:33], rlog.Write{Stmts: stmts("INSERT INTO a VALUES (1000, 'stale')")})...)[33]
	extra.Term = 2
	if _, err := stale.ApplyLog([]rlog.Entry{extra}); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.InstallCopy(copyOf(stale)); !errors.Is(err, ErrCopyBehind) {
		t.Fatalf("a copy at 34 installed over a database at 35: %v", err)
	}
	if n := scalar(t, follower, "SELECT count(*) FROM a WHERE id = 1000"); n != int64(0) || follower.Applied() != 35 {
		t.Fatalf("the refused copy changed the follower: %v rows, applied %d", n, follower.Applied())
	}
}

// A digest is spread over time: read at rate bytes a second, a table of
// about 6.6 MB takes at least its bytes over the rate (on a clock that
// moves only when the digest sleeps), and the digest is the same as an
// unpaced one.
func TestADigestIsSpreadOverTime(t *testing.T) {
	c, err := sqlite.Open(filepath.Join(t.TempDir(), "p.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.ExecScript(`CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB);
		WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 6000) INSERT INTO t SELECT x, zeroblob(1000 + x % 3) FROM s`); err != nil {
		t.Fatal(err)
	}
	var clock time.Time
	p := &pacer{rate: 1 << 20, start: clock, now: func() time.Time { return clock }, sleep: func(d time.Duration) { clock = clock.Add(d) }}
	paced, err := digestOn(c, 1, p)
	if err != nil {
		t.Fatal(err)
	}
	const rowBytes = 8 + 8 + 1001 // at least: the rowid, the id, the blob
	if want := time.Duration((6000-chunkRows)*rowBytes) * time.Second / (1 << 20); clock.Sub(time.Time{}) < want {
		t.Fatalf("the digest of 6,000 rows of about %d bytes at 1 MB a second took %v, want at least %v", rowBytes, clock.Sub(time.Time{}), want)
	}
	unpaced, err := digestOn(c, 1, newPacer(0))
	if err != nil || unpaced.Differences(paced) != "" {
		t.Fatalf("paced and unpaced digests differ: %v %v", unpaced.Differences(paced), err)
	}
}

// A node knows whether it will have a digest as of an index: yes once it
// applied a check there (while computing it, and after), and for an index
// it has not applied yet; no for an index it passed without a check of its
// own there, and after a restart (its digests are in memory), so a node
// asking for it does not wait for nothing (a check once waited minutes for
// a restarted node, and the leader logged no new one meanwhile).
func TestANodeKnowsWhichDigestsItWillHave(t *testing.T) {
	ws := []rlog.Write{{AllowSchema: true, Stmts: stmts("CREATE TABLE a (x)")}, {Check: true}, {Stmts: stmts("INSERT INTO a VALUES (1)")}}
	entries := logEntries(t, ws...)
	path := filepath.Join(t.TempDir(), "k.db")
	s, err := Open(Options{Path: path, Synchronous: "OFF"})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Digest, 1)
	s.OnDigest(func(d *Digest) { got <- d })
	if _, err := s.ApplyLog(entries); err != nil {
		t.Fatal(err)
	}
	if !s.DigestExpected(2) || s.DigestExpected(1) || s.DigestExpected(3) || !s.DigestExpected(4) {
		t.Fatalf("before the digest: at 2 %v, 1 %v, 3 %v, 4 %v", s.DigestExpected(2), s.DigestExpected(1), s.DigestExpected(3), s.DigestExpected(4))
	}
	<-got
	if !s.DigestExpected(2) {
		t.Fatal("after the digest: not expected at 2")
	}
	s.Close()
	if s, err = Open(Options{Path: path, Synchronous: "OFF"}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.DigestExpected(2) || !s.DigestExpected(4) {
		t.Fatalf("after a restart: at 2 %v, at 4 %v", s.DigestExpected(2), s.DigestExpected(4))
	}
}
