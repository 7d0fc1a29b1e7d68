package sqlite

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// This package's LIKE and GLOB give exactly SQLite's results and errors:
// the same queries on a connection opened here and on one the driver opens
// alone (which keeps SQLite's functions), over random patterns built from
// every wildcard, set, range and escape, ASCII letters of both cases,
// characters of two to four bytes, bytes that are not UTF-8 (a lone
// continuation byte, a lead byte without its continuation, an overlong
// sequence), NUL, numbers, blobs and NULLs, with and without ESCAPE (of
// one character, of two, empty, a wildcard itself).
func TestMatchAgreesWithSQLites(t *testing.T) {
	ours, theirs := oursAndSQLites(t)

	pieces := []string{"a", "A", "b", "B", "z", "%", "_", "*", "?", "[", "]", "^", "-", "\\", "é", "É", "€", "😀",
		"\x80", "\xc3", "\xff", "\xf8\x88\x80\x80\x80", "\xed\xa0\x80", "\xc0\x80", "x"}
	rng := rand.New(rand.NewPCG(7, 11))
	text := func(max int) string {
		var b strings.Builder
		for range rng.IntN(max) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	value := func(max int) any {
		switch rng.IntN(20) {
		case 0:
			return nil
		case 1:
			return int64(rng.IntN(300))
		case 2:
			return []byte(text(max))
		case 3:
			return text(max) + "\x00" + text(3)
		}
		return text(max)
	}
	escapes := []any{"\\", "%", "_", "a", "é", "[", "*", "", "ab", nil, int64(1)}
	fixed := [][3]any{
		{"a%", "ABC", "\\"}, {"%b_", "aabc", "\\"}, {"[a-c]*", "b", nil}, {"[]a]", "]", nil}, {"[^]a]", "b", nil},
		{"[a-]", "-", nil}, {"[a-c-e]", "-", nil}, {"a\\", "a", "\\"}, {"[abc", "a", nil}, {"%%a", "%a", "%"},
		{"__", "é€", nil}, {"%\\%", "50%", "\\"}, {"a_b", "a_b", "_"}, {"*", "", nil}, {"%", "", nil},
		{"[]-a]", "-", nil}, {"[z-a]", "m", nil}, {"[^a-c]", "é", nil}, {"é%", "É", nil}, {"a*b?c", "aXXbYc", nil},
	}
	for i := range 30000 {
		var args [3]any
		if i < len(fixed) {
			args = fixed[i]
		} else {
			args = [3]any{value(8), value(12), escapes[rng.IntN(len(escapes))]}
		}
		lit := [3]string{literal(args[0]), literal(args[1]), literal(args[2])}
		for _, q := range []string{
			fmt.Sprintf("SELECT %s LIKE %s", lit[1], lit[0]),
			fmt.Sprintf("SELECT %s LIKE %s ESCAPE %s", lit[1], lit[0], lit[2]),
			fmt.Sprintf("SELECT %s GLOB %s", lit[1], lit[0]),
			fmt.Sprintf("SELECT %s NOT LIKE %s", lit[1], lit[0]),
		} {
			want, werr := theirsRow(theirs, q)
			row, gerr := ours.QueryRow(q)
			var got any
			if row != nil {
				got = row[0]
			}
			if (werr != nil) != (gerr != nil) || (werr != nil && !strings.Contains(werr.Error(), gerr.Error())) || !reflect.DeepEqual(got, want) {
				t.Fatalf("%s (%q): got %#v (%v), SQLite's %#v (%v)", q, args, got, gerr, want, werr)
			}
		}
	}
}

// The work of a match is counted against the step budget, the same count
// every time, so a write that matches too much stops where it would on
// any node; without a budget, an interrupt stops a match at once however
// long it would run.
func TestMatchWorkIsCountedAndInterruptible(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "m.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// About 20 million comparisons: a pattern of 20 characters that fails
	// at its end, at each of a million places.
	const q = "SELECT printf('%.*c', 1000000, 'a') LIKE '%' || printf('%.*c', 20, 'a') || 'b'"
	spent := func(budget int64) (int64, error) {
		c.SetStepBudget(budget)
		defer c.SetStepBudget(0)
		_, err := c.QueryRow(q)
		return budget - c.StepBudgetLeft(), err
	}
	first, err := spent(1 << 40)
	if err != nil {
		t.Fatal(err)
	}
	if first < 20_000_000/2 {
		t.Fatalf("the match cost %d steps; its 20 million comparisons cost at least %d", first, 20_000_000/2)
	}
	for range 3 {
		if again, err := spent(1 << 40); err != nil || again != first {
			t.Fatalf("the same match cost %d steps, then %d (%v)", first, again, err)
		}
	}
	// A budget short of it stops it, as spent.
	c.SetStepBudget(first / 2)
	_, err = c.QueryRow(q)
	if !IsCode(err, ErrCodeInterrupt) || !c.BudgetSpent() {
		t.Fatalf("over its budget: %v (spent %v)", err, c.BudgetSpent())
	}
	c.SetStepBudget(0)
	if c.BudgetSpent() {
		t.Fatal("the budget is still spent once removed")
	}
	// Without a budget, an interrupt stops a match (one that would run
	// for seconds) at once: it comes while the match's argument is
	// computed, so the match itself must see it.
	if err := c.Driver.RegisterFunc("interrupt_now", func() string { c.Interrupt(); return "" }, false); err != nil {
		t.Fatal(err)
	}
	_, err = c.QueryRow("SELECT (printf('%.*c', 60000000, 'a') || interrupt_now()) LIKE '%' || printf('%.*c', 90, 'a') || 'b'")
	if !IsCode(err, ErrCodeInterrupt) {
		t.Fatalf("the interrupted match: %v", err)
	}
}

// BenchmarkMatchWork compares the time of a character comparison in a
// match with that of an instruction of the virtual machine, which sets
// DDB_MATCH_PER_STEP (match.c): report ns/op of each and their ratio.
func BenchmarkMatchWork(b *testing.B) {
	c, err := Open(filepath.Join(b.TempDir(), "b.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("compare", func(b *testing.B) {
		// 10 million comparisons per query.
		for range b.N {
			if _, err := c.QueryRow("SELECT printf('%.*c', 1000000, 'a') LIKE '%' || printf('%.*c', 9, 'a') || 'b'"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/10e6, "ns/compare")
	})
	b.Run("instruction", func(b *testing.B) {
		const n = 1_000_000
		for range b.N {
			st, err := c.Prepare(fmt.Sprintf("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x < %d) SELECT count(*) FROM s", n))
			if err != nil {
				b.Fatal(err)
			}
			st.StartCounting()
			if _, err := st.Step(); err != nil {
				b.Fatal(err)
			}
			steps := st.VMSteps()
			st.Close()
			b.ReportMetric(float64(steps), "instructions/op")
		}
	})
}
