//go:build !ddb_faults

package faults

// Enabled: this build cannot switch on deliberate defects.
const Enabled = false

// FromEnv is always "": a release build has no defects to switch on.
func FromEnv() string { return "" }
