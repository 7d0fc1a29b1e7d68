package store

import (
	"context"
	"reflect"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
)

// rqlite's API runs a request's statements independently: each applies or
// fails alone, its failure is its result (with SQLite's codes), and with
// Atomic the first failure undoes the whole write. Every node gives the
// same outcomes in every grouping of entries, and a retry with the same
// request id answers the first outcome without running again.
func TestIndependentStatementsApplyOrFailAlone(t *testing.T) {
	each := func(atomic bool, id string, sqls ...string) rlog.Write {
		return rlog.Write{Stmts: stmts(sqls...), AllowSchema: true, Collect: true, Each: true, Atomic: atomic, RequestID: id}
	}
	a := each(false, "a", "INSERT INTO t (v) VALUES ('x')", "INSERT INTO nope VALUES (1)", "INSERT INTO t (v) VALUES ('x')", "INSERT INTO t (v) VALUES ('y') RETURNING id, v")
	entries := logEntries(t,
		each(false, "", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)", "DROP TABLE IF EXISTS nothere"),
		a,
		each(true, "b", "INSERT INTO t (v) VALUES ('z')", "INSERT INTO t (v) VALUES ('x')", "INSERT INTO t (v) VALUES ('never')"),
		a, // a retry of "a": the first outcome
		each(true, "", "INSERT INTO t (v) VALUES ('w')", "UPDATE t SET v = v || '!' WHERE v = 'w'"),
	)
	all, one := openTemp(t, "all.db"), openTemp(t, "one.db")
	got, err := all.ApplyLog(entries)
	if err != nil {
		t.Fatal(err)
	}
	var singly []Outcome
	for _, e := range entries {
		o, err := one.ApplyLog([]rlog.Entry{e})
		if err != nil {
			t.Fatal(err)
		}
		singly = append(singly, o...)
	}
	if a, b := describe(got), describe(singly); !reflect.DeepEqual(a, b) {
		t.Fatalf("outcomes differ by grouping:\n%v\n%v", a, b)
	}
	sameContent(t, all, one)
	for _, o := range got {
		if o.Err != nil {
			t.Fatalf("entry %d failed as a whole: %v", o.Index, o.Err)
		}
	}
	errs := func(o Outcome) []string {
		var out []string
		for _, r := range o.Results {
			if r.Err != nil {
				out = append(out, r.Err.Message)
			} else {
				out = append(out, "")
			}
		}
		return out
	}
	if e := errs(got[1]); !reflect.DeepEqual(e, []string{"", "no such table: nope", "UNIQUE constraint failed: t.v", ""}) {
		t.Fatalf("independent statements: %q", e)
	}
	if c := got[1].Results[2].Err; c.Code != 19 || c.Extended != 2067 {
		t.Fatalf("a UNIQUE failure carries SQLite's codes 19/2067, got %d/%d", c.Code, c.Extended)
	}
	if r := got[1].Results[3]; !r.HasRows || len(r.Rows) != 1 || r.Rows[0][1] != "y" {
		t.Fatalf("RETURNING rows: %+v", r)
	}
	if e := errs(got[2]); !reflect.DeepEqual(e, []string{"", "UNIQUE constraint failed: t.v"}) {
		t.Fatalf("an atomic write stops at its first failure: %q", e)
	}
	if !got[3].Duplicate || !reflect.DeepEqual(describe(got[3:4])[0][1:], describe(got[1:2])[0][1:]) {
		t.Fatalf("a retry answers the first outcome: %v vs %v", describe(got[3:4]), describe(got[1:2]))
	}
	rows, err := all.Read(context.Background(), stmts("SELECT v FROM t ORDER BY id"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var vs []any
	for _, r := range rows[0].Rows {
		vs = append(vs, r[0])
	}
	if want := []any{"x", "y", "w!"}; !reflect.DeepEqual(vs, want) {
		t.Fatalf("rows %v, want %v (the atomic write that failed left nothing; the retry ran nothing)", vs, want)
	}
}

// DROP ... IF EXISTS of nothing, and CREATE INDEX IF NOT EXISTS of an
// index that is there (SQLite asks the authorizer nothing for either), are
// schema changes that change nothing: allowed where schema changes are,
// refused where they are not. (CREATE INDEX IF NOT EXISTS of an existing
// index was refused as "not allowed".)
func TestDropIfExistsOfNothingIsAHarmlessSchemaChange(t *testing.T) {
	s := openTemp(t, "d.db")
	applyNext(t, s, rlog.Write{Stmts: stmts("CREATE TABLE t (n)", "CREATE INDEX t_n ON t (n)", "CREATE UNIQUE INDEX t_u ON t (n)"), AllowSchema: true})
	for _, q := range []string{"DROP TABLE IF EXISTS nothere", "drop  index if exists nothere", "/* c */ DROP VIEW IF EXISTS v",
		"CREATE INDEX IF NOT EXISTS t_n ON t (n)", `create unique index if not exists"t_u" on t (n)`, "CREATE /* c */ INDEX IF NOT EXISTS [t_n] ON t (n)"} {
		if k, err := s.Classify(context.Background(), stmts(q)); err != nil || k != KindSchema {
			t.Fatalf("%s: kind %v, %v", q, k, err)
		}
	}
	out := applyNext(t, s,
		rlog.Write{Stmts: stmts("DROP TABLE IF EXISTS nothere", "CREATE INDEX IF NOT EXISTS t_n ON t (n)"), AllowSchema: true},
		rlog.Write{Stmts: stmts("DROP TABLE IF EXISTS nothere")},
		rlog.Write{Stmts: stmts("CREATE INDEX IF NOT EXISTS t_n ON t (n)")},
	)
	if out[0].Err != nil {
		t.Fatalf("with the schema allowed: %v", out[0].Err)
	}
	for _, o := range out[1:] {
		if _, ok := o.Err.(*SchemaDeniedError); !ok {
			t.Fatalf("without: %v", o.Err)
		}
	}
	if _, err := s.Read(context.Background(), stmts("DROP TABLE IF EXISTS nothere"), Limits{}); err == nil {
		t.Fatal("a read ran a DROP")
	}
}
