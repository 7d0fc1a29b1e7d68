package sqlite

import "errors"

// Environmental reports whether err is SQLite's report of the machine
// rather than of the SQL: an I/O error, a file damaged, unreadable,
// read-only or locked by another process, or the disk full. The same
// statement on another machine, or later on this one, may succeed. dir is
// where the database lies.
//
// Some of these codes also come from the SQL itself, the same on every
// machine, and are not counted: SQLITE_CORRUPT_VTAB (a full-text or R-Tree
// table's content malformed, through its shadow tables), and SQLITE_FULL
// from a table whose AUTOINCREMENT counter is at its largest value. SQLite
// reports the disk full with that same code and message, so SQLITE_FULL
// counts as the machine's only while the disk holding the database, or a
// directory SQLite may keep temporary files in, is nearly full.
// SQLITE_NOMEM is not counted: a memory limit a statement runs into would
// stop every node alike, at every restart.
func Environmental(err error, dir string) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case ErrCodeBusy,
		8,  // SQLITE_READONLY
		10, // SQLITE_IOERR
		14, // SQLITE_CANTOPEN
		15, // SQLITE_PROTOCOL
		26: // SQLITE_NOTADB
		return true
	case 11: // SQLITE_CORRUPT
		return e.Extended != 11|1<<8 // SQLITE_CORRUPT_VTAB
	case 13: // SQLITE_FULL
		return diskNearlyFull(dir)
	}
	return false
}

// nearlyFull is the free space below which a file system counts as full:
// SQLite fails a write with SQLITE_FULL once a page does not fit, and a
// batch of entries writes megabytes.
const nearlyFull = 256 << 20
