// Package changefeed pushes the change stream (package store keeps it,
// GET /db/changes serves it) to a webhook, as rqlite's change data
// capture does: from the leader only, at least once, in index order, in
// rqlite's JSON envelope.
//
// What was delivered is recorded through the log (rlog.Write.
// ChangesDelivered), at most every RecordEvery, so a new leader goes on
// after what its predecessor recorded: it resends at most what was
// delivered since the last record. The stream itself is kept by every
// node, so nothing is lost when the leader dies with events unsent.
package changefeed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// Webhook delivers the change stream to one URL while its node leads.
type Webhook struct {
	URL       string
	ServiceID string // the envelope's service_id ("" leaves it out)
	NodeID    string // the envelope's node_id: this node's id
	Store     *store.Store
	Repl      replication.Replicator
	Client    *http.Client // default: a 10 s timeout
	Log       *slog.Logger
	// Batch is the most entries one POST carries (default 100).
	Batch int
	// RecordEvery is how often what was delivered is recorded through
	// the log (default 250 ms).
	RecordEvery time.Duration
	// MaxBackoff bounds the wait between failed deliveries (default 10 s).
	MaxBackoff time.Duration
}

// Envelope is what one POST carries (rqlite's CDC JSON).
type Envelope struct {
	ServiceID string    `json:"service_id,omitempty"`
	NodeID    string    `json:"node_id"`
	Payload   []Message `json:"payload"`
}

// Message is one log entry's changes.
type Message struct {
	Index uint64 `json:"index"`
	// Timestamp is the leader's time for the entry, in Unix milliseconds
	// (as rqlite's).
	Timestamp int64   `json:"commit_timestamp"`
	Events    []Event `json:"events"`
}

// Event is one change: op INSERT, UPDATE or DELETE, or SCHEMA (with its
// SQL) or LOAD, which rqlite does not have. Values are JSON's: a BLOB is
// a base64 string, as in rqlite's.
type Event struct {
	Op       string         `json:"op"`
	Table    string         `json:"table,omitempty"`
	NewRowID int64          `json:"new_row_id,omitempty"`
	OldRowID int64          `json:"old_row_id,omitempty"`
	Before   map[string]any `json:"before,omitempty"`
	After    map[string]any `json:"after,omitempty"`
	SQL      string         `json:"sql,omitempty"`
}

