package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// classifierCorpus: each statement and what SQLite's authorizer makes of it.
// forbidden means a 403 for every client on every node.
var classifierCorpus = []struct {
	sql       string
	kind      Kind
	forbidden bool
}{
	{"SELECT * FROM users", KindRead, false},
	{"select id from USERS where id = 1", KindRead, false},
	{"WITH x AS (SELECT 1) SELECT * FROM x", KindRead, false},
	{"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c LIMIT 5) SELECT n FROM c", KindRead, false},
	{"SELECT count(*) FROM users; SELECT 1", KindRead, false},
	{"EXPLAIN QUERY PLAN SELECT * FROM users", KindRead, false},
	{"PRAGMA table_info(users)", KindRead, false},
	{"PRAGMA user_version", KindRead, false},
	{"PRAGMA integrity_check", KindRead, false},
	{"SELECT name FROM sqlite_master", KindRead, false},
	{"  -- comment\n SELECT 1 /* trailing */", KindRead, false},
	{"INSERT INTO users (username) VALUES ('a')", KindWrite, false},
	{"insert into users(username) values('a') returning id", KindWrite, false},
	{"UPDATE users SET email = 'x'", KindWrite, false},
	{"DELETE FROM users", KindWrite, false},
	{"REPLACE INTO users (id, username) VALUES (1, 'b')", KindWrite, false},
	{"WITH x AS (SELECT 'w' AS u) INSERT INTO users (username) SELECT u FROM x", KindWrite, false},
	{"SELECT 1; DELETE FROM users", KindWrite, false},
	{"EXPLAIN INSERT INTO users (username) VALUES ('a')", KindWrite, false},
	{"REINDEX users", KindWrite, false},
	{"CREATE TABLE t (x)", KindSchema, false},
	{"create table IF NOT EXISTS t2 (x)", KindSchema, false},
	{"CrEaTe TaBlE t3 (x)", KindSchema, false},
	{"/* hidden */ CREATE TABLE t4 (x)", KindSchema, false},
	{"-- hidden\nDROP TABLE users", KindSchema, false},
	{"SELECT 1; DROP TABLE users", KindSchema, false},
	{"SELECT 1;\n\n  /* x */ ALTER TABLE users ADD COLUMN age INTEGER", KindSchema, false},
	{"EXPLAIN CREATE TABLE t5 (x)", KindSchema, false},
	{"EXPLAIN QUERY PLAN DROP TABLE users", KindSchema, false},
	{"CREATE INDEX i ON users(email)", KindSchema, false},
	{"CREATE UNIQUE INDEX IF NOT EXISTS i2 ON users(email)", KindSchema, false},
	{"CREATE VIEW v AS SELECT * FROM users", KindSchema, false},
	{"CREATE TRIGGER tr AFTER INSERT ON users BEGIN UPDATE users SET email = 'x' WHERE id = new.id; END", KindSchema, false},
	{"CREATE VIRTUAL TABLE f USING fts4(body)", KindSchema, false},
	{"ALTER TABLE users RENAME TO people", KindSchema, false},
	{"ANALYZE", KindSchema, false},
	{"CREATE TABLE t6 AS SELECT * FROM users", KindSchema, false},
	{"ATTACH DATABASE '/etc/passwd' AS p", KindSchema, true},
	{"attach '/tmp/other.db' as o", KindSchema, true},
	{"DETACH DATABASE main", KindSchema, true},
	{"VACUUM", KindSchema, true},
	{"VACUUM INTO '/tmp/copy.db'", KindSchema, true},
	{"SELECT load_extension('/tmp/evil.so')", KindRead, true},
	{"PRAGMA writable_schema = ON", KindWrite, true},
	{"PRAGMA journal_mode = DELETE", KindWrite, true},
	{"PRAGMA synchronous = OFF", KindWrite, true},
	{"PRAGMA foreign_keys = OFF", KindWrite, true},
	{"PRAGMA schema_version = 5", KindWrite, true},
	{"BEGIN", KindWrite, true},
	{"COMMIT", KindWrite, true},
	{"SAVEPOINT a", KindWrite, true},
	{"CREATE TEMP TABLE tt (x)", KindSchema, true},
	{"CREATE TEMPORARY VIEW tv AS SELECT 1", KindSchema, true},
	{"SELECT * FROM _ddb_requests", KindRead, true},
	{"SELECT * FROM _DDB_META", KindRead, true},
	{"INSERT INTO _ddb_requests VALUES (1, 'x', 1, 'x')", KindWrite, true},
	{"DELETE FROM _ddb_meta", KindWrite, true},
	{"DROP TABLE _ddb_requests", KindSchema, true},
	{"CREATE TRIGGER evil AFTER INSERT ON _ddb_requests BEGIN SELECT 1; END", KindSchema, true},
	{"CREATE TABLE _ddb_mine (x)", KindSchema, true},
	{"CREATE TABLE _ddb_log (x)", KindSchema, true}, // the former engine's name, which the migration drops
	{"CREATE TABLE _ddb_members (x)", KindSchema, true},
	{"PRAGMA table_info(_ddb_log)", KindRead, true},
	{"SELECT 1; ATTACH 'x.db' AS x", KindSchema, true},
}

