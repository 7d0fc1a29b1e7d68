// Package verify holds the workloads' schema and the checkers that judge
// a run: the fault suite's runs of real processes (package fault) and the
// simulator's (package sim) are judged by the same code. Each checker
// returns what it found wrong, one line each, prefixed with its name and a
// colon ("append: ...").
package verify

import (
	"fmt"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ddbgo/ddb/internal/inspect"
)

// The workloads' sizes.
const (
	BankAccounts = 8
	BankTotal    = 8000
	RegKeys      = 4
)

// Schema creates the workloads' tables.
var Schema = []string{
	"CREATE TABLE append_log (id INTEGER PRIMARY KEY, client INTEGER, n INTEGER)",
	"CREATE TABLE bank (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
	"CREATE TABLE reg (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
	"CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
	"CREATE TABLE det (id INTEGER PRIMARY KEY, r INTEGER DEFAULT (random()), b BLOB DEFAULT (randomblob(8)), at TEXT DEFAULT CURRENT_TIMESTAMP, ms TEXT)",
	"CREATE TABLE heavy (id INTEGER PRIMARY KEY, client INTEGER, n INTEGER, k INTEGER, b BLOB)",
	"CREATE TRIGGER det_stamp AFTER INSERT ON det BEGIN UPDATE det SET ms = ms || ' ' || strftime('%H:%M:%f', 'now') WHERE id = new.id; END",
}

// The workloads' statements.
const (
	AppendSQL    = "INSERT INTO append_log (id, client, n) VALUES (?, ?, ?)"
	BankInitSQL  = "INSERT INTO bank VALUES (?, ?)"
	BankTakeSQL  = "UPDATE bank SET balance = balance - ? WHERE id = ?"
	BankGiveSQL  = "UPDATE bank SET balance = balance + ? WHERE id = ?"
	BankTotalSQL = "SELECT sum(balance) AS total, count(*) AS n FROM bank"
	RegWriteSQL  = "INSERT INTO reg (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v"
	RegReadSQL   = "SELECT v FROM reg WHERE k = ?"
	CounterSQL   = "INSERT INTO counter (id, n) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1"
	// DetSQL's row takes its values from the clock and the random
	// generator, in defaults, a trigger and the statement itself: every
	// node must compute the same ones.
	DetSQL = "INSERT INTO det (ms) VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now') || ' ' || random())"
)

// Outcome is a write's outcome as its client knows it.
type Outcome string

// Outcomes of a write.
const (
	OK      Outcome = "ok"      // acknowledged: must be everywhere, once
	Failed  Outcome = "failed"  // refused before anything happened: must be nowhere
	Unknown Outcome = "unknown" // timeout, connection lost: may or may not be there
)

// Record appends a to found unless its checker (the text before its first
// colon) has already reported limit lines there, so that a checker that
// finds thousands leaves room for the others. It reports whether a was
// kept.
func Record(found []string, a string, limit int) ([]string, bool) {
	kind, _, _ := strings.Cut(a, ":")
	n := 0
	for _, b := range found {
		if strings.HasPrefix(b, kind+":") {
			n++
		}
	}
	if n >= limit {
		return found, false
	}
	return append(found, a), true
}

// Replicas compares every node's database: they must be identical.
func Replicas(dbs []*inspect.Database) []string {
	var out []string
	for _, d := range inspect.Compare(dbs, 10) {
		out = append(out, "replicas differ: "+d)
	}
	return out
}

// Appends checks the append workload: every row was sent and not refused,
// and every acknowledged row is on every node.
func Appends(dbs []*inspect.Database, appended map[int64]Outcome) []string {
	var out []string
	for n, d := range dbs {
		t := d.Table("append_log")
		if t == nil {
			out = append(out, fmt.Sprintf("append: table missing on node %d", n))
			continue
		}
		have := map[int64]bool{}
		for _, row := range t.Rows {
			id := row[0].(int64)
			o, sent := appended[id]
			if !sent || o == Failed {
				out = append(out, fmt.Sprintf("append: node %d has row %d, which was never sent or was refused (%q)", n, id, o))
			}
			have[id] = true
		}
		missing := 0
		for id, o := range appended {
			if o == OK && !have[id] {
				if missing < 5 {
					out = append(out, fmt.Sprintf("append: acknowledged row %d is missing on node %d", id, n))
				}
				missing++
			}
		}
		if missing > 5 {
			out = append(out, fmt.Sprintf("append: %d acknowledged rows missing on node %d in all", missing, n))
		}
	}
	return out
}