func (w *Webhook) defaults() {
	if w.Client == nil {
		w.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if w.Batch <= 0 {
		w.Batch = 100
	}
	if w.RecordEvery <= 0 {
		w.RecordEvery = 250 * time.Millisecond
	}
	if w.MaxBackoff <= 0 {
		w.MaxBackoff = 10 * time.Second
	}
	if w.Log == nil {
		w.Log = slog.Default()
	}
}

// redacted is the URL for logs: without its credentials.
func (w *Webhook) redacted() string {
	u, err := url.Parse(w.URL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Run delivers until stop is closed.
func (w *Webhook) Run(stop <-chan struct{}) {
	w.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	sleep := func(d time.Duration) bool {
		select {
		case <-stop:
			return false
		case <-time.After(d):
			return true
		}
	}
	var sent, recorded uint64
	var lastRecord time.Time
	leading := false
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if !w.Repl.IsLeader() {
			leading = false
			if !sleep(200 * time.Millisecond) {
				return
			}
			continue
		}
		if !leading {
			// Newly leading: on from what the cluster recorded, once this
			// node has applied everything committed before.
			d, err := w.delivered(ctx)
			if err != nil {
				w.Log.Warn("change webhook: cannot read what was delivered; retrying", "err", err)
				if !sleep(time.Second) {
					return
				}
				continue
			}
			sent, recorded, leading = d, d, true
			w.Log.Info("change webhook: delivering, as this node leads", "url", w.redacted(), "after_index", sent)
		}
		cs, err := w.Store.ChangeSetting(ctx)
		if err != nil || !cs.On {
			if !sleep(time.Second) {
				return
			}
			continue
		}
		from := sent + 1
		if from < cs.Oldest {
			w.Log.Error("change webhook: the changes of entries it had not delivered left the retention (-changes-keep) before the webhook took them; delivering from the oldest kept", "undelivered_from", from, "oldest_kept", cs.Oldest)
			from = cs.Oldest
		}
		entries, next, err := w.Store.Changes(ctx, from, w.Batch)
		if err != nil {
			w.Log.Warn("change webhook: cannot read the change stream; retrying", "err", err)
			if !sleep(time.Second) {
				return
			}
			continue
		}
		if len(entries) > 0 {
			if err := w.post(ctx, entries); err != nil {
				backoff = min(max(2*backoff, 100*time.Millisecond), w.MaxBackoff)
				w.Log.Warn("change webhook: delivery failed; retrying", "url", w.redacted(), "from_index", entries[0].Index, "retry_in", backoff, "err", err)
				if !sleep(backoff) {
					return
				}
				continue
			}
			backoff = 0
		}
		sent = next - 1
		if sent > recorded && time.Since(lastRecord) >= w.RecordEvery {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			out, err := w.Repl.Write(rctx, &store.Request{ChangesDelivered: sent}, cluster.AckQuorum)
			rcancel()
			if err == nil {
				err = out.Err
			}
			if err == nil {
				recorded, lastRecord = sent, time.Now()
			} else {
				w.Log.Debug("change webhook: could not record what was delivered", "err", err)
			}
		}
		if next > w.Store.Applied() {
			// Up to date: wait for the next entry (or a while, to record
			// what was delivered and see whether this node still leads).
			w.Repl.WaitApplied(ctx, next, w.RecordEvery)
		}
	}
}

// delivered is the index the cluster recorded as delivered, once this
// node has applied what was committed when it asked.
func (w *Webhook) delivered(ctx context.Context) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	index, err := w.Repl.ReadIndex(rctx)
	if err != nil {
		return 0, err
	}
	if err := w.Repl.WaitApplied(rctx, index, 10*time.Second); err != nil {
		return 0, err
	}
	cs, err := w.Store.ChangeSetting(rctx)
	return cs.Delivered, err
}

// post sends entries in one envelope; a 200 or 202 is a delivery.
func (w *Webhook) post(ctx context.Context, entries []store.ChangeEntry) error {
	env := Envelope{ServiceID: w.ServiceID, NodeID: w.NodeID, Payload: make([]Message, 0, len(entries))}
	for _, e := range entries {
		env.Payload = append(env.Payload, Message{Index: e.Index, Timestamp: e.TimeMs, Events: Events(e.Changes)})
	}
	body, err := json.Marshal(env)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("the webhook answered %s", resp.Status)
	}
	return nil
}

// Events turns an entry's changes into the envelope's events.
func Events(changes []store.Change) []Event {
	out := make([]Event, 0, len(changes))
	for _, c := range changes {
		ev := Event{Table: c.Table, SQL: c.SQL}
		switch c.Op {
		case "insert":
			ev.Op = "INSERT"
		case "update":
			ev.Op = "UPDATE"
		case "delete":
			ev.Op = "DELETE"
		case "schema":
			ev.Op = "SCHEMA"
		case "load":
			ev.Op = "LOAD"
		}
		if c.OldRowID != nil {
			ev.OldRowID = *c.OldRowID
		}
		if c.NewRowID != nil {
			ev.NewRowID = *c.NewRowID
		}
		ev.Before, ev.After = row(c.Columns, c.Before), row(c.Columns, c.After)
		out = append(out, ev)
	}
	return out
}

func row(cols []string, vals []any) map[string]any {
	if vals == nil {
		return nil
	}
	m := make(map[string]any, len(cols))
	for i, c := range cols {
		v := vals[i]
		if f, ok := v.(float64); ok && math.IsInf(f, 0) {
			// JSON has no infinities: as the typed format writes them.
			v = "inf"
			if f < 0 {
				v = "-inf"
			}
		}
		m[c] = v
	}
	return m
}

// NodeID is the envelope's node_id for the node with command-line id id.
func NodeID(id int) string { return strconv.Itoa(id) }
