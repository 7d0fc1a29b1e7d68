package sqlite

/*
#include <stdlib.h>
#include "ddb.h"
extern void sqlite3_free(void*);
extern void *sqlite3_realloc64(void*, unsigned long long);
*/
import "C"

import (
	"errors"
	"unsafe"
)

// MaxCapturedBytes is the most one capture (one log entry's row changes)
// may hold. A write whose changes would take more fails, on every node
// alike, since every node captures the same changes: memory for the change
// stream is bounded like everything else a request costs.
const MaxCapturedBytes = 32 << 20

// Captured is the row changes the connection's capture triggers recorded
// since the last ResetCapture (see changes.c for the format). The slice
// is valid until the next statement runs; copy it to keep it.
func (c *Conn) Captured() []byte {
	if c.changes == nil || c.changes.len == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(c.changes.buf)), int(c.changes.len))
}

// CaptureMark is where the capture ends now: TruncateCapture(mark) undoes
// what was captured after it (a savepoint rolled back).
func (c *Conn) CaptureMark() int {
	if c.changes == nil {
		return 0
	}
	return int(c.changes.len)
}

// TruncateCapture drops what was captured after mark.
func (c *Conn) TruncateCapture(mark int) {
	if c.changes != nil && int64(mark) < int64(c.changes.len) {
		c.changes.len = C.sqlite3_int64(mark)
	}
}

// AppendCapture appends a record the caller encoded (a schema change).
func (c *Conn) AppendCapture(rec []byte) error {
	ch := c.changes
	if ch == nil {
		return errors.New("no capture on this connection")
	}
	if int64(ch.len)+int64(len(rec)) > int64(ch.limit) {
		return errors.New("the write changes more than the change stream holds for one log entry: write fewer rows at a time, or turn the change stream off")
	}
	for int64(ch.len)+int64(len(rec)) > int64(ch.cap) {
		cp := int64(ch.cap) * 2
		if cp == 0 {
			cp = 4096
		}
		b := C.sqlite3_realloc64(unsafe.Pointer(ch.buf), C.ulonglong(cp))
		if b == nil {
			return errors.New("out of memory capturing a change")
		}
		ch.buf, ch.cap = (*C.uchar)(b), C.sqlite3_int64(cp)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(ch.buf)), int(ch.cap))[ch.len:], rec)
	ch.len += C.sqlite3_int64(len(rec))
	return nil
}

// PauseCapture stops the capture triggers from recording (pause true)
// until it is called again with false.
func (c *Conn) PauseCapture(pause bool) {
	if c.changes != nil {
		c.changes.off = 0
		if pause {
			c.changes.off = 1
		}
	}
}

// registerChanges gives the connection its capture buffer and functions.
func (c *Conn) registerChanges() error {
	c.changes = (*C.ddb_changes)(C.calloc(1, C.size_t(unsafe.Sizeof(C.ddb_changes{}))))
	c.changes.limit = MaxCapturedBytes
	if rc := C.ddb_register_changes(c.db, c.changes); rc != codeOK {
		return c.lastError()
	}
	return nil
}

// freeChanges releases the capture buffer once the connection is closed.
func (c *Conn) freeChanges() {
	if c.changes != nil {
		C.sqlite3_free(unsafe.Pointer(c.changes.buf))
		C.free(unsafe.Pointer(c.changes))
		c.changes = nil
	}
}
