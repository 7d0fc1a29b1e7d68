package fault

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/verify"
)

const (
	bankAccounts = verify.BankAccounts
	bankTotal    = verify.BankTotal
	regKeys      = verify.RegKeys
)

// Outcomes of a write, as a client knows them.
const (
	outOK      = verify.OK      // answered 200: must be everywhere
	outFailed  = verify.Failed  // refused before anything happened (4xx, or 503 from a node that never sent it)
	outUnknown = verify.Unknown // timeout, connection lost, 504: may or may not be there
)

func outcome(status int, err error) verify.Outcome {
	switch {
	case err != nil:
		return outUnknown
	case status == 200:
		return outOK
	case status >= 400 && status < 500:
		return outFailed
	}
	return outUnknown
}

// appendClient inserts rows with ids it chooses, at every node in turn.
func (r *run) appendClient(cl int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		id := int64(cl)*1_000_000_000 + int64(i)
		st, _, err := r.post((cl+i)%3, map[string]any{"command": "exec", "query": verify.AppendSQL, "params": []any{id, cl, i}})
		r.mu.Lock()
		r.appended[id] = outcome(st, err)
		r.mu.Unlock()
		r.count("append")
		if err != nil || st != 200 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (r *run) checkAppend(dbs []*inspect.Database) {
	r.mu.Lock()
	found := verify.Appends(dbs, r.appended)
	r.anomalies = append(r.anomalies, found...)
	r.mu.Unlock()
}

// bankClient moves money between accounts in one multi-statement
// transaction, and reads the total (local or strong, at any node), which
// must always be bankTotal.
func (r *run) bankClient(cl int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.o.Seed, uint64(cl)+100))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		node := rng.IntN(3)
		if i%2 == 0 {
			a, b := rng.IntN(bankAccounts), rng.IntN(bankAccounts)
			amt := 1 + rng.IntN(50)
			st, _, err := r.post(node, map[string]any{"command": "exec", "queries": []map[string]any{
				{"query": verify.BankTakeSQL, "params": []any{amt, a}},
				{"query": verify.BankGiveSQL, "params": []any{amt, b}},
			}})
			if err != nil || st != 200 {
				time.Sleep(20 * time.Millisecond)
			}
		} else {
			consistency := "local"
			if rng.IntN(2) == 0 {
				consistency = "strong"
			}
			st, body, err := r.post(node, map[string]any{"command": "query", "query": verify.BankTotalSQL, "consistency": consistency})
			if err == nil && st == 200 {
				var rows []struct{ Total, N int64 }
				if json.Unmarshal(body, &rows) != nil || len(rows) != 1 || rows[0].Total != bankTotal || rows[0].N != bankAccounts {
					r.anomaly("bank: %s read on node %d saw %s (want total %d over %d accounts)", consistency, node, body, bankTotal, bankAccounts)
				}
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
		r.count("bank")
	}
}

func (r *run) checkBank(dbs []*inspect.Database) {
	for _, a := range verify.Bank(dbs) {
		r.anomaly("%s", a)
	}
}

type (
	regInput  = verify.RegInput
	regOutput = verify.RegOutput
)

var registerModel = verify.RegisterModel

// registerClient writes unique values to a few keys and reads them with
// consistency=strong, at every node, recording the history.
func (r *run) registerClient(cl int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.o.Seed, uint64(cl)+200))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		node := rng.IntN(3)
		key := rng.IntN(regKeys)
		call := time.Since(r.start).Nanoseconds()
		if rng.IntN(2) == 0 {
			v := int64(cl+1)*1_000_000 + int64(i)
			st, _, index, err := r.postIndex(node, map[string]any{"command": "exec", "query": verify.RegWriteSQL, "params": []any{key, v}})
			ret := time.Since(r.start).Nanoseconds()
			o := outcome(st, err)
			if o != outFailed {
				op := porcupine.Operation{ClientId: cl, Input: regInput{Write: true, Key: key, Value: v}, Call: call, Output: regOutput{Node: node, Index: index}, Return: ret}
				if o == outUnknown {
					// It may take effect at any time from now on.
					op.Output, op.Return = regOutput{Unknown: true, Node: node}, math.MaxInt64/2
				}
				r.mu.Lock()
				r.regOps = append(r.regOps, op)
				r.mu.Unlock()
			}
			if o != outOK {
				time.Sleep(20 * time.Millisecond)
			}
		} else {
			st, body, index, err := r.postIndex(node, map[string]any{"command": "query", "query": verify.RegReadSQL, "params": []any{key}, "consistency": "strong"})
			ret := time.Since(r.start).Nanoseconds()
			if err == nil && st == 200 {
				var rows []struct{ V int64 }
				if json.Unmarshal(body, &rows) != nil {
					r.anomaly("register: unreadable answer %s", body)
					continue
				}
				var v int64
				if len(rows) == 1 {
					v = rows[0].V
				}
				r.mu.Lock()
				r.regOps = append(r.regOps, porcupine.Operation{ClientId: cl, Input: regInput{Key: key}, Call: call, Output: regOutput{Value: v, Node: node, Index: index}, Return: ret})
				r.mu.Unlock()
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
		r.count("register")
	}
}

