/*
 * test_nomem.c — the decoder under allocation failure.
 *
 * Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc, so that the
 * decoder's allocations go through the wrappers below, which fail the Nth
 * one.  A fixed scenario (decoder, relations that grow the cache, a relation
 * replaced by a wider one, a wide insert that grows the scratch) is run with
 * the failure at every allocation in turn; each call must either succeed or
 * return PGO_ERR_NOMEM with the relation cache as it was.  Leaks are left to
 * ASan/valgrind.
 *
 * Prints "decoder-nomem: N passed, M failed" and exits non-zero on failure.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgoutput.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

static long countdown = -1; /* allocations left before the failure; -1 = off */
static bool injected;

static bool
should_fail(void)
{
	if (countdown < 0)
		return false;
	if (countdown-- == 0) {
		injected = true;
		return true;
	}
	return false;
}

void *
__wrap_malloc(size_t n)
{
	return should_fail() ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t n, size_t size)
{
	return should_fail() ? NULL : __real_calloc(n, size);
}

void *
__wrap_realloc(void *p, size_t n)
{
	return should_fail() ? NULL : __real_realloc(p, n);
}

static int passed, failed;

static void
check(bool ok, long at, const char *what)
{
	if (ok) {
		passed++;
		return;
	}
	failed++;
	fprintf(stderr, "FAIL: allocation %ld: %s\n", at, what);
}

typedef struct wbuf {
	uint8_t b[4096];
	size_t  n;
} wbuf;

static void
w8(wbuf *w, uint8_t v)
{
	w->b[w->n++] = v;
}

static void
w32(wbuf *w, uint32_t v)
{
	for (int s = 24; s >= 0; s -= 8)
		w8(w, (uint8_t) (v >> s));
}

static void
wstr(wbuf *w, const char *s)
{
	do
		w8(w, (uint8_t) *s);
	while (*s++ != '\0');
}

static void
relation(wbuf *w, uint32_t oid, uint16_t ncols)
{
	w->n = 0;
	w8(w, 'R');
	w32(w, oid);
	wstr(w, "public");
	wstr(w, "t");
	w8(w, 'd');
	w8(w, (uint8_t) (ncols >> 8));
	w8(w, (uint8_t) ncols);
	for (uint16_t i = 0; i < ncols; i++) {
		w8(w, 0);
		wstr(w, "col");
		w32(w, 25);
		w32(w, UINT32_MAX);
	}
}

static void
insert(wbuf *w, uint32_t oid, uint16_t ncols)
{
	w->n = 0;
	w8(w, 'I');
	w32(w, oid);
	w8(w, 'N');
	w8(w, (uint8_t) (ncols >> 8));
	w8(w, (uint8_t) ncols);
	for (uint16_t i = 0; i < ncols; i++)
		w8(w, 'n');
}

/* Decode; on NOMEM the entry for oid must be what it was. */
static bool
step(pgo_decoder *d, const wbuf *w, uint32_t oid, long at, const char *what)
{
	const pgo_relation *before = pgo_decoder_relation(d, oid);
	uint16_t            natts = before ? before->natts : 0;
	pgo_msg             m;
	pgo_error           err;
	pgo_rc              rc = pgo_decode_message(d, w->b, w->n, &m, &err);

	if (rc == PGO_OK) {
		check(true, at, what);
		return true;
	}
	check(rc == PGO_ERR_NOMEM && err.code == PGO_ERR_NOMEM &&
	          pgo_decoder_relation(d, oid) == before &&
	          (before == NULL || before->natts == natts),
	      at, what);
	return false;
}

/* The scenario; returns true when it ran without an injected failure. */
static bool
scenario(long at)
{
	pgo_decoder *d;
	wbuf         w;
	bool         ok = true;

	injected = false;
	countdown = at;
	d = pgo_decoder_new(PGO_PROTO_V1);
	if (d == NULL) {
		countdown = -1;
		check(injected, at, "pgo_decoder_new failed without an injected failure");
		return false;
	}
	for (uint32_t oid = 1; oid <= 20 && ok; oid++) {
		relation(&w, oid, 2);
		ok = step(d, &w, oid, at, "relation");
	}
	if (ok) {
		/* earlier entries survive a failed cache growth */
		for (uint32_t oid = 1; oid <= 20; oid++)
			check(pgo_decoder_relation(d, oid) != NULL, at, "relation kept");
		relation(&w, 7, 100);
		ok = step(d, &w, 7, at, "wider relation");
	}
	if (ok) {
		insert(&w, 7, 100);
		ok = step(d, &w, 7, at, "wide insert");
	}
	countdown = -1;
	if (!ok) {
		/* after the failure, the same decoder works again */
		relation(&w, 1, 2);
		step(d, &w, 1, at, "relation after failure");
		insert(&w, 1, 2);
		step(d, &w, 1, at, "insert after failure");
	}
	pgo_decoder_free(d);
	return !injected;
}

int
main(void)
{
	long at;

	for (at = 0; at < 1000; at++)
		if (scenario(at))
			break;
	check(at > 3 && at < 1000, at, "scenario allocates and finishes");
	printf("decoder-nomem: %d passed, %d failed (%ld allocation points)\n", passed, failed,
	       at);
	return failed == 0 ? 0 : 1;
}
