package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

// bytesSource is a SnapshotSource held in memory.
type bytesSource []byte

func (b bytesSource) Size() int64          { return int64(len(b)) }
func (b bytesSource) NewReader() io.Reader { return strings.NewReader(string(b)) }
func (b bytesSource) Close()               {}

// A database sent is hashed whole; a file received is kept only when it is
// within the limit and matches the signed hash, and nothing is left of one
// refused.
func TestFilesTravelWithTheirSignedHash(t *testing.T) {
	body := strings.Repeat("database page ", 1000)
	sum, err := HashSource(bytesSource(body))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte(body))
	if sum != hex.EncodeToString(want[:]) {
		t.Fatalf("sum %s", sum)
	}
	size := int64(len(body))
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
