package rlog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"reflect"
	"testing"
)

// encodeJSON encodes w in the JSON form logs held before the binary one,
// as the former code wrote it.
func encodeJSON(w *Write) ([]byte, error) {
	s, err := EncodeStatements(w.Stmts)
	if err != nil || (w.RequestID == "" && !w.AllowSchema && !w.Collect && w.MaxRows == 0 && w.MaxBytes == 0 && !w.Each && !w.Replace) {
		return s, err
	}
	return json.Marshal(wireWrite{ID: w.RequestID, S: s, Schema: w.AllowSchema, Collect: w.Collect, MaxRows: w.MaxRows, MaxBytes: w.MaxBytes, Each: w.Each, Atomic: w.Atomic, Replace: w.Replace})
}

func sampleWrites() []Write {
	return []Write{
		{Stmts: []Statement{{SQL: "INSERT INTO t VALUES (1)"}}},
		{RequestID: "req-1", AllowSchema: true, Collect: true, MaxRows: 10, MaxBytes: 1 << 20, Each: true, Atomic: true,
			Stmts: []Statement{
				{SQL: "INSERT INTO t VALUES (?, ?, ?, ?, ?)", Pos: []any{int64(math.MinInt64), math.MaxFloat64, "héllo\x00", []byte{0, 1, 255}, nil}},
				{SQL: "UPDATE t SET a = :a, b = :b", Named: map[string]any{":b": math.Inf(-1), ":a": int64(7)}},
				{SQL: "SELECT ?", Pos: []any{[]byte{}}},
			}},
		{Replace: true, Stmts: []Statement{{SQL: "CREATE TABLE x (y)"}, {SQL: ""}}},
	}
}

// Every write decodes to itself from both forms: the binary one entries
// are written in now, and the JSON one logs written before hold.
func TestWritesDecodeFromTheBinaryAndTheJSONForm(t *testing.T) {
	for _, w := range sampleWrites() {
		bin, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if bin[0] != binaryVersion {
			t.Fatalf("Encode did not write the binary form: %q", bin)
		}
		js, err := encodeJSON(&w)
		if err != nil {
			t.Fatal(err)
		}
		for _, body := range [][]byte{bin, js} {
			got, err := DecodeWriteEntry(body)
			if err != nil {
				t.Fatalf("%q: %v", body, err)
			}
			if !reflect.DeepEqual(got, w) {
				t.Fatalf("decoded\n%#v\nwant\n%#v", got, w)
			}
		}
		again, _ := w.Encode()
		if !bytes.Equal(again, bin) {
			t.Fatal("the same write encoded twice differs (named values out of order?)")
		}
	}
}

// Values keep their exact type, as in the JSON form: bool and int become
// integers, NaN becomes NULL (as SQLite stores it).
func TestBinaryValuesKeepTheirSQLiteType(t *testing.T) {
	w := Write{Stmts: []Statement{{SQL: "?", Pos: []any{true, false, 3, math.NaN(), math.Copysign(0, -1), int64(math.MaxInt64)}}}}
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeWriteEntry(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []any{int64(1), int64(0), int64(3), nil, math.Copysign(0, -1), int64(math.MaxInt64)}
	if !reflect.DeepEqual(got.Stmts[0].Pos, want) || !math.Signbit(got.Stmts[0].Pos[4].(float64)) {
		t.Fatalf("got %#v, want %#v", got.Stmts[0].Pos, want)
	}
	if _, err := (&Write{Stmts: []Statement{{SQL: "?", Pos: []any{struct{}{}}}}}).Encode(); err == nil {
		t.Fatal("a value of no SQLite type was encoded")
	}
}

// A damaged body fails to decode (the same way on every node); it never
// panics, and no prefix of a body decodes as a whole write.
func TestTruncatedBinaryBodiesFail(t *testing.T) {
	for _, w := range sampleWrites() {
		b, _ := w.Encode()
		for i := 1; i < len(b); i++ {
			if _, err := DecodeWriteEntry(b[:i]); err == nil {
				t.Fatalf("a body cut at %d of %d bytes decoded", i, len(b))
			}
		}
		if _, err := DecodeWriteEntry(append(b, 0)); err == nil {
			t.Fatal("a body with a byte after its end decoded")
		}
	}
}

func FuzzBinaryWriteDecoding(f *testing.F) {
	for _, w := range append(sampleWrites(), Write{MaxSteps: 1 << 40, Stmts: []Statement{{SQL: "SELECT 1"}}}) {
		b, _ := w.Encode()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w, err := DecodeWriteEntry(body)
		if err != nil || len(body) == 0 || body[0] != binaryVersion {
			return
		}
		// What decodes encodes back to a body that decodes the same.
		again, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		w2, err := DecodeWriteEntry(again)
		if err != nil || !reflect.DeepEqual(w, w2) {
			t.Fatalf("%#v became %#v (%v)", w, w2, err)
		}
	})
}

