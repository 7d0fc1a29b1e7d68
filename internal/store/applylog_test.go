package store

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

func logEntries(t testing.TB, ws ...rlog.Write) []rlog.Entry {
	t.Helper()
	var out []rlog.Entry
	for i, w := range ws {
		b, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rlog.Entry{Index: uint64(i + 1), TimeMs: time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli() + int64(i), Seed: int64(i*7919 + 1), Body: b})
	}
	return out
}

func describe(os []Outcome) []string {
	var out []string
	for _, o := range os {
		if o.Err != nil {
			out = append(out, fmt.Sprintf("%d error: %v", o.Index, o.Err))
		} else {
			out = append(out, fmt.Sprintf("%d ok: %v", o.Index, o.Results))
		}
	}
	return out
}

// Under consensus every node applies entries nothing ran before: a
// write's failure is its outcome, the same on every node, in every
// grouping of entries into transactions.
func TestApplyLogFailuresAreOutcomesTheSameEverywhere(t *testing.T) {
	w := func(sql string) rlog.Write { return rlog.Write{Stmts: stmts(sql)} }
	entries := logEntries(t,
		rlog.Write{Stmts: stmts("CREATE TABLE t (id INTEGER PRIMARY KEY, v UNIQUE, at DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()))"), AllowSchema: true},
		w("INSERT INTO t (v) VALUES ('a')"),
		w("INSERT INTO t (v) VALUES ('a')"),             // constraint: fails alone
		w("INSERT OR ROLLBACK INTO t (v) VALUES ('a')"), // rolls back the whole transaction
		w("CREATE TABLE u (x)"),                         // a schema change without the leader's consent
		w("SELECT * FROM _ddb_log"),                     // forbidden
		rlog.Write{Stmts: stmts("INSERT INTO t (v) VALUES ('b'), ('c'), ('d') RETURNING id"), Collect: true, MaxRows: 2}, // over its limit
		rlog.Write{Stmts: stmts("INSERT INTO t (v) VALUES ('e') RETURNING id, r"), Collect: true, RequestID: "k"},
		rlog.Write{Stmts: stmts("INSERT INTO t (v) VALUES ('e') RETURNING id, r"), Collect: true, RequestID: "k"}, // a retry
		w("INSERT INTO t (v) VALUES (last_insert_rowid() || '-' || changes())"),
	)
	all, each := openTemp(t, "all.db"), openTemp(t, "each.db")
	got, err := all.ApplyLog(entries)
	if err != nil {
		t.Fatal(err)
	}
	var one []Outcome
	for _, e := range entries {
		o, err := each.ApplyLog([]rlog.Entry{e})
		if err != nil {
			t.Fatal(err)
		}
		one = append(one, o...)
	}
	if a, b := describe(got), describe(one); !reflect.DeepEqual(a, b) {
		t.Fatalf("outcomes differ by grouping:\n%v\n%v", a, b)
	}
	sameContent(t, all, each)
	wantErr := map[uint64]bool{3: true, 4: true, 5: true, 6: true, 7: true}
	for _, o := range got {
		if (o.Err != nil) != wantErr[o.Index] {
			t.Errorf("entry %d: %v", o.Index, o.Err)
		}
	}
	if !got[8].Duplicate || !reflect.DeepEqual(got[8].Results, got[7].Results) {
		t.Fatalf("the retry of request k: %+v, first %+v", got[8], got[7])
	}
	if rows := dump(t, all, "t"); len(rows) != 3 {
		t.Fatalf("t holds %v, want the rows of entries 2, 8 and 10", rows)
	}
	if all.Applied() != uint64(len(entries)) {
		t.Fatalf("applied %d", all.Applied())
	}
}
