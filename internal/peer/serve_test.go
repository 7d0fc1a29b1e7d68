package peer

import (
	"net/http/httptest"
	"testing"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/replication"
)

// statusAdmin is an Admin that only reports a status.
type statusAdmin struct {
	replication.Admin
	st replication.Status
}

func (a statusAdmin) Status() replication.Status { return a.st }

// Another node's console gets a node's status with its long operations
// under way, through a signed request.
func TestANodesStatusCarriesItsProgress(t *testing.T) {
	auth := cluster.NewAuth("a cluster secret", nil)
	l := Local{Auth: auth, Admin: statusAdmin{st: replication.Status{Role: replication.RoleFollower, Applied: 42}},
		Progress: func() []progress.Status {
			return []progress.Status{{Op: "snapshot-receive", Unit: "bytes", Done: 5, Total: 10, Percent: 50}}
		}}
	srv := httptest.NewServer(Handlers(l)[StatusPath])
	defer srv.Close()
	c := NewClient(auth, "node1", nil, cluster.DefaultTiming())
	st, err := c.Status(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != replication.RoleFollower || st.Applied != 42 || len(st.Progress) != 1 || st.Progress[0].Op != "snapshot-receive" || st.Progress[0].Percent != 50 {
		t.Fatalf("status: %+v", st)
	}
}