// A write's step budget travels in the binary form, only when it has one:
// bodies written before it existed decode with none, byte for byte as
// they were.
func TestStepBudgetTravelsWithTheWrite(t *testing.T) {
	w := Write{RequestID: "r", MaxRows: 3, MaxSteps: 3_000_000_000, Stmts: []Statement{{SQL: "INSERT INTO t VALUES (?)", Pos: []any{int64(1)}}}}
	bin, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeWriteEntry(bin)
	if err != nil || !reflect.DeepEqual(got, w) {
		t.Fatalf("decoded %#v (%v), want %#v", got, err, w)
	}
	w.MaxSteps = 0
	without, _ := w.Encode()
	if got, err := DecodeWriteEntry(without); err != nil || got.MaxSteps != 0 {
		t.Fatalf("a body without a budget: %#v %v", got, err)
	}
	if without[1]&flagSteps != 0 {
		t.Fatal("a write without a budget sets its flag")
	}
	// The flag with a budget of 0 is not a body this code writes.
	bad := append([]byte{binaryVersion}, binary.AppendUvarint(nil, flagSteps)...)
	bad = append(bad, 0, 0, 0, 0, 0)
	if _, err := DecodeWriteEntry(bad); err == nil {
		t.Fatal("a zero step budget decoded")
	}
	if _, err := (&Write{MaxSteps: -1}).Encode(); err == nil {
		t.Fatal("a negative step budget encoded")
	}
}

// A load's steps round-trip in the binary form (the only one that carries
// them), and each step is its own request: two steps with the same SQL
// have different fingerprints.
func TestLoadStepsRoundTripAndAreTheirOwnRequests(t *testing.T) {
	steps := []*LoadStep{{ID: "a1", Op: LoadStage, Seq: 0}, {ID: "a1", Op: LoadStage, Seq: 1}, {ID: "a1", Op: LoadCommit, Seq: 2}, {ID: "b2", Op: LoadAbort}}
	seen := map[[32]byte]bool{}
	for _, st := range steps {
		w := Write{RequestID: "load:" + st.ID, AllowSchema: true, Replace: true, MaxSteps: 9, Load: st, Stmts: []Statement{{SQL: "INSERT INTO t VALUES (1);"}}}
		b, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeWriteEntry(b)
		if err != nil || !reflect.DeepEqual(got, w) {
			t.Fatalf("decoded %#v, %v; want %#v", got, err, w)
		}
		fp, _ := w.Fingerprint()
		if seen[fp] {
			t.Fatalf("step %+v has another step's fingerprint", st)
		}
		seen[fp] = true
	}
	for _, bad := range []*LoadStep{{ID: "x", Op: 0}, {ID: "x", Op: LoadAbort + 1}, {ID: "x", Op: LoadStage, Seq: -1}} {
		if _, err := (&Write{Load: bad}).Encode(); err == nil {
			t.Fatalf("load step %+v encoded", bad)
		}
	}
}
