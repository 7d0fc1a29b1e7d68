//go:build !unix

package sqlite

// diskNearlyFull cannot tell here how much room a disk has: SQLITE_FULL
// counts as the machine's (the node stops rather than record a failure
// that may be its own alone).
func diskNearlyFull(string) bool { return true }
