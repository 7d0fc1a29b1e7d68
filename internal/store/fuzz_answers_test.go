package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/faults"

	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
)

// The answer-correctness fuzzer: random queries, interleaved with random
// schema changes and writes, are answered by the leader and by a replica
// through their pools of cached read connections, and by each one's
// writer for a write that returns rows; every answer must equal what a
// fresh SQLite connection on a copy of the same database returns: the
// same column names in the same order, the same declared types, the same
// values with the same types.
//
// A short run is part of go test. The long run:
//
//	DDB_ANSWERS_LONG=10m go test ./internal/store -run TestAnswerFuzz -v -timeout 0

func TestAnswerFuzz(t *testing.T) {
	long, _ := time.ParseDuration(os.Getenv("DDB_ANSWERS_LONG"))
	seed := firstSeed()
	if long == 0 {
		for i := uint64(0); i < 2; i++ {
			if r := runAnswers(t, seed+i, 300); r.mismatch != "" {
				t.Fatalf("seed %d: %s", seed+i, r.mismatch)
			}
		}
		return
	}
	deadline := time.Now().Add(long)
	var runs, queries int
	for ; time.Now().Before(deadline); seed++ {
		r := runAnswers(t, seed, 1500)
		runs++
		queries += r.compared
		if r.mismatch != "" {
			t.Fatalf("seed %d: %s", seed, r.mismatch)
		}
		t.Logf("seed %d: %d answers compared, %d schema changes: all equal", seed, r.compared, r.schema)
	}
	t.Logf("%d runs, %d answers compared, 0 mismatches", runs, queries)
}

type answersRun struct {
	compared, schema int
	mismatch         string
}

// TestAnswerFuzzRegressions replays the runs that once found a mismatch,
// and shows each fails again with its defect brought back.
func TestAnswerFuzzRegressions(t *testing.T) {
	for _, c := range []struct {
		seed  uint64
		steps int
		what  string
		bug   string
	}{
		{300006, 1500, "a read connection planned with the statistics it loaded before an ANALYZE, and a join ordered by a column named rowid returned other rows than a fresh connection", "stale-reader-stats"},
	} {
		if r := runAnswers(t, c.seed, c.steps); r.mismatch != "" {
			t.Errorf("seed %d (once: %s): %s", c.seed, c.what, r.mismatch)
		}
		if !faults.Enabled {
			continue // the defect that shows the case can fail: -tags ddb_faults
		}
		// With the defect, whether the mismatch shows depends on timing
		// this test does not control (seen in CI: it did not show in about
		// one run in five): the case must show in one of four runs.
		shown := false
		for try := 0; try < 4 && !shown; try++ {
			shown = runAnswers(t, c.seed, c.steps, c.bug).mismatch != ""
		}
		if !shown {
			t.Errorf("seed %d with %s: no mismatch in four runs; the case no longer reproduces %s", c.seed, c.bug, c.what)
		}
	}
}

