//go:build unix

package sqlite

import (
	"os"
	"syscall"
)

// diskNearlyFull reports whether the file system of dir, or of a directory
// SQLite may put temporary files in (SQLITE_TMPDIR, TMPDIR, /var/tmp,
// /usr/tmp, /tmp), has less than nearlyFull bytes free for this process.
func diskNearlyFull(dir string) bool {
	for _, d := range []string{dir, os.Getenv("SQLITE_TMPDIR"), os.Getenv("TMPDIR"), "/var/tmp", "/usr/tmp", "/tmp"} {
		if d == "" {
			continue
		}
		var st syscall.Statfs_t
		if syscall.Statfs(d, &st) == nil && st.Bavail*uint64(st.Bsize) < nearlyFull {
			return true
		}
	}
	return false
}
