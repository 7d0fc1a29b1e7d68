package api

import (
	"os/exec"
	"strings"
	"testing"
)

// The API consumes replication through its interfaces only
// (replication.Replicator for the client protocol, replication.Admin for
// the rest): it depends on the consensus engine neither directly nor
// through another package.
func TestTheAPIDependsOnReplicationsInterfacesOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasSuffix(dep, "/internal/consensus") || strings.HasSuffix(dep, "/internal/sim") {
			t.Errorf("internal/api depends on %s", dep)
		}
	}
	if !strings.Contains(string(out), "/internal/replication") {
		t.Fatalf("go list -deps did not list internal/replication: %s", out)
	}
}
