package sqlite

import (
	"fmt"
	"net/url"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// This package's zeroblob() gives exactly SQLite's own results (the same
// type, length and bytes), for every kind of argument.
func TestBlobFunctionsAgreeWithSQLites(t *testing.T) {
	ours, theirs := oursAndSQLites(t)
	args := []string{"-5", "0", "1", "7", "1000", "1.7", "-0.5", "'12abc'", "'x'", "NULL", "X'0102'", "9223372036854775807", "-9223372036854775808"}
	for _, a := range args {
		for _, f := range []string{"zeroblob(%s)", "typeof(zeroblob(%s))", "length(zeroblob(%s))", "hex(zeroblob(%s))"} {
			q := "SELECT " + fmt.Sprintf(f, a)
			want, werr := theirsRow(theirs, q)
			row, gerr := ours.QueryRow(q)
			var got any
			if row != nil {
				got = row[0]
			}
			if s, ok := got.(string); ok {
				got = []byte(s)
			}
			// SQLite's own allows values up to 1 GB; this package's stop at
			// MaxLength, with the same error.
			if werr == nil && gerr != nil && IsCode(gerr, ErrCodeTooBig) {
				continue
			}
			if (werr != nil) != (gerr != nil) || !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: got %#v (%v), SQLite's %#v (%v)", q, got, gerr, want, werr)
			}
		}
	}
	if _, err := ours.QueryRow(fmt.Sprintf("SELECT zeroblob(%d)", MaxLength+1)); !IsCode(err, ErrCodeTooBig) {
		t.Fatalf("zeroblob past MaxLength: %v, want string or blob too big", err)
	}
}

// What zeroblob() makes is charged to the step budget, a step for every
// DDB_BYTES_PER_STEP bytes, the same amount each time; a budget short of
// it stops the statement as spent, and without a budget nothing is
// counted. ChargeMade charges a function written in Go (the store's
// randomblob()) alike.
func TestMadeBytesAreCountedAgainstTheBudget(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "b.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const q = "SELECT length(zeroblob(4000000))"
	c.SetStepBudget(1 << 40)
	if _, err := c.QueryRow(q); err != nil {
		t.Fatal(err)
	}
	spent := (1 << 40) - c.StepBudgetLeft()
	if spent != 1_000_000 {
		t.Fatalf("zeroblob of 4,000,000 bytes cost %d steps, want 1,000,000", spent)
	}
	c.SetStepBudget(999_999)
	if _, err := c.QueryRow(q); !IsCode(err, ErrCodeInterrupt) || !c.BudgetSpent() {
		t.Fatalf("zeroblob over its budget: %v (spent %v)", err, c.BudgetSpent())
	}
	c.SetStepBudget(0)
	if row, err := c.QueryRow(q); err != nil || row[0] != int64(4000000) || c.BudgetSpent() {
		t.Fatalf("zeroblob without a budget: %v %v", row, err)
	}
	c.SetStepBudget(1_000_000)
	if c.ChargeMade(4_000_000) || c.StepBudgetLeft() != 0 || !c.ChargeMade(4) || !c.BudgetSpent() {
		t.Fatalf("ChargeMade: %d left", c.StepBudgetLeft())
	}
	c.SetStepBudget(0)
	if c.ChargeMade(1 << 40) {
		t.Fatal("ChargeMade spent a budget that is not set")
	}
}

// BenchmarkStoredBytes compares the time of storing a byte (1 MB values,
// with RETURNING, in a WAL database whose temporary storage is in files
// counted against the budget, as on a node's writer) with that of an
// instruction of the virtual machine, and reports the steps the byte is
// charged (its temporary storage, DDB_TEMP_BYTES_PER_STEP in clock.go):
// ns/byte over ns/step is what a byte's charge should be.
func BenchmarkStoredBytes(b *testing.B) {
	c := openWriterLike(b, filepath.Join(b.TempDir(), "s.db"), true)
	for _, q := range []string{"PRAGMA synchronous=NORMAL", "CREATE TABLE p(b)"} {
		if err := c.Exec(q); err != nil {
			b.Fatal(q, err)
		}
	}
	run := func(q string) (steps int64, took time.Duration) {
		if err := c.Exec("BEGIN"); err != nil {
			b.Fatal(err)
		}
		defer c.Exec("ROLLBACK")
		start := time.Now()
		steps = stepsSpent(b, c, q)
		return steps, time.Since(start)
	}
	const rows, size = 200, 1000000
	var perByte, perStep, charged float64
	b.Run("byte", func(b *testing.B) {
		var total time.Duration
		var steps int64
		for range b.N {
			// Not a constant: SQLite computes zeroblob(1000000) once.
			s, d := run(fmt.Sprintf("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x<%d) INSERT INTO p SELECT zeroblob(%d + x %% 2) FROM s RETURNING b", rows, size))
			total += d
			steps += s
		}
		perByte = float64(total.Nanoseconds()) / float64(b.N*rows*size)
		charged = float64(steps) / float64(b.N*rows*size)
		b.ReportMetric(perByte, "ns/byte")
		b.ReportMetric(charged, "steps/byte")
	})
	b.Run("step", func(b *testing.B) {
		var total time.Duration
		var steps int64
		for range b.N {
			s, d := run("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x<1000000) SELECT count(*) FROM s")
			total += d
			steps += s
		}
		perStep = float64(total.Nanoseconds()) / float64(steps)
		b.ReportMetric(perStep, "ns/step")
	})
	if perStep > 0 {
		b.Logf("a byte takes %.2f steps' time and is charged %.2f steps", perByte/perStep, charged)
	}
}

