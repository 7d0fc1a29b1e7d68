package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/sqlite"
)

// Input lines become whole commands: SQL until a ; outside quotes and
// comments (a trigger's until END;), dot commands a line of their own.
func TestLinesBecomeStatements(t *testing.T) {
	for _, c := range []struct {
		name  string
		lines []string
		want  []string
	}{
		{"one a line", []string{"SELECT 1;", "SELECT 2;"}, []string{"SELECT 1", "SELECT 2"}},
		{"a pasted CREATE", []string{"CREATE TABLE t (", "  a INTEGER,", "  b TEXT", ");"}, []string{"CREATE TABLE t (\n  a INTEGER,\n  b TEXT\n)"}},
		{"two on a line", []string{"SELECT 1; SELECT 2;"}, []string{"SELECT 1", "SELECT 2"}},
		{"a ; in a string", []string{"INSERT INTO t VALUES ('a;b');"}, []string{"INSERT INTO t VALUES ('a;b')"}},
		{"a string over lines", []string{"INSERT INTO t VALUES ('a", "b;');"}, []string{"INSERT INTO t VALUES ('a\nb;')"}},
		{"a ; in a comment", []string{"SELECT 1 -- a; b", ";"}, []string{"SELECT 1 -- a; b"}},
		{"a block comment", []string{"SELECT /* ; */ 1;"}, []string{"SELECT /* ; */ 1"}},
		{"a trigger", []string{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN", "  INSERT INTO u VALUES (1);", "  UPDATE u SET x = 2;", "END;"},
			[]string{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  INSERT INTO u VALUES (1);\n  UPDATE u SET x = 2;\nEND"}},
		{"a trigger with a CASE", []string{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN", "  UPDATE u SET x = CASE WHEN new.a THEN 1 END;", "END;", "SELECT 1;"},
			[]string{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE u SET x = CASE WHEN new.a THEN 1 END;\nEND", "SELECT 1"}},
		{"a dot command", []string{".tables", "SELECT 1;"}, []string{".tables", "SELECT 1"}},
		{"a dot command ends an open statement", []string{"SELECT 1", ".timer on"}, []string{"SELECT 1", ".timer on"}},
		{"the end of input ends it", []string{"SELECT 1"}, []string{"SELECT 1"}},
		{"comments alone are nothing", []string{"-- nothing", "/* nothing */"}, nil},
	} {
		var s statements
		var got []string
		for _, l := range c.lines {
			got = append(got, s.add(l)...)
		}
		got = append(got, s.flush()...)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	var s statements
	if s.add("CREATE TABLE t ("); !s.open() {
		t.Error("an unfinished statement is not open (the prompt would not say ...>)")
	}
	if got := s.add(");"); len(got) != 1 || s.open() {
		t.Errorf("the statement's end: %q, open %v", got, s.open())
	}
	if !strings.Contains(help, "END;") {
		t.Error(".help does not say how statements end")
	}
}

// The shell cuts statements where SQLite's own test does
// (sqlite3_complete, through sqlite.Split): the same statements, in order.
func TestStatementsEndWhereSQLiteSaysTheyDo(t *testing.T) {
	for _, text := range []string{
		"SELECT 1; SELECT 'a;b'; SELECT \"x;\" -- c;\n;",
		"CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); UPDATE u SET x = CASE WHEN new.a THEN 1 END; END; SELECT 2;",
		"CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT /* ; */ 1; END; SELECT [a;b] FROM t;",
	} {
		done, rest := splitStatements(text)
		var want []string
		for _, st := range sqlite.Split(text) {
			want = append(want, strings.TrimSpace(strings.TrimSuffix(st, ";")))
		}
		if strings.TrimSpace(rest) != "" || !reflect.DeepEqual(done, want) {
			t.Errorf("%q: the shell cuts %q (left %q), SQLite %q", text, done, rest, want)
		}
	}
}
