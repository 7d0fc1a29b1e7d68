package peer

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// All node-to-node HTTP lives in this package: no other package of the
// node (tests aside) names a node-to-node path, signs a request, or keys
// a stream; cluster holds only the signature's primitives.
func TestAllNodeToNodeHTTPLivesHere(t *testing.T) {
	root := filepath.Join("..", "..")
	forbidden := []string{`"/_ddb/`, ".Sign(", "SessionKey(", "CopyMAC("}
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "peer", "cluster", ".git", "testdata":
				if filepath.Dir(path) == filepath.Join(root, "internal") || d.Name() == ".git" || d.Name() == "testdata" {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		for _, f := range forbidden {
			if strings.Contains(string(b), f) {
				t.Errorf("%s contains %s: node-to-node HTTP belongs in package peer", path, f)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d files checked: the walk missed the module", checked)
	}
}