func runAnswers(t *testing.T, seed uint64, steps int, bug ...string) (r answersRun) {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, seed^0xfeed))
	seeds := rand.New(rand.NewPCG(seed, 11))
	open := func(name string) *Store {
		o := Options{Path: filepath.Join(dir, name), Synchronous: "OFF", ReadConns: 3, Seeds: func() int64 { return int64(seeds.Uint64()) }}
		if len(bug) > 0 {
			o.InjectBug = bug[0]
		}
		s, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	leader, replica := open("leader.db"), open("replica.db")
	defer leader.Close()
	defer replica.Close()
	g := newGrammar(rng)
	clock := time.Date(2031, 3, 30, 12, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	var history []string
	sync := func() {
		es, err := leader.LogRange(context.Background(), replica.Applied()+1, 1<<20, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := replica.Apply(es); err != nil {
			t.Fatal(err)
		}
	}
	for step := 0; step < steps && r.mismatch == ""; step++ {
		clock = clock.Add(time.Second)
		switch x := rng.IntN(100); {
		case x < 30:
			sqls := g.request()
			if len(sqls) == 1 && !strings.HasPrefix(sqls[0], "INSERT") && !strings.HasPrefix(sqls[0], "UPDATE") && !strings.HasPrefix(sqls[0], "DELETE") && !strings.HasPrefix(sqls[0], "WITH") && !strings.HasPrefix(sqls[0], "REPLACE") {
				r.schema++
			}
			history = append(history, strings.Join(sqls, "; "))
			if o := leader.CommitBatch([]*Request{{Stmts: stmts(sqls...), AllowSchema: true}}, now); o[0].Err == nil {
				g.commit(history[len(history)-1])
			}
			sync()
		case x < 40:
			// A write that returns rows, on the leader's writer, against
			// the same write on a fresh connection to a copy.
			t0 := g.table()
			if t0 == nil || len(t0.cols) == 0 {
				continue
			}
			q := fmt.Sprintf("UPDATE %s SET %s = %s WHERE rowid %% 2 = 0 RETURNING *, typeof(%s)", t0.name, t0.cols[0], t0.cols[0], t0.cols[0])
			if !t0.rowid {
				q = fmt.Sprintf("UPDATE %s SET %s = %s RETURNING *", t0.name, t0.cols[len(t0.cols)-1], t0.cols[len(t0.cols)-1])
			}
			want, werr := oracle(t, leader, dir, q)
			o := leader.CommitBatch([]*Request{{Stmts: stmts(q), Collect: true}}, now)
			r.compared++
			if msg := compareAnswer(q, o[0].Results, o[0].Err, want, werr); msg != "" {
				r.mismatch = msg + "\nlast statements:\n" + tail(history)
			}
			sync()
		default:
			q := answerQuery(g)
			for name, s := range map[string]*Store{"leader": leader, "replica": replica} {
				want, werr := oracle(t, s, dir, q)
				got, err := s.Read(context.Background(), stmts(q), Limits{})
				r.compared++
				if msg := compareAnswer(q, got, err, want, werr); msg != "" {
					r.mismatch = name + ": " + msg + "\nlast statements:\n" + tail(history)
					break
				}
			}
		}
	}
	return r
}

// oracle copies the store's database to a new file and runs q there on a
// fresh connection that has never seen a statement before.
func oracle(t *testing.T, s *Store, dir, q string) ([]Result, error) {
	t.Helper()
	path := filepath.Join(dir, "oracle.db")
	os.Remove(path)
	src, err := sqlite.Open(s.Path(), url.Values{"mode": {"ro"}})
	if err != nil {
		t.Fatal(err)
	}
	dst, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Backup(src); err != nil {
		t.Fatal(err)
	}
	src.Close()
	dst.Close()
	c, err := sqlite.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Prepare(q)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var res Result
	for first := true; ; first = false {
		more, err := st.Step()
		if err != nil {
			return nil, err
		}
		if first {
			res.Columns, res.Types = st.Columns()
			res.HasRows = len(res.Columns) > 0
			res.Rows = [][]any{}
		}
		if !more {
			break
		}
		res.Rows = append(res.Rows, st.Row(nil))
	}
	return []Result{res}, nil
}

func compareAnswer(q string, got []Result, err error, want []Result, werr error) string {
	if (err != nil) != (werr != nil) {
		if err != nil && werr == nil && strings.Contains(err.Error(), "not allowed") {
			return "" // refused by the authorizer: nothing to compare
		}
		return fmt.Sprintf("%s\n  error %v, fresh SQLite's error %v", q, err, werr)
	}
	if err != nil {
		return ""
	}
	g, w := got[0], want[0]
	if !reflect.DeepEqual(g.Columns, w.Columns) || !reflect.DeepEqual(g.Types, w.Types) {
		return fmt.Sprintf("%s\n  columns %q types %q, fresh SQLite's %q %q", q, g.Columns, g.Types, w.Columns, w.Types)
	}
	if len(g.Rows) != len(w.Rows) {
		return fmt.Sprintf("%s\n  %d rows, fresh SQLite's %d", q, len(g.Rows), len(w.Rows))
	}
	for i := range g.Rows {
		if !sameRow(g.Rows[i], w.Rows[i]) {
			return fmt.Sprintf("%s\n  row %d: %s, fresh SQLite's %s", q, i, encodeRowForDiff(g.Rows[i]), encodeRowForDiff(w.Rows[i]))
		}
	}
	return ""
}

func sameRow(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if reflect.TypeOf(a[i]) != reflect.TypeOf(b[i]) || !reflect.DeepEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}

func encodeRowForDiff(row []any) string {
	parts := make([]string, len(row))
	for i, v := range row {
		b, _ := rlog.EncodeValue(v)
		parts[i] = string(b)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// answerQuery is a random read over the grammar's current tables: star
// and named columns, expressions, aggregates, joins, subqueries, views,
// CTEs, ordering (always total, so the rows' order is defined).
func answerQuery(g *grammar) string {
	t := g.table()
	if t == nil {
		return "SELECT 1 AS one, 'x' AS x, NULL AS n, 2.5 AS r, x'00' AS b"
	}
	cols := append([]string{"rowid"}, t.cols...)
	if !t.rowid {
		cols = t.cols
	}
	if len(cols) == 0 {
		return fmt.Sprintf("SELECT count(*) FROM %s", t.name)
	}
	order := "ORDER BY " + strings.Join(cols, ", ")
	pick := func() string { return g.pick(cols...) }
	switch g.rng.IntN(12) {
	case 0, 1:
		return fmt.Sprintf("SELECT * FROM %s %s", t.name, order)
	case 2:
		return fmt.Sprintf("SELECT %s, %s AS again, typeof(%s) FROM %s %s", pick(), pick(), pick(), t.name, order)
	case 3:
		return fmt.Sprintf("SELECT count(*), count(%s), max(%s), min(%s), group_concat(quote(%s)) FROM %s", pick(), pick(), pick(), pick(), t.name)
	case 4:
		o := g.table()
		return fmt.Sprintf("SELECT a.*, b.* FROM %s AS a JOIN %s AS b ON a.rowid = b.rowid ORDER BY a.rowid, b.rowid LIMIT 20", t.name, o.name)
	case 5:
		return fmt.Sprintf("SELECT *, (SELECT count(*) FROM %s) AS n FROM %s %s LIMIT 10", t.name, t.name, order)
	case 6:
		if len(g.views) > 0 {
			return fmt.Sprintf("SELECT * FROM %s ORDER BY 1, 2", g.pick(g.views...))
		}
		return fmt.Sprintf("SELECT * FROM %s %s", t.name, order)
	case 7:
		return fmt.Sprintf("WITH c AS (SELECT * FROM %s) SELECT * FROM c ORDER BY 1", t.name)
	case 8:
		return fmt.Sprintf("SELECT %s, CAST(%s AS TEXT) AS t, %s || '' AS s, json_quote(%s) FROM %s %s", pick(), pick(), pick(), pick(), t.name, order)
	case 9:
		return fmt.Sprintf("SELECT * FROM pragma_table_info('%s')", t.name)
	case 10:
		return fmt.Sprintf("SELECT %s FROM %s GROUP BY 1 ORDER BY 1", pick(), t.name)
	default:
		return fmt.Sprintf("SELECT * FROM %s WHERE %s IS NOT NULL %s", t.name, pick(), order)
	}
}