// What a statement writes to temporary files (a RETURNING result, a sort,
// a temporary b-tree) is charged to the step budget of a connection whose
// Clock counts it, the same amount however the connection got there (a
// fresh one, one whose transaction already dirtied many pages, the same
// statement again); a connection of the default VFS is charged nothing
// for it.
func TestTempWritesAreCountedAgainstTheBudget(t *testing.T) {
	dir := t.TempDir()
	open := func(name string, counted bool) *Conn {
		c := openWriterLike(t, filepath.Join(dir, name), counted)
		for _, q := range []string{"CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, b)", "CREATE TABLE IF NOT EXISTS pad (x)"} {
			if err := c.Exec(q); err != nil {
				t.Fatal(q, err)
			}
		}
		return c
	}
	const fill = "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x < 60) INSERT INTO t(b) SELECT CAST(printf('%d-%.*c', x, 500000, char(65 + x * 7 % 26)) AS BLOB) FROM s"
	statements := []string{
		"SELECT b FROM t ORDER BY b",                   // a sort
		"SELECT DISTINCT b FROM t",                     // a temporary b-tree
		"INSERT INTO t(b) SELECT b FROM t RETURNING b", // a RETURNING result
	}
	spent := func(c *Conn, q string) int64 {
		if err := c.Exec("SAVEPOINT s"); err != nil {
			t.Fatal(err)
		}
		defer c.ExecScript("ROLLBACK TO s; RELEASE s")
		return stepsSpent(t, c, q)
	}
	fresh := open("a.db", true)
	if err := fresh.Exec(fill); err != nil {
		t.Fatal(err)
	}
	plain := open("a.db", false)
	warm := open("b.db", true)
	if err := warm.Exec(fill); err != nil {
		t.Fatal(err)
	}
	// warm's transaction already holds thousands of dirty pages.
	if err := warm.ExecScript("BEGIN; INSERT INTO pad SELECT randomblob(3000) FROM t, t AS u"); err != nil {
		t.Fatal(err)
	}
	defer warm.Exec("ROLLBACK")
	for _, q := range statements {
		a := spent(fresh, q)
		if a < 20_000_000/TempBytesPerStep {
			t.Fatalf("%s: %d steps, less than its 20 MB of temporary storage", q, a)
		}
		if again := spent(fresh, q); again != a {
			t.Fatalf("%s: %d steps, then %d", q, a, again)
		}
		if w := spent(warm, q); w != a {
			t.Fatalf("%s: %d steps on a fresh connection, %d on one whose transaction dirtied many pages", q, a, w)
		}
		if p := spent(plain, q); p > a/10 {
			t.Fatalf("%s: %d steps uncounted, %d counted", q, p, a)
		}
	}
}

// openWriterLike opens the database at path as a node opens its writer:
// WAL, temporary storage in files, and with counted, through a Clock of
// its own whose temporary files count against the connection's budget.
// Both close when tb ends.
func openWriterLike(tb testing.TB, path string, counted bool) *Conn {
	tb.Helper()
	params := url.Values{"_journal_mode": {"WAL"}}
	var clock *Clock
	if counted {
		var err error
		if clock, err = NewClock(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(clock.Close)
		params.Set("vfs", clock.Name)
	}
	c, err := Open(path, params)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	if counted {
		clock.CountTempWrites(c)
	}
	if err := c.Exec("PRAGMA temp_store = FILE"); err != nil {
		tb.Fatal(err)
	}
	return c
}

// stepsSpent runs q to its end under an ample step budget, and says what
// it spent of it.
func stepsSpent(tb testing.TB, c *Conn, q string) int64 {
	tb.Helper()
	st, err := c.Prepare(q)
	if err != nil {
		tb.Fatal(q, err)
	}
	defer st.Close()
	st.StartCounting()
	c.SetStepBudget(1 << 40)
	defer c.SetStepBudget(0)
	for {
		more, err := st.Step()
		if err != nil {
			tb.Fatal(q, err)
		}
		if !more {
			return (1 << 40) - c.StepBudgetLeft()
		}
	}
}
