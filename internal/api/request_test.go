package api

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"ddb/internal/store"
)

func TestDecodeRequestAcceptsTheOriginalRequestAndTheNewFields(t *testing.T) {
	r, err := DecodeRequest([]byte(`{"command":"exec","query":"CREATE TABLE t (x)","is_master":false}`), "quorum")
	if err != nil || r.Command != "exec" || r.Stmts[0].SQL != "CREATE TABLE t (x)" || r.Ack != "quorum" || r.Format != "objects" {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = DecodeRequest([]byte(`{"command":"query","query":"SELECT ?,?,?,?,?","params":[1, 2.5, "s", true, null],"consistency":"strong","min_index":7,"format":"columns"}`), "master")
	if err != nil {
		t.Fatal(err)
	}
	if want := []any{int64(1), 2.5, "s", int64(1), nil}; !reflect.DeepEqual(r.Stmts[0].Pos, want) {
		t.Fatalf("params %#v", r.Stmts[0].Pos)
	}
	if r.Consistency != "strong" || r.MinIndex != 7 || r.Format != "columns" {
		t.Fatalf("%+v", r)
	}
	r, err = DecodeRequest([]byte(`{"command":"exec","queries":[{"query":"INSERT INTO t VALUES (:a)","params":{"a":9007199254740993}},{"query":"DELETE FROM t"}],"ack":"all"}`), "quorum")
	if err != nil || !r.Multi || len(r.Stmts) != 2 || r.Stmts[0].Named["a"] != int64(9007199254740993) || r.Ack != "all" {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestDecodeRequestRefusesWrongTypesWithAClearMessage(t *testing.T) {
	for body, mention := range map[string]string{
		`{"command":"exec","query":"x"} {}`:                 "more than one",
		`{"command":1,"query":"x"}`:                         "command",
		`{"command":"exec","query":"x","params":[[1]]}`:     "params",
		`{"command":"exec","query":"x","params":3}`:         "params",
		`{"command":"exec","queries":[]}`:                   "empty",
		`{"command":"exec","queries":[{"params":[]}]}`:      "query",
		`{"command":"exec","queries":"SELECT 1"}`:           "queries",
		`{"command":"query","query":"x","min_index":1.5}`:   "min_index",
		`{"command":"query","query":"x","consistency":"x"}`: "consistency",
		`{"command":"exec","query":"x","is_replicated":1}`:  "is_replicated",
		`null`: "object",
	} {
		_, err := DecodeRequest([]byte(body), "quorum")
		var br *BadRequest
		if !errors.As(err, &br) || !strings.Contains(err.Error(), mention) {
			t.Errorf("%s: %v (want mention of %q)", body, err, mention)
		}
	}
}

func TestRowsKeepColumnOrderAndExactTypes(t *testing.T) {
	r := store.Result{Columns: []string{"b", "a", "b"}, Types: []string{"INT", "", "TEXT"},
		Rows: [][]any{{int64(1), 2.0, "x"}, {nil, []byte{1, 2}, "y\"z"}}, HasRows: true}
	if got := string(appendRows(nil, r, "objects")); got != `[{"b":"x","a":2.0},{"b":"y\"z","a":"AQI="}]` {
		t.Fatalf("objects: %s", got)
	}
	if got := string(appendRows(nil, r, "columns")); got != `{"columns":["b","a","b"],"types":["INT","","TEXT"],"rows":[[1,2.0,"x"],[null,"AQI=","y\"z"]]}` {
		t.Fatalf("columns: %s", got)
	}
	if got := string(appendRows(nil, store.Result{HasRows: true, Columns: []string{"x"}, Rows: [][]any{}}, "objects")); got != `[]` {
		t.Fatalf("empty: %s", got)
	}
}
