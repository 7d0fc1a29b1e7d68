// Package faults holds the switch of the deliberate defects the
// fault-injection suite uses to prove that its checkers catch broken
// guarantees. They exist only in binaries built with the build tag
// ddb_faults, which the test harness sets (internal/testcluster); release
// binaries (go build ./master ./node) cannot switch them on, and the
// compiler leaves their code out, since Enabled is a false constant there.
package faults
