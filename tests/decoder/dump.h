/*
 * dump.h — text form of decoded pgoutput messages, for golden files, and a
 * structural check of a decoded message, shared by the unit test and the
 * fuzz target.
 */
#ifndef PGOUTBOX_TESTS_DUMP_H
#define PGOUTBOX_TESTS_DUMP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "pgoutput.h"

/* A growable NUL-terminated string; aborts when out of memory (tests only). */
typedef struct strbuf {
	char  *data;
	size_t len;
	size_t cap;
} strbuf;

void strbuf_free(strbuf *sb);
void strbuf_reset(strbuf *sb);
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void strbuf_printf(strbuf *sb, const char *fmt, ...);

/*
 * Append one line (with '\n') describing m.  Output is ASCII: bytes outside
 * 0x20..0x7e, quotes and backslashes are escaped; values longer than 200
 * bytes are abbreviated to their length, FNV-1a hash and first 48 bytes.
 */
void dump_msg(strbuf *sb, const pgo_msg *m);

/*
 * Check what a successful decode promises: every view lies inside
 * [buf, buf + len) (Type's "pg_catalog" excepted), tuples have their
 * relation's width, kinds are known.  Returns NULL or a static description
 * of the first violation.
 */
const char *msg_violation(const pgo_msg *m, const unsigned char *buf, size_t len);

#endif /* PGOUTBOX_TESTS_DUMP_H */
