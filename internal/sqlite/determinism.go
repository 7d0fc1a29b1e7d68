package sqlite

/*
#include <stdlib.h>
typedef struct sqlite3 sqlite3;
typedef long long sqlite3_int64;
extern int sqlite3_test_control(int op, ...);
extern void sqlite3_set_last_insert_rowid(sqlite3*, sqlite3_int64);
extern sqlite3_int64 sqlite3_total_changes64(sqlite3*);
extern int sqlite3_db_cacheflush(sqlite3*);

// SQLITE_TESTCTRL_PRNG_SEED: with a NULL connection, the seed is x itself.
// The generator is reset, so its next draw starts the stream for x.
static int ddb_prng_seed(int x) { return sqlite3_test_control(28, x, (sqlite3*)0); }

#include <time.h>
static void ddb_tzset(void) { tzset(); }
*/
import "C"

import (
	"os"
	"sync"
)

// SQLite keeps one pseudo-random generator for the whole process. It picks
// a new rowid at random once a table's largest rowid is 9223372036854775807,
// and it names columns when a subquery or view has five or more columns of
// the same name. A node pins it to the log entry's seed while it runs the
// entry, so every node makes the same choices. prngMu keeps every store of
// the process (tests run several) from reseeding it under another.
var prngMu sync.Mutex

// LockPRNG takes the process's SQLite generator for one writer.
func LockPRNG() { prngMu.Lock() }

// TryLockPRNG is LockPRNG if the generator is free now; it reports
// whether it took it.
func TryLockPRNG() bool { return prngMu.TryLock() }

// UnlockPRNG releases what LockPRNG took.
func UnlockPRNG() { prngMu.Unlock() }

// SeedPRNG resets SQLite's generator to a stream determined by seed alone.
// The caller holds LockPRNG. A zero seed would mean "from the OS", so it is
// mapped to another fixed value.
func SeedPRNG(seed int64) {
	x := int32(seed) ^ int32(seed>>32)
	if x == 0 {
		x = 0x5eed
	}
	C.ddb_prng_seed(C.int(x))
}

// SetLastInsertID sets what sqlite3_last_insert_rowid reports until the
// next insert.
func (c *Conn) SetLastInsertID(v int64) { C.sqlite3_set_last_insert_rowid(c.db, C.sqlite3_int64(v)) }

// TotalChanges is the number of rows changed by every finished INSERT,
// UPDATE and DELETE (triggers included) since the connection opened.
func (c *Conn) TotalChanges() int64 { return int64(C.sqlite3_total_changes64(c.db)) }

// FlushCache writes the dirty pages of the open write transaction to the
// WAL now (they are not committed until COMMIT).
func (c *Conn) FlushCache() error {
	if rv := C.sqlite3_db_cacheflush(c.db); rv != codeOK {
		return c.lastError()
	}
	return nil
}

var utcOnce sync.Once

// UseUTC makes SQLite's 'localtime' and 'utc' modifiers work in UTC for the
// whole process. SQLite converts with the C library's local time zone,
// which is the host's: two nodes in different zones would store different
// values for the same entry. Every node therefore converts in UTC.
func UseUTC() {
	utcOnce.Do(func() {
		os.Setenv("TZ", "UTC") // with cgo this is the C library's environment too
		C.ddb_tzset()
	})
}
