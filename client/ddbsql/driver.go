// Package ddbsql is the database/sql driver of the replicated database,
// registered as "ddb":
//
//	import _ "github.com/ddbgo/ddb/client/ddbsql"
//	db, err := sql.Open("ddb", "http://localhost:8080,http://localhost:8081,http://localhost:8082")
//
// The data source name is a comma-separated list of node URLs (credentials
// may be in them), optionally followed by settings as a query string:
// "?consistency=strong&ack=all&retry_timeout=15s". Every connection of a
// *sql.DB shares one client: the leader it found, and the index of the
// last write it saw, so any connection reads its own writes.
//
// A transaction is an atomic batch: its Exec calls are collected and sent
// together at Commit, which applies all of them or none. What this cannot
// do, and refuses with ErrQueryInTx rather than answering wrongly: a
// query inside a read-write transaction (it could not see the
// transaction's own writes, which do not exist before Commit), and a
// write's LastInsertId or RowsAffected before Commit. A read-only
// transaction runs each query as it comes, at the client's consistency:
// it is not a snapshot. See docs/CLIENT.md.
package ddbsql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/client"
)

func init() { sql.Register("ddb", &Driver{}) }

// ErrQueryInTx: a query inside a read-write transaction, which could not
// see the transaction's writes (they are sent at Commit).
var ErrQueryInTx = errors.New("ddb: a query inside a read-write transaction cannot see the transaction's writes, which are sent together at Commit; query before Begin or after Commit, or use a read-only transaction")

// ErrResultBeforeCommit: a write's outcome inside a transaction is known
// only once the transaction commits.
var ErrResultBeforeCommit = errors.New("ddb: inside a transaction a write's LastInsertId and RowsAffected are known only after Commit")

// Driver is the "ddb" database/sql driver.
type Driver struct{}

var (
	mu      sync.Mutex
	clients = map[string]*client.Client{}
)

// Open implements driver.Driver.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector implements driver.DriverContext: the connections it makes
// share one client.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	mu.Lock()
	defer mu.Unlock()
	if c, ok := clients[dsn]; ok {
		return &connector{d: d, c: c}, nil
	}
	c, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	clients[dsn] = c
	return &connector{d: d, c: c}, nil
}

// parseDSN reads "url1,url2,...?settings".
func parseDSN(dsn string) (*client.Client, error) {
	list, query, _ := strings.Cut(dsn, "?")
	settings, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("ddb: settings %q: %w", query, err)
	}
	var opts []client.Option
	var calls []client.CallOption
	for k, v := range settings {
		val := v[len(v)-1]
		switch k {
		case "consistency":
			switch val {
			case "strong":
				calls = append(calls, client.Strong())
			case "local":
				calls = append(calls, client.Local())
			default:
				return nil, fmt.Errorf("ddb: consistency=%s: use local or strong", val)
			}
		case "ack":
			if val != "quorum" && val != "all" && val != "master" {
				return nil, fmt.Errorf("ddb: ack=%s: use quorum or all", val)
			}
			calls = append(calls, client.Ack(val))
		case "retry_timeout":
			d, err := time.ParseDuration(val)
			if err != nil {
				return nil, fmt.Errorf("ddb: retry_timeout=%s: %w", val, err)
			}
			opts = append(opts, client.WithRetryTimeout(d))
		default:
			return nil, fmt.Errorf("ddb: unknown setting %q (known: consistency, ack, retry_timeout)", k)
		}
	}
	c, err := client.New(strings.Split(list, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("ddb: %w", err)
	}
	return c.With(calls...), nil
}

type connector struct {
	d *Driver
	c *client.Client
}

func (c *connector) Connect(context.Context) (driver.Conn, error) { return &conn{c: c.c}, nil }
func (c *connector) Driver() driver.Driver                        { return c.d }

// conn is one database/sql connection: the shared client, and the
// transaction under way, if any.
type conn struct {
	c  *client.Client
	tx *tx
}

var (
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
)

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext returns a statement that runs query each time (the SQL is
// compiled by the node that runs it).
func (c *conn) PrepareContext(_ context.Context, query string) (driver.Stmt, error) {
	return &stmt{c: c, query: query}, nil
}

func (c *conn) Close() error { return nil }

func (c *conn) Begin() (driver.Tx, error) { return c.BeginTx(context.Background(), driver.TxOptions{}) }

// BeginTx starts a transaction: an atomic batch sent at Commit.
func (c *conn) BeginTx(_ context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.tx != nil {
		return nil, errors.New("ddb: a transaction is already under way on this connection")
	}
	if opts.Isolation != driver.IsolationLevel(sql.LevelDefault) && opts.Isolation != driver.IsolationLevel(sql.LevelSerializable) {
		return nil, fmt.Errorf("ddb: isolation level %v is not offered: a transaction is an atomic batch, serializable", sql.IsolationLevel(opts.Isolation))
	}
	c.tx = &tx{c: c, readOnly: opts.ReadOnly}
	return c.tx, nil
}

func (c *conn) Ping(ctx context.Context) error { return c.c.Ping(ctx) }

// CheckNamedValue accepts the values the client sends as they are.
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	switch v := nv.Value.(type) {
	case nil, int64, float64, bool, []byte, string, time.Time:
		return nil
	case int, int8, int16, int32, uint8, uint16, uint32, uint, uint64, float32:
		return nil
	default:
		var err error
		nv.Value, err = driver.DefaultParameterConverter.ConvertValue(v)
		return err
	}
}