func (r *run) checkRegister() {
	r.mu.Lock()
	ops := append([]porcupine.Operation(nil), r.regOps...)
	r.mu.Unlock()
	found, did, info := verify.Register(ops, 60*time.Second)
	for _, a := range found {
		r.anomaly("%s", a)
	}
	if info != nil {
		r.mu.Lock()
		r.regInfo = info
		r.mu.Unlock()
	}
	if did != "" {
		r.logf("%s", did)
	}
}

// determinismClient writes rows whose values come from random(),
// randomblob(), CURRENT_TIMESTAMP defaults and a trigger using 'now', at
// every node; the replicas must still be identical at the end.
func (r *run) determinismClient(cl int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		st, _, err := r.post((cl+i)%3, map[string]any{"command": "exec", "query": verify.DetSQL})
		if err != nil || st != 200 {
			time.Sleep(20 * time.Millisecond)
		}
		r.count("determinism")
	}
}

// heavyOp is one write of the heavy workload: the rows it inserts when it
// applies (all of them or none).
type heavyOp struct {
	rows    int
	outcome verify.Outcome
}

// heavyClient sends the writes that cost every node the most, through
// every node in turn: big RETURNING results near and over
// -max-result-bytes (refused whole, on every node), writes near and past
// their step budget, and an instr() over long strings (seconds in one
// instruction before it was made linear). Each inserts rows (client, n, k)
// that checkHeavy finds all or none of.
func (r *run) heavyClient(cl int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.o.Seed, uint64(cl)))
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		var body map[string]any
		rows := 1
		switch n % 3 {
		case 0: // 4 to 16 rows of 200 KB, returned: over the 2 MB limit from 10 on
			rows = 4 + rng.IntN(13)
			body = map[string]any{"command": "query", "query": "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < ?) INSERT INTO heavy (client, n, k, b) SELECT ?, ?, x, zeroblob(200000) FROM s RETURNING k, length(b)",
				"params": []any{rows, cl, n}}
		case 1: // about 60% to 130% of the 500 ms step budget (10 instructions a row)
			steps := 3_000_000 + rng.IntN(3_500_000)
			body = map[string]any{"command": "exec", "query": "INSERT INTO heavy (client, n, k) SELECT ?, ?, count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT x FROM c)",
				"params": []any{cl, n, steps}}
		case 2:
			body = map[string]any{"command": "exec", "query": "INSERT INTO heavy (client, n, k) VALUES (?, ?, instr(printf('%.*c', 1400000, 'a'), printf('%.*c', 700000, 'a') || 'b'))",
				"params": []any{cl, n}}
		}
		st, _, err := r.post((cl+n)%3, body)
		r.mu.Lock()
		r.heavy[[2]int{cl, n}] = heavyOp{rows: rows, outcome: outcome(st, err)}
		r.mu.Unlock()
		r.count("heavy")
		time.Sleep(100 * time.Millisecond)
	}
}

// checkHeavy: every heavy write is on every node whole if it was
// acknowledged, absent if it was refused, whole or absent if its outcome
// is unknown; and no node holds rows of a write never sent.
func (r *run) checkHeavy(dbs []*inspect.Database) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for node, d := range dbs {
		t := d.Table("heavy")
		if t == nil {
			r.anomalies = append(r.anomalies, fmt.Sprintf("heavy: table missing on node %d", node))
			continue
		}
		have := map[[2]int]int{}
		for _, row := range t.Rows {
			have[[2]int{int(row[1].(int64)), int(row[2].(int64))}]++
		}
		for key, n := range have {
			op, sent := r.heavy[key]
			if !sent {
				r.anomalies = append(r.anomalies, fmt.Sprintf("heavy: node %d holds %d rows of write %v, never sent", node, n, key))
				continue
			}
			if n != op.rows || op.outcome == outFailed {
				r.anomalies = append(r.anomalies, fmt.Sprintf("heavy: node %d holds %d rows of write %v (%s, %d rows)", node, n, key, op.outcome, op.rows))
			}
		}
		for key, op := range r.heavy {
			if op.outcome == outOK && have[key] == 0 {
				r.anomalies = append(r.anomalies, fmt.Sprintf("heavy: node %d lacks acknowledged write %v", node, key))
			}
		}
	}
}
