package sqlite

/*
#include <stdlib.h>
#include <string.h>
#include "ddb.h"

typedef struct sqlite3_file sqlite3_file;
typedef struct sqlite3_io_methods sqlite3_io_methods;
struct sqlite3_file { const sqlite3_io_methods *pMethods; };
struct sqlite3_io_methods {
	int iVersion;
	int (*xClose)(sqlite3_file*);
	int (*xRead)(sqlite3_file*, void*, int, sqlite3_int64);
	int (*xWrite)(sqlite3_file*, const void*, int, sqlite3_int64);
	int (*xTruncate)(sqlite3_file*, sqlite3_int64);
	int (*xSync)(sqlite3_file*, int);
	int (*xFileSize)(sqlite3_file*, sqlite3_int64*);
	int (*xLock)(sqlite3_file*, int);
	int (*xUnlock)(sqlite3_file*, int);
	int (*xCheckReservedLock)(sqlite3_file*, int*);
	int (*xFileControl)(sqlite3_file*, int, void*);
	int (*xSectorSize)(sqlite3_file*);
	int (*xDeviceCharacteristics)(sqlite3_file*);
	// Version 2 and 3 methods (shared memory, memory mapping) follow in
	// SQLite's struct; a counted file declares version 1 and has none.
};
typedef struct sqlite3_vfs sqlite3_vfs;
typedef void (*sqlite3_syscall_ptr)(void);
struct sqlite3_vfs {
	int iVersion;
	int szOsFile;
	int mxPathname;
	sqlite3_vfs *pNext;
	const char *zName;
	void *pAppData;
	int (*xOpen)(sqlite3_vfs*, const char*, sqlite3_file*, int, int*);
	int (*xDelete)(sqlite3_vfs*, const char*, int);
	int (*xAccess)(sqlite3_vfs*, const char*, int, int*);
	int (*xFullPathname)(sqlite3_vfs*, const char*, int, char*);
	void *(*xDlOpen)(sqlite3_vfs*, const char*);
	void (*xDlError)(sqlite3_vfs*, int, char*);
	void (*(*xDlSym)(sqlite3_vfs*, void*, const char*))(void);
	void (*xDlClose)(sqlite3_vfs*, void*);
	int (*xRandomness)(sqlite3_vfs*, int, char*);
	int (*xSleep)(sqlite3_vfs*, int);
	int (*xCurrentTime)(sqlite3_vfs*, double*);
	int (*xGetLastError)(sqlite3_vfs*, int, char*);
	int (*xCurrentTimeInt64)(sqlite3_vfs*, sqlite3_int64*);
	int (*xSetSystemCall)(sqlite3_vfs*, const char*, sqlite3_syscall_ptr);
	sqlite3_syscall_ptr (*xGetSystemCall)(sqlite3_vfs*, const char*);
	const char *(*xNextSystemCall)(sqlite3_vfs*, const char*);
};
extern sqlite3_vfs *sqlite3_vfs_find(const char*);
extern int sqlite3_test_control(int op, ...);
extern int sqlite3_vfs_register(sqlite3_vfs*, int);
extern int sqlite3_vfs_unregister(sqlite3_vfs*);

// A clock VFS is a copy of the default VFS (pAppData and szOsFile included,
// which the unix VFS relies on) whose clock can be pinned. Everything but
// the clock is the default VFS's own code.
typedef struct {
	sqlite3_vfs base;
	sqlite3_vfs *orig;
	sqlite3_int64 pinned; // Julian day in milliseconds; 0 = not pinned
	ddb_budget *budget;   // charged for temporary storage written; may be 0
} ddb_clock_vfs;

// What SQLite writes to a temporary file that a statement builds (a
// RETURNING result, a sort, a temporary b-tree for DISTINCT, GROUP BY or
// a materialized subquery, VACUUM's copy) costs a step of the budget for
// every DDB_TEMP_BYTES_PER_STEP bytes: a RETURNING write of 1 MB values
// writes about 2 MB of temporary file for each, and takes about half the
// time of an instruction per byte of value (BenchmarkStoredBytes), so the
// charge puts the write's time and its steps in step. Each such
// structure has a page cache of its own, fresh for the statement, so what
// it writes out depends on the statement and its data alone: the same on
// every node. (The statement journal and the database's own files are not
// counted: what they write depends on what the transaction did before.)
// The charge is spent like the progress handler's; the handler stops the
// statement at its next call once the budget is below 0.
#define DDB_TEMP_BYTES_PER_STEP 4
#define DDB_OPEN_TEMP_DB 0x00000200
#define DDB_OPEN_TRANSIENT_DB 0x00000400
#define DDB_OPEN_TEMP_JOURNAL 0x00001000
#define DDB_OPEN_COUNTED (DDB_OPEN_TEMP_DB | DDB_OPEN_TRANSIENT_DB | DDB_OPEN_TEMP_JOURNAL)

typedef struct {
	sqlite3_file base;     // its methods: ddb_counted_methods
	ddb_budget *budget;
	sqlite3_file *real;    // the default VFS's file, right after this header
	long long pad;         // keeps real 16-byte aligned
} ddb_counted_file;

#define REAL(f) (((ddb_counted_file*)(f))->real)
static int ddb_c_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int ddb_c_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off) { return REAL(f)->pMethods->xRead(REAL(f), p, n, off); }
static int ddb_c_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off) {
	ddb_budget *b = ((ddb_counted_file*)f)->budget;
	if (b->active) b->left -= n / DDB_TEMP_BYTES_PER_STEP;
	return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}
static int ddb_c_truncate(sqlite3_file *f, sqlite3_int64 n) { return REAL(f)->pMethods->xTruncate(REAL(f), n); }
static int ddb_c_sync(sqlite3_file *f, int flags) { return REAL(f)->pMethods->xSync(REAL(f), flags); }
static int ddb_c_size(sqlite3_file *f, sqlite3_int64 *n) { return REAL(f)->pMethods->xFileSize(REAL(f), n); }
static int ddb_c_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int ddb_c_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int ddb_c_reserved(sqlite3_file *f, int *out) { return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out); }
static int ddb_c_control(sqlite3_file *f, int op, void *arg) { return REAL(f)->pMethods->xFileControl(REAL(f), op, arg); }
static int ddb_c_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int ddb_c_device(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
#undef REAL
static const sqlite3_io_methods ddb_counted_methods = {
	1, ddb_c_close, ddb_c_read, ddb_c_write, ddb_c_truncate, ddb_c_sync, ddb_c_size,
	ddb_c_lock, ddb_c_unlock, ddb_c_reserved, ddb_c_control, ddb_c_sector, ddb_c_device,
};

static int ddb_clock_now64(sqlite3_vfs *p, sqlite3_int64 *out) {
	ddb_clock_vfs *v = (ddb_clock_vfs*)p;
	if (v->pinned) { *out = v->pinned; return 0; }
	if (v->orig->iVersion >= 2 && v->orig->xCurrentTimeInt64) return v->orig->xCurrentTimeInt64(v->orig, out);
	double d; int rc = v->orig->xCurrentTime(v->orig, &d);
	*out = (sqlite3_int64)(d * 86400000.0);
	return rc;
}

static int ddb_clock_now(sqlite3_vfs *p, double *out) {
	sqlite3_int64 t; int rc = ddb_clock_now64(p, &t);
	*out = t / 86400000.0;
	return rc;
}

// A temporary file (zName NULL: a spilled sorter, a RETURNING buffer, a
// statement journal) is named by the default VFS from SQLite's
// process-wide generator, which the writer pins to each log entry's seed:
// whether a statement spills to a temporary file depends on the page cache
// and on what the transaction did before, not on the entry alone. So the
// generator is saved before the name is drawn and restored after
// (SQLITE_TESTCTRL_PRNG_SAVE, _RESTORE): opening a temporary file changes
// nothing the entry computes. The file is unlinked as soon as it is open,
// so the same name drawn again is free again.
//
// A file whose writes are counted (see DDB_TEMP_BYTES_PER_STEP) is the
// default VFS's file behind a header whose methods count, then forward.
static int ddb_clock_open(sqlite3_vfs *p, const char *zName, sqlite3_file *f, int flags, int *outFlags) {
	ddb_clock_vfs *v = (ddb_clock_vfs*)p;
	if (zName) return v->orig->xOpen(p, zName, f, flags, outFlags);
	ddb_counted_file *cf = 0;
	if (v->budget && (flags & DDB_OPEN_COUNTED)) {
		cf = (ddb_counted_file*)f;
		cf->budget = v->budget;
		cf->real = (sqlite3_file*)(cf + 1);
		cf->real->pMethods = 0;
		f = cf->real;
	}
	sqlite3_test_control(5); // SQLITE_TESTCTRL_PRNG_SAVE
	int rc = v->orig->xOpen(p, zName, f, flags, outFlags);
	sqlite3_test_control(6); // SQLITE_TESTCTRL_PRNG_RESTORE
	if (cf) cf->base.pMethods = cf->real->pMethods ? &ddb_counted_methods : 0;
	return rc;
}

static ddb_clock_vfs *ddb_clock_new(const char *name) {
	sqlite3_vfs *orig = sqlite3_vfs_find(0);
	if (!orig) return 0;
	ddb_clock_vfs *v = (ddb_clock_vfs*)calloc(1, sizeof(ddb_clock_vfs));
	if (!v) return 0;
	memcpy(&v->base, orig, sizeof(sqlite3_vfs));
	v->orig = orig;
	v->base.pNext = 0;
	v->base.zName = strdup(name);
	v->base.xCurrentTime = ddb_clock_now;
	v->base.xOpen = ddb_clock_open;
	v->base.szOsFile = orig->szOsFile + sizeof(ddb_counted_file);
	if (v->base.iVersion >= 2) v->base.xCurrentTimeInt64 = ddb_clock_now64;
	if (sqlite3_vfs_register(&v->base, 0) != 0) { free((void*)v->base.zName); free(v); return 0; }
	return v;
}

static void ddb_clock_free(ddb_clock_vfs *v) {
	sqlite3_vfs_unregister(&v->base);
	free((void*)v->base.zName);
	free(v);
}
*/
import "C"

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// unixEpochJulianMs is the Julian day number of 1970-01-01 00:00 UTC, in ms.
const unixEpochJulianMs = 210866760000000

