package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
)

// A copy of a database travels between nodes with its SHA-256, which the
// sender signs (a snapshot, a repair's copy): the sender hashes the
// database before it sends it, or as it sends it (a snapshot's hash then
// follows it), and the receiver checks what arrives against the signed
// hash as it writes it.

// A SnapshotSource is a node's database as it is sent to another node:
// its length, a reader from its start (a request sent again reads it
// again), and Close, which lets it go.
type SnapshotSource interface {
	Size() int64
	NewReader() io.Reader
	Close()
}

// HashSource reads src whole and returns its SHA-256 (hex).
func HashSource(src SnapshotSource) (string, error) {
	h := sha256.New()
	n, err := io.Copy(h, src.NewReader())
	if err == nil && n != src.Size() {
		err = fmt.Errorf("read %d bytes of %d", n, src.Size())
	}
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ErrOverLimit: a file received was longer than the receiver takes.
var ErrOverLimit = errors.New("over this node's limit")

// ReceiveFile writes r into a new file in dir (named after pattern, as
// os.CreateTemp names), at most maxBytes of it (0: no limit), and checks it
// against sum, the SHA-256 (hex) it was signed with. On any failure the
// file is removed; the caller removes it otherwise.
func ReceiveFile(r io.Reader, dir, pattern string, maxBytes int64, sum string) (path string, err error) {
	path, got, _, err := ReceiveHashing(r, dir, pattern, maxBytes)
	if err == nil && got != sum {
		os.Remove(path)
		return "", errors.New("it does not match its signed SHA-256")
	}
	return path, err
}

// ReceiveHashing is ReceiveFile for a file whose hash comes after it (a
// trailer): it returns the SHA-256 (hex) and length of what it received,
// which the caller checks (and removes the file if they are wrong).
func ReceiveHashing(r io.Reader, dir, pattern string, maxBytes int64) (path, sum string, size int64, err error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", "", 0, err
	}
	path = f.Name()
	if maxBytes > 0 {
		r = io.LimitReader(r, maxBytes+1)
	}
	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(f, h), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		err = fmt.Errorf("receive: %w", err)
	case maxBytes > 0 && size > maxBytes:
		err = fmt.Errorf("%w of %d bytes", ErrOverLimit, maxBytes)
	}
	if err != nil {
		os.Remove(path)
		return "", "", 0, err
	}
	return path, hex.EncodeToString(h.Sum(nil)), size, nil
}
