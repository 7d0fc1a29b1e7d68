package sqlite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"
)

// goRandom registers on c the random() and randomblob() this package's C
// functions replaced: Go functions called through the driver, drawing from
// Go's PCG. A log written before the change applies the same after it
// only if the two give the same values, errors and budget charges.
func goRandom(t *testing.T, c *Conn, rng **rand.Rand) {
	t.Helper()
	if err := c.Driver.RegisterFunc("random", func() int64 { return int64((*rng).Uint64()) }, false); err != nil {
		t.Fatal(err)
	}
	err := c.Driver.RegisterFunc("randomblob", func(n int64) ([]byte, error) {
		if n < 1 {
			n = 1
		}
		if n > MaxLength {
			return nil, errors.New("string or blob too big")
		}
		if c.ChargeMade(n) {
			return nil, errors.New("the write made more bytes than its step budget allows")
		}
		b := make([]byte, n)
		for i := 0; i < len(b); i += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], (*rng).Uint64())
			copy(b[i:], w[:])
		}
		return b, nil
	}, false)
	if err != nil {
		t.Fatal(err)
	}
}

// random() and randomblob() seeded with SeedRandom(a, b) give exactly what
// Go functions drawing from rand.NewPCG(a, b) gave, value for value and
// error for error, including the step budget they spend.
func TestRandomIsGosPCG(t *testing.T) {
	ours, err := Open(filepath.Join(t.TempDir(), "ours.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	before, err := Open(filepath.Join(t.TempDir(), "before.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	var rng *rand.Rand
	goRandom(t, before, &rng)
	queries := []string{
		"SELECT random()", "SELECT randomblob(13)", "SELECT randomblob(1)", "SELECT randomblob(0)",
		"SELECT randomblob(-7)", "SELECT randomblob(8)", "SELECT randomblob(1000)", "SELECT hex(randomblob(3)), random()",
		"SELECT randomblob('5')", "SELECT randomblob(NULL)", "SELECT randomblob(2.5)", "SELECT randomblob(X'01')",
		fmt.Sprintf("SELECT randomblob(%d)", MaxLength+1), fmt.Sprintf("SELECT length(randomblob(%d))", MaxLength),
		"SELECT random() FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) ORDER BY 1",
		"SELECT random(), randomblob(9), random()",
	}
	// run gives each connection's answer to q: its row and its error's
	// message.
	run := func(q string) (rows [][]any) {
		for _, c := range []*Conn{ours, before} {
			row, e := c.QueryRow(q)
			var msg string
			if e != nil {
				var se *Error
				if errors.As(e, &se) {
					msg = se.Msg
				} else {
					msg = e.Error()
				}
			}
			rows = append(rows, append(row, msg))
		}
		return rows
	}
	for _, seed := range [][2]uint64{{1, 2}, {0, 0}, {^uint64(0), 12345}, {42, 42 ^ 0x9e3779b97f4a7c15}} {
		ours.SeedRandom(seed[0], seed[1])
		rng = rand.New(rand.NewPCG(seed[0], seed[1]))
		for _, q := range queries {
			rows := run(q)
			if !reflect.DeepEqual(rows[0], rows[1]) {
				t.Fatalf("seed %v, %s: %#v, before %#v", seed, q, rows[0], rows[1])
			}
		}
		// A step budget: both charge what they make, and stop at the same
		// call with the same error.
		for _, c := range []*Conn{ours, before} {
			c.SetStepBudget(3000)
		}
		for i := range 4 {
			rows := run("SELECT length(randomblob(4000)), random()")
			if !reflect.DeepEqual(rows[0], rows[1]) {
				t.Fatalf("seed %v, budgeted call %d: %#v, before %#v", seed, i, rows[0], rows[1])
			}
			if ours.BudgetSpent() != before.BudgetSpent() || ours.StepBudgetLeft() != before.StepBudgetLeft() {
				t.Fatalf("budgeted call %d: spent %v, left %d; before %v, %d", i, ours.BudgetSpent(), ours.StepBudgetLeft(), before.BudgetSpent(), before.StepBudgetLeft())
			}
		}
		if !ours.BudgetSpent() {
			t.Fatal("16,000 bytes made within a budget of 3,000 steps (12,000 bytes)")
		}
		for _, c := range []*Conn{ours, before} {
			c.SetStepBudget(0)
		}
	}
	// A connection no one seeded starts at rand.NewPCG(0, 0)'s state (its
	// owner seeds it: see the store's readers).
	other, err := Open(filepath.Join(t.TempDir(), "other.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	row, err := other.QueryRow("SELECT random()")
	if want := int64(rand.NewPCG(0, 0).Uint64()); err != nil || row[0] != want {
		t.Fatalf("an unseeded connection's first random() is %v (%v), not rand.NewPCG(0, 0)'s %d", row, err, want)
	}
}
