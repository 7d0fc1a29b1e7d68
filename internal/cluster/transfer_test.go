package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A file sent is hashed from its start and read from its start again; a
// file received is kept only when it is within the limit and matches the
// signed hash, and nothing is left of one refused.
func TestFilesTravelWithTheirSignedHash(t *testing.T) {
	dir := t.TempDir()
	body := strings.Repeat("database page ", 1000)
	src := filepath.Join(dir, "src.db")
	if err := os.WriteFile(src, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	f, size, sum, err := OpenHashed(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := sha256.Sum256([]byte(body))
	if size != int64(len(body)) || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("size %d, sum %s", size, sum)
	}
	if b, _ := io.ReadAll(f); string(b) != body {
		t.Fatal("the file is not read from its start")
	}
	recv := t.TempDir()
	path, err := ReceiveFile(strings.NewReader(body), recv, "in-*.db", size, sum)
	if b, _ := os.ReadFile(path); err != nil || string(b) != body {
		t.Fatalf("received: %v", err)
	}
	os.Remove(path)
	if _, err := ReceiveFile(strings.NewReader(body), recv, "in-*.db", size-1, sum); !errors.Is(err, ErrOverLimit) {
		t.Fatalf("one byte over the limit: %v", err)
	}
	if _, err := ReceiveFile(strings.NewReader(body+"x"), recv, "in-*.db", 0, sum); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("an altered body: %v", err)
	}
	if left, _ := os.ReadDir(recv); len(left) != 0 {
		t.Fatalf("refused files left %d behind", len(left))
	}
}
