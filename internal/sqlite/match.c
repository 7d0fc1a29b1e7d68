// LIKE and GLOB whose work is counted and can be stopped.
//
// SQLite matches a pattern inside one instruction of its virtual machine,
// in time up to the product of the pattern's and the string's lengths
// (seconds over a string of tens of megabytes), where neither a step
// budget nor an interrupt can stop it. These functions give SQLite's
// results exactly (the same language: '%' and '_' with ASCII case folding
// and an optional ESCAPE for LIKE; '*', '?' and [sets] for GLOB; text
// decoded as SQLite decodes it, up to its first NUL), found by matching
// compiled tokens with one backtracking point, and:
//   - count their work (one unit per character compared) against the
//     connection's step budget, the same count on every node, so a write
//     that matches too much fails as one that runs too long does;
//   - stop when the connection is interrupted (a read's deadline).
#include <stddef.h>
#include <string.h>
#include "ddb.h"

typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;
extern const unsigned char *sqlite3_value_text(sqlite3_value*);
extern int sqlite3_value_bytes(sqlite3_value*);
extern void sqlite3_result_int(sqlite3_context*, int);
extern void sqlite3_result_error(sqlite3_context*, const char*, int);
extern void sqlite3_result_error_code(sqlite3_context*, int);
extern void sqlite3_result_error_nomem(sqlite3_context*);
extern void *sqlite3_user_data(sqlite3_context*);
extern sqlite3 *sqlite3_context_db_handle(sqlite3_context*);
extern int sqlite3_limit(sqlite3*, int, int);
extern int sqlite3_is_interrupted(sqlite3*);
extern void *sqlite3_malloc64(unsigned long long);
extern void sqlite3_free(void*);
extern void *sqlite3_get_auxdata(sqlite3_context*, int);
extern void sqlite3_set_auxdata(sqlite3_context*, int, void*, void (*)(void*));
extern int sqlite3_create_function_v2(sqlite3*, const char*, int, int, void*,
	void (*)(sqlite3_context*,int,sqlite3_value**), void (*)(sqlite3_context*,int,sqlite3_value**),
	void (*)(sqlite3_context*), void(*)(void*));

#define DDB_INTERRUPT 9
#define DDB_LIMIT_LIKE_PATTERN_LENGTH 8
#define DDB_FLAGS (1 | 0x000000800 | 0x000200000) // SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS

// DDB_MATCH_PER_STEP characters compared cost one step of the budget: a
// comparison takes about half the time of an instruction of the
// virtual machine (measured by BenchmarkMatchWork), so a step means about
// the same time either way.
#define DDB_MATCH_PER_STEP 2
// Work is charged, and the interrupt looked at, every DDB_MATCH_CHUNK
// units.
#define DDB_MATCH_CHUNK 4096

// ddb_utf8 reads one character as SQLite reads text: a byte from 0xc0 on
// starts a character and takes every continuation byte after it; a
// decoded value below 0x80, a surrogate, or 0xfffe/0xffff reads as
// 0xfffd; any other byte is itself.
static unsigned int ddb_utf8(const unsigned char **pz) {
	unsigned int c = *(*pz)++;
	if (c >= 0xc0) {
		if (c < 0xe0) c -= 0xc0;
		else if (c < 0xf0) c -= 0xe0;
		else if (c < 0xf8) c -= 0xf0;
		else if (c < 0xfc) c -= 0xf8;
		else if (c < 0xfe) c -= 0xfc;
		else c = 0;
		while ((**pz & 0xc0) == 0x80) c = (c << 6) + (0x3f & *(*pz)++);
		if (c < 0x80 || (c & 0xfffff800) == 0xd800 || (c & 0xfffffffe) == 0xfffe) c = 0xfffd;
	}
	return c;
}

enum { TOK_CHAR, TOK_ONE, TOK_ANY, TOK_SET };

