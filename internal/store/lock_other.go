//go:build !unix

package store

import (
	"os"
	"path/filepath"
)

// lockFile does nothing where flock is not available.
func lockFile(path string) (*os.File, error) { return nil, nil }

// sameFileSystem, where a file system's device is not at hand, holds only
// for one directory.
func sameFileSystem(a, b string) bool {
	aa, err := filepath.Abs(a)
	if err != nil {
		return false
	}
	bb, err := filepath.Abs(b)
	return err == nil && aa == bb
}
