package replication

import (
	"testing"

	"ddb/internal/rlog"
)

// FuzzDecodeAppend: malformed frames are refused, never panic, and a frame
// that decodes re-encodes to the same bytes.
func FuzzDecodeAppend(f *testing.F) {
	f.Add(EncodeAppend(&AppendRequest{Master: "http://m", Commit: 3, Entries: []rlog.Entry{{Index: 1, TimeMs: 2, Seed: 3, Body: []byte(`[]`)}}}))
	f.Add(EncodeAppend(&AppendRequest{}))
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeAppend(b)
		if err != nil {
			return
		}
		if got := EncodeAppend(req); string(got) != string(b) {
			t.Fatalf("re-encoding differs")
		}
	})
}
