package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

// ChangesFilter selects what a change stream carries.
type ChangesFilter struct {
	// Tables are table names or glob patterns (* and ?); none: every table.
	Tables []string
	// KeysOnly: Before and After hold the key's columns only.
	KeysOnly bool
}

// ChangeEntry is the row changes of one log entry.
type ChangeEntry struct {
	Index  uint64
	Time   time.Time // the leader's time for the entry
	Events []ChangeEvent
}

// ChangeEvent is one row change ("insert", "update", "delete"), a schema
// change ("schema", with its SQL) or a load ("load": its rows are not in
// the stream; read the tables again).
type ChangeEvent struct {
	Op    string
	Table string
	// Key is the row's key: its primary key's columns, or "rowid". OldKey
	// is set when an update changed it.
	Key, OldKey map[string]any
	// Before and After are the row's values (nil where there is no row),
	// in their exact types: int64, float64, string, []byte or nil.
	Before, After map[string]any
	SQL           string
}

// ChangesGoneError: the changes from Since on are no longer kept by the
// cluster; Oldest is the first index it keeps.
type ChangesGoneError struct {
	Since, Oldest uint64
}

func (e *ChangesGoneError) Error() string {
	return fmt.Sprintf("the cluster no longer keeps the changes from index %d: the oldest it keeps is %d", e.Since, e.Oldest)
}

// Changes follows the cluster's change stream from log index since on (0:
// from now), yielding each entry once, in index order, until ctx ends or
// an error that retrying cannot mend (the stream is off, or since is
// older than what the cluster keeps: *ChangesGoneError), which it yields
// last. When the node it reads from fails, it goes on from another, from
// the entry after the last it yielded, so a consumer sees every change
// exactly once. Breaking out of the loop ends the stream.
func (c *Client) Changes(ctx context.Context, since uint64, filter ChangesFilter) iter.Seq2[ChangeEntry, error] {
	return func(yield func(ChangeEntry, error) bool) {
		next := since
		failures := 0
		var last error
		for attempt := 0; ctx.Err() == nil; attempt++ {
			target := c.pick(false, attempt)
			progressed, stop, err := c.followChanges(ctx, target, &next, filter, yield)
			if stop {
				return
			}
			if progressed {
				failures = 0
			}
			if err != nil {
				var gone *ChangesGoneError
				var fatal *Error
				if errors.As(err, &gone) || (errors.As(err, &fatal) && fatal.Status != http.StatusServiceUnavailable) {
					yield(ChangeEntry{}, err)
					return
				}
				last = err
			}
			failures++
			if failures > 3*len(c.s.endpoints)+3 {
				yield(ChangeEntry{}, fmt.Errorf("no node serves the change stream: %w", last))
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(min(time.Duration(failures)*100*time.Millisecond, 2*time.Second)):
			}
		}
		if ctx.Err() != nil {
			yield(ChangeEntry{}, ctx.Err())
		}
	}
}

// followChanges reads the stream from one node, from *next on, advancing
// *next past every entry it yields. stop: the consumer broke off.
func (c *Client) followChanges(ctx context.Context, target string, next *uint64, f ChangesFilter, yield func(ChangeEntry, error) bool) (progressed, stop bool, err error) {
	q := url.Values{}
	if *next > 0 {
		q.Set("since", strconv.FormatUint(*next, 10))
	}
	if len(f.Tables) > 0 {
		q.Set("tables", strings.Join(f.Tables, ","))
	}
	if f.KeysOnly {
		q.Set("keys_only", "true")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target+"/db/changes?"+q.Encode(), nil)
	if err != nil {
		return false, false, err
	}
	if c.s.auth {
		req.SetBasicAuth(c.s.user, c.s.pass)
	}
	resp, err := c.s.hc.Do(req)
	if err != nil {
		return false, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error  string `json:"error"`
			Oldest uint64 `json:"oldest"`
		}
		json.Unmarshal(body, &e)
		if resp.StatusCode == http.StatusGone {
			return false, false, &ChangesGoneError{Since: *next, Oldest: e.Oldest}
		}
		return false, false, &Error{Status: resp.StatusCode, Message: e.Error}
	}
	if *next == 0 {
		// "From now": go on from what the node had applied, wherever
		// the stream goes on.
		if applied, err := strconv.ParseUint(resp.Header.Get("X-Ddb-Index"), 10, 64); err == nil {
			*next = applied + 1
		}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<30)
	for sc.Scan() {
		var line wireChangeEntry
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return progressed, false, fmt.Errorf("change stream from %s: %w", target, err)
		}
		if line.Heartbeat {
			continue
		}
		if line.Index < *next {
			continue // (a node never sends these; kept out all the same)
		}
		e, err := line.entry()
		if err != nil {
			return progressed, false, err
		}
		*next, progressed = e.Index+1, true
		if !yield(e, nil) {
			return progressed, true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return progressed, false, err
	}
	return progressed, false, io.ErrUnexpectedEOF
}

type wireChangeEntry struct {
	Heartbeat bool   `json:"heartbeat"`
	Index     uint64 `json:"index"`
	TimeMs    int64  `json:"time_ms"`
	Events    []struct {
		Op     string                     `json:"op"`
		Table  string                     `json:"table"`
		SQL    string                     `json:"sql"`
		Key    map[string]json.RawMessage `json:"key"`
		OldKey map[string]json.RawMessage `json:"old_key"`
		Before map[string]json.RawMessage `json:"before"`
		After  map[string]json.RawMessage `json:"after"`
	} `json:"events"`
}

func (w *wireChangeEntry) entry() (ChangeEntry, error) {
	e := ChangeEntry{Index: w.Index, Time: time.UnixMilli(w.TimeMs).UTC()}
	for _, ev := range w.Events {
		out := ChangeEvent{Op: ev.Op, Table: ev.Table, SQL: ev.SQL}
		for _, m := range []struct {
			in  map[string]json.RawMessage
			out *map[string]any
		}{{ev.Key, &out.Key}, {ev.OldKey, &out.OldKey}, {ev.Before, &out.Before}, {ev.After, &out.After}} {
			if m.in == nil {
				continue
			}
			*m.out = make(map[string]any, len(m.in))
			for k, raw := range m.in {
				v, err := rlog.DecodeValue(raw)
				if err != nil {
					return e, fmt.Errorf("change stream, index %d: %w", w.Index, err)
				}
				(*m.out)[k] = v
			}
		}
		e.Events = append(e.Events, out)
	}
	return e, nil
}
