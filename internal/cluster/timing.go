package cluster

import "time"

// DefaultTick is Raft's clock: every timing of the replication engine
// derives from it (see TimingOf).
const DefaultTick = 100 * time.Millisecond

// Timing is every duration the replication engine waits, in one table
// beside the other defaults (the engine, the simulator and the tests read
// it here, and none keeps a timing of its own).
type Timing struct {
	// Tick is Raft's clock.
	Tick time.Duration
	// ElectionTicks: a follower without a leader campaigns after a
	// randomized ElectionTicks to 2×ElectionTicks ticks (0.7–1.4 s), so a
	// new leader is usually in place within 1.5 s of the old one's death.
	// A leader sends heartbeats every HeartbeatTicks.
	ElectionTicks, HeartbeatTicks int
	// ElectionWindow is how long an election normally takes at most (two
	// randomized timeouts): a node without a leader for longer answers at
	// once that no majority is reachable.
	ElectionWindow time.Duration
	// ReadWait is how long a strong read waits for a read index (at most
	// -read-timeout); ReadResend is when a request Raft dropped is asked
	// again.
	ReadWait, ReadResend time.Duration
	// ReadLease is how long a read index round of the leader's own lets
	// it answer read index requests without another (see consensus'
	// lease.go): 80% of the shortest time in which a follower that heard
	// from it could vote for another node, (ElectionTicks-1) ticks. Also
	// how long a node that starts refuses votes. 0: no leases.
	ReadLease time.Duration
	// ProposalResend is when a follower's proposal that has not come
	// back as an entry is sent again (then twice as long, and so on).
	ProposalResend time.Duration
	// ChangeResend is when a configuration change that does not show is
	// proposed again (Raft drops one while another is pending).
	ChangeResend time.Duration
	// PreferredAfter is how many ticks in a row the preferred leader (the
	// master) must hold the whole log before leadership is handed back.
	PreferredAfter int
	// HoldProposals is how long a leader's proposals may wait for the
	// entries in flight to commit, to go out together (measured, not
	// derived from the tick: see docs/BENCHMARKS.md).
	HoldProposals time.Duration
	// RejoinEvery is how often the leader looks for nodes to add back
	// after they lost their data; MissingAfter is how long a named voter
	// may be missing from the configuration before it is reported.
	RejoinEvery, MissingAfter time.Duration
	// JoinFirst and JoinMax bound the wait between two rounds of a node
	// announcing itself (doubling from the first to the most).
	JoinFirst, JoinMax time.Duration
	// StatusEvery is how often the loop refreshes the status monitoring
	// reads; StatusWait is how long a status report waits for the step
	// under way (about monitoring, not the protocol: not derived).
	StatusEvery, StatusWait time.Duration

	// The node-to-node transport's timings (package peer), which are not
	// Raft's but the network's. PeerDial bounds opening a connection;
	// PeerRequest a request carrying Raft messages, and a stream's
	// opening. A stream's frame may go unacknowledged for StreamAck
	// before the stream is closed (a paused peer, a link that drops
	// without closing); a receiver closes a stream idle for StreamIdle
	// (a leader sends every tick); a peer that takes no streams gets a
	// request per batch for StreamRetry before one is tried again.
	PeerDial, PeerRequest time.Duration
	StreamAck, StreamIdle time.Duration
	StreamRetry           time.Duration
	// SnapshotTransfer bounds sending a snapshot or a repair's copy (a
	// large database over a slow link). SnapshotIdle is how long the
	// receiver of a snapshot waits for its next bytes before it gives the
	// transfer up: the HTTP server's own timeouts, which bound every other
	// request, would cut off a transfer that lasts longer than they do
	// however steadily it arrives.
	SnapshotTransfer, SnapshotIdle time.Duration
}

// TimingOf derives every timing from tick.
func TimingOf(tick time.Duration) Timing {
	const electionTicks = 7
	window := 20 * tick
	return Timing{
		Tick: tick, ElectionTicks: electionTicks, HeartbeatTicks: 1,
		ElectionWindow: window,
		ReadWait:       window, ReadResend: 2 * tick,
		ReadLease:      (electionTicks - 1) * tick * 8 / 10,
		ProposalResend: 10 * tick,
		ChangeResend:   2 * electionTicks * tick,
		PreferredAfter: 2 * electionTicks,
		HoldProposals:  time.Millisecond,
		RejoinEvery:    5 * tick, MissingAfter: 3 * window,
		JoinFirst: 2 * tick, JoinMax: window,
		StatusEvery: 20 * time.Millisecond, StatusWait: 50 * time.Millisecond,
		PeerDial: time.Second, PeerRequest: 5 * time.Second,
		StreamAck: 3 * time.Second, StreamIdle: 30 * time.Second, StreamRetry: time.Minute,
		SnapshotTransfer: 6 * time.Hour, SnapshotIdle: time.Minute,
	}
}

// DefaultTiming is the engine's timing table.
func DefaultTiming() Timing { return TimingOf(DefaultTick) }
