package api

import (
	"reflect"
	"testing"
)

// FuzzDecodeRequest: any body either decodes into a valid request or is
// refused with a BadRequest; it never panics, and what it accepts is
// consistent.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"command":"exec","query":"CREATE TABLE t (x)","is_master":false}`,
		`{"command":"query","query":"SELECT ?","params":[1,2.5,"x",true,null]}`,
		`{"command":"query","query":"SELECT :a","params":{"a":1},"format":"columns","consistency":"strong","min_index":3}`,
		`{"command":"exec","queries":[{"query":"INSERT INTO t VALUES (?)","params":[1]},{"query":"DELETE FROM t"}],"ack":"all"}`,
		`{"command":"exec","query":"x","is_replicated":true}`,
		`{"command":"exec"`, `[]`, `null`, `{}`, `{"command":"query","query":"x","params":[[[]]]}`,
		`{"command":"query","query":"x","min_index":18446744073709551616}`,
		`{"command":"exec","query":"x","params":[1e400]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		// The fast path answers only what the full decoder answers the same.
		if fast := decodeFast(body, "quorum"); fast != nil {
			full, err := decodeFull(body, "quorum")
			if err != nil {
				t.Fatalf("fast path accepted what the full decoder refuses (%v): %+v", err, fast)
			}
			if !reflect.DeepEqual(fast, full) {
				t.Fatalf("decoders disagree:\nfast %+v\nfull %+v", fast, full)
			}
		}
		r, err := DecodeRequest(body, "quorum")
		if err != nil {
			if _, ok := err.(*BadRequest); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if r.Command != "exec" && r.Command != "query" {
			t.Fatalf("accepted command %q", r.Command)
		}
		if len(r.Stmts) == 0 {
			t.Fatal("accepted a request without statements")
		}
		for _, st := range r.Stmts {
			for _, v := range st.Pos {
				checkParam(t, v)
			}
			for _, v := range st.Named {
				checkParam(t, v)
			}
		}
	})
}

func checkParam(t *testing.T, v any) {
	switch v.(type) {
	case nil, int64, float64, string:
	default:
		t.Fatalf("parameter of type %T", v)
	}
}