var clockSeq atomic.Uint64

// Clock is a VFS, registered under Name, that behaves exactly like the
// default VFS except that its clock can be pinned, and that naming a
// temporary file leaves SQLite's generator as it was (see ddb_clock_open). SQLite asks the VFS of
// a connection for "now" (CURRENT_TIMESTAMP, CURRENT_DATE, CURRENT_TIME and
// every date/time function given 'now', in defaults and triggers too), so a
// connection opened with ?vfs=Name sees the pinned time. Only the goroutine
// using that connection may pin or unpin.
type Clock struct {
	Name string
	v    *C.ddb_clock_vfs
}

// NewClock registers a new clock VFS.
func NewClock() (*Clock, error) {
	name := fmt.Sprintf("ddb-clock-%d", clockSeq.Add(1))
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	v := C.ddb_clock_new(cname)
	if v == nil {
		return nil, fmt.Errorf("register VFS %s: failed", name)
	}
	return &Clock{Name: name, v: v}, nil
}

// Pin makes "now" be unixMs (milliseconds since 1970) until Unpin.
func (c *Clock) Pin(unixMs int64) { c.v.pinned = C.sqlite3_int64(unixMs + unixEpochJulianMs) }

// Unpin returns the clock to real time.
func (c *Clock) Unpin() { c.v.pinned = 0 }

// TempBytesPerStep bytes written to a temporary file cost one step of a
// budget (see CountTempWrites).
const TempBytesPerStep = C.DDB_TEMP_BYTES_PER_STEP

// CountTempWrites charges what c's statements write to temporary files
// (see DDB_TEMP_BYTES_PER_STEP) to c's step budget while one is set. c must
// have been opened with ?vfs=Name, and be closed before the Clock.
func (c *Clock) CountTempWrites(conn *Conn) { c.v.budget = conn.budget }

// StopCounting forgets the connection CountTempWrites named, which is about
// to close; temporary storage written meanwhile counts against nothing.
func (c *Clock) StopCounting() { c.v.budget = nil }

// Close unregisters the VFS. Every connection using it must be closed first.
func (c *Clock) Close() {
	if c.v != nil {
		C.ddb_clock_free(c.v)
		c.v = nil
	}
}