typedef struct {
	int kind;
	unsigned int c;     // TOK_CHAR: the character
	int first, n;       // TOK_SET: its ranges, ranges[first..first+n)
	int invert;         // TOK_SET: [^...]
} ddb_tok;

typedef struct { unsigned int lo, hi; } ddb_range;

typedef struct {
	ddb_tok *tok;
	int ntok;
	ddb_range *range;
	int nrange;
	int impossible; // the pattern can match nothing (a trailing escape, an open set)
} ddb_pattern;

// ddb_compile turns a pattern into tokens. glob: GLOB's syntax, else LIKE's
// with escape esc (0 for none). The arrays hold at least as many entries
// as the pattern has bytes.
static void ddb_compile(const unsigned char *p, int glob, unsigned int esc, ddb_pattern *out) {
	unsigned int any = glob ? '*' : '%', one = glob ? '?' : '_';
	if (!glob && esc == any) any = 0;
	if (!glob && esc == one) one = 0;
	unsigned int c;
	out->ntok = out->nrange = out->impossible = 0;
	while ((c = ddb_utf8(&p)) != 0) {
		ddb_tok *t = &out->tok[out->ntok++];
		t->kind = TOK_CHAR;
		t->c = c;
		if (c == any) {
			t->kind = TOK_ANY;
		} else if (glob && c == '[') {
			// [^...]: '^' first inverts; ']' first (after any '^') is a
			// member; "a-z" is a range unless '-' is last; a range's end
			// does not start another.
			t->kind = TOK_SET;
			t->first = out->nrange;
			t->invert = 0;
			unsigned int prior = 0, c2 = ddb_utf8(&p);
			if (c2 == '^') {
				t->invert = 1;
				c2 = ddb_utf8(&p);
			}
			if (c2 == ']') {
				out->range[out->nrange++] = (ddb_range){']', ']'};
				c2 = ddb_utf8(&p);
			}
			while (c2 != 0 && c2 != ']') {
				if (c2 == '-' && p[0] != ']' && p[0] != 0 && prior > 0) {
					c2 = ddb_utf8(&p);
					out->range[out->nrange++] = (ddb_range){prior, c2};
					prior = 0;
				} else {
					out->range[out->nrange++] = (ddb_range){c2, c2};
					prior = c2;
				}
				c2 = ddb_utf8(&p);
			}
			t->n = out->nrange - t->first;
			if (c2 == 0) {
				out->impossible = 1;
				return;
			}
		} else if (!glob && esc != 0 && c == esc) {
			c = ddb_utf8(&p);
			if (c == 0) {
				out->impossible = 1;
				return;
			}
			t->c = c;
		} else if (c == one) {
			t->kind = TOK_ONE;
		}
	}
}