// Bank checks that every node ends with the bank's total.
func Bank(dbs []*inspect.Database) []string {
	var out []string
	for n, d := range dbs {
		t := d.Table("bank")
		if t == nil {
			out = append(out, fmt.Sprintf("bank: table missing on node %d", n))
			continue
		}
		var sum int64
		for _, row := range t.Rows {
			sum += row[1].(int64)
		}
		if sum != BankTotal || len(t.Rows) != BankAccounts {
			out = append(out, fmt.Sprintf("bank: node %d ends with total %d over %d accounts (want %d over %d)", n, sum, len(t.Rows), BankTotal, BankAccounts))
		}
	}
	return out
}

// BankRead checks one read of the bank's total.
func BankRead(total, accounts int64, where string) []string {
	if total != BankTotal || accounts != BankAccounts {
		return []string{fmt.Sprintf("bank: %s saw total %d over %d accounts (want %d over %d)", where, total, accounts, BankTotal, BankAccounts)}
	}
	return nil
}

// Counter checks exactly-once: increments sent with request ids (and sent
// again with the same id when their outcome was unknown) must each count
// once. The counter ends between the acknowledged increments and those
// plus the unknown ones.
func Counter(dbs []*inspect.Database, acked, unknown int64) []string {
	var out []string
	for n, d := range dbs {
		var v int64
		if t := d.Table("counter"); t != nil && len(t.Rows) == 1 {
			v = t.Rows[0][1].(int64)
		}
		if v < acked || v > acked+unknown {
			out = append(out, fmt.Sprintf("counter: node %d counts %d increments; %d were acknowledged and %d unknown, so it must be %d to %d (each applies once)", n, v, acked, unknown, acked, acked+unknown))
		}
	}
	return out
}

// RegInput is a register operation, for porcupine.
type RegInput struct {
	Write bool  `json:"write"`
	Key   int   `json:"key"`
	Value int64 `json:"value"`
}

// RegOutput is a register operation's answer, for porcupine.
type RegOutput struct {
	Value   int64 `json:"value"`
	Unknown bool  `json:"unknown"`
	// Where the answer came from, for reading a failed history (the
	// model ignores them): the node asked and the index it gave.
	Node  int    `json:"node"`
	Index uint64 `json:"index"`
}

// RegisterModel: each key holds the last value written (0: none).
var RegisterModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		var keys []int
		for _, op := range h {
			k := op.Input.(RegInput).Key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(RegInput), output.(RegOutput)
		if in.Write {
			return true, in.Value
		}
		return out.Value == state.(int64), state
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(RegInput), output.(RegOutput)
		if in.Write {
			return fmt.Sprintf("write(%d, %d) at node %d, index %d, unknown=%v", in.Key, in.Value, out.Node, out.Index, out.Unknown)
		}
		return fmt.Sprintf("read(%d) -> %d at node %d, index %d", in.Key, out.Value, out.Node, out.Index)
	},
}

// Register checks that the history of register operations is
// linearizable. A write whose outcome is unknown must have Return set far
// in the future (it may take effect at any time). It returns what it found
// wrong, what it did (for the log), and porcupine's view of a history
// that is not linearizable.
func Register(ops []porcupine.Operation, timeout time.Duration) (anomalies []string, did string, info *porcupine.LinearizationInfo) {
	res, li := porcupine.CheckOperationsVerbose(RegisterModel, ops, timeout)
	switch res {
	case porcupine.Illegal:
		return []string{fmt.Sprintf("register: the history of %d strong reads and writes is not linearizable", len(ops))}, "", &li
	case porcupine.Unknown:
		return nil, fmt.Sprintf("register: linearizability check timed out on %d operations (inconclusive)", len(ops)), nil
	}
	return nil, fmt.Sprintf("register: %d operations, linearizable", len(ops)), nil
}
