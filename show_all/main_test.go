package main

import (
	"strings"
	"testing"

	"github.com/ddbgo/ddb/internal/inspect"
)

// A differing row shows what differs, even when the two values print
// alike (1 and '1', 1 and 1.0) or hold characters a terminal swallows.
func TestSideBySideShowsEveryDifference(t *testing.T) {
	var b strings.Builder
	printSideBySide(&b, inspect.RowDiff{Table: "t", Key: "rowid=1", Columns: []string{"id", "a", "b", "c", "d"}, PathA: "x.db", PathB: "y.db",
		A: []any{int64(1), int64(1), int64(2), "a\x00b", []byte{0}},
		B: []any{int64(1), "1", 2.0, "a", []byte{0}}})
	out := b.String()
	for _, want := range []string{
		"id 1           | 1\n",
		"a  1 (integer) | 1 (text) ≠",
		"b  2 (integer) | 2 (real) ≠",
		`c  "a\x00b"    | a ≠`,
		"d  x'00'       | x'00'\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}
