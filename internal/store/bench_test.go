package store

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/bench"
	"github.com/ddbgo/ddb/internal/rlog"
)

func BenchmarkClassify(b *testing.B) {
	s, _ := Open(Options{Path: b.TempDir() + "/b.db"})
	defer s.Close()
	s.CommitBatch([]*Request{{Stmts: stmts("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT, email TEXT)"), AllowSchema: true}}, time.Now)
	q := []rlog.Statement{{SQL: "INSERT INTO users (username, email) VALUES (?, ?)"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Classify(context.Background(), q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommitBatch16 is one group commit of 16 single-row inserts
// (one fsync), as the master's writer runs it under 16 concurrent clients.
func BenchmarkCommitBatch16(b *testing.B) {
	s, _ := Open(Options{Path: b.TempDir() + "/b.db"})
	defer s.Close()
	s.CommitBatch([]*Request{{Stmts: stmts("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"), AllowSchema: true}}, time.Now)
	reqs := make([]*Request, 16)
	for i := range reqs {
		reqs[i] = &Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO t (v) VALUES (?)", Pos: []any{fmt.Sprint(i)}}}}
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, o := range s.CommitBatch(reqs, time.Now) {
			if o.Err != nil {
				b.Fatal(o.Err)
			}
		}
	}
	b.ReportMetric(float64(b.N*16)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkApplyBatch1000 is a slave applying one shipped batch of 1000 entries.
func BenchmarkApplyBatch1000(b *testing.B) {
	m, _ := Open(Options{Path: b.TempDir() + "/m.db"})
	defer m.Close()
	m.CommitBatch([]*Request{{Stmts: stmts("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, at TEXT DEFAULT CURRENT_TIMESTAMP)"), AllowSchema: true}}, time.Now)
	var reqs []*Request
	for i := 0; i < 1000; i++ {
		reqs = append(reqs, &Request{Stmts: []rlog.Statement{{SQL: "INSERT INTO t (v) VALUES (?)", Pos: []any{fmt.Sprint(i)}}}})
	}
	m.CommitBatch(reqs, time.Now)
	entries, _ := m.LogRange(context.Background(), 1, 2000, 0)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		s, _ := Open(Options{Path: fmt.Sprintf("%s/s%d.db", b.TempDir(), b.N)})
		b.StartTimer()
		if n, err := s.Apply(entries); err != nil || n != 1001 {
			b.Fatal(n, err)
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*1001)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkLoadOf20000Statements is one write whose text holds 20,000
// statements (a dump being loaded): linear in the text's length, where
// re-copying or re-hashing the rest of the text per statement was not.
func BenchmarkLoadOf20000Statements(b *testing.B) {
	var text strings.Builder
	text.WriteString("CREATE TABLE big (id INTEGER PRIMARY KEY, s TEXT);\n")
	for i := 0; i < 20000; i++ {
		fmt.Fprintf(&text, "INSERT INTO big VALUES (%d, 'row %d padding padding padding');\n", i, i)
	}
	for b.Loop() {
		s := openTemp(b, "l.db")
		out, err := s.ApplyLog(logEntries(b, rlog.Write{Stmts: stmts(text.String()), AllowSchema: true, Replace: true}))
		if err != nil || out[0].Err != nil {
			b.Fatal(err, out)
		}
		s.Close()
	}
}

// BenchmarkSaveRaftOne is one consensus step that appends one entry and
// the hard state to the Raft log (one fsync).
func BenchmarkSaveRaftOne(b *testing.B) {
	s, _ := Open(Options{Path: b.TempDir() + "/b.db"})
	defer s.Close()
	data := make([]byte, 100)
	i := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		i++
		if err := s.SaveRaft(RaftSave{Entries: []RaftEntry{{Index: i, Term: 1, Data: data}}, HardState: []byte("hardstate")}); err != nil {
			b.Fatal(err)
		}
	}
}

// stepOfN returns a store with a table and a function that gives step i's
// n single-row inserts, as log entries to apply and as Raft entries to
// append.
func stepOfN(b *testing.B, n int) (*Store, func(i int) ([]rlog.Entry, []RaftEntry)) {
	s := openTemp(b, "step.db")
	s.CommitBatch([]*Request{{Stmts: stmts("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"), AllowSchema: true}}, time.Now)
	base := s.Applied()
	w := rlog.Write{Stmts: []rlog.Statement{{SQL: "INSERT INTO t (v) VALUES (?)", Pos: []any{"some value of a row"}}}}
	body, err := w.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return s, func(i int) ([]rlog.Entry, []RaftEntry) {
		es := make([]rlog.Entry, n)
		rs := make([]RaftEntry, n)
		for j := range es {
			idx := base + uint64(i*n+j) + 1
			es[j] = rlog.Entry{Index: idx, Term: 1, TimeMs: time.Now().UnixMilli(), Seed: int64(idx), Body: body}
			rs[j] = RaftEntry{Index: idx, Term: 1, Data: body}
		}
		return es, rs
	}
}

// BenchmarkRaftStep is one consensus step of a busy node, which applies n
// committed inserts and appends the next n entries to the log's file, in
// the ways a step can write them: "two" (the apply, unsynced, and the
// append, synced) and "lazy" (the apply and an unsynced hard state: a
// step that appends nothing). It
// reports the CPU time per step, the kernel's included: an fsync costs
// CPU, not only time.
func BenchmarkRaftStep(b *testing.B) {
	for _, n := range []int{1, 20} {
		for _, way := range []string{"two"} {
			b.Run(fmt.Sprintf("%d-%s", n, way), func(b *testing.B) {
				s, next := stepOfN(b, n)
				i := 0
				c0 := bench.CPUTime(os.Getpid())
				for b.Loop() {
					es, _ := next(i)
					_, rs := next(i + 1)
					i++
					var err error
					switch way {
					case "two":
						if _, err = s.ApplyLog(es); err == nil {
							err = s.SaveRaft(RaftSave{Entries: rs, HardState: []byte("hardstate")})
						}
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(bench.CPUTime(os.Getpid())-c0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/step")
			})
		}
	}
}

// BenchmarkPointRead is a primary-key read under a deadline, as the API
// runs every read, from 4 goroutines at once. (Running each read on a
// goroutine of its own, so that it could be answered at its deadline
// inside one long instruction, cost 1-2 µs here and 15-20% of the HTTP
// read throughput: reads run on the caller's goroutine.)
func BenchmarkPointRead(b *testing.B) {
	s := openTemp(b, "r.db")
	out, err := s.ApplyLog(logEntries(b, rlog.Write{Stmts: stmts("CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO p SELECT value, 'v' FROM (WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < 1000) SELECT value FROM n)"), AllowSchema: true}))
	if err != nil || out[0].Err != nil {
		b.Fatal(err, out)
	}
	b.SetParallelism(2)
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := s.Read(ctx, []rlog.Statement{{SQL: "SELECT v FROM p WHERE id = ?", Pos: []any{int64(i%1000 + 1)}}}, Limits{}); err != nil {
				b.Fatal(err)
			}
			cancel()
			i++
		}
	})
}

// A write that fills 20,000 rows with 1,000 bytes each, made by
// randomblob() (drawn from the entry's seed) and by zeroblob(): what
// making the bytes costs beyond storing them.
func BenchmarkFill(b *testing.B) {
	for _, fn := range []string{"randomblob", "zeroblob"} {
		b.Run(fn, func(b *testing.B) {
			s := openTemp(b, "x.db")
			ws := []rlog.Write{{AllowSchema: true, Stmts: stmts("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)")}}
			for range b.N {
				ws = append(ws, rlog.Write{Stmts: stmts(fmt.Sprintf("WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x < 20000) INSERT INTO big (b) SELECT %s(1000) FROM s", fn))})
			}
			es := logEntries(b, ws...)
			if _, err := s.ApplyLog(es[:1]); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				out, err := s.ApplyLog(es[1+i : 2+i])
				if err != nil || out[0].Err != nil {
					b.Fatal(err, out[0].Err)
				}
			}
		})
	}
}
