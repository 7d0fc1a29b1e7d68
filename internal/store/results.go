package store

import (
	"encoding/json"

	"github.com/ddbgo/ddb/internal/rlog"
)

// WireResult is a Result with exactly typed values, as it travels between
// nodes and as the request table remembers it.
type WireResult struct {
	Columns []string            `json:"columns,omitempty"`
	Types   []string            `json:"types,omitempty"`
	Rows    [][]json.RawMessage `json:"rows,omitempty"`
	HasRows bool                `json:"has_rows,omitempty"`
	// RowsBeforeLast: see Result.
	RowsBeforeLast bool            `json:"rows_before_last,omitempty"`
	RowsAffected   int64           `json:"rows_affected"`
	LastInsertID   int64           `json:"last_insert_id"`
	Err            *StatementError `json:"error,omitempty"`
}

// EncodeResults converts results to their wire form.
func EncodeResults(rs []Result) ([]WireResult, error) {
	out := make([]WireResult, len(rs))
	for i, r := range rs {
		w := WireResult{Columns: r.Columns, Types: r.Types, HasRows: r.HasRows, RowsBeforeLast: r.RowsBeforeLast, RowsAffected: r.RowsAffected, LastInsertID: r.LastInsertID, Err: r.Err}
		for _, row := range r.Rows {
			wr := make([]json.RawMessage, len(row))
			for j, v := range row {
				b, err := rlog.EncodeValue(v)
				if err != nil {
					return nil, err
				}
				wr[j] = b
			}
			w.Rows = append(w.Rows, wr)
		}
		out[i] = w
	}
	return out, nil
}

// DecodeResults reverses EncodeResults.
func DecodeResults(ws []WireResult) ([]Result, error) {
	out := make([]Result, len(ws))
	for i, w := range ws {
		r := Result{Columns: w.Columns, Types: w.Types, HasRows: w.HasRows, RowsBeforeLast: w.RowsBeforeLast, RowsAffected: w.RowsAffected, LastInsertID: w.LastInsertID, Err: w.Err}
		if w.HasRows {
			r.Rows = make([][]any, 0, len(w.Rows))
		}
		for _, wr := range w.Rows {
			row := make([]any, len(wr))
			for j, b := range wr {
				v, err := rlog.DecodeValue(b)
				if err != nil {
					return nil, err
				}
				row[j] = v
			}
			r.Rows = append(r.Rows, row)
		}
		out[i] = r
	}
	return out, nil
}
