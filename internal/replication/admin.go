package replication

import (
	"context"
	"net/http"
	"time"

	"github.com/ddbgo/ddb/internal/store"
)

// What the API needs of a node beyond the client protocol (Admin), what
// the engine needs of the other nodes (PeerCaller), and the types both
// speak in.

// Role is a node's part in the cluster, as /status reports it.
type Role string

// The roles.
const (
	RoleLeader    Role = "leader"    // orders writes
	RoleFollower  Role = "follower"  // a voter that follows the leader
	RoleCandidate Role = "candidate" // a voter asking for votes
	RoleLearner   Role = "learner"   // receives the log without voting
	RoleRemoved   Role = "removed"   // taken out of the configuration while it ran
)

// Admin is what the API needs of the replication engine beyond the client
// protocol: the cluster's state, its membership, and the endpoints other
// nodes call. Ids are the command line's (0: the master), except where a
// Raft id is said (see cluster.RaftID).
type Admin interface {
	// Status is this node's view of the cluster (GET /status).
	Status() Status
	// Members lists the configuration's nodes.
	Members() []Member
	// MissingVoters are the voters the command line names that have been
	// missing from the configuration for a while.
	MissingVoters() []int
	// Consistency is the state of the consistency checks.
	Consistency() ConsistencyStatus
	// Metrics are the engine's numbers for /metrics.
	Metrics() MetricValues
	// Ready is "" when this node serves, else why it does not (/readyz).
	Ready() string
	// Instance is this process's token (new at every start).
	Instance() string
	// HandleJoin answers a node announcing itself.
	HandleJoin(ctx context.Context, req *JoinRequest) (*JoinResponse, error)
	// HandleForward runs a write another node forwarded to this one.
	HandleForward(ctx context.Context, req *ForwardRequest) *ForwardResponse
	// Remove takes the node with Raft id id out of the configuration (on
	// the leader).
	Remove(ctx context.Context, id uint64) error
	// TransferLeadership hands leadership to the node with Raft id id
	// (on the leader), and waits until it has.
	TransferLeadership(ctx context.Context, id uint64) error
	// PeerHandlers are the engine's node-to-node endpoints, by path.
	PeerHandlers() map[string]http.Handler
}

// PeerCaller carries the node-to-node requests that are not Raft messages:
// a write forwarded to the leader, and a node announcing itself. (HTTP in
// production: peer.Client.)
type PeerCaller interface {
	Forward(ctx context.Context, url string, req *ForwardRequest) (*ForwardResponse, error)
	// Join announces a node; a *JoinRefusedError means it may
	// not take part (its id is held by another live node).
	RaftJoin(ctx context.Context, url string, req *JoinRequest) (*JoinResponse, error)
	// Instance is the instance token of the node process answering at
	// url ("" when none answers).
	Instance(ctx context.Context, url string) string
	// RemoteApplied waits (up to ctx) until the node at url has applied
	// index, and returns the index it has applied.
	RemoteApplied(ctx context.Context, url string, index uint64) (uint64, error)
	// RemoteDigest waits (up to ctx) for the digest the node at url took
	// of its database as of index (a consistency check), and returns it.
	RemoteDigest(ctx context.Context, url string, index uint64) (*store.Digest, error)
	// FetchCopy receives a copy of the database of the node at url (the
	// leader) into a new file in dir, verified, and says its index.
	FetchCopy(ctx context.Context, url, dir string) (path string, index uint64, err error)
}

// JoinRequest is what a node tells the others at start: where it is. The
// answer is every URL the receiver knows.
type JoinRequest struct {
	ID  uint64 `json:"id"`
	URL string `json:"url"`
	// Instance is the token of the process (new at every start): the
	// same node reached at another address is not an impostor.
	Instance string `json:"instance"`
	// Fresh: the node holds no Raft state (first start, or its data was
	// lost). It takes part only once admitted: a leader that counted its
	// old log would otherwise send it a commit index it cannot have.
	Fresh bool `json:"fresh,omitempty"`
	// Data is the index a fresh node's database holds (0: none). A
	// database an operator copied from another node to rebuild a
	// cluster (docs/REPLICATION.md, "Restoring a node") has data but no
	// Raft state; a wiped one has neither.
	Data uint64 `json:"data,omitempty"`
}

