package cluster

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A node's Raft id and its command-line id convert into each other in
// RaftID and CommandLineID only: no code of the node (tests aside) adds
// or takes the 1 by hand.
func TestIDsConvertInOneFunctionEachWay(t *testing.T) {
	if RaftID(0) != 1 || RaftID(3) != 4 || CommandLineID(RaftID(7)) != 7 {
		t.Fatal("RaftID and CommandLineID are not each other's inverse")
	}
	// (A Raft id becomes a user's as an int; a user's id becomes Raft's
	// from a variable named for it. Log indexes are uint64 arithmetic.)
	byHand := regexp.MustCompile(`\bint\([A-Za-z_][\w.]*\) ?- ?1\b|\buint64\((i|id|ID|[\w.]*\.ID)\) ?\+ ?1\b|\buint64\((i|id) ?\+ ?1\)`)
	root := filepath.Join("..", "..")
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		for _, m := range byHand.FindAllString(string(b), -1) {
			if filepath.Base(path) == "config.go" && filepath.Base(filepath.Dir(path)) == "cluster" {
				continue // the two functions themselves
			}
			t.Errorf("%s converts an id by hand: %s (use RaftID or CommandLineID)", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d files checked", checked)
	}
}
