// send_dummy sends the original project's example requests to the master
// (create the users table, insert a user, read the table back) and prints
// what the node answered.
//
//	go run send_dummy.go [-url http://localhost:8080]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"time"
)

func main() {
	target := flag.String("url", "http://localhost:8080", "node to send the requests to")
	flag.Parse()
	// A name of its own at every run (the column is UNIQUE): the time to
	// the nanosecond and a random suffix, so that runs in the same second,
	// or on two machines at once, never collide.
	unique := fmt.Sprintf("%d_%04x", time.Now().UnixNano(), rand.IntN(1<<16))
	requests := []string{
		`{"command": "exec", "query": "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)", "is_master": false}`,
		fmt.Sprintf(`{"command": "exec", "query": "INSERT INTO users (username, email) VALUES (?, ?)", "params": ["user_%s", "user_%s@example.com"], "is_master": false}`, unique, unique),
		`{"command": "query", "query": "SELECT * FROM users ORDER BY id DESC LIMIT 5"}`,
	}
	client := &http.Client{Timeout: 15 * time.Second}
	failed := false
	for _, body := range requests {
		fmt.Printf("POST %s\n%s\n", *target, body)
		resp, err := client.Post(*target, "application/json", bytes.NewBufferString(body))
		if err != nil {
			fmt.Printf("error: %v\n(is the master running? go run ./master 2)\n\n", err)
			os.Exit(1)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("-> %s\n%s\n", resp.Status, bytes.TrimSpace(b))
		if resp.StatusCode != http.StatusOK {
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
