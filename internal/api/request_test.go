package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/store"
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
		// One key twice, at any depth: a proxy or a log reading the first
		// would see another request than the one that runs.
		`{"command":"query","query":"SELECT * FROM t","query":"DELETE FROM t"}`:         `key "query" appears twice`,
		`{"command":"query","command":"exec","query":"SELECT 1"}`:                       `key "command" appears twice`,
		`{"command":"query","query":"SELECT :a","params":{"a":1,"a":2}}`:                `key "a" appears twice`,
		`{"command":"query","query":"SELECT :a","params":{"a":1,"\u0061":2}}`:           `key "a" appears twice`,
		`{"command":"exec","queries":[{"query":"SELECT 1","query":"DELETE FROM t"}]}`:   `key "query" appears twice`,
		`{"command":"exec","queries":[{"query":"SELECT :a","params":{"a":[1],"a":2}}]}`: `key "a" appears twice`,
		`{"command":"query","query":"SELECT 1","unknown":{"x":{"y":1,"y":2}}}`:          `key "y" appears twice`,
		`{"command":"exec","queries":[{"query":"SELECT 1","QUERY":"DELETE FROM t"}]}`:   `unknown key "QUERY"`,
		`{"command":"exec","queries":[{"Query":"DELETE FROM t"}]}`:                      `unknown key "Query"`,
		`{"command":"exec","queries":[{"query":1}]}`:                                    `"query" must be a string`,
	} {
		_, err := DecodeRequest([]byte(body), "quorum")
		var br *BadRequest
		if !errors.As(err, &br) || !strings.Contains(err.Error(), mention) {
			t.Errorf("%s: %v (want mention of %q)", body, err, mention)
		}
	}
}

// request_id is at most 128 characters, whatever their UTF-8 length.
func TestRequestIDIsBoundedInCharacters(t *testing.T) {
	for id, ok := range map[string]bool{
		strings.Repeat("x", 128): true,
		strings.Repeat("é", 128): true, // 256 bytes
		strings.Repeat("☃", 128): true, // 384 bytes
		strings.Repeat("x", 129): false,
		strings.Repeat("é", 129): false,
	} {
		for _, body := range []string{
			`{"command":"exec","query":"SELECT 1","request_id":"` + id + `"}`,               // the fast path
			`{"command":"exec","queries":[{"query":"SELECT 1"}],"request_id":"` + id + `"}`, // the full decoder
		} {
			r, err := DecodeRequest([]byte(body), "quorum")
			if ok && (err != nil || r.RequestID != id) {
				t.Errorf("a request id of %d characters (%d bytes): %v", utf8.RuneCountInString(id), len(id), err)
			}
			if !ok && (err == nil || !strings.Contains(err.Error(), "longer than 128 characters")) {
				t.Errorf("a request id of %d characters: %v, want a refusal", utf8.RuneCountInString(id), err)
			}
		}
	}
}

// Keys repeat across objects, and each object's keys are its own.
func TestDecodeRequestTakesTheSameKeyInDifferentObjects(t *testing.T) {
	body := `{"command":"exec","queries":[{"query":"INSERT INTO t VALUES (:a, :b)","params":{"a":1,"b":{"b":"AQ=="}}},{"query":"INSERT INTO t VALUES (:a, :b)","params":{"a":2,"b":null}}],"params":null}`
	r, err := DecodeRequest([]byte(body), "quorum")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Stmts) != 2 || r.Stmts[0].Named["a"] != int64(1) || r.Stmts[1].Named["a"] != int64(2) {
		t.Fatalf("statements: %+v", r.Stmts)
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

// The common request shapes take the one-pass fast path and decode exactly
// as the full decoder does; the rest fall back to it.
func TestFastDecoderTakesTheCommonShapesAndAgreesWithTheFullDecoder(t *testing.T) {
	fast := []string{
		`{"command":"exec","query":"CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)","is_master":false}`,
		`{"command":"exec","query":"INSERT INTO bench (c, v) VALUES (?, ?)","params":[3,"value 3/17"]}`,
		` { "command" : "Query" , "query" : "SELECT id, c, v FROM bench WHERE id = ?" , "params" : [ 42 ] } ` + "\n",
		`{"command":"query","query":"SELECT :a, :b, :c","params":{"a":-1.5e3,"b":null,"c":"é"},"consistency":"strong","min_index":12,"format":"columns"}`,
		`{"command":"exec","query":"INSERT INTO t VALUES (?, ?, ?)","params":[true,false,9223372036854775807],"ack":"all","is_replicated":false}`,
		`{"command":"query","query":"SELECT 1","params":[],"ack":null,"format":null}`,
		`{"command":"query","query":"SELECT 1","params":{}}`,
	}
	for _, body := range fast {
		got := decodeFast([]byte(body), "quorum")
		if got == nil {
			t.Errorf("fast path not taken for %s", body)
			continue
		}
		want, err := decodeFull([]byte(body), "quorum")
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\nfast %+v\nfull %+v %v", body, got, want, err)
		}
	}
	slow := []string{
		`{"command":"exec","queries":[{"query":"DELETE FROM t"}]}`,  // several statements
		`{"command":"exec","query":"SELECT \"x\""}`,                 // escapes
		`{"command":"exec","query":"x","extra":1}`,                  // unknown field
		`{"command":"exec","query":"x","query":"y"}`,                // repeated field
		`{"command":"exec","query":"x","params":[[1]]}`,             // nested
		`{"command":"exec","query":"x","params":[1e400]}`,           // out of range
		`{"command":"exec","query":"x","params":[01]}`,              // not JSON
		`{"command":"exec","query":"x","ack":"some"}`,               // invalid value
		`{"command":"exec","query":"x","min_index":-1}`,             // invalid value
		`{"command":"exec","query":"x"} {}`,                         // trailing value
		`{"command":"exec","query":"` + string([]byte{0xff}) + `"}`, // invalid UTF-8
		`{"command":"exec","query":"x","params":{"a":1,"a":2}}`,     // repeated name
		`{"command":"exec","query":"x","is_master":tru}`,            // truncated literal
		`{"command":"exec","query":"   "}`,                          // blank query
		`{"command":"exec","query":"x"`,                             // truncated
	}
	for _, body := range slow {
		if got := decodeFast([]byte(body), "quorum"); got != nil {
			t.Errorf("fast path took %s: %+v", body, got)
		}
	}
}

// Membership requests read {"id": N} by its exact key, once.
func TestMembershipRequestsReadTheirIDExactlyOnce(t *testing.T) {
	for body, want := range map[string]int{
		`{"id": 2}`:          2,
		`{"id": 0}`:          0,
		`{"id": 1, "id": 2}`: -1, // a proxy or a log reading the first would see another node
		`{"ID": 2}`:          -1, // not "id"
		`{"Id": 2, "id": 1}`: 1,
		`{"id": 1.5}`:        -1,
		`{"id": -1}`:         -1,
		`[2]`:                -1,
		`null`:               -1,
	} {
		w := httptest.NewRecorder()
		id, ok := readID(w, httptest.NewRequest(http.MethodPost, "/remove", strings.NewReader(body)), "to remove")
		switch {
		case want < 0 && (ok || w.Code != http.StatusBadRequest):
			t.Errorf("%s: read id %d (%v, status %d), want a 400", body, id, ok, w.Code)
		case want >= 0 && (!ok || id != cluster.RaftID(want)):
			t.Errorf("%s: read id %d (%v, status %d), want node %d", body, id, ok, w.Code, want)
		}
	}
}
