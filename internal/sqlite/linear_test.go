package sqlite

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
)

// This package's instr() and replace() give exactly SQLite's own results:
// the same queries on a connection opened here and on one the driver opens
// alone (which keeps SQLite's functions), over random text, blobs,
// numbers and NULLs, with characters of one to three bytes and bytes that
// are not UTF-8. An index or a generated column built with SQLite's
// functions stays valid under these.
func TestLinearInstrAndReplaceAgreeWithSQLites(t *testing.T) {
	ours, theirs := oursAndSQLites(t)

	pieces := [][]byte{{'a'}, {'a'}, {'b'}, {0xc3, 0xa9}, {0xe2, 0x82, 0xac}, {0x80}, {'1'}, {0}}
	rng := rand.New(rand.NewPCG(1, 2))
	value := func() any {
		var b []byte
		for range rng.IntN(12) {
			b = append(b, pieces[rng.IntN(len(pieces))]...)
		}
		switch rng.IntN(10) {
		case 0:
			return nil
		case 1:
			return int64(rng.IntN(300))
		case 2, 3:
			return b
		}
		return string(b)
	}
	fixed := [][]any{
		{"héllo", "l", "x"}, {[]byte{1, 2}, []byte{2}, "z"}, {"abc", "", "q"}, {"aaaa", "aa", "b"},
		{int64(123), int64(2), int64(9)}, {"é", []byte{0xa9}, "e"}, {[]byte("\x80\x80a"), "a", ""},
		{"x\x00y", "\x00", "-"}, {"", "", ""}, {"abab", "abab", "abababab"},
	}
	for i := range 20000 {
		args := []any{value(), value(), value()}
		if i < len(fixed) {
			args = fixed[i]
		}
		// Literals, not parameters: the driver binds empty text as NULL.
		var lit []string
		for _, a := range args {
			lit = append(lit, literal(a))
		}
		for _, f := range []string{"instr(%s, %s)", "replace(%s, %s, %s)", "typeof(replace(%s, %s, %s))"} {
			n := strings.Count(f, "%s")
			q := "SELECT " + fmt.Sprintf(f, toAny(lit[:n])...)
			want, werr := theirsRow(theirs, q)
			row, gerr := ours.QueryRow(q)
			var got any
			if row != nil {
				got = row[0]
			}
			if s, ok := got.(string); ok {
				got = []byte(s)
			}
			if (werr != nil) != (gerr != nil) || !reflect.DeepEqual(got, want) {
				t.Fatalf("%s (%q): got %#v (%v), SQLite's %#v (%v)", q, args[:n], got, gerr, want, werr)
			}
		}
	}
}

// oursAndSQLites opens a connection of this package and one the driver
// opens alone, which keeps SQLite's own functions (closed when t ends).
func oursAndSQLites(t *testing.T) (*Conn, *sql.DB) {
	t.Helper()
	ours, err := Open(filepath.Join(t.TempDir(), "ours.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ours.Close() })
	theirs, err := sql.Open("sqlite3", ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { theirs.Close() })
	theirs.SetMaxOpenConns(1)
	return ours, theirs
}

func literal(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case int64:
		return fmt.Sprint(x)
	case []byte:
		return fmt.Sprintf("X'%x'", x)
	}
	return fmt.Sprintf("CAST(X'%x' AS TEXT)", v.(string))
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func theirsRow(db *sql.DB, q string, args ...any) (any, error) {
	var v any
	err := db.QueryRow(q, args...).Scan(&v)
	if s, ok := v.(string); ok {
		v = []byte(s)
	}
	return v, err
}

// Values are bounded by MaxLength on every connection: a longer string,
// blob or replace() result fails with "too big", as on every node alike.
func TestValuesLongerThanMaxLengthFail(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "l.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{
		fmt.Sprintf("SELECT length(zeroblob(%d))", MaxLength+1),
		fmt.Sprintf("SELECT length(printf('%%.*c', %d, 'a'))", MaxLength+1),
		fmt.Sprintf("SELECT length(replace(printf('%%.*c', %d, 'a'), 'a', 'aa'))", MaxLength/2+1),
	} {
		if _, err := c.QueryRow(q); !IsCode(err, ErrCodeTooBig) {
			t.Errorf("%s: %v, want too big", q, err)
		}
	}
	row, err := c.QueryRow(fmt.Sprintf("SELECT length(zeroblob(%d))", MaxLength))
	if err != nil || row[0] != int64(MaxLength) {
		t.Fatalf("a value of MaxLength: %v %v", row, err)
	}
}

// A LIKE or GLOB pattern longer than MaxLikePattern fails; one of that
// length matches.
func TestLikePatternsAreBounded(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "p.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, op := range []string{"LIKE", "GLOB"} {
		if _, err := c.QueryRow(fmt.Sprintf("SELECT 'x' %s printf('%%.*c', %d, 'x')", op, MaxLikePattern+1)); err == nil || !strings.Contains(err.Error(), "too complex") {
			t.Errorf("%s with a pattern of %d bytes: %v", op, MaxLikePattern+1, err)
		}
		row, err := c.QueryRow(fmt.Sprintf("SELECT printf('%%.*c', %d, 'x') %s printf('%%.*c', %d, 'x')", MaxLikePattern, op, MaxLikePattern))
		if err != nil || row[0] != int64(1) {
			t.Errorf("%s with a pattern of %d bytes: %v %v", op, MaxLikePattern, row, err)
		}
	}
}
