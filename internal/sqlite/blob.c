// zeroblob() whose output is counted.
//
// It makes a value of up to SQLITE_LIMIT_LENGTH bytes in one instruction
// of SQLite's virtual machine, and a write that stores the value pays for
// every byte of it on every node: storing a byte in a table takes about a
// quarter of the time of an instruction (BenchmarkStoredBytes: 0.57 steps'
// time for a byte stored and returned, half of which is the RETURNING
// result's temporary file, charged on its own in clock.go). The step
// budget counts instructions, so 6,000 rows of zeroblob(1000000 + x) cost
// a few thousand steps and seconds of storing. This function gives
// SQLite's results exactly (the same value, the same limits and errors)
// and charges DDB_BYTES_PER_STEP bytes of what it makes as one step of the
// connection's step budget, so such a write runs out of its budget as one
// that runs too long does, at the same value on every node. (SQLite
// computes zeroblob() of a constant once per statement, and then it is
// charged once.) randomblob(), which draws from each log entry's seed, is
// the store's, and charges the same through Conn.ChargeMade.
#include "ddb.h"

typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;
extern sqlite3_int64 sqlite3_value_int64(sqlite3_value*);
extern int sqlite3_result_zeroblob64(sqlite3_context*, unsigned long long);
extern void sqlite3_result_error_code(sqlite3_context*, int);
extern void sqlite3_result_error_toobig(sqlite3_context*);
extern void *sqlite3_user_data(sqlite3_context*);
extern sqlite3 *sqlite3_context_db_handle(sqlite3_context*);
extern int sqlite3_limit(sqlite3*, int, int);
extern int sqlite3_create_function_v2(sqlite3*, const char*, int, int, void*,
	void (*)(sqlite3_context*,int,sqlite3_value**), void (*)(sqlite3_context*,int,sqlite3_value**),
	void (*)(sqlite3_context*), void(*)(void*));

#define DDB_INTERRUPT 9
#define DDB_LIMIT_LENGTH 0
#define DDB_UTF8 1
#define DDB_DETERMINISTIC 0x000000800
#define DDB_INNOCUOUS 0x000200000

// ddb_charge_bytes spends n bytes on ctx's budget; nonzero (and the
// function's error set) once the budget is spent.
static int ddb_charge_bytes(sqlite3_context *ctx, sqlite3_int64 n) {
	ddb_budget *b = (ddb_budget*)sqlite3_user_data(ctx);
	if (!b->active) return 0;
	b->left -= n / DDB_BYTES_PER_STEP;
	if (b->left < 0) {
		sqlite3_result_error_code(ctx, DDB_INTERRUPT);
		return 1;
	}
	return 0;
}

// As SQLite's: a negative length is 0; past SQLITE_LIMIT_LENGTH the error
// is "string or blob too big".
static void ddb_zeroblob(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	sqlite3_int64 n = sqlite3_value_int64(argv[0]);
	if (n < 0) n = 0;
	if (n > sqlite3_limit(sqlite3_context_db_handle(ctx), DDB_LIMIT_LENGTH, -1)) {
		sqlite3_result_error_toobig(ctx);
		return;
	}
	if (ddb_charge_bytes(ctx, n)) return;
	int rc = sqlite3_result_zeroblob64(ctx, (unsigned long long)n);
	if (rc) sqlite3_result_error_code(ctx, rc);
}

int ddb_register_blob(sqlite3 *db, ddb_budget *b) {
	return sqlite3_create_function_v2(db, "zeroblob", 1, DDB_UTF8 | DDB_DETERMINISTIC | DDB_INNOCUOUS, b, ddb_zeroblob, 0, 0, 0);
}
