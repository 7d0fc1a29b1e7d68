package replication

import (
	"reflect"
	"testing"

	"ddb/internal/rlog"
)

func TestAppendFrameRoundTripsAndRejectsTruncation(t *testing.T) {
	req := &AppendRequest{Master: "http://m:8080", Commit: 99, Entries: []rlog.Entry{
		{Index: 7, TimeMs: -5, Seed: -1, Body: []byte(`[{"q":"INSERT"}]`)},
		{Index: 8, TimeMs: 1 << 40, Seed: 1<<63 - 1, Body: []byte{}},
	}}
	b := EncodeAppend(req)
	got, err := DecodeAppend(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Master != req.Master || got.Commit != 99 || len(got.Entries) != 2 || !reflect.DeepEqual(got.Entries[0], req.Entries[0]) || got.Entries[1].Seed != req.Entries[1].Seed {
		t.Fatalf("%+v", got)
	}
	for i := 0; i < len(b); i++ {
		if _, err := DecodeAppend(b[:i]); err == nil {
			t.Fatalf("truncated frame of %d bytes accepted", i)
		}
	}
	if _, err := DecodeAppend(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	if empty, err := DecodeAppend(EncodeAppend(&AppendRequest{})); err != nil || len(empty.Entries) != 0 {
		t.Fatalf("heartbeat: %v %v", empty, err)
	}
}
