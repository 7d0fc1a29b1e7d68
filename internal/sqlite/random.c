// random() and randomblob() drawn from a generator of the connection's own,
// in C.
//
// A writer draws them from each log entry's seed (Conn.SeedRandom), so
// every node computes the same values; readers from a seed of their own.
// The generator is PCG-DXSM with 128 bits of state, word for word the one
// Go's math/rand/v2 PCG is (the state PCG(seed1, seed2) starts in is
// hi = seed1, lo = seed2): these functions were Go functions drawing from
// it, called through the driver for every value, which cost about 2.4 µs a
// call (a fifth of the apply of a write filling rows with randomblob()),
// and they give exactly the values, errors and budget charges the Go
// functions gave, so a log applies the same as before (TestRandomIsGosPCG).
//
// randomblob(n) is n bytes of successive 64-bit draws, each little-endian
// (the last one cut short); n below 1 is 1; past the connection's longest
// value it fails ("string or blob too big") before anything is made; what
// it makes is charged to the step budget as zeroblob() charges (see
// blob.c). Both take exactly one argument of type INTEGER: another type
// fails ("argument must be an INTEGER").
#include "ddb.h"

typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;
extern sqlite3_int64 sqlite3_value_int64(sqlite3_value*);
extern int sqlite3_value_type(sqlite3_value*);
extern void sqlite3_result_int64(sqlite3_context*, sqlite3_int64);
extern void sqlite3_result_blob64(sqlite3_context*, const void*, unsigned long long, void(*)(void*));
extern void sqlite3_result_error(sqlite3_context*, const char*, int);
extern void sqlite3_result_error_nomem(sqlite3_context*);
extern void *sqlite3_user_data(sqlite3_context*);
extern void *sqlite3_malloc64(unsigned long long);
extern void sqlite3_free(void*);
extern int sqlite3_create_function_v2(sqlite3*, const char*, int, int, void*,
	void (*)(sqlite3_context*,int,sqlite3_value**), void (*)(sqlite3_context*,int,sqlite3_value**),
	void (*)(sqlite3_context*), void(*)(void*));

#define DDB_UTF8 1
#define DDB_INTEGER 1

// ddb_rand_next advances the state (state = state * mul + inc, modulo
// 2^128) and returns the DXSM output of the new state.
static unsigned long long ddb_rand_next(ddb_rand *r) {
	const unsigned __int128 mul = ((unsigned __int128)2549297995355413924ULL << 64) | 4865540595714422341ULL;
	const unsigned __int128 inc = ((unsigned __int128)6364136223846793005ULL << 64) | 1442695040888963407ULL;
	unsigned __int128 s = ((unsigned __int128)r->hi << 64) | r->lo;
	s = s * mul + inc;
	unsigned long long hi = (unsigned long long)(s >> 64), lo = (unsigned long long)s;
	r->hi = hi;
	r->lo = lo;
	hi ^= hi >> 32;
	hi *= 0xda942042e4dd58b5ULL;
	hi ^= hi >> 48;
	hi *= (lo | 1);
	return hi;
}

static void ddb_random(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	(void)argc;
	(void)argv;
	ddb_rand *r = (ddb_rand*)sqlite3_user_data(ctx);
	sqlite3_result_int64(ctx, (sqlite3_int64)ddb_rand_next(r));
}

static void ddb_randomblob(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	(void)argc;
	ddb_rand *r = (ddb_rand*)sqlite3_user_data(ctx);
	if (sqlite3_value_type(argv[0]) != DDB_INTEGER) {
		sqlite3_result_error(ctx, "argument must be an INTEGER", -1);
		return;
	}
	sqlite3_int64 n = sqlite3_value_int64(argv[0]);
	if (n < 1) n = 1;
	if (n > r->max) {
		sqlite3_result_error(ctx, "string or blob too big", -1);
		return;
	}
	if (r->budget->active) {
		r->budget->left -= n / DDB_BYTES_PER_STEP;
		if (r->budget->left < 0) {
			sqlite3_result_error(ctx, "the write made more bytes than its step budget allows", -1);
			return;
		}
	}
	unsigned char *b = (unsigned char*)sqlite3_malloc64((unsigned long long)n);
	if (!b) {
		sqlite3_result_error_nomem(ctx);
		return;
	}
	for (sqlite3_int64 i = 0; i < n; i += 8) {
		unsigned long long w = ddb_rand_next(r);
		for (int j = 0; j < 8 && i + j < n; j++) {
			b[i + j] = (unsigned char)(w >> (8 * j));
		}
	}
	sqlite3_result_blob64(ctx, b, (unsigned long long)n, sqlite3_free);
}

int ddb_register_random(sqlite3 *db, ddb_rand *r) {
	int rc = sqlite3_create_function_v2(db, "random", 0, DDB_UTF8, r, ddb_random, 0, 0, 0);
	if (rc) return rc;
	return sqlite3_create_function_v2(db, "randomblob", 1, DDB_UTF8, r, ddb_randomblob, 0, 0, 0);
}
