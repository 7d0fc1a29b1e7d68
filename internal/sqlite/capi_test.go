package sqlite

import (
	"path/filepath"
	"strings"
	"testing"
	"unsafe"
)

// The handle SQLite reports for a new connection is the driver's own, and
// the self-test would refuse a handle that is not.
func TestTheHandleIsTheDriversConnectionAndTheSelfTestWouldNotice(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(filepath.Join(dir, "a.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(filepath.Join(dir, "b.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.db == b.db || a.db == nil {
		t.Fatal("two connections share a handle")
	}
	if _, err := a.Driver.Exec("CREATE TABLE only_in_a (x)", nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec("INSERT INTO only_in_a VALUES (1)"); err != nil {
		t.Fatalf("the driver's table is not seen through the handle: %v", err)
	}
	if err := selfTest(a); err != nil {
		t.Fatalf("self-test of a good connection: %v", err)
	}
	// A connection whose handle is another connection's: what reading the
	// wrong field of the driver would give.
	wrong := &Conn{db: b.db, Driver: a.Driver}
	if err := selfTest(wrong); err == nil || !strings.Contains(err.Error(), "not the driver's connection") {
		t.Fatalf("self-test with another connection's handle: %v", err)
	}
}

// A step budget runs out at the same instruction of a statement's run
// whatever the statement ran before: a statement kept prepared (run before,
// with a count of its own past) and a fresh one agree at every budget, so
// that every node stops a write at the same point. A budget of enough
// steps lets the statement finish.
func TestAStepBudgetRunsOutAtTheSamePointForAFreshAndAWarmStatement(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "b.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c)"
	run := func(s *Stmt, steps int64) (stopped bool) {
		t.Helper()
		s.Reset()
		s.StartCounting()
		c.SetStepBudget(steps)
		defer c.SetStepBudget(0)
		for {
			more, err := s.Step()
			if err != nil {
				if !IsCode(err, ErrCodeInterrupt) || !c.BudgetSpent() {
					t.Fatalf("with %d steps: %v (budget spent: %v)", steps, err, c.BudgetSpent())
				}
				return true
			}
			if !more {
				return false
			}
		}
	}
	warm, err := c.Prepare(q)
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close()
	// The statement runs about 16,000 instructions. Around that budget,
	// the warm statement is compared again and again, each run adding to
	// its past count, so that every remainder of that count by the
	// handler's interval comes up.
	seen := map[bool]int{}
	for steps := int64(14000); steps <= 18000; steps += 250 {
		fresh, err := c.Prepare(q)
		if err != nil {
			t.Fatal(err)
		}
		cold := run(fresh, steps)
		fresh.Close()
		for range 100 {
			if hot := run(warm, steps); hot != cold {
				t.Fatalf("with %d steps: the statement run before (%d instructions so far) stopped: %v, a fresh one: %v", steps, warm.VMSteps(), hot, cold)
			}
		}
		seen[cold]++
	}
	if seen[true] == 0 || seen[false] == 0 {
		t.Fatalf("the budgets never crossed the statement's length: %v", seen)
	}
}

// A cached statement keeps no part of the text it was prepared from: a
// substring would keep the whole text in memory as long as the cache
// holds the statement.
func TestACachedStatementKeepsNoPartOfItsText(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "c.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	text := strings.Repeat("SELECT 1;\n", 100_000) + "SELECT 2"
	st, err := c.Prepare(text[len(text)-len("SELECT 2"):])
	if err != nil {
		t.Fatal(err)
	}
	key := text[len(text)-len("SELECT 2"):]
	c.Cache(key, st, nil)
	lo := uintptr(unsafe.Pointer(unsafe.StringData(text)))
	hi := lo + uintptr(len(text))
	inside := func(s string) bool {
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		return len(s) > 0 && p >= lo && p < hi
	}
	for k, e := range c.cache {
		if inside(k) || inside(e.Stmt.SQL) || inside(e.Stmt.Tail) {
			t.Fatalf("the cached statement %q points into the text it came from", k)
		}
	}
}

// A long text of many statements, prepared one statement at a time (each
// time its rest, a Stmt's Tail), is not copied by SQLite for each of them:
// SQLite copies a text whose length leaves out its NUL, and doing so for
// every statement of a load's 4 MiB chunk took seconds. SQLite's memory
// high-water mark would show one such copy of the text's rest; the whole
// pass must stay far below the text's size. Every statement is read (and
// run), and an embedded NUL is still refused.
func TestALongTextIsNotCopiedForEachOfItsStatements(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "a.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Exec("CREATE TABLE t (x, y)"); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	const rows = 20000
	for i := range rows {
		b.WriteString("SELECT y, 'some text to make it longer' FROM t WHERE x = " + strings.Repeat("7", 1+i%9) + ";\n")
	}
	b.WriteString("  \n")
	text := b.String()
	if len(text) < 1<<20 {
		t.Fatalf("the text is %d bytes", len(text))
	}
	used, _ := Memory(true)
	n := 0
	for sql := text; sql != ""; {
		st, err := c.Prepare(sql)
		if err != nil {
			t.Fatal(err)
		}
		if st == nil {
			break
		}
		if _, err := st.Step(); err != nil {
			t.Fatal(err)
		}
		sql = st.Tail
		st.Close()
		n++
	}
	_, high := Memory(false)
	if grew := high - used; grew > int64(len(text))/4 {
		t.Fatalf("SQLite's memory grew by %d bytes while a text of %d bytes was prepared statement by statement: it copied the text", grew, len(text))
	}
	if n != rows {
		t.Fatalf("%d statements read of %d", n, rows)
	}
	if c.clong != nil {
		t.Fatal("the copy of the long text is kept after its last statement")
	}
	nul := text[:len(text)/2] + "\x00" + text[len(text)/2:]
	for sql := nul; ; {
		st, err := c.Prepare(sql)
		if err != nil {
			if !strings.Contains(err.Error(), "NUL") {
				t.Fatal(err)
			}
			break
		}
		if st == nil {
			t.Fatal("a text with a NUL was read to its end")
		}
		sql = st.Tail
		st.Close()
	}
}
