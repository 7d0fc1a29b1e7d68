// Package sqlite is the thin layer between the project and the SQLite C
// library that github.com/mattn/go-sqlite3 compiles into every binary.
//
// The driver is used to open connections (DSN pragmas, functions, the
// authorizer); this package steps statements itself, because the driver
// converts TEXT and INTEGER values in columns declared TIMESTAMP, DATETIME,
// DATE or BOOLEAN into Go types and cannot give them back unchanged, and it
// does not expose where one statement of a multi-statement string ends. Both
// matter here: values must round-trip exactly, and every statement of a
// string must be classified on its own.
package sqlite

/*
#include <stdlib.h>
#include <string.h>
#include "ddb.h"

typedef struct sqlite3_stmt sqlite3_stmt;
typedef struct sqlite3_backup sqlite3_backup;

extern int sqlite3_prepare_v2(sqlite3*, const char*, int, sqlite3_stmt**, const char**);
extern int sqlite3_step(sqlite3_stmt*);
extern int sqlite3_reset(sqlite3_stmt*);
extern int sqlite3_clear_bindings(sqlite3_stmt*);
extern int sqlite3_finalize(sqlite3_stmt*);
extern sqlite3_int64 sqlite3_memory_used(void);
extern sqlite3_int64 sqlite3_memory_highwater(int);
extern int sqlite3_column_count(sqlite3_stmt*);
extern const char *sqlite3_column_name(sqlite3_stmt*, int);
extern const char *sqlite3_column_decltype(sqlite3_stmt*, int);
extern int sqlite3_column_type(sqlite3_stmt*, int);
extern sqlite3_int64 sqlite3_column_int64(sqlite3_stmt*, int);
extern double sqlite3_column_double(sqlite3_stmt*, int);
extern const unsigned char *sqlite3_column_text(sqlite3_stmt*, int);
extern const void *sqlite3_column_blob(sqlite3_stmt*, int);
extern int sqlite3_column_bytes(sqlite3_stmt*, int);
extern int sqlite3_bind_parameter_count(sqlite3_stmt*);
extern const char *sqlite3_bind_parameter_name(sqlite3_stmt*, int);
extern int sqlite3_bind_int64(sqlite3_stmt*, int, sqlite3_int64);
extern int sqlite3_bind_double(sqlite3_stmt*, int, double);
extern int sqlite3_bind_null(sqlite3_stmt*, int);
extern int sqlite3_bind_text(sqlite3_stmt*, int, const char*, int, void(*)(void*));
extern int sqlite3_bind_blob(sqlite3_stmt*, int, const void*, int, void(*)(void*));
extern int sqlite3_bind_zeroblob(sqlite3_stmt*, int, int);
extern int sqlite3_stmt_readonly(sqlite3_stmt*);
extern int sqlite3_stmt_isexplain(sqlite3_stmt*);
extern sqlite3_int64 sqlite3_changes64(sqlite3*);
extern sqlite3_int64 sqlite3_last_insert_rowid(sqlite3*);
extern int sqlite3_get_autocommit(sqlite3*);
extern void sqlite3_interrupt(sqlite3*);
extern const char *sqlite3_errmsg(sqlite3*);
extern int sqlite3_extended_errcode(sqlite3*);
extern sqlite3_backup *sqlite3_backup_init(sqlite3*, const char*, sqlite3*, const char*);
extern int sqlite3_backup_step(sqlite3_backup*, int);
extern int sqlite3_backup_finish(sqlite3_backup*);
extern int sqlite3_wal_checkpoint_v2(sqlite3*, const char*, int, int*, int*);
extern int sqlite3_complete(const char*);
extern int sqlite3_auto_extension(void(*)(void));
extern int sqlite3_libversion_number(void);
extern void sqlite3_progress_handler(sqlite3*, int, int(*)(void*), void*);
extern int sqlite3_stmt_status(sqlite3_stmt*, int, int);

// A step budget: SQLite calls the progress handler every DDB_BUDGET_OPS
// instructions of its virtual machine, at points fixed by the statement's
// program and data, so a budget runs out at the same instruction on any
// machine; the statement then stops with SQLITE_INTERRUPT.
#define DDB_BUDGET_OPS 1000
static int ddb_budget_tick(void *p) {
	ddb_budget *b = (ddb_budget*)p;
	b->left -= DDB_BUDGET_OPS;
	return b->left < 0;
}
static void ddb_set_budget(sqlite3 *db, ddb_budget *b) { b->active = 1; sqlite3_progress_handler(db, DDB_BUDGET_OPS, ddb_budget_tick, b); }
static void ddb_clear_budget(sqlite3 *db, ddb_budget *b) { b->active = 0; b->left = 0; sqlite3_progress_handler(db, 0, 0, 0); }

// Each new connection is reported by SQLite itself: an auto-extension is
// called with the new handle while sqlite3_open_v2 runs, on the opening
// thread, which keeps it until the opener takes it.
static __thread sqlite3 *ddb_opened;
static int ddb_capture(sqlite3 *db, char **err, const void *api) { ddb_opened = db; return 0; }
static int ddb_install_capture(void) { return sqlite3_auto_extension((void(*)(void))ddb_capture); }
static sqlite3 *ddb_take_opened(void) { sqlite3 *db = ddb_opened; ddb_opened = 0; return db; }

// Linear-time instr() and replace(). SQLite's own compare the pattern at
// every position (time in the product of the two lengths: a 1.4 MB instr()
// took seconds inside one instruction, where neither a step budget nor an
// interrupt can stop it). These give exactly SQLite's results, found with
// memmem (linear), and replace SQLite's on every connection.
typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;
extern int sqlite3_value_type(sqlite3_value*);
extern int sqlite3_value_bytes(sqlite3_value*);
extern const void *sqlite3_value_blob(sqlite3_value*);
extern const unsigned char *sqlite3_value_text(sqlite3_value*);
extern sqlite3_value *sqlite3_value_dup(const sqlite3_value*);
extern void sqlite3_value_free(sqlite3_value*);
extern void sqlite3_result_int(sqlite3_context*, int);
extern void sqlite3_result_text(sqlite3_context*, const char*, int, void(*)(void*));
extern void sqlite3_result_error_nomem(sqlite3_context*);
extern void sqlite3_result_error_toobig(sqlite3_context*);
extern sqlite3 *sqlite3_context_db_handle(sqlite3_context*);
extern int sqlite3_limit(sqlite3*, int, int);
extern void *sqlite3_malloc64(unsigned long long);
extern void sqlite3_free(void*);
extern int sqlite3_create_function_v2(sqlite3*, const char*, int, int, void*,
	void (*)(sqlite3_context*,int,sqlite3_value**), void (*)(sqlite3_context*,int,sqlite3_value**),
	void (*)(sqlite3_context*), void(*)(void*));
extern void *memmem(const void*, size_t, const void*, size_t);

#define DDB_NULL 5
#define DDB_BLOB 4
#define DDB_FUNC_FLAGS (1 | 0x000000800 | 0x000200000) // SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS
#define DDB_LIMIT_LENGTH 0
#define DDB_LIMIT_LIKE_PATTERN_LENGTH 8

static void ddb_instr(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	int typeH = sqlite3_value_type(argv[0]), typeN = sqlite3_value_type(argv[1]);
	if (typeH == DDB_NULL || typeN == DDB_NULL) return;
	int nH = sqlite3_value_bytes(argv[0]), nN = sqlite3_value_bytes(argv[1]);
	const unsigned char *h = 0, *n = 0;
	sqlite3_value *c1 = 0, *c2 = 0;
	int isText, N = 1;
	if (nN > 0) {
		if (typeH == DDB_BLOB && typeN == DDB_BLOB) {
			h = sqlite3_value_blob(argv[0]);
			n = sqlite3_value_blob(argv[1]);
			isText = 0;
		} else if (typeH != DDB_BLOB && typeN != DDB_BLOB) {
			h = sqlite3_value_text(argv[0]);
			n = sqlite3_value_text(argv[1]);
			isText = 1;
		} else {
			c1 = sqlite3_value_dup(argv[0]);
			h = sqlite3_value_text(c1);
			if (h == 0) goto oom;
			nH = sqlite3_value_bytes(c1);
			c2 = sqlite3_value_dup(argv[1]);
			n = sqlite3_value_text(c2);
			if (n == 0) goto oom;
			nN = sqlite3_value_bytes(c2);
			isText = 1;
		}
		if (n == 0 || (nH && h == 0)) goto oom;
		// SQLite compares at offset 0 and, in text, at every byte that
		// starts a character; N counts the offsets it moved past.
		size_t off = 0;
		N = 0;
		while (nN <= nH - (long long)off) {
			const unsigned char *m = memmem(h + off, nH - off, n, nN);
			if (m == 0) break;
			size_t pos = m - h;
			if (isText && pos > 0 && (h[pos] & 0xc0) == 0x80) {
				off = pos + 1;
				continue;
			}
			N = 1;
			for (size_t i = 1; i <= pos; i++) {
				if (!isText || (h[i] & 0xc0) != 0x80) N++;
			}
			break;
		}
	}
	sqlite3_result_int(ctx, N);
done:
	sqlite3_value_free(c1);
	sqlite3_value_free(c2);
	return;
oom:
	sqlite3_result_error_nomem(ctx);
	goto done;
}

static void ddb_replace(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	const unsigned char *str = sqlite3_value_text(argv[0]);
	if (str == 0) return;
	long long nStr = sqlite3_value_bytes(argv[0]);
	const unsigned char *pat = sqlite3_value_text(argv[1]);
	if (pat == 0) return;
	if (pat[0] == 0) {
		sqlite3_result_text(ctx, (const char*)str, (int)nStr, (void(*)(void*))-1);
		return;
	}
	long long nPat = sqlite3_value_bytes(argv[1]);
	const unsigned char *rep = sqlite3_value_text(argv[2]);
	if (rep == 0) return;
	long long nRep = sqlite3_value_bytes(argv[2]);
	// Leftmost matches that do not overlap, as SQLite takes them.
	long long count = 0, pos = 0;
	while (nStr - pos >= nPat) {
		const unsigned char *m = memmem(str + pos, nStr - pos, pat, nPat);
		if (m == 0) break;
		count++;
		pos = (m - str) + nPat;
	}
	long long nOut = nStr + count * (nRep - nPat);
	if (nRep > nPat && nOut > sqlite3_limit(sqlite3_context_db_handle(ctx), DDB_LIMIT_LENGTH, -1)) {
		sqlite3_result_error_toobig(ctx);
		return;
	}
	unsigned char *out = sqlite3_malloc64(nOut + 1);
	if (out == 0) {
		sqlite3_result_error_nomem(ctx);
		return;
	}
	long long j = 0;
	pos = 0;
	while (count-- > 0) {
		const unsigned char *m = memmem(str + pos, nStr - pos, pat, nPat);
		long long at = m - str;
		memcpy(out + j, str + pos, at - pos);
		j += at - pos;
		memcpy(out + j, rep, nRep);
		j += nRep;
		pos = at + nPat;
	}
	memcpy(out + j, str + pos, nStr - pos);
	j += nStr - pos;
	out[j] = 0;
	sqlite3_result_text(ctx, (const char*)out, (int)j, sqlite3_free);
}

// ddb_register_linear puts the linear functions in place of SQLite's, and
// sets the length limits (see MaxLength).
static int ddb_register_linear(sqlite3 *db, int maxLength, int maxPattern) {
	sqlite3_limit(db, DDB_LIMIT_LENGTH, maxLength);
	sqlite3_limit(db, DDB_LIMIT_LIKE_PATTERN_LENGTH, maxPattern);
	int rc = sqlite3_create_function_v2(db, "instr", 2, DDB_FUNC_FLAGS, 0, ddb_instr, 0, 0, 0);
	if (rc == 0) rc = sqlite3_create_function_v2(db, "replace", 3, DDB_FUNC_FLAGS, 0, ddb_replace, 0, 0, 0);
	return rc;
}

static int ddb_bind_text(sqlite3_stmt *s, int i, const char *p, int n) {
	return sqlite3_bind_text(s, i, p, n, (void(*)(void*))-1);
}
static int ddb_bind_blob(sqlite3_stmt *s, int i, const void *p, int n) {
	return sqlite3_bind_blob(s, i, p, n, (void(*)(void*))-1);
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"runtime/cgo"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// emptyCString is a valid pointer to bind empty text with (a NULL pointer
// would bind NULL instead).
var emptyCString = C.CString("")

// Result codes used by callers.
const (
	codeOK   = 0
	codeRow  = 100
	codeDone = 101
)

// Error is an error reported by SQLite, with its extended result code.
type Error struct {
	Code     int // primary result code (extended & 0xff)
	Extended int
	Msg      string
}

func (e *Error) Error() string { return e.Msg }

// Primary result codes callers distinguish.
const (
	ErrCodeError      = 1
	ErrCodeAuth       = 23
	ErrCodeInterrupt  = 9
	ErrCodeBusy       = 5
	ErrCodeConstraint = 19
	ErrCodeTooBig     = 18
	ErrCodeRange      = 25
)

// IsCode reports whether err is a SQLite error with the given primary code.
func IsCode(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Conn is one SQLite connection opened by the driver. A Conn is not safe for
// concurrent use; callers serialise access to it.
type Conn struct {
	db     *C.sqlite3
	Driver *sqlite3.SQLiteConn
	auth   Authorizer
	self   cgo.Handle // how SQLite's authorizer finds the Conn (see auth.go)
	cache  map[string]*CachedStmt
	budget *C.ddb_budget // C memory, from open to Close (see SetStepBudget)
	rand   *C.ddb_rand   // random()'s and randomblob()'s generator, C memory from open to Close (see SeedRandom)
	// changes is the capture buffer of the change stream's triggers (see
	// changes.go), C memory from open to Close.
	changes *C.ddb_changes
	// long is the last long SQL text prepared, and clong its NUL-ended
	// copy in C memory (see Prepare).
	long  string
	clong *C.char
}

// longText is the length from which Prepare reads a text from a NUL-ended
// copy of its own (see Prepare).
const longText = 16 << 10

// CachedStmt is a prepared statement kept for reuse, with whatever the
// caller learned when it was prepared.
type CachedStmt struct {
	Stmt *Stmt
	Meta any
}

// maxCached bounds the statement cache of one connection.
const maxCached = 256

// Cached returns the statement cached under key, reset and ready to bind,
// or nil. It stays owned by the connection: callers must not close it.
func (c *Conn) Cached(key string) *CachedStmt {
	e := c.cache[key]
	if e != nil {
		e.Stmt.Reset()
	}
	return e
}

// Cache keeps a single-statement Stmt under key; the connection owns it from now on.
func (c *Conn) Cache(key string, st *Stmt, meta any) {
	if c.cache == nil || len(c.cache) >= maxCached {
		c.DropCache()
		c.cache = map[string]*CachedStmt{}
	}
	// A cached statement outlives the text it was prepared from: it keeps
	// copies, not substrings that would keep the whole text alive (the
	// last statement of each 4 MiB chunk of a load held its chunk).
	st.SQL, st.Tail = strings.Clone(st.SQL), strings.Clone(st.Tail)
	c.cache[strings.Clone(key)] = &CachedStmt{Stmt: st, Meta: meta}
}

// DropCache finalizes every cached statement.
func (c *Conn) DropCache() {
	for _, e := range c.cache {
		e.Stmt.Close()
	}
	c.cache = nil
}

// SetAuthorizer sets the function consulted for every action while a
// statement is prepared; nil allows everything. It returns the previous one.
func (c *Conn) SetAuthorizer(f Authorizer) Authorizer {
	old := c.auth
	c.auth = f
	return old
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.DropCache()
	c.removeAuthorizer()
	err := c.Driver.Close()
	c.freeChanges()
	c.forgetLong()
	if c.budget != nil {
		C.free(unsafe.Pointer(c.budget))
		c.budget = nil
	}
	if c.rand != nil {
		C.free(unsafe.Pointer(c.rand))
		c.rand = nil
	}
	return err
}

// SeedRandom restarts the generator random() and randomblob() draw from
// on this connection (see random.c) at the state Go's rand.NewPCG(hi, lo)
// starts in: from here on they give the words that generator gives. A
// connection starts at rand.NewPCG(0, 0)'s state; its owner seeds it (the
// store: a writer from each entry's seed, a reader from crypto/rand).
func (c *Conn) SeedRandom(hi, lo uint64) {
	c.rand.hi, c.rand.lo = C.ulonglong(hi), C.ulonglong(lo)
}

// SetStepBudget limits what the connection runs from now on, all its
// statements together, to about steps instructions of SQLite's virtual
// machine (counted in thousands, at points the statement's program and
// data fix: see Stmt.StartCounting). A statement that goes past it fails
// with ErrCodeInterrupt, and BudgetSpent reports true until the next
// SetStepBudget. 0 removes the limit.
func (c *Conn) SetStepBudget(steps int64) {
	if steps <= 0 {
		C.ddb_clear_budget(c.db, c.budget)
		return
	}
	c.budget.left = C.sqlite3_int64(steps)
	C.ddb_set_budget(c.db, c.budget)
}

// ChargeMade charges n bytes that a function made to the step budget, as
// the project's zeroblob() does (DDB_BYTES_PER_STEP bytes a
// step), for a function written in Go; it reports whether the budget is
// now spent (the function must then fail). Without a budget it charges
// nothing.
func (c *Conn) ChargeMade(n int64) bool {
	if c.budget.active == 0 {
		return false
	}
	c.budget.left -= C.sqlite3_int64(n / C.DDB_BYTES_PER_STEP)
	return c.budget.left < 0
}

// StepBudgetLeft is what is left of the step budget (0 without one).
func (c *Conn) StepBudgetLeft() int64 {
	return int64(c.budget.left)
}

// BudgetSpent reports whether a statement stopped because the step budget
// ran out.
func (c *Conn) BudgetSpent() bool { return c.budget.left < 0 }

// VMSteps is the count of virtual-machine instructions the statement ran
// since it was prepared or its count restarted (SQLITE_STMTSTATUS_VM_STEP).
func (s *Stmt) VMSteps() int { return int(C.sqlite3_stmt_status(s.s, 4, 0)) }

func (c *Conn) lastError() error {
	ext := int(C.sqlite3_extended_errcode(c.db))
	return &Error{Code: ext & 0xff, Extended: ext, Msg: C.GoString(C.sqlite3_errmsg(c.db))}
}

// InTransaction reports whether a transaction is open on the connection.
func (c *Conn) InTransaction() bool { return C.sqlite3_get_autocommit(c.db) == 0 }

// Interrupt stops whatever the connection is running; safe from any goroutine.
func (c *Conn) Interrupt() { C.sqlite3_interrupt(c.db) }

// Args are the parameters of one request: positional values for ? and ?NNN,
// and named values for :name, @name and $name. Values are nil, int64,
// float64, string or []byte.
type Args struct {
	Pos   []any
	Named map[string]any
}

// Empty reports whether there are no parameters.
func (a Args) Empty() bool { return len(a.Pos) == 0 && len(a.Named) == 0 }

// Stmt is one prepared statement.
type Stmt struct {
	c    *Conn
	s    *C.sqlite3_stmt
	SQL  string // the text of this statement alone
	Tail string // what follows it in the string it was prepared from
}

// Prepare compiles the first statement of sql. It returns a nil Stmt (and no
// error) when sql holds only white space and comments; Tail is then empty.
func (c *Conn) Prepare(sql string) (*Stmt, error) {
	if len(sql) == 0 {
		return nil, nil
	}
	// SQLite keeps no pointer into the text. Given a text whose length
	// does not count a NUL at its end, it copies the whole text before it
	// reads its first statement: a long text of many statements, prepared
	// one statement at a time (each time its rest), would be copied
	// quadratically (a load's 4 MiB chunk of 30,000 statements spent
	// seconds in that copy). A long text is copied once, NUL-ended, and
	// its rest (a substring of it: a Stmt's Tail) read from that copy.
	csql, n := (*C.char)(unsafe.Pointer(unsafe.StringData(sql))), len(sql)
	if len(sql) >= longText {
		csql, n = c.nulEnded(sql)
	}
	var s *C.sqlite3_stmt
	var tail *C.char
	rv := C.sqlite3_prepare_v2(c.db, csql, C.int(n), &s, &tail)
	consumed := len(sql)
	if tail != nil {
		consumed = min(consumed, int(uintptr(unsafe.Pointer(tail))-uintptr(unsafe.Pointer(csql))))
	}
	if consumed < len(sql) && sql[consumed] == 0 || rv != codeOK && strings.IndexByte(sql[:min(consumed+1, len(sql))], 0) >= 0 {
		// SQLite stops reading at a NUL; what follows would never be
		// compiled (nor classified), so refuse the whole text.
		if s != nil {
			C.sqlite3_finalize(s)
		}
		return nil, &Error{Code: ErrCodeError, Extended: ErrCodeError, Msg: "SQL text contains a NUL character"}
	}
	if rv != codeOK {
		return nil, c.lastError()
	}
	rest := strings.TrimSpace(sql[consumed:])
	if rest == "" && c.clong != nil {
		c.forgetLong() // the long text is read to its end
	}
	if s == nil {
		if rest != "" && consumed > 0 {
			return c.Prepare(rest)
		}
		if rest != "" {
			return nil, &Error{Code: ErrCodeError, Extended: ErrCodeError, Msg: "SQLite could not read the SQL text"}
		}
		return nil, nil
	}
	return &Stmt{c: c, s: s, SQL: strings.TrimSpace(sql[:consumed]), Tail: rest}, nil
}

// nulEnded returns sql as SQLite may read it without copying it: within
// the NUL-ended C copy of the last long text, if sql is a part of that
// text that reaches to its end but for white space, otherwise within a new
// copy. n counts the bytes up to the copy's NUL, which it includes (what
// lies beyond sql in the copy is white space).
func (c *Conn) nulEnded(sql string) (*C.char, int) {
	base, p := uintptr(unsafe.Pointer(unsafe.StringData(c.long))), uintptr(unsafe.Pointer(unsafe.StringData(sql)))
	if c.clong != nil && p >= base && p+uintptr(len(sql)) <= base+uintptr(len(c.long)) &&
		strings.TrimSpace(c.long[p-base+uintptr(len(sql)):]) == "" {
		off := int(p - base)
		return (*C.char)(unsafe.Add(unsafe.Pointer(c.clong), off)), len(c.long) - off + 1
	}
	c.forgetLong()
	c.long, c.clong = sql, C.CString(sql)
	return c.clong, len(sql) + 1
}

// forgetLong frees the copy of the last long text.
func (c *Conn) forgetLong() {
	if c.clong != nil {
		C.free(unsafe.Pointer(c.clong))
	}
	c.long, c.clong = "", nil
}

// Close finalizes the statement.
func (s *Stmt) Close() {
	if s != nil && s.s != nil {
		C.sqlite3_finalize(s.s)
		s.s = nil
	}
}

// Reset makes the statement ready to run again, with no parameters bound.
func (s *Stmt) Reset() {
	C.sqlite3_reset(s.s)
	C.sqlite3_clear_bindings(s.s)
}

// StartCounting restarts the count of virtual-machine instructions the
// statement ran (SQLITE_STMTSTATUS_VM_STEP). SQLite calls the progress
// handler at multiples of its interval in that count, so a statement
// stepped from here on meets a step budget at the same points whatever
// it ran before (a statement kept prepared has a count of its own past).
func (s *Stmt) StartCounting() { C.sqlite3_stmt_status(s.s, 4, 1) }

// Readonly reports whether the statement makes no direct change to the database.
func (s *Stmt) Readonly() bool { return C.sqlite3_stmt_readonly(s.s) != 0 }

// IsExplain reports whether the statement is an EXPLAIN.
func (s *Stmt) IsExplain() bool { return C.sqlite3_stmt_isexplain(s.s) != 0 }

// ParamCount is the number of parameters the statement takes.
func (s *Stmt) ParamCount() int { return int(C.sqlite3_bind_parameter_count(s.s)) }

// Bind binds parameters. Unnamed ? parameters take values from pos in
// order; ?NNN takes pos[NNN-1]; named ones look up named with or without
// their prefix character. It returns how many positional values the
// statement used.
func (s *Stmt) Bind(pos []any, named map[string]any) (int, error) {
	n := s.ParamCount()
	used := 0
	for i := 1; i <= n; i++ {
		cname := C.sqlite3_bind_parameter_name(s.s, C.int(i))
		var v any
		switch {
		case cname == nil:
			if used >= len(pos) {
				return 0, fmt.Errorf("statement %q needs more positional parameters than the %d given", abbreviate(s.SQL), len(pos))
			}
			v = pos[used]
			used++
		default:
			name := C.GoString(cname)
			if name[0] == '?' {
				k, err := strconv.Atoi(name[1:])
				if err != nil || k < 1 || k > len(pos) {
					return 0, fmt.Errorf("parameter %s has no value (%d positional parameters given)", name, len(pos))
				}
				v = pos[k-1]
				if k > used {
					used = k
				}
			} else {
				var ok bool
				if v, ok = named[name]; !ok {
					if v, ok = named[name[1:]]; !ok {
						return 0, fmt.Errorf("named parameter %s has no value", name)
					}
				}
			}
		}
		if err := s.bindOne(i, v); err != nil {
			return 0, err
		}
	}
	return used, nil
}

func (s *Stmt) bindOne(i int, v any) error {
	var rv C.int
	switch x := v.(type) {
	case nil:
		rv = C.sqlite3_bind_null(s.s, C.int(i))
	case int64:
		rv = C.sqlite3_bind_int64(s.s, C.int(i), C.sqlite3_int64(x))
	case int:
		rv = C.sqlite3_bind_int64(s.s, C.int(i), C.sqlite3_int64(x))
	case bool:
		b := 0
		if x {
			b = 1
		}
		rv = C.sqlite3_bind_int64(s.s, C.int(i), C.sqlite3_int64(b))
	case float64:
		rv = C.sqlite3_bind_double(s.s, C.int(i), C.double(x))
	case string:
		if len(x) == 0 {
			rv = C.ddb_bind_text(s.s, C.int(i), emptyCString, 0)
		} else {
			p := C.CString(x)
			rv = C.ddb_bind_text(s.s, C.int(i), p, C.int(len(x)))
			C.free(unsafe.Pointer(p))
		}
	case []byte:
		if len(x) == 0 {
			rv = C.sqlite3_bind_zeroblob(s.s, C.int(i), 0)
		} else {
			p := C.CBytes(x)
			rv = C.ddb_bind_blob(s.s, C.int(i), p, C.int(len(x)))
			C.free(p)
		}
	default:
		return fmt.Errorf("cannot bind a value of type %T", v)
	}
	if rv != codeOK {
		return s.c.lastError()
	}
	return nil
}

// Columns returns the result column names and declared types.
func (s *Stmt) Columns() (names, decl []string) {
	n := int(C.sqlite3_column_count(s.s))
	names = make([]string, n)
	decl = make([]string, n)
	for i := 0; i < n; i++ {
		names[i] = C.GoString(C.sqlite3_column_name(s.s, C.int(i)))
		if d := C.sqlite3_column_decltype(s.s, C.int(i)); d != nil {
			decl[i] = C.GoString(d)
		}
	}
	return names, decl
}

// Step advances the statement. It returns true when a row is ready.
func (s *Stmt) Step() (bool, error) {
	switch rv := C.sqlite3_step(s.s); rv {
	case codeRow:
		return true, nil
	case codeDone:
		return false, nil
	default:
		err := s.c.lastError()
		C.sqlite3_reset(s.s)
		return false, err
	}
}

// Row reads the current row's values: nil, int64, float64, string or []byte.
func (s *Stmt) Row(dst []any) []any {
	n := int(C.sqlite3_column_count(s.s))
	dst = dst[:0]
	for i := 0; i < n; i++ {
		ci := C.int(i)
		switch C.sqlite3_column_type(s.s, ci) {
		case 1: // SQLITE_INTEGER
			dst = append(dst, int64(C.sqlite3_column_int64(s.s, ci)))
		case 2: // SQLITE_FLOAT
			dst = append(dst, float64(C.sqlite3_column_double(s.s, ci)))
		case 3: // SQLITE_TEXT
			p := C.sqlite3_column_text(s.s, ci)
			nb := C.sqlite3_column_bytes(s.s, ci)
			dst = append(dst, C.GoStringN((*C.char)(unsafe.Pointer(p)), nb))
		case 4: // SQLITE_BLOB
			p := C.sqlite3_column_blob(s.s, ci)
			nb := C.sqlite3_column_bytes(s.s, ci)
			if p == nil || nb == 0 {
				dst = append(dst, []byte{})
			} else {
				dst = append(dst, C.GoBytes(p, nb))
			}
		default:
			dst = append(dst, nil)
		}
	}
	return dst
}

// Changes is the number of rows the last finished INSERT, UPDATE or DELETE changed.
func (c *Conn) Changes() int64 { return int64(C.sqlite3_changes64(c.db)) }

// LastInsertID is the rowid of the most recent successful INSERT on the connection.
func (c *Conn) LastInsertID() int64 { return int64(C.sqlite3_last_insert_rowid(c.db)) }

// Watch arranges for ctx's end to interrupt the connection until stop is called.
func (c *Conn) Watch(ctx context.Context) (stop func() bool) {
	if ctx == nil || ctx.Done() == nil {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, c.Interrupt)
}

// Exec runs one statement with positional args through the statement
// cache (for the project's own frequent statements).
func (c *Conn) Exec(sql string, args ...any) error {
	e := c.Cached(sql)
	if e == nil {
		st, err := c.Prepare(sql)
		if err != nil {
			return fmt.Errorf("%s: %w", abbreviate(sql), err)
		}
		if st == nil || st.Tail != "" {
			st.Close()
			return fmt.Errorf("Exec takes exactly one statement: %s", abbreviate(sql))
		}
		c.Cache(sql, st, nil)
		e = c.cache[sql]
	}
	if len(args) > 0 {
		if _, err := e.Stmt.Bind(args, nil); err != nil {
			return err
		}
	}
	for {
		more, err := e.Stmt.Step()
		if err != nil {
			return fmt.Errorf("%s: %w", abbreviate(sql), err)
		}
		if !more {
			e.Stmt.Reset()
			return nil
		}
	}
}

// QueryRowCached is QueryRow through the statement cache (for the
// project's own frequent queries). The row is copied out before the
// statement is reset.
func (c *Conn) QueryRowCached(sql string, args ...any) ([]any, error) {
	e := c.Cached(sql)
	if e == nil {
		st, err := c.Prepare(sql)
		if err != nil {
			return nil, err
		}
		if st == nil || st.Tail != "" {
			st.Close()
			return nil, fmt.Errorf("QueryRowCached takes exactly one statement: %s", abbreviate(sql))
		}
		c.Cache(sql, st, nil)
		e = c.cache[sql]
	}
	defer e.Stmt.Reset()
	if len(args) > 0 {
		if _, err := e.Stmt.Bind(args, nil); err != nil {
			return nil, err
		}
	}
	ok, err := e.Stmt.Step()
	if err != nil || !ok {
		return nil, err
	}
	return e.Stmt.Row(nil), nil
}

// ExecScript runs every statement of sql with no parameters (for the
// project's own schema and housekeeping statements).
func (c *Conn) ExecScript(sql string) error {
	for sql != "" {
		st, err := c.Prepare(sql)
		if err != nil {
			return fmt.Errorf("%s: %w", abbreviate(sql), err)
		}
		if st == nil {
			return nil
		}
		for {
			more, err := st.Step()
			if err != nil {
				st.Close()
				return fmt.Errorf("%s: %w", abbreviate(st.SQL), err)
			}
			if !more {
				break
			}
		}
		sql = st.Tail
		st.Close()
	}
	return nil
}

// prepareBound prepares the first statement of sql (uncached) and binds
// positional args; the caller closes it.
func (c *Conn) prepareBound(sql string, args []any) (*Stmt, error) {
	st, err := c.Prepare(sql)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("empty statement")
	}
	if _, err := st.Bind(args, nil); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// QueryRow runs one statement with positional args and returns its first
// row (nil when there is none).
func (c *Conn) QueryRow(sql string, args ...any) ([]any, error) {
	st, err := c.prepareBound(sql, args)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ok, err := st.Step()
	if err != nil || !ok {
		return nil, err
	}
	return st.Row(nil), nil
}

// All runs one statement with positional args and returns every row.
func (c *Conn) All(sql string, args ...any) ([][]any, error) {
	st, err := c.prepareBound(sql, args)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var out [][]any
	for {
		more, err := st.Step()
		if err != nil || !more {
			return out, err
		}
		out = append(out, st.Row(nil))
	}
}

// Backup copies the whole main database of src into the main database of c
// in one step, as one consistent read of src.
func (c *Conn) Backup(src *Conn) error {
	main := C.CString("main")
	defer C.free(unsafe.Pointer(main))
	b := C.sqlite3_backup_init(c.db, main, src.db, main)
	if b == nil {
		return c.lastError()
	}
	rv := C.sqlite3_backup_step(b, -1)
	frv := C.sqlite3_backup_finish(b)
	if rv != codeDone {
		return fmt.Errorf("backup step: %w", &Error{Code: int(rv) & 0xff, Extended: int(rv), Msg: fmt.Sprintf("backup failed with code %d", int(rv))})
	}
	if frv != codeOK {
		return c.lastError()
	}
	return nil
}

// Checkpoint runs a WAL checkpoint in the given mode (0 passive, 1 full,
// 2 restart, 3 truncate).
func (c *Conn) Checkpoint(mode int) error {
	_, _, err := c.CheckpointFrames(mode)
	return err
}

// CheckpointFrames runs a checkpoint as Checkpoint does and returns the
// frames the WAL holds and how many of them are now in the database file
// (equal: the file alone holds every commit; both -1 outside WAL mode).
func (c *Conn) CheckpointFrames(mode int) (frames, copied int, err error) {
	main := C.CString("main")
	defer C.free(unsafe.Pointer(main))
	var nLog, nCkpt C.int
	if rv := C.sqlite3_wal_checkpoint_v2(c.db, main, C.int(mode), &nLog, &nCkpt); rv != codeOK {
		return 0, 0, c.lastError()
	}
	return int(nLog), int(nCkpt), nil
}

// Complete reports whether sql ends a complete statement (SQLite's own
// test: a semicolon outside any literal, comment or trigger body).
func Complete(sql string) bool {
	cs := C.CString(sql)
	defer C.free(unsafe.Pointer(cs))
	return C.sqlite3_complete(cs) != 0
}

// Split cuts SQL text into its statements, each with its semicolon, as
// SQLite reads them (a trigger's body stays whole). Text after the last
// complete statement is returned as a last statement of its own.
func Split(sql string) []string {
	var out []string
	start := 0
	for i := 0; i < len(sql); i++ {
		if sql[i] != ';' {
			continue
		}
		if Complete(sql[start : i+1]) {
			if st := strings.TrimSpace(sql[start : i+1]); st != ";" {
				out = append(out, st)
			}
			start = i + 1
		}
	}
	if rest := strings.TrimSpace(sql[start:]); rest != "" {
		out = append(out, rest)
	}
	return out
}

func abbreviate(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// Open opens the database file at path through the driver, with params as
// URI query parameters (the driver's own such as _journal_mode, and
// SQLite's such as mode=ro or vfs=NAME). The connection's SQLite handle is
// the one SQLite reports to an auto-extension while the driver opens it
// (on this goroutine's thread, locked for the open). Before the first
// connection, a self-test checks what this package relies on.
func Open(path string, params url.Values) (*Conn, error) {
	selfTested.Do(func() {
		// On a private in-memory connection: the test leaves no trace on
		// the connections the program uses.
		c, err := open(":memory:", nil)
		if err == nil {
			err = selfTest(c)
			c.Close()
		}
		selfTestErr = err
	})
	if selfTestErr != nil {
		return nil, fmt.Errorf("SQLite self-test failed, refusing to run: %w", selfTestErr)
	}
	return open(path, params)
}

// open is Open without the self-test.
func open(path string, params url.Values) (*Conn, error) {
	installCapture.Do(func() {
		if rc := C.ddb_install_capture(); rc != codeOK {
			captureErr = fmt.Errorf("sqlite3_auto_extension failed with code %d", int(rc))
		}
	})
	if captureErr != nil {
		return nil, captureErr
	}
	u := url.URL{Scheme: "file", Opaque: (&url.URL{Path: path}).EscapedPath(), RawQuery: params.Encode()}
	runtime.LockOSThread()
	C.ddb_take_opened() // nothing left over from an open that failed
	dc, err := (&sqlite3.SQLiteDriver{}).Open(u.String())
	db := C.ddb_take_opened()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, err
	}
	if db == nil {
		dc.Close()
		return nil, errors.New("SQLite did not report the new connection to its auto-extension: the SQLite build or the driver changed (see internal/sqlite)")
	}
	if rc := C.ddb_register_linear(db, MaxLength, MaxLikePattern); rc != codeOK {
		dc.Close()
		return nil, fmt.Errorf("register instr() and replace(): SQLite error %d", int(rc))
	}
	c := &Conn{db: db, Driver: dc.(*sqlite3.SQLiteConn)}
	c.budget = (*C.ddb_budget)(C.calloc(1, C.size_t(unsafe.Sizeof(C.ddb_budget{}))))
	if rc := C.ddb_register_match(db, c.budget); rc != codeOK {
		c.Close()
		return nil, fmt.Errorf("register like() and glob(): SQLite error %d", int(rc))
	}
	if rc := C.ddb_register_blob(db, c.budget); rc != codeOK {
		c.Close()
		return nil, fmt.Errorf("register zeroblob(): SQLite error %d", int(rc))
	}
	c.rand = (*C.ddb_rand)(C.calloc(1, C.size_t(unsafe.Sizeof(C.ddb_rand{}))))
	c.rand.budget, c.rand.max = c.budget, MaxLength
	if rc := C.ddb_register_random(db, c.rand); rc != codeOK {
		c.Close()
		return nil, fmt.Errorf("register random() and randomblob(): SQLite error %d", int(rc))
	}
	if err := c.registerChanges(); err != nil {
		c.Close()
		return nil, fmt.Errorf("register the change stream's capture: %w", err)
	}
	if err := c.installAuthorizer(); err != nil {
		c.Close()
		return nil, fmt.Errorf("set the authorizer: %w", err)
	}
	return c, nil
}

// MaxLength is the longest string or blob, and the largest row, any
// connection makes (SQLite's SQLITE_LIMIT_LENGTH, 1 GB by default): the
// bound on what one value costs inside one instruction (printf widths,
// zeroblob(), randomblob(), concatenation). A write that would make a
// longer value fails ("string or blob too big") on every node alike; a
// write's entry holds 32 MiB at most, so no stored value comes near it.
const MaxLength = 64 << 20

// MaxLikePattern is the longest LIKE or GLOB pattern, in bytes (SQLite's
// SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 50,000 by default). A match takes time
// up to the product of the pattern's length and the string's, inside one
// instruction (a 10,000-byte pattern over 1 MB took 14 s); match.c counts
// that work against the step budget and stops at an interrupt, and this
// bounds it further. A longer pattern fails ("LIKE or GLOB pattern too
// complex") on every node alike.
const MaxLikePattern = 100

var (
	installCapture sync.Once
	captureErr     error
	selfTested     sync.Once
	selfTestErr    error
)

// minVersion is the oldest SQLite this code works with (RETURNING, the
// strict typing of the authorizer's actions, sqlite3_stmt_isexplain).
const minVersion = 3_038_000

// selfTest checks, on a fresh connection, what this package relies on from
// the SQLite build and the driver: the version; that the handle is the
// driver's own connection (a table the driver creates is seen through it);
// that SQLite calls the authorizer for statements compiled through the
// handle; and that values read through the handle come back exactly (no
// driver conversion of a column declared TIMESTAMP).
func selfTest(c *Conn) error {
	if v := int(C.sqlite3_libversion_number()); v < minVersion {
		return fmt.Errorf("SQLite %d is older than the %d this code needs", v, minVersion)
	}
	if _, err := c.Driver.Exec("CREATE TEMP TABLE ddb_selftest (t TIMESTAMP)", nil); err != nil {
		return fmt.Errorf("create a table through the driver: %w", err)
	}
	defer c.Driver.Exec("DROP TABLE temp.ddb_selftest", nil)
	if err := c.Exec("INSERT INTO temp.ddb_selftest VALUES ('2024-01-02 03:04:05')"); err != nil {
		return fmt.Errorf("the SQLite handle is not the driver's connection (a table the driver made is not there): %w", err)
	}
	row, err := c.QueryRow("SELECT t FROM temp.ddb_selftest")
	if err != nil || len(row) != 1 || row[0] != "2024-01-02 03:04:05" {
		return fmt.Errorf("a TIMESTAMP value did not come back exactly through the handle: %v %v", row, err)
	}
	called := false
	prev := c.auth
	c.auth = func(op int, a1, a2, db, trigger string) int { called = true; return 0 }
	st, err := c.Prepare("SELECT 1")
	c.auth = prev
	if err != nil {
		return err
	}
	st.Close()
	if !called {
		return errors.New("the authorizer is not called for statements compiled through the handle")
	}
	return nil
}

// Memory reports the memory SQLite holds in this process, and the most it
// has held since the process started (or since the last call that reset
// that high-water mark).
func Memory(resetHighwater bool) (used, highwater int64) {
	reset := C.int(0)
	if resetHighwater {
		reset = 1
	}
	return int64(C.sqlite3_memory_used()), int64(C.sqlite3_memory_highwater(reset))
}