static int ddb_lower(unsigned int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// ddb_tok_matches: does token t take character c?
static int ddb_tok_matches(const ddb_pattern *pt, const ddb_tok *t, unsigned int c, int nocase) {
	switch (t->kind) {
	case TOK_ONE:
		return 1;
	case TOK_SET: {
		int seen = 0;
		for (int i = 0; i < t->n; i++) {
			const ddb_range *r = &pt->range[t->first + i];
			if (c >= r->lo && c <= r->hi) {
				seen = 1;
				break;
			}
		}
		return seen ^ t->invert;
	}
	default:
		return t->c == c || (nocase && t->c < 0x80 && c < 0x80 && ddb_lower(t->c) == ddb_lower(c));
	}
}

typedef struct {
	sqlite3 *db;
	ddb_budget *budget;
	long long work; // units not yet charged
	int stopped;    // 1: the budget ran out; 2: interrupted
} ddb_work;

// ddb_charge spends w's work on the budget; nonzero once the budget is
// spent or the connection interrupted.
static int ddb_charge(ddb_work *w) {
	if (w->budget->active) {
		w->budget->left -= w->work / DDB_MATCH_PER_STEP;
		w->work %= DDB_MATCH_PER_STEP;
		if (w->budget->left < 0) {
			w->stopped = 1;
			return 1;
		}
	}
	if (sqlite3_is_interrupted(w->db)) {
		w->stopped = 2;
		return 1;
	}
	return 0;
}

// ddb_skip: where the '%' (or '*') of token star stops taking characters,
// at the earliest from *at. When the token after it is an ASCII character,
// no place before that character's next occurrence can match, and those
// are passed over byte by byte (an ASCII byte is never part of another
// character), one unit of work each.
static int ddb_skip(const ddb_pattern *pt, int star, const unsigned char **at, int nocase, ddb_work *w) {
	if (star + 1 >= pt->ntok) return 0;
	const ddb_tok *t = &pt->tok[star + 1];
	if (t->kind != TOK_CHAR || t->c >= 0x80) return 0;
	unsigned char a = (unsigned char)t->c, b = a;
	if (nocase) {
		a = (unsigned char)ddb_lower(a);
		b = (a >= 'a' && a <= 'z') ? a - 32 : a;
	}
	const unsigned char *p = *at;
	char stop[3] = {(char)a, (char)b, 0};
	size_t n = strcspn((const char*)p, stop);
	p += n;
	w->work += n;
	if (w->work >= DDB_MATCH_CHUNK && ddb_charge(w)) return -1;
	*at = p;
	return 0;
}

// ddb_run matches string s against the pattern: 1 or 0, or -1 when
// stopped. A '%' (or '*') keeps the place it was met; on a mismatch it
// takes one more character and the match resumes after it. Every token
// takes exactly one character, so this finds a match if there is one,
// comparing at most about len(s) x tokens characters.
static int ddb_run(const ddb_pattern *pt, const unsigned char *s, int nocase, ddb_work *w) {
	int i = 0, star = -1;
	const unsigned char *starAt = 0;
	for (;;) {
		if (i < pt->ntok && pt->tok[i].kind == TOK_ANY) {
			star = i++;
			if (ddb_skip(pt, star, &s, nocase, w)) return -1;
			starAt = s;
			continue;
		}
		if (*s == 0) {
			while (i < pt->ntok && pt->tok[i].kind == TOK_ANY) i++;
			return i == pt->ntok;
		}
		if (++w->work >= DDB_MATCH_CHUNK && ddb_charge(w)) return -1;
		if (i < pt->ntok) {
			const unsigned char *next = s + 1;
			unsigned int c = *s;
			if (c >= 0xc0) {
				next = s;
				c = ddb_utf8(&next);
			}
			const ddb_tok *t = &pt->tok[i];
			if (t->kind == TOK_CHAR ? (t->c == c || (nocase && t->c < 0x80 && c < 0x80 && ddb_lower(t->c) == ddb_lower(c)))
			                        : ddb_tok_matches(pt, t, c, nocase)) {
				s = next;
				i++;
				continue;
			}
		}
		if (star < 0) return 0;
		ddb_utf8(&starAt); // the '%' takes one more character
		if (ddb_skip(pt, star, &starAt, nocase, w)) return -1;
		s = starAt;
		i = star + 1;
	}
}

// A compiled pattern, kept with the function's constant argument
// (sqlite3_set_auxdata) so a scan compiles it once: the pattern's bytes,
// its escape and its tokens.
typedef struct {
	ddb_pattern pt;
	unsigned int esc;
	int n;
	unsigned char *bytes;
} ddb_compiled;

static ddb_compiled *ddb_compiled_new(const unsigned char *pat, int n, int glob, unsigned int esc) {
	ddb_compiled *c = sqlite3_malloc64(sizeof(ddb_compiled) + (unsigned long long)(n + 1) * (sizeof(ddb_tok) + sizeof(ddb_range)) + n + 1);
	if (c == 0) return 0;
	c->pt.tok = (ddb_tok*)(c + 1);
	c->pt.range = (ddb_range*)(c->pt.tok + n + 1);
	c->bytes = (unsigned char*)(c->pt.range + n + 1);
	memcpy(c->bytes, pat, n + 1);
	c->n = n;
	c->esc = esc;
	ddb_compile(c->bytes, glob, esc, &c->pt);
	return c;
}

// ddb_match_with answers whether str matches the compiled pattern.
static void ddb_match_with(sqlite3_context *ctx, ddb_compiled *c, const unsigned char *str, int glob) {
	int r = 0;
	ddb_work w = {sqlite3_context_db_handle(ctx), (ddb_budget*)sqlite3_user_data(ctx), 0, 0};
	if (!c->pt.impossible) {
		r = ddb_run(&c->pt, str, !glob, &w);
		if (r >= 0 && ddb_charge(&w)) r = -1;
	}
	if (r < 0) {
		sqlite3_result_error_code(ctx, DDB_INTERRUPT);
		return;
	}
	sqlite3_result_int(ctx, r);
}

static void ddb_match(sqlite3_context *ctx, int argc, sqlite3_value **argv, int glob) {
	sqlite3 *db = sqlite3_context_db_handle(ctx);
	int nPat = sqlite3_value_bytes(argv[0]);
	if (nPat > sqlite3_limit(db, DDB_LIMIT_LIKE_PATTERN_LENGTH, -1)) {
		sqlite3_result_error(ctx, "LIKE or GLOB pattern too complex", -1);
		return;
	}
	unsigned int esc = 0;
	if (argc == 3) {
		const unsigned char *e = sqlite3_value_text(argv[2]);
		if (e == 0) return;
		const unsigned char *q = e;
		esc = ddb_utf8(&q);
		if (esc == 0 || *q != 0) {
			sqlite3_result_error(ctx, "ESCAPE expression must be a single character", -1);
			return;
		}
	}
	const unsigned char *pat = sqlite3_value_text(argv[0]);
	const unsigned char *str = sqlite3_value_text(argv[1]);
	if (pat == 0 || str == 0) return;
	nPat = sqlite3_value_bytes(argv[0]);
	ddb_compiled *c = sqlite3_get_auxdata(ctx, 0);
	if (c == 0 || c->n != nPat || c->esc != esc || memcmp(c->bytes, pat, nPat) != 0) {
		c = ddb_compiled_new(pat, nPat, glob, esc);
		if (c == 0) {
			sqlite3_result_error_nomem(ctx);
			return;
		}
		sqlite3_set_auxdata(ctx, 0, c, sqlite3_free);
		c = sqlite3_get_auxdata(ctx, 0); // SQLite may have freed it at once
		if (c == 0) {
			c = ddb_compiled_new(pat, nPat, glob, esc);
			if (c == 0) {
				sqlite3_result_error_nomem(ctx);
				return;
			}
			ddb_match_with(ctx, c, str, glob);
			sqlite3_free(c);
			return;
		}
	}
	ddb_match_with(ctx, c, str, glob);
}

static void ddb_like(sqlite3_context *ctx, int argc, sqlite3_value **argv) { ddb_match(ctx, argc, argv, 0); }
static void ddb_glob(sqlite3_context *ctx, int argc, sqlite3_value **argv) { ddb_match(ctx, argc, argv, 1); }

int ddb_register_match(sqlite3 *db, ddb_budget *b) {
	int rc = sqlite3_create_function_v2(db, "like", 2, DDB_FLAGS, b, ddb_like, 0, 0, 0);
	if (rc == 0) rc = sqlite3_create_function_v2(db, "like", 3, DDB_FLAGS, b, ddb_like, 0, 0, 0);
	if (rc == 0) rc = sqlite3_create_function_v2(db, "glob", 2, DDB_FLAGS, b, ddb_glob, 0, 0, 0);
	return rc;
}
