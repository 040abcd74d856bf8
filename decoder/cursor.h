/*
 * cursor.h — a bounds-checked big-endian reader over a byte buffer.
 *
 * Internal to decoder/.  Every getter checks that the bytes it needs remain
 * before touching them; on failure it returns false and leaves the cursor
 * where it was, so that cur.pos is the offset of the field that did not fit
 * (that is the offset the decoder reports).  The getters are must-check: a
 * caller cannot forget that a read may fail.
 *
 * The cursor never allocates and never copies: strings and byte runs come
 * back as views into the buffer.
 */
#ifndef PGOUTBOX_DECODER_CURSOR_H
#define PGOUTBOX_DECODER_CURSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define PGO_MUST_CHECK __attribute__((warn_unused_result))
#else
#define PGO_MUST_CHECK
#endif

typedef struct pgo_cursor {
	const uint8_t *buf;
	size_t         len;
	size_t         pos; /* 0 <= pos <= len, always */
} pgo_cursor;

static inline pgo_cursor
cur_init(const uint8_t *buf, size_t len)
{
	pgo_cursor c = {buf, len, 0};

	return c;
}

static inline size_t
cur_remaining(const pgo_cursor *c)
{
	return c->len - c->pos;
}

PGO_MUST_CHECK static inline bool
cur_u8(pgo_cursor *c, uint8_t *out)
{
	if (cur_remaining(c) < 1)
		return false;
	*out = c->buf[c->pos];
	c->pos += 1;
	return true;
}

PGO_MUST_CHECK static inline bool
cur_u16(pgo_cursor *c, uint16_t *out)
{
	const uint8_t *p;

	if (cur_remaining(c) < 2)
		return false;
	p = c->buf + c->pos;
	*out = (uint16_t) ((uint16_t) p[0] << 8 | (uint16_t) p[1]);
	c->pos += 2;
	return true;
}

PGO_MUST_CHECK static inline bool
cur_u32(pgo_cursor *c, uint32_t *out)
{
	const uint8_t *p;

	if (cur_remaining(c) < 4)
		return false;
	p = c->buf + c->pos;
	*out = (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 |
	       (uint32_t) p[2] << 8 | (uint32_t) p[3];
	c->pos += 4;
	return true;
}

/*
 * Spelled out rather than looped, like cur_u32: GCC and clang compile the
 * expression to one load and a bswap.  GCC 12 -O2 kept the loop as a loop,
 * which cost about 45 instructions per LSN or timestamp and was nearly half
 * of the decoder's instructions through the CopyData envelope (see
 * docs/benchmarks.md, scripts/bench/decoder).
 */
PGO_MUST_CHECK static inline bool
cur_u64(pgo_cursor *c, uint64_t *out)
{
	const uint8_t *p;

	if (cur_remaining(c) < 8)
		return false;
	p = c->buf + c->pos;
	*out = (uint64_t) p[0] << 56 | (uint64_t) p[1] << 48 |
	       (uint64_t) p[2] << 40 | (uint64_t) p[3] << 32 |
	       (uint64_t) p[4] << 24 | (uint64_t) p[5] << 16 |
	       (uint64_t) p[6] << 8 | (uint64_t) p[7];
	c->pos += 8;
	return true;
}

/* Two's complement, as PostgreSQL's pq_sendint64 writes it. */
PGO_MUST_CHECK static inline bool
cur_i64(pgo_cursor *c, int64_t *out)
{
	uint64_t u;

	if (!cur_u64(c, &u))
		return false;
	/* Conversion of an out-of-range value is implementation-defined in C11;
	 * memcpy states the intent (bit pattern) without relying on it. */
	memcpy(out, &u, sizeof *out);
	return true;
}

/*
 * A NUL-terminated string that must end before the buffer does.  *out views
 * the characters without the terminator; the cursor moves past it.
 */
PGO_MUST_CHECK static inline bool
cur_cstr(pgo_cursor *c, const uint8_t **out, uint32_t *outlen)
{
	const uint8_t *start;
	const uint8_t *nul;
	size_t         n;

	if (cur_remaining(c) == 0)
		return false;
	start = c->buf + c->pos;
	nul = memchr(start, 0, cur_remaining(c));
	if (nul == NULL)
		return false;
	n = (size_t) (nul - start);
	if (n > UINT32_MAX)
		return false;
	*out = start;
	*outlen = (uint32_t) n;
	c->pos += n + 1;
	return true;
}

/* n bytes as a view. */
PGO_MUST_CHECK static inline bool
cur_bytes(pgo_cursor *c, size_t n, const uint8_t **out)
{
	if (cur_remaining(c) < n)
		return false;
	*out = c->buf + c->pos;
	c->pos += n;
	return true;
}

#endif /* PGOUTBOX_DECODER_CURSOR_H */
