package replication

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/store"
)

// Load sends a planned load (store.PlanLoad) through the log: each chunk
// as an entry of its own, which every node stages, then the commit, which
// runs them all as one write: all of the load or nothing, at the commit's
// index, which the returned outcome carries. replace makes the commit
// replace the user database even for SQL text (a restore).
//
// Every entry carries a request id made from the load's (the client's
// requestID, or a new one), so an entry sent again after an unknown
// outcome or a change of leader applies once; a client that sends the
// whole load again with the same requestID gets the first load's answer.
// An entry is sent again while its outcome is unknown, until ctx ends.
// A load that fails before its commit was sent has its staged chunks
// dropped; after, the commit's own failure drops them. op, if not nil,
// counts the chunks through the log (and the commit).
func Load(ctx context.Context, r Replicator, plan *store.LoadPlan, requestID string, replace bool, ack cluster.Ack, lim store.Limits, op *progress.Op) (store.Outcome, error) {
	op.SetTotal(int64(plan.Chunks()) + 1)
	id := loadID(requestID)
	commitID := requestID
	if commitID == "" {
		commitID = "load:" + id + ":commit"
	}
	for seq := range plan.Chunks() {
		sql, err := plan.Chunk(seq)
		if err != nil {
			return store.Outcome{}, err
		}
		req := &store.Request{Stmts: []rlog.Statement{{SQL: sql}}, AllowSchema: true, RequestID: fmt.Sprintf("load:%s:%d", id, seq),
			Load: &rlog.LoadStep{ID: id, Op: rlog.LoadStage, Seq: int64(seq)}}
		if _, err := writeUntilKnown(ctx, r, req, ack); err != nil {
			abort(r, id, ack)
			var ri *store.RequestIDReusedError
			if errors.As(err, &ri) {
				// The client's key, not the chunk's made from it.
				err = &store.RequestIDReusedError{ID: requestID, Index: ri.Index}
			}
			return store.Outcome{}, err
		}
		op.Add(1)
	}
	commit := &store.Request{AllowSchema: true, Replace: replace || plan.Replace, RequestID: commitID, Limits: store.Limits{MaxSteps: lim.MaxSteps},
		Load: &rlog.LoadStep{ID: id, Op: rlog.LoadCommit, Seq: int64(plan.Chunks())}}
	out, err := writeUntilKnown(ctx, r, commit, ack)
	if err == nil {
		op.Add(1)
	}
	return out, err
}

// LoadTimeout is how long a load of this much SQL text may take: ten
// minutes, and a minute more per 100 MB.
func LoadTimeout(bytes int64) time.Duration {
	return 10*time.Minute + time.Duration(bytes/(100<<20))*time.Minute
}

// loadID names a load: from the client's request id, so that the same
// load sent again is the same load, or new.
func loadID(requestID string) string {
	if requestID != "" {
		h := sha256.Sum256([]byte(requestID))
		return hex.EncodeToString(h[:12])
	}
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeUntilKnown writes req, again (with its request id) as long as its
// outcome is unknown, until ctx ends. A node that cannot reach a leader
// (each attempt waits for one) or is no member is answered after three
// attempts in a row.
func writeUntilKnown(ctx context.Context, r Replicator, req *store.Request, ack cluster.Ack) (store.Outcome, error) {
	pause := 50 * time.Millisecond
	unavailable := 0
	for {
		out, err := r.Write(ctx, req, ack)
		if err == nil {
			err = out.Err
		}
		if errors.Is(err, ErrUnavailable) {
			unavailable++
		} else {
			unavailable = 0
		}
		if err == nil || !OutcomeUnknown(err) || ctx.Err() != nil || unavailable >= 3 {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, err
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// OutcomeUnknown: the write may or may not be in the log, or is but was
// not applied in time, or no leader could take it; sent again with its
// request id, it applies once.
func OutcomeUnknown(err error) bool {
	var uo *UnknownOutcomeError
	var at *AckTimeoutError
	var wt *WaitTimeoutError
	return errors.As(err, &uo) || errors.As(err, &at) || errors.As(err, &wt) || errors.Is(err, ErrUnavailable)
}

// abort drops a load's staged chunks, as far as it can in a few seconds
// (they go anyway with the next load's first chunk).
func abort(r Replicator, id string, ack cluster.Ack) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	writeUntilKnown(ctx, r, &store.Request{RequestID: "load:" + id + ":abort", Load: &rlog.LoadStep{ID: id, Op: rlog.LoadAbort}}, ack)
}
