package store

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/ddbgo/ddb/internal/rlog"
)

// Tests that play a leader and its replicas use a stand-in for the
// consensus log: a "leader" numbers each request as the next entry (its
// time from now, a seed of its own) and applies it with ApplyLog, as every
// node does under consensus; the entries are kept, so that replicas apply
// the same ones.

var testLogs sync.Map // database path -> *[]rlog.Entry (a reopened store keeps its log)

// CommitBatch writes requests as the next entries of s's log and applies
// them. A request that fails is an entry that fails, on every node alike.
func (s *Store) CommitBatch(reqs []*Request, now Now) []Outcome {
	next := s.Applied() + 1
	entries := make([]rlog.Entry, len(reqs))
	for i, r := range reqs {
		w := rlog.Write{RequestID: r.RequestID, Stmts: r.Stmts, AllowSchema: r.AllowSchema, Collect: r.Collect,
			MaxRows: r.Limits.MaxRows, MaxBytes: r.Limits.MaxBytes, MaxSteps: r.Limits.MaxSteps, Each: r.Each, Atomic: r.Atomic, Replace: r.Replace,
			SetChanges: r.SetChanges, ChangesKeep: r.ChangesKeep, ChangesDelivered: r.ChangesDelivered}
		body, err := w.Encode()
		if err != nil {
			panic(err)
		}
		entries[i] = rlog.Entry{Index: next + uint64(i), TimeMs: now().UnixMilli(), Seed: randomSeed(), Body: body}
	}
	out, err := s.ApplyLog(entries)
	if err != nil {
		out = make([]Outcome, len(reqs))
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	v, _ := testLogs.LoadOrStore(s.Path(), &[]rlog.Entry{})
	log := v.(*[]rlog.Entry)
	*log = append(*log, entries...)
	for i := range out {
		out[i].Entry = entries[i]
	}
	return out
}

// LogRange returns up to max of s's entries from index from.
func (s *Store) LogRange(_ context.Context, from uint64, max, _ int) ([]rlog.Entry, error) {
	v, ok := testLogs.Load(s.Path())
	if !ok {
		return nil, nil
	}
	var out []rlog.Entry
	for _, e := range *v.(*[]rlog.Entry) {
		if e.Index >= from && len(out) < max {
			out = append(out, e)
		}
	}
	return out, nil
}

// Apply applies entries as a replica does, and returns its applied index.
func (s *Store) Apply(entries []rlog.Entry) (uint64, error) {
	out, err := s.ApplyLog(entries)
	if err != nil {
		return s.Applied(), err
	}
	for _, o := range out {
		if o.Err != nil && o.Index == 0 {
			return s.Applied(), fmt.Errorf("apply: %w", o.Err)
		}
	}
	return s.Applied(), nil
}

// Restore replaces the database's whole content with a copy Snapshot wrote.
func (s *Store) Restore(r io.Reader, dir string) (uint64, error) {
	f, err := os.CreateTemp(dir, "restore-*.db")
	if err != nil {
		return 0, err
	}
	path := f.Name()
	defer removeCopy(path)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return s.install(path, nil, false)
}