func TestCreateAndDropDatabaseAreExplained(t *testing.T) {
	s := openTemp(t, "d.db")
	for _, q := range []string{"CREATE DATABASE shop", "/* x */ drop database shop"} {
		_, err := s.Classify(context.Background(), []rlog.Statement{{SQL: q}})
		var se *SQLError
		if !errors.As(err, &se) || !strings.Contains(se.Error(), "each node binds to one SQLite database") {
			t.Errorf("%q: %v", q, err)
		}
	}
}

func TestClassifierCorpus(t *testing.T) {
	s := openTemp(t, "c.db")
	mustCommit(t, s, time.Now, "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
	if len(classifierCorpus) < 40 {
		t.Fatalf("corpus has %d statements; keep at least 40", len(classifierCorpus))
	}
	// Twice: the second time, the texts kept compiled with their kinds
	// answer.
	for _, c := range append(slices.Clone(classifierCorpus), classifierCorpus...) {
		kind, err := s.Classify(context.Background(), []rlog.Statement{{SQL: c.sql}})
		var fe *ForbiddenError
		if c.forbidden {
			if !errors.As(err, &fe) {
				t.Errorf("%q: want forbidden, got kind %v err %v", c.sql, kind, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: unexpected error %v", c.sql, err)
			continue
		}
		if kind != c.kind {
			t.Errorf("%q: kind %v, want %v", c.sql, kind, c.kind)
		}
	}
}

func TestWriterEnforcesThePolicyAtExecutionTime(t *testing.T) {
	s := openTemp(t, "w.db")
	mustCommit(t, s, time.Now, "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT)")
	for _, c := range classifierCorpus {
		if !c.forbidden && c.kind != KindSchema {
			continue
		}
		out := s.CommitBatch([]*Request{{Stmts: []rlog.Statement{{SQL: c.sql}}, AllowSchema: false}}, time.Now)
		var fe *ForbiddenError
		var sd *SchemaDeniedError
		if !errors.As(out[0].Err, &fe) && !errors.As(out[0].Err, &sd) {
			t.Errorf("%q from a slave: want refused, got %v", c.sql, out[0].Err)
		}
	}
	// A schema change created after classification cannot smuggle writes
	// to internal tables through a trigger either.
	out := s.CommitBatch([]*Request{{Stmts: []rlog.Statement{{SQL: "CREATE TRIGGER t AFTER INSERT ON users BEGIN DELETE FROM _ddb_log; END"}}, AllowSchema: true}}, time.Now)
	var fe *ForbiddenError
	if !errors.As(out[0].Err, &fe) {
		t.Fatalf("trigger on internal table: %v", out[0].Err)
	}
	// Refused, they changed nothing: the schema is the table created first.
	rows, err := s.Read(context.Background(), stmts("SELECT group_concat(name) FROM sqlite_schema WHERE name NOT LIKE '\\_ddb\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"), Limits{})
	if err != nil || rows[0].Rows[0][0] != "users" {
		t.Fatalf("refused requests changed the schema: %v %v", rows, err)
	}
}

// Found by FuzzClassify: a NUL byte in the SQL text sent Prepare into an
// endless recursion that crashed the node.
func TestSQLWithANulCharacterIsRefusedNotFatal(t *testing.T) {
	s := openTemp(t, "n.db")
	for _, q := range []string{"\x00EINDEX usRrs", "SELECT 1;\x00 DROP TABLE x", "SELECT '\x00'"} {
		if _, err := s.Classify(context.Background(), []rlog.Statement{{SQL: q}}); err == nil {
			t.Errorf("%q classified", q)
		}
		if _, err := s.Read(context.Background(), []rlog.Statement{{SQL: q}}, Limits{}); err == nil {
			t.Errorf("%q read", q)
		}
		if out := s.CommitBatch([]*Request{{Stmts: []rlog.Statement{{SQL: q}}, AllowSchema: true}}, time.Now); out[0].Err == nil {
			t.Errorf("%q written", q)
		}
	}
}

// What a statement changes is judged by where it lies, however it is
// spelled: temp.t is a TEMP table whatever the case, quoting or comments
// (each would live on one connection of one node). And no user statement
// reaches the internal namespace by any route: a RENAME TO, a virtual
// table whose shadow tables would land there, a file to load that holds
// such a table (refused naming it, never dropped silently).
func TestTempAndInternalNamesAreRefusedHoweverSpelled(t *testing.T) {
	s := openTemp(t, "n.db")
	applyNext(t, s, rlog.Write{Stmts: stmts("CREATE TABLE orders (id INTEGER PRIMARY KEY)", "INSERT INTO orders VALUES (1)"), AllowSchema: true})
	for _, q := range []string{
		"CREATE TABLE temp.t_shadow (x)",
		`CREATE TABLE "TEMP".t_shadow (x)`,
		"create /* c */ table TeMp . t_shadow (x)",
		"CREATE TEMP TABLE t_shadow (x)",
		"CREATE VIEW temp.v AS SELECT 1",
		"CREATE TRIGGER temp.tr AFTER INSERT ON orders BEGIN SELECT 1; END",
		"CREATE TRIGGER `temp`.tr AFTER INSERT ON main.orders BEGIN SELECT 1; END",
		"ALTER TABLE orders RENAME TO _ddb_orders",
		`ALTER TABLE orders RENAME TO "_DDB_Orders"`,
		`ALTER TABLE main.orders RENAME TO [_ddb_x]`,
		`CREATE VIRTUAL TABLE "_ddb" USING fts4(body)`,
		"CREATE TABLE _ddb_mine (x)",
		"CREATE INDEX _ddb_i ON orders (id)",
	} {
		out := applyNext(t, s, rlog.Write{Stmts: stmts(q), AllowSchema: true})
		var fe *ForbiddenError
		if !errors.As(out[0].Err, &fe) {
			t.Errorf("%s: %v, want forbidden", q, out[0].Err)
		}
	}
	for _, q := range []string{"CREATE TABLE main.ok (x)", `CREATE TABLE "MAIN".ok2 (x)`, "ALTER TABLE orders RENAME TO ddb_orders", "ALTER TABLE ddb_orders RENAME TO orders"} {
		if out := applyNext(t, s, rlog.Write{Stmts: stmts(q), AllowSchema: true}); out[0].Err != nil {
			t.Errorf("%s: %v", q, out[0].Err)
		}
	}
	if n := scalar(t, s, "SELECT count(*) FROM orders"); n != int64(1) {
		t.Fatalf("orders holds %v rows", n)
	}
	if n := scalar(t, s, "SELECT count(*) FROM sqlite_schema WHERE name LIKE '%shadow%' OR name LIKE '\\_ddb\\_%' ESCAPE '\\' AND name NOT IN ('_ddb_meta', '_ddb_log', '_ddb_members', '_ddb_requests', '_ddb_raft_state')"); n != int64(0) {
		t.Fatalf("%v objects made it into temp or the internal namespace", n)
	}

	// A file holding a table of the internal namespace is refused, naming it.
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.db")
	db, err := sqlite.Open(bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.ExecScript("CREATE TABLE _ddb_orders (id); INSERT INTO _ddb_orders VALUES (1); CREATE TABLE fine (x)")
	db.Close()
	if _, err := PlanLoad(bad, dir); err == nil || !strings.Contains(err.Error(), "_ddb_orders") {
		t.Fatalf("a file with _ddb_orders: %v", err)
	}
}

// A read of an R-Tree is a read on every connection: the module prepares
// its own writes while the first read of the table on a connection
// compiles, and those are the module's, not the statement's (the first
// read on each read connection was refused as "a write"). A write to its
// shadow table sent as a read is still no read.
func TestAReadOfAnRTreeIsARead(t *testing.T) {
	s := openTemp(t, "rt.db")
	applyNext(t, s, rlog.Write{Stmts: stmts("CREATE VIRTUAL TABLE rt USING rtree(id, x0, x1)", "INSERT INTO rt VALUES (1, 0, 5)"), AllowSchema: true})
	for i := range 2 * s.nreaders {
		rs, err := s.Read(context.Background(), stmts("SELECT count(*) FROM rt WHERE x0 >= 0"), Limits{})
		if err != nil || rs[0].Rows[0][0] != int64(1) {
			t.Fatalf("read %d of the R-Tree: %v %v", i, rs, err)
		}
	}
	var nr *NotReadError
	if _, err := s.Read(context.Background(), stmts("INSERT INTO rt_node VALUES (99, x'00')"), Limits{}); !errors.As(err, &nr) {
		t.Fatalf("a write to a shadow table as a read: %v", err)
	}
}

// Classification follows what a statement touches, never its spelling: a
// generator spells the schema name temp (and main), an internal name, and
// the statements around them in every way SQLite reads alike (case,
// quotes of four kinds, comments and white space between the parts, a
// leading WITH, a trigger body or a CTE that reaches the name), for every
// action (CREATE TABLE, VIEW, INDEX, TRIGGER and VIRTUAL TABLE, ALTER
// TABLE RENAME and ADD COLUMN, INSERT, UPDATE, DELETE, DROP). Every
// spelling of an object in temp or in the internal namespace is refused
// as forbidden, changing nothing; the same statement with an ordinary
// name in main is not refused for its spelling.
func TestEverySpellingOfTempAndInternalNamesIsRefused(t *testing.T) {
	s := openTemp(t, "spell.db")
	applyNext(t, s, rlog.Write{Stmts: stmts("CREATE TABLE base (id INTEGER PRIMARY KEY, v)", "INSERT INTO base VALUES (1, 'x')"), AllowSchema: true})
	schemaBefore := scalar(t, s, "SELECT group_concat(name || sql, ';') FROM (SELECT * FROM sqlite_schema ORDER BY name)")
	rng := rand.New(rand.NewPCG(11, 5))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	gap := func() string { return pick("", "", " ", "  ", "\n", "\t", " /* c */ ", "/**/", " -- c\n") }
	sep := func() string { return pick(" ", "  ", "\n", "\t", " /* c */ ", "/**/", " -- c\n") }
	casing := func(w string) string {
		b := []byte(w)
		for i := range b {
			if rng.IntN(2) == 0 {
				b[i] = strings.ToUpper(string(b[i]))[0]
			} else {
				b[i] = strings.ToLower(string(b[i]))[0]
			}
		}
		return string(b)
	}
	quote := func(name string) string {
		switch rng.IntN(5) {
		case 0:
			return `"` + name + `"`
		case 1:
			return "[" + name + "]"
		case 2:
			return "`" + name + "`"
		case 3:
			return name
		}
		return name
	}
	kw := func(w string) string { return casing(w) }
	// qualified spells schema.name, or the name alone for no schema.
	qualified := func(schema, name string) string {
		if schema == "" {
			return quote(name)
		}
		return quote(casing(schema)) + gap() + "." + gap() + quote(name)
	}
	// statements spells one action on the object o (schema, name).
	statements := func(schema, name string, fresh int) []string {
		o := qualified(schema, name)
		bare := fmt.Sprintf("n%d", fresh)
		if schema != "" {
			bare = qualified(schema, bare)
		}
		lead := pick("", "", kw("WITH")+" w"+sep()+kw("AS")+" (SELECT 1) ")
		return []string{
			kw("CREATE") + sep() + kw("TABLE") + sep() + o + gap() + "(x)",
			kw("CREATE") + " " + kw("TABLE") + " " + kw("IF") + " " + kw("NOT") + " " + kw("EXISTS") + " " + o + " (x)",
			kw("CREATE") + " " + kw("VIEW") + " " + o + " " + kw("AS") + sep() + kw("SELECT") + " 1",
			kw("CREATE") + " " + kw("TRIGGER") + " " + o + " " + kw("AFTER") + " " + kw("INSERT") + " " + kw("ON") + " base " + kw("BEGIN") + " " + kw("SELECT") + " 1; " + kw("END"),
			kw("CREATE") + " " + kw("VIRTUAL") + " " + kw("TABLE") + " " + o + " " + kw("USING") + " fts4(body)",
			kw("CREATE") + " " + kw("INDEX") + " " + o + " " + kw("ON") + " base (v)",
			kw("ALTER") + " " + kw("TABLE") + sep() + "base" + sep() + kw("RENAME") + " " + kw("TO") + " " + quote(name),
			lead + kw("INSERT") + " " + kw("INTO") + " " + o + " " + kw("DEFAULT") + " " + kw("VALUES"),
			lead + kw("UPDATE") + " " + o + " " + kw("SET") + " rowid = rowid",
			lead + kw("DELETE") + " " + kw("FROM") + " " + o,
			kw("DROP") + " " + kw("TABLE") + " " + o,
			kw("ALTER") + " " + kw("TABLE") + " " + o + " " + kw("ADD") + " " + kw("COLUMN") + " y",
			// Reaching the object from inside another statement.
			kw("CREATE") + " " + kw("TRIGGER") + " " + bare + " " + kw("AFTER") + " " + kw("INSERT") + " " + kw("ON") + " base " + kw("BEGIN") + " " + kw("INSERT") + " " + kw("INTO") + " " + o + " " + kw("VALUES") + " (1); " + kw("END"),
		}
	}
	refused := 0
	for i := range 40 {
		for _, target := range []struct{ schema, name string }{
			{"temp", "t_shadow"}, {"temp", fmt.Sprintf("tx%d", i)}, {"", casing("_ddb_") + "orders"}, {"main", casing("_DDB_") + "x"}, {"", casing("_ddb_meta")},
		} {
			for j, q := range statements(target.schema, target.name, i*100) {
				if j == 6 && target.schema == "temp" {
					continue // RENAME TO takes no schema: this one would be an ordinary rename
				}
				out := applyNext(t, s, rlog.Write{Stmts: stmts(q), AllowSchema: true})
				err := out[0].Err
				var fe *ForbiddenError
				switch {
				case errors.As(err, &fe):
				case err != nil && (strings.Contains(err.Error(), "no such table") || strings.Contains(err.Error(), "already exists") || strings.Contains(err.Error(), "there is already a table named") || strings.Contains(err.Error(), "there is already another table") ||
					strings.Contains(err.Error(), "cannot create a TEMP index on non-TEMP table") ||
					strings.Contains(err.Error(), "qualified table names are not allowed")):
					// SQLite refuses it itself (the object cannot exist, or
					// its name is taken), before asking the authorizer.
				default:
					t.Fatalf("action %d, %s: %v, want forbidden", j, q, err)
				}
				refused++
			}
		}
	}
	if got := scalar(t, s, "SELECT group_concat(name || sql, ';') FROM (SELECT * FROM sqlite_schema ORDER BY name)"); got != schemaBefore {
		t.Fatalf("refused statements changed the schema:\n%v\n%v", schemaBefore, got)
	}
	// The same spellings of ordinary names in main are not refused for
	// them (the statement may still fail for what it does: an INSERT
	// into a table that does not exist).
	for i := range 40 {
		for _, schema := range []string{"main", ""} {
			for j, q := range statements(schema, fmt.Sprintf("plain%d", i), 5000+i) {
				out := applyNext(t, s, rlog.Write{Stmts: stmts(q), AllowSchema: true})
				var fe *ForbiddenError
				if errors.As(out[0].Err, &fe) {
					t.Fatalf("action %d, %s: refused as %v", j, q, out[0].Err)
				}
			}
		}
	}
	t.Logf("%d spellings refused", refused)
}

// A text kept compiled with its kind is forgotten when the schema changes:
// a read, or a write, of a table dropped since fails to compile.
func TestClassifyForgetsWhatItKeptWhenTheSchemaChanges(t *testing.T) {
	s := openTemp(t, "k.db")
	mustCommit(t, s, time.Now, "CREATE TABLE t (x)")
	q := []rlog.Statement{{SQL: "SELECT x FROM t"}}
	// (Enough times that every read connection of the pool keeps it.)
	for range 64 {
		if kind, err := s.Classify(context.Background(), q); err != nil || kind != KindRead {
			t.Fatalf("before: %v %v", kind, err)
		}
	}
	mustCommit(t, s, time.Now, "DROP TABLE t")
	if kind, err := s.Classify(context.Background(), q); err == nil {
		t.Fatalf("after DROP TABLE: kind %v, no error", kind)
	}
	ins := []rlog.Statement{{SQL: "INSERT INTO v VALUES (1)"}}
	mustCommit(t, s, time.Now, "CREATE TABLE v (x)")
	for range 64 {
		if kind, err := s.Classify(context.Background(), ins); err != nil || kind != KindWrite {
			t.Fatalf("insert into a table: %v %v", kind, err)
		}
	}
	mustCommit(t, s, time.Now, "DROP TABLE v")
	if _, err := s.Classify(context.Background(), ins); err == nil {
		t.Fatalf("insert into a dropped table: no error")
	}
}
