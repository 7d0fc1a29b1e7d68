package api

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

func TestRqliteBodiesParseAsRqliteReadsThem(t *testing.T) {
	cases := []struct {
		body string
		ct   string
		want []rlog.Statement
		err  string
	}{
		{body: `["SELECT 1"]`, want: []rlog.Statement{{SQL: "SELECT 1"}}},
		{body: `[["INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", 1, 1.5, "x", null, true, 9223372036854775807]]`,
			want: []rlog.Statement{{SQL: "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", Pos: []any{int64(1), 1.5, "x", nil, int64(1), int64(9223372036854775807)}}}},
		{body: `[["INSERT INTO t VALUES (:a, :b)", {"a": 2, "b": [0, 255]}]]`,
			want: []rlog.Statement{{SQL: "INSERT INTO t VALUES (:a, :b)", Named: map[string]any{"a": int64(2), "b": []byte{0, 255}}}}},
		{body: `[["SELECT ?", "x'00Ff'"], ["SELECT ?", "x'0'"], ["SELECT ?", 1e3]]`,
			want: []rlog.Statement{{SQL: "SELECT ?", Pos: []any{[]byte{0, 255}}}, {SQL: "SELECT ?", Pos: []any{"x'0'"}}, {SQL: "SELECT ?", Pos: []any{1000.0}}}},
		{body: "SELECT 2", ct: "text/plain", want: []rlog.Statement{{SQL: "SELECT 2"}}},
		{body: `[]`, err: "empty"},
		{body: ``, err: "empty request body"},
		{body: `[1]`, err: "statement 1"},
		{body: `[[]]`, err: "empty statement array"},
		{body: `[[1, 2]]`, err: "starts with its SQL"},
		{body: `[["SELECT ?", [256]]]`, err: "byte values"},
		{body: `[["SELECT ?", {"a": {"b": 1}}]]`, err: "not a value"},
		{body: `["SELECT 1"] ["SELECT 2"]`, err: "more than one"},
		{body: `{"q": "SELECT 1"}`, ct: "application/json", err: "JSON array"},
		{body: `[" "]`, err: "empty SQL"},
		// One key twice: other readers of the body would take the first.
		{body: `[["INSERT INTO t VALUES (:a)", {"a": 1, "a": 2}]]`, err: `key "a" appears twice`},
		{body: `[["INSERT INTO t VALUES (:a)", {"a": 1, "\u0061": 2}]]`, err: `key "a" appears twice`},
		// The same name in two statements' objects is no repeat.
		{body: `[["SELECT :a", {"a": 1}], ["SELECT :a", {"a": 2}]]`,
			want: []rlog.Statement{{SQL: "SELECT :a", Named: map[string]any{"a": int64(1)}}, {SQL: "SELECT :a", Named: map[string]any{"a": int64(2)}}}},
		// Bytes that are not UTF-8 would be stored as U+FFFD.
		{body: "[\"INSERT INTO t VALUES ('\xff')\"]", err: "not valid UTF-8"},
	}
	for _, c := range cases {
		got, err := parseRqStatements([]byte(c.body), c.ct)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one saying %q", c.body, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v %v\nwant %#v", c.body, got, err, c.want)
		}
	}
}