func args(nvs []driver.NamedValue) ([]any, error) {
	named := client.Named{}
	var pos []any
	for _, nv := range nvs {
		if nv.Name != "" {
			named[nv.Name] = nv.Value
		} else {
			pos = append(pos, nv.Value)
		}
	}
	switch {
	case len(named) > 0 && len(pos) > 0:
		return nil, errors.New("ddb: use either positional or named arguments in one statement, not both")
	case len(named) > 0:
		return []any{named}, nil
	}
	return pos, nil
}

func (c *conn) ExecContext(ctx context.Context, query string, nvs []driver.NamedValue) (driver.Result, error) {
	a, err := args(nvs)
	if err != nil {
		return nil, err
	}
	if c.tx != nil {
		if c.tx.readOnly {
			return nil, errors.New("ddb: a write inside a read-only transaction")
		}
		c.tx.stmts = append(c.tx.stmts, client.Statement{SQL: query, Args: a})
		return pending{}, nil
	}
	r, err := c.c.Exec(ctx, query, a...)
	if err != nil {
		return nil, err
	}
	return result{r}, nil
}

func (c *conn) QueryContext(ctx context.Context, query string, nvs []driver.NamedValue) (driver.Rows, error) {
	if c.tx != nil && !c.tx.readOnly {
		return nil, ErrQueryInTx
	}
	a, err := args(nvs)
	if err != nil {
		return nil, err
	}
	r, err := c.c.Query(ctx, query, a...)
	if err != nil {
		return nil, err
	}
	return &rows{r: r}, nil
}

type result struct{ r client.Result }

func (r result) LastInsertId() (int64, error) { return r.r.LastInsertID, nil }
func (r result) RowsAffected() (int64, error) { return r.r.RowsAffected, nil }

type pending struct{}

func (pending) LastInsertId() (int64, error) { return 0, ErrResultBeforeCommit }
func (pending) RowsAffected() (int64, error) { return 0, ErrResultBeforeCommit }

type tx struct {
	c        *conn
	readOnly bool
	stmts    []client.Statement
}

// Commit sends the transaction's writes as one atomic batch.
func (t *tx) Commit() error {
	t.c.tx = nil
	if len(t.stmts) == 0 {
		return nil
	}
	_, err := t.c.c.ExecBatch(context.Background(), t.stmts...)
	return err
}

func (t *tx) Rollback() error {
	t.c.tx = nil
	return nil
}

type stmt struct {
	c     *conn
	query string
}

func (s *stmt) Close() error  { return nil }
func (s *stmt) NumInput() int { return -1 }
func (s *stmt) Exec(a []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.query, named(a))
}
func (s *stmt) Query(a []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.query, named(a))
}
func (s *stmt) ExecContext(ctx context.Context, nvs []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, nvs)
}
func (s *stmt) QueryContext(ctx context.Context, nvs []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, nvs)
}

func named(a []driver.Value) []driver.NamedValue {
	out := make([]driver.NamedValue, len(a))
	for i, v := range a {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return out
}

// rows hands database/sql the values: int64, float64, string, []byte,
// nil, and time.Time in a column declared DATE, DATETIME or TIMESTAMP
// that holds a time (text in one of SQLite's formats, or Unix seconds).
type rows struct {
	r *client.Rows
	i int
}

var _ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)

func (r *rows) Columns() []string { return r.r.Columns }
func (r *rows) Close() error      { return nil }

func (r *rows) ColumnTypeDatabaseTypeName(i int) string {
	if i < len(r.r.Types) {
		return strings.ToUpper(r.r.Types[i])
	}
	return ""
}

func (r *rows) Next(dest []driver.Value) error {
	if r.i >= len(r.r.Values) {
		return io.EOF
	}
	row := r.r.Values[r.i]
	r.i++
	for j := range dest {
		v := row[j]
		if j < len(r.r.Types) && isTimeType(r.r.Types[j]) {
			if t, ok := asTime(v); ok {
				v = t
			}
		}
		dest[j] = v
	}
	return nil
}

func isTimeType(decl string) bool {
	switch strings.ToUpper(strings.TrimSpace(decl)) {
	case "DATE", "DATETIME", "TIMESTAMP":
		return true
	}
	return false
}

// timeFormats are the text forms of a time SQLite's functions write and
// read (the first is what the client stores for a time.Time).
var timeFormats = []string{
	client.TimeFormat,
	"2006-01-02T15:04:05.999999999-07:00",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02T15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04",
	"2006-01-02T15:04",
	"2006-01-02",
}

func asTime(v any) (time.Time, bool) {
	switch x := v.(type) {
	case int64:
		return time.Unix(x, 0).UTC(), true
	case string:
		for _, f := range timeFormats {
			if t, err := time.Parse(f, x); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}
