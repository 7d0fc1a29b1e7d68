// Package faults holds the switch of the deliberate defects the
// fault-injection suite uses to prove that its checkers catch broken
// guarantees. They exist only in binaries built with the build tag
// ddb_faults, which the test harness sets (internal/testcluster); release
// binaries (go build ./master ./node) cannot switch them on, and the
// compiler leaves their code out, since Enabled is a false constant there.
package faults

import (
	"slices"
	"strings"
)

// Bug names a deliberate defect (or a forced schedule) that a fault build
// can switch on: a comma-separated list of them is a node's
// DDB_INJECT_BUG, consensus.EngineConfig.InjectBug, store.Options.InjectBug
// and sim.Options.Bug.
type Bug string

// On says whether the comma-separated list of defects names b, in a build
// that can switch defects on. It is small enough to be inlined, and so
// are its callers' wrappers: in a release build, where Enabled is a false
// constant, the compiler drops the call and the defect's name with it.
func On(list string, b Bug) bool { return Enabled && listed(list, b) }

func listed(list string, b Bug) bool {
	return list != "" && slices.Contains(strings.Split(list, ","), string(b))
}

// The defects of the replication engine (see consensus.EngineConfig.InjectBug).
const (
	AckBeforeCommit   Bug = "ack-before-commit"
	StaleStrongRead   Bug = "stale-strong-read"
	EndlessLease      Bug = "endless-lease" // a leader's read lease never ends
	AdmitFreshVoter   Bug = "admit-fresh-voter"
	CreateAlone       Bug = "create-alone"
	RejoinOnce        Bug = "rejoin-once"
	TransferMidRejoin Bug = "transfer-mid-rejoin"
)

// The defects of the store (see store.Options.InjectBug).
const (
	SkipEntry         Bug = "skip-entry"
	PartialApply      Bug = "partial-apply"
	UnpinnedClock     Bug = "unpinned-clock"
	UnpinnedPRNG      Bug = "unpinned-prng"
	UnpinnedState     Bug = "unpinned-state"
	IncrementalSchema Bug = "incremental-schema"
	StaleReaderStats  Bug = "stale-reader-stats"
)