func TestRqliteAnswersAreEncodedAsRqliteEncodesThem(t *testing.T) {
	rows := store.Result{HasRows: true, Columns: []string{"i", "r", "t", "b", "n", "at", "ok"},
		Types: []string{"INTEGER", "REAL", "TEXT", "BLOB", "", "DATETIME", "BOOLEAN"},
		Rows:  [][]any{{int64(1), 2.0, "x", []byte{1, 2}, nil, int64(1700000000), int64(1)}, {int64(-1), 0.5, "", []byte{}, nil, "2024-01-02 03:04:05", int64(0)}}}
	resp := &rqResponse{results: []rqResult{
		rqResultOf(rows, true),
		rqResultOf(store.Result{RowsAffected: 1, LastInsertID: 7}, false),
		rqResultOf(store.Result{}, false),
		{err: &store.StatementError{Message: "UNIQUE constraint failed: t.v", Code: 19, Extended: 2067}},
		{err: &store.StatementError{Message: "no such table: x"}},
		rqResultOf(store.Result{HasRows: true, Columns: []string{"a"}, Types: []string{""}}, true),
	}, sequence: 5, index: 9, raftIndex: true}
	want := `{"results":[` +
		`{"columns":["i","r","t","b","n","at","ok"],"types":["integer","real","text","blob","","datetime","boolean"],"values":[[1,2,"x","AQI=",null,"2023-11-14T22:13:20Z",true],[-1,0.5,"","",null,"2024-01-02T03:04:05Z",false]]},` +
		`{"last_insert_id":7,"rows_affected":1},{},` +
		`{"error":"UNIQUE constraint failed: t.v","error_v2":{"message":"UNIQUE constraint failed: t.v","sqlite":{"code":19,"extended_code":2067}}},` +
		`{"error":"no such table: x"},` +
		`{"columns":["a"],"types":[""]}],"sequence_number":5,"raft_index":9}`
	if got := string(resp.encode(rqFlags{})); got != want {
		t.Errorf("standard form:\n got %s\nwant %s", got, want)
	}
	assoc := &rqResponse{results: []rqResult{rqResultOf(store.Result{HasRows: true, Columns: []string{"id", "b"}, Types: []string{"integer", "blob"}, Rows: [][]any{{int64(1), []byte{1, 255}}}}, true)}}
	want = `{"results":[{"types":{"id":"integer","b":"blob"},"rows":[{"id":1,"b":[1,255]}]}]}`
	if got := string(assoc.encode(rqFlags{associative: true, blobArray: true})); got != want {
		t.Errorf("associative form:\n got %s\nwant %s", got, want)
	}
}

// A /db/request string that holds several statements is cut into them,
// each with a result of its own; one with parameters, or one that opens or
// ends its own transaction, stays whole.
func TestRequestStringsAreCutIntoStatements(t *testing.T) {
	for _, c := range []struct {
		in   rlog.Statement
		want int
	}{
		{rlog.Statement{SQL: "SELECT 1; SELECT 2"}, 2},
		{rlog.Statement{SQL: "SELECT 1;;; SELECT 'a;b';"}, 2},
		{rlog.Statement{SQL: "SELECT ?; SELECT 2", Pos: []any{int64(1)}}, 1},
		{rlog.Statement{SQL: "BEGIN; INSERT INTO t VALUES (1); COMMIT"}, 1},
		{rlog.Statement{SQL: "INSERT INTO t VALUES (1); -- done\n end"}, 1},
		{rlog.Statement{SQL: "SAVEPOINT a; INSERT INTO t VALUES (1); RELEASE a"}, 1},
		{rlog.Statement{SQL: "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END; SELECT 2"}, 2},
	} {
		if got := splitStatements([]rlog.Statement{c.in}); len(got) != c.want {
			t.Errorf("%q: %d statements, want %d: %q", c.in.SQL, len(got), c.want, got)
		}
	}
}

// appendString writes every string exactly as encoding/json does: every
// byte value alone and next to printable text, the characters
// encoding/json escapes, invalid UTF-8, and random strings.
func TestStringsAreEncodedAsEncodingJSONEncodesThem(t *testing.T) {
	cases := []string{"", "plain", "a b", `"quoted"`, `back\slash`, "<tag>", "a&b", "tab\there", "nl\n", "del\x7f", "é", "\u2028\u2029", "\xff\xfe", "日本語", "emoji 🙂", "\x00"}
	for c := 0; c < 256; c++ {
		cases = append(cases, string([]byte{byte(c)}), "text "+string([]byte{byte(c)})+" more")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rng.IntN(20))
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = byte(rng.IntN(256))
			} else {
				b[i] = byte(0x20 + rng.IntN(0x5f))
			}
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		want, _ := json.Marshal(s)
		if got := appendString([]byte("x"), s); string(got) != "x"+string(want) {
			t.Fatalf("%q: %s, encoding/json writes %s", s, got[1:], want)
		}
	}
}
