//go:build ddb_faults

package faults

import "os"

// Enabled: this build can switch on deliberate defects.
const Enabled = true

// FromEnv is the defect $DDB_INJECT_BUG names ("" for none).
func FromEnv() string { return os.Getenv("DDB_INJECT_BUG") }