// JoinResponse lists the URLs of the nodes the receiver knows, and says
// whether the node may take part now and whether the cluster has a log.
type JoinResponse struct {
	Peers    map[uint64]string `json:"peers"`
	Admitted bool              `json:"admitted"`
	Running  bool              `json:"running"` // the cluster has committed entries
	// Empty: the answering node holds no Raft state and takes no part yet
	// (a first start, or lost data). The master creates the cluster only
	// once a majority of its voters are empty (consensus.MayCreate).
	Empty  bool   `json:"empty,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Commit is the answering node's commit index when it admitted the
	// node: a node without Raft state that was admitted serves nothing
	// until it has applied that far (it receives the log from its start,
	// and would otherwise answer reads from long-gone states).
	Commit uint64 `json:"commit,omitempty"`
}

// NodeStatus is one node as the leader sees it. Ids are those of the
// command line: 0 for the master, i for slave i.
type NodeStatus struct {
	ID        int    `json:"id"`
	URL       string `json:"url"`
	Voter     bool   `json:"voter"`
	Match     uint64 `json:"acknowledged_index"`
	Lag       uint64 `json:"lag"`
	State     string `json:"state"`
	Reachable bool   `json:"reachable"`
}

// Status is this node's view of the cluster (GET /status). Ids are those
// of the command line: 0 for the master, i for slave i.
type Status struct {
	ID        int    `json:"id"`
	URL       string `json:"url"`
	Role      Role   `json:"role"`
	Preferred bool   `json:"preferred_leader"`
	LeaderID  *int   `json:"leader_id"` // null: no leader known
	LeaderURL string `json:"leader_url,omitempty"`
	Term      uint64 `json:"term"`
	Commit    uint64 `json:"commit_index"`
	Applied   uint64 `json:"applied_index"`
	// SnapshotsInstalled counts the snapshots this node installed since
	// it started.
	SnapshotsInstalled uint64       `json:"snapshots_installed"`
	Nodes              []NodeStatus `json:"nodes,omitempty"` // on the leader
	// MissingVoters are the voters the command line names that have been
	// missing from the configuration for a few election timeouts.
	MissingVoters []int `json:"missing_voters,omitempty"`
	// Rejoining are the nodes the log records as being added back after
	// they lost their data.
	Rejoining []int `json:"rejoining,omitempty"`
}

// Member is one node of the configuration, as this node knows it.
type Member struct {
	ID     int    // the command line's id (0: the master)
	URL    string // "" while this node does not know it
	Voter  bool
	Leader bool
}

// MetricValues are the engine's numbers for /metrics.
type MetricValues struct {
	Term, Commit       uint64
	Leader             bool
	LeaderChanges      uint64
	ProposalsPending   int
	Lag                map[int]uint64 // on the leader: each node's entries behind the commit index
	Batches            uint64         // batches of Raft messages sent
	RoundTripSeconds   float64        // their round trips, summed
	SnapshotsInstalled uint64
}

// ConsistencyStatus is what /status says under "consistency".
type ConsistencyStatus struct {
	CheckedIndex  uint64    `json:"checked_index"`
	CheckedAt     time.Time `json:"checked_at,omitzero"`
	State         string    `json:"state"` // "none" (no check yet), "checking", "ok", "diverged", "repairing"
	DivergedNodes []int     `json:"diverged_nodes"`
	Detail        string    `json:"detail,omitempty"`
	Checks        uint64    `json:"checks"`
	// Repairs counts the times this node replaced its data with a copy
	// of the leader's; RepairedIndex is the last copy's index.
	Repairs       uint64 `json:"repairs"`
	RepairedIndex uint64 `json:"repaired_index,omitempty"`
}
