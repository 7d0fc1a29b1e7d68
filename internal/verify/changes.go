package verify

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"

	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/store"
)

// ChangeStreams judges the change stream of the nodes' database files
// (paths, after the run, every node caught up): every node stores the
// same changes for the same index, and the stream of the first, replayed
// onto an empty database from the entry it starts at, gives the first's
// tables. It expects the stream to have been turned on before the
// workloads' schema, and to keep every index. Databases without a stream
// are skipped.
func ChangeStreams(paths []string, scratch string) []string {
	var found []string
	var first [][]any
	for i, p := range paths {
		rows, err := readChanges(p)
		if err != nil {
			return []string{fmt.Sprintf("changes: node %d: %v", i, err)}
		}
		if i == 0 {
			first = rows
			continue
		}
		if !reflect.DeepEqual(rows, first) {
			found = append(found, fmt.Sprintf("changes: node %d stores %d entries' changes, node 0 %d, and they differ", i, len(rows), len(first)))
		}
	}
	if len(first) == 0 {
		return found
	}
	var entries []store.ChangeEntry
	for _, r := range first {
		ch, err := store.DecodeChanges(r[2].([]byte))
		if err != nil {
			return append(found, fmt.Sprintf("changes: index %v: %v", r[0], err))
		}
		entries = append(entries, store.ChangeEntry{Index: uint64(r[0].(int64)), TimeMs: r[1].(int64), Changes: ch})
	}
	replayPath := filepath.Join(scratch, "replay.db")
	os.Remove(replayPath)
	replica, err := sqlite.Open(replayPath, nil)
	if err != nil {
		return append(found, "changes: "+err.Error())
	}
	defer replica.Close()
	if err := store.ApplyChanges(replica, entries); err != nil {
		return append(found, "changes: the stream does not replay: "+err.Error())
	}
	want, err := tablesOf(paths[0])
	if err == nil {
		var got map[string][][]any
		if got, err = tablesOf(replayPath); err == nil && !reflect.DeepEqual(got, want) {
			for name := range want {
				if !reflect.DeepEqual(got[name], want[name]) {
					found = append(found, fmt.Sprintf("changes: table %s replayed from the stream has %d rows, the database %d, or they differ", name, len(got[name]), len(want[name])))
				}
			}
		}
	}
	if err != nil {
		found = append(found, "changes: "+err.Error())
	}
	return found
}

func readChanges(path string) ([][]any, error) {
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	row, err := c.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = '_ddb_changes'")
	if err != nil || row[0] == int64(0) {
		return nil, err
	}
	return c.All("SELECT idx, time_ms, events FROM _ddb_changes ORDER BY idx")
}

// tablesOf reads every user table, rows with their rowids where they
// have them.
func tablesOf(path string) (map[string][][]any, error) {
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tables, err := c.All(`SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND name NOT LIKE '\_ddb\_%' ESCAPE '\'`)
	if err != nil {
		return nil, err
	}
	out := map[string][][]any{}
	for _, tb := range tables {
		name := tb[0].(string)
		q := fmt.Sprintf("SELECT rowid, * FROM %q ORDER BY rowid", name)
		if tb[1] == int64(1) {
			q = fmt.Sprintf("SELECT * FROM %q ORDER BY 1", name)
		}
		rows, err := c.All(q)
		if err != nil {
			return nil, err
		}
		out[name] = rows
	}
	return out, nil
}
