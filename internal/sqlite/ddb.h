// Declarations shared by the package's C files. SQLite itself is compiled
// into the binary by github.com/mattn/go-sqlite3; its functions are
// declared here as the package uses them.
#ifndef DDB_H
#define DDB_H

typedef struct sqlite3 sqlite3;
typedef long long sqlite3_int64;

// A step budget (see Conn.SetStepBudget): what is left of it, and whether
// one is set. The progress handler spends it in thousands of instructions
// of SQLite's virtual machine; LIKE and GLOB spend it by the work their
// matching does inside one instruction (see match.c), zeroblob() by the
// bytes it makes (see blob.c).
typedef struct {
	sqlite3_int64 left; // spent once below 0
	int active;
} ddb_budget;

// ddb_register_match puts LIKE and GLOB with bounded, counted work in place
// of SQLite's on db; b is the connection's budget (it lives as long as db).
int ddb_register_match(sqlite3 *db, ddb_budget *b);

// DDB_BYTES_PER_STEP bytes that zeroblob() (and the store's randomblob())
// make cost one step of the budget (see blob.c).
#define DDB_BYTES_PER_STEP 4

// ddb_register_blob puts zeroblob() with its output counted against b in
// place of SQLite's on db (see blob.c).
int ddb_register_blob(sqlite3 *db, ddb_budget *b);

// A connection's generator of random() and randomblob() (see random.c):
// PCG-DXSM's 128-bit state, the budget what randomblob() makes is charged
// to, and the longest value it makes.
typedef struct {
	unsigned long long hi, lo;
	ddb_budget *budget;
	sqlite3_int64 max;
} ddb_rand;

// ddb_register_random puts random() and randomblob() drawing from r in
// place of SQLite's on db (r lives as long as db).
int ddb_register_random(sqlite3 *db, ddb_rand *r);

// The row changes a writer connection captured for the change stream (see
// changes.c and Conn.CaptureChanges): records appended by the capture
// triggers' calls of _ddb_change() and _ddb_vals(), in SQLite's order.
typedef struct {
	unsigned char *buf;
	sqlite3_int64 len, cap;
	sqlite3_int64 limit; // the most buf may hold; a call past it fails
	int off;             // nonzero: record nothing (see Conn.PauseCapture)
} ddb_changes;

// ddb_register_changes makes _ddb_change() and _ddb_vals() append to c on db.
int ddb_register_changes(sqlite3 *db, ddb_changes *c);

// ddb_set_authorizer makes SQLite consult the Go authorizer registered
// under handle (see auth.go), with the trigger or view an action runs in.
int ddb_set_authorizer(sqlite3 *db, unsigned long long handle);

#endif
