// Capture of row changes for the change stream.
//
// The store puts TEMP triggers on the writer connection (AFTER INSERT,
// UPDATE and DELETE of every user table) whose bodies call these two
// functions: _ddb_change(op, shape, old rowid, new rowid) starts a record,
// and _ddb_vals(v, ...) appends values to it (a trigger calls it for the
// row before and after the change, in chunks, as a function takes at most
// SQLITE_LIMIT_FUNCTION_ARG arguments). They encode the values exactly,
// with their SQLite types, into the connection's ddb_changes buffer, which
// the store reads, cuts back on a rollback, and stores with the entry.
//
// A record: op (one byte), shape (uvarint), the old and new rowid (values),
// then the values. A value: a tag byte and its payload, as the log's own
// encoding of parameters (internal/rlog): NULL; an integer (zigzag
// varint); a real (8 IEEE bytes, big-endian); text or blob (uvarint length
// and bytes).
#include <string.h>
#include "ddb.h"

typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;
extern int sqlite3_value_type(sqlite3_value*);
extern sqlite3_int64 sqlite3_value_int64(sqlite3_value*);
extern double sqlite3_value_double(sqlite3_value*);
extern const void *sqlite3_value_blob(sqlite3_value*);
extern const unsigned char *sqlite3_value_text(sqlite3_value*);
extern int sqlite3_value_bytes(sqlite3_value*);
extern void *sqlite3_user_data(sqlite3_context*);
extern void sqlite3_result_error(sqlite3_context*, const char*, int);
extern void sqlite3_result_error_nomem(sqlite3_context*);
extern void *sqlite3_realloc64(void*, unsigned long long);
extern int sqlite3_create_function_v2(sqlite3*, const char*, int, int, void*,
	void (*)(sqlite3_context*,int,sqlite3_value**), void (*)(sqlite3_context*,int,sqlite3_value**),
	void (*)(sqlite3_context*), void(*)(void*));
extern int sqlite3_set_authorizer(sqlite3*, int (*)(void*,int,const char*,const char*,const char*,const char*), void*);

#define DDB_UTF8 1
#define DDB_INTEGER 1
#define DDB_FLOAT 2
#define DDB_TEXT 3
#define DDB_BLOB 4
#define DDB_NULL 5

enum { tagNull, tagInt, tagReal, tagText, tagBlob };

// room makes space for n more bytes; 0 when the limit or memory forbids.
static int room(sqlite3_context *ctx, ddb_changes *c, sqlite3_int64 n) {
	if (c->len + n > c->limit) {
		sqlite3_result_error(ctx, "the write changes more than the change stream holds for one log entry: write fewer rows at a time, or turn the change stream off", -1);
		return 0;
	}
	if (c->len + n <= c->cap) return 1;
	sqlite3_int64 cap = c->cap ? c->cap : 4096;
	while (cap < c->len + n) cap *= 2;
	unsigned char *b = sqlite3_realloc64(c->buf, (unsigned long long)cap);
	if (!b) {
		sqlite3_result_error_nomem(ctx);
		return 0;
	}
	c->buf = b;
	c->cap = cap;
	return 1;
}

static void put_uvarint(ddb_changes *c, unsigned long long v) {
	while (v >= 0x80) {
		c->buf[c->len++] = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	c->buf[c->len++] = (unsigned char)v;
}

static int put_value(sqlite3_context *ctx, ddb_changes *c, sqlite3_value *v) {
	switch (sqlite3_value_type(v)) {
	case DDB_INTEGER: {
		if (!room(ctx, c, 11)) return 0;
		sqlite3_int64 x = sqlite3_value_int64(v);
		c->buf[c->len++] = tagInt;
		put_uvarint(c, ((unsigned long long)x << 1) ^ (unsigned long long)(x >> 63));
		return 1;
	}
	case DDB_FLOAT: {
		if (!room(ctx, c, 9)) return 0;
		double d = sqlite3_value_double(v);
		unsigned long long u;
		memcpy(&u, &d, 8);
		c->buf[c->len++] = tagReal;
		for (int i = 7; i >= 0; i--) c->buf[c->len++] = (unsigned char)(u >> (8 * i));
		return 1;
	}
	case DDB_TEXT:
	case DDB_BLOB: {
		int text = sqlite3_value_type(v) == DDB_TEXT;
		const void *p = text ? (const void*)sqlite3_value_text(v) : sqlite3_value_blob(v);
		sqlite3_int64 n = sqlite3_value_bytes(v);
		if (!room(ctx, c, 11 + n)) return 0;
		c->buf[c->len++] = text ? tagText : tagBlob;
		put_uvarint(c, (unsigned long long)n);
		if (n > 0) memcpy(c->buf + c->len, p, (size_t)n);
		c->len += n;
		return 1;
	}
	default:
		if (!room(ctx, c, 1)) return 0;
		c->buf[c->len++] = tagNull;
		return 1;
	}
}

// _ddb_change(op, shape, old rowid, new rowid)
static void ddb_change(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	ddb_changes *c = (ddb_changes*)sqlite3_user_data(ctx);
	if (c->off || !room(ctx, c, 11)) return;
	c->buf[c->len++] = (unsigned char)sqlite3_value_int64(argv[0]);
	put_uvarint(c, (unsigned long long)sqlite3_value_int64(argv[1]));
	put_value(ctx, c, argv[2]) && put_value(ctx, c, argv[3]);
}

// _ddb_vals(v, ...)
static void ddb_vals(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	ddb_changes *c = (ddb_changes*)sqlite3_user_data(ctx);
	if (c->off) return;
	for (int i = 0; i < argc; i++) {
		if (!put_value(ctx, c, argv[i])) return;
	}
}

int ddb_register_changes(sqlite3 *db, ddb_changes *c) {
	int rc = sqlite3_create_function_v2(db, "_ddb_change", 4, DDB_UTF8, c, ddb_change, 0, 0, 0);
	if (rc == 0) rc = sqlite3_create_function_v2(db, "_ddb_vals", -1, DDB_UTF8, c, ddb_vals, 0, 0, 0);
	return rc;
}

// The authorizer, with the fifth argument the driver's leaves out: the
// innermost trigger or view the action is coded for.
extern int ddbAuthorize(unsigned long long handle, int op, char *a1, char *a2, char *a3, char *a4);

static int ddb_authorize(void *h, int op, const char *a1, const char *a2, const char *a3, const char *a4) {
	return ddbAuthorize((unsigned long long)(unsigned long)h, op, (char*)a1, (char*)a2, (char*)a3, (char*)a4);
}

int ddb_set_authorizer(sqlite3 *db, unsigned long long handle) {
	return sqlite3_set_authorizer(db, handle ? ddb_authorize : 0, (void*)(unsigned long)handle);
}
