// Command sqlapp is a small program that uses the database through
// database/sql and the "ddb" driver only: it creates a table, inserts with
// placeholders, reads typed values back (a blob and a timestamp among
// them), shows the error of a bad statement, then keeps writing and
// reading for -duration, which is enough to live through a leader change.
//
//	go run ./examples/sqlapp -nodes http://localhost:8080,http://localhost:8081,http://localhost:8082
package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ddbgo/ddb/client"
	_ "github.com/ddbgo/ddb/client/ddbsql"
)

func main() {
	nodes := flag.String("nodes", "http://localhost:8080,http://localhost:8081,http://localhost:8082", "comma-separated node URLs")
	duration := flag.Duration("duration", 3*time.Second, "how long to keep writing after the first steps")
	flag.Parse()
	if err := run(*nodes, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "sqlapp:", err)
		os.Exit(1)
	}
}

func run(nodes string, duration time.Duration) error {
	db, err := sql.Open("ddb", nodes+"?retry_timeout=15s")
	if err != nil {
		return err
	}
	defer db.Close()
	ctx := context.Background()

	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS sqlapp_notes (
		id INTEGER PRIMARY KEY, title TEXT NOT NULL, score REAL, body BLOB, created DATETIME)`); err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	created := time.Date(2026, 11, 27, 9, 30, 0, 0, time.UTC)
	res, err := db.ExecContext(ctx, "INSERT INTO sqlapp_notes (title, score, body, created) VALUES (?, ?, ?, ?)",
		"first", 2.0, []byte{0, 1, 2, 255}, created)
	if err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	id, _ := res.LastInsertId()
	fmt.Println("inserted note", id)

	var (
		title string
		score float64
		body  []byte
		when  time.Time
	)
	if err := db.QueryRowContext(ctx, "SELECT title, score, body, created FROM sqlapp_notes WHERE id = ?", id).Scan(&title, &score, &body, &when); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if title != "first" || score != 2.0 || !bytes.Equal(body, []byte{0, 1, 2, 255}) || !when.Equal(created) {
		return fmt.Errorf("read back %q %v %v %v", title, score, body, when)
	}
	fmt.Printf("read back: %s, score %v, %d-byte body, created %s\n", title, score, len(body), when.Format(time.RFC3339))

	_, err = db.ExecContext(ctx, "INSERT INTO nowhere VALUES (1)")
	var sqlErr *client.SQLError
	if !errors.As(err, &sqlErr) {
		return fmt.Errorf("a bad statement gave %v, not an SQL error", err)
	}
	fmt.Println("bad statement:", sqlErr)

	// Keep writing: every write answered is there when read back (under
	// a title of this run's own: the program may run again and again).
	run := time.Now().UnixNano()
	end := time.Now().Add(duration)
	n := 0
	for ; time.Now().Before(end); n++ {
		if _, err := db.ExecContext(ctx, "INSERT INTO sqlapp_notes (title) VALUES (?)", fmt.Sprintf("loop %d-%d", run, n)); err != nil {
			return fmt.Errorf("write %d: %w", n, err)
		}
		var count int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlapp_notes WHERE title = ?", fmt.Sprintf("loop %d-%d", run, n)).Scan(&count); err != nil || count != 1 {
			return fmt.Errorf("read of write %d: %d rows, %v", n, count, err)
		}
	}
	fmt.Println("writes in the loop:", n)
	return nil
}
