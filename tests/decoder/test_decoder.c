/*
 * test_decoder.c — unit tests of decoder/: golden files captured from a real
 * PostgreSQL, truncation and corruption sweeps over every golden record, and
 * hand-built messages for the envelope and the error paths.
 *
 * Usage: test_decoder [--write-expected] DIR...
 *   DIR is a directory of cases (each a subdirectory with proto, input,
 *   expected and, optionally, options, the pgoutput options it was captured
 *   with, one a line; run in sorted order, as are subdirectories of further
 *   cases, such as cases/pg17/) or a single case directory.
 *   --write-expected regenerates each case's expected file from the decoder
 *   (used by capture.sh; review the result before committing it).
 *
 * The last line of output is "decoder: N passed, M failed"; the exit status
 * is non-zero when anything failed.
 *
 * Truncated inputs are checked for out-of-bounds reads: under ASan the bytes
 * past each prefix are poisoned, under valgrind they are marked inaccessible
 * (client requests; no-ops otherwise).
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dump.h"
#include "pgoutput.h"

/* ---------------------------------------------------------------------------
 * Poisoning the bytes past a prefix
 * ------------------------------------------------------------------------- */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#if defined(TEST_ASAN)
#include <sanitizer/asan_interface.h>
#define poison(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#elif defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define poison(p, n)   ((void) VALGRIND_MAKE_MEM_NOACCESS((p), (n)))
#define unpoison(p, n) ((void) VALGRIND_MAKE_MEM_DEFINED((p), (n)))
#endif
#endif
#ifndef poison
#define poison(p, n)   ((void) (p), (void) (n))
#define unpoison(p, n) ((void) (p), (void) (n))
#endif

/* ---------------------------------------------------------------------------
 * Check bookkeeping
 * ------------------------------------------------------------------------- */
static int passed, failed;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static bool
check_at(bool ok, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		passed++;
		return true;
	}
	failed++;
	fprintf(stderr, "%s:%d: FAIL: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return false;
}

#define CHECK(ok, ...) check_at((ok), __FILE__, __LINE__, __VA_ARGS__)

/* A decode expected to fail with code at offset. */
#define CHECK_ERR(rc, err, want, off, what)                                        \
	CHECK((rc) == (want) && (err).offset == (size_t) (off),                        \
	      "%s: got %s at %zu (%s), want %s at %zu", (what), pgo_rc_name(rc),       \
	      (err).offset, (rc) == PGO_OK ? "-" : (err).reason, pgo_rc_name(want),   \
	      (size_t) (off))

/* ---------------------------------------------------------------------------
 * Files and records
 * ------------------------------------------------------------------------- */
typedef struct record {
	uint8_t *data; /* exactly len bytes (so overruns are caught) */
	size_t   len;
} record;

typedef struct golden {
	int     proto;
	bool    parallel; /* options holds streaming=parallel */
	record *recs;
	size_t  nrecs;
} golden;

static bool
read_file(const char *path, uint8_t **out, size_t *outlen)
{
	FILE    *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t   len = 0, cap = 0, n;

	if (f == NULL)
		return false;
	for (;;) {
		if (cap - len < 65536) {
			cap = cap ? cap * 2 : 65536;
			buf = realloc(buf, cap + 1);
			if (buf == NULL)
				abort();
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(f)) {
		fclose(f);
		free(buf);
		return false;
	}
	fclose(f);
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return true;
}

static void
golden_free(golden *g)
{
	for (size_t i = 0; i < g->nrecs; i++)
		free(g->recs[i].data);
	free(g->recs);
	memset(g, 0, sizeof *g);
}

/* input: records of Uint32 big-endian length + message bytes. */
static bool
golden_load(const char *dir, golden *g)
{
	char     path[4096];
	uint8_t *buf;
	size_t   len, pos = 0, cap = 0;

	memset(g, 0, sizeof *g);
	snprintf(path, sizeof path, "%s/proto", dir);
	if (!read_file(path, &buf, &len))
		return false;
	g->proto = atoi((char *) buf);
	free(buf);

	/* options (optional): the pgoutput options of the capture, one a line. */
	snprintf(path, sizeof path, "%s/options", dir);
	if (read_file(path, &buf, &len)) {
		for (char *line = (char *) buf; line != NULL && *line != '\0';) {
			char *nl = strchr(line, '\n');

			if (nl != NULL)
				*nl = '\0';
			if (strcmp(line, "streaming=parallel") == 0)
				g->parallel = true;
			line = nl != NULL ? nl + 1 : NULL;
		}
		free(buf);
	}

	snprintf(path, sizeof path, "%s/input", dir);
	if (!read_file(path, &buf, &len))
		return false;
	while (pos < len) {
		size_t n;

		if (len - pos < 4)
			goto bad;
		n = (size_t) buf[pos] << 24 | (size_t) buf[pos + 1] << 16 |
		    (size_t) buf[pos + 2] << 8 | buf[pos + 3];
		pos += 4;
		if (n > len - pos)
			goto bad;
		if (g->nrecs == cap) {
			cap = cap ? cap * 2 : 64;
			g->recs = realloc(g->recs, cap * sizeof *g->recs);
			if (g->recs == NULL)
				abort();
		}
		g->recs[g->nrecs].data = malloc(n ? n : 1);
		if (g->recs[g->nrecs].data == NULL)
			abort();
		memcpy(g->recs[g->nrecs].data, buf + pos, n);
		g->recs[g->nrecs].len = n;
		g->nrecs++;
		pos += n;
	}
	free(buf);
	return true;
bad:
	free(buf);
	golden_free(g);
	return false;
}

/* ---------------------------------------------------------------------------
 * Sweeps over one golden record
 * ------------------------------------------------------------------------- */

/*
 * Every proper prefix of a valid message is truncated input: the decoder
 * must say so, point at or before the end of the prefix, and read nothing
 * past it.  d holds the state after the preceding records; errors must not
 * change it (the golden comparison that follows would notice).
 */
static void
truncation_sweep(pgo_decoder *d, record *r, const char *where, size_t idx)
{
	pgo_msg   m;
	pgo_error err;
	size_t    bad = SIZE_MAX;
	pgo_rc    badrc = PGO_OK;

	for (size_t k = r->len; k-- > 0;) {
		pgo_rc rc;

		poison(r->data + k, 1);
		rc = pgo_decode_message(d, r->data, k, &m, &err);
		if ((rc != PGO_ERR_TRUNCATED || err.offset > k) && bad == SIZE_MAX) {
			bad = k;
			badrc = rc;
		}
	}
	unpoison(r->data, r->len);
	CHECK(bad == SIZE_MAX, "%s: record %zu: prefix of %zu bytes: %s", where, idx,
	      bad, pgo_rc_name(badrc));
}

/* A fresh decoder for the case's protocol and options. */
static pgo_decoder *
golden_decoder(const golden *g)
{
	pgo_decoder *d = pgo_decoder_new(g->proto);

	if (d != NULL && !pgo_decoder_set_parallel_streaming(d, g->parallel)) {
		pgo_decoder_free(d);
		d = NULL;
	}
	return d;
}

/* Decode records [0, n) into a fresh decoder. */
static pgo_decoder *
replay(const golden *g, size_t n)
{
	pgo_decoder *d = golden_decoder(g);
	pgo_msg      m;
	pgo_error    err;

	if (d == NULL)
		abort();
	for (size_t i = 0; i < n; i++)
		(void) pgo_decode_message(d, g->recs[i].data, g->recs[i].len, &m, &err);
	return d;
}

/*
 * Every single-byte corruption of a record must decode or fail cleanly.
 * *work holds the state after records [0, idx); corruptions that decode
 * may change it, so stream flips are undone on the spot and relation cache
 * changes by a rebuild afterwards.  last_start is the index of the last
 * real Stream Start (to re-enter a block), or SIZE_MAX.
 */
static void
corruption_sweep(pgo_decoder **work, const golden *g, size_t idx,
                 size_t last_start, const char *where)
{
	static const int variants[] = {-1 /* b ^ 0xFF */, 0x00, 0x7F, 0x80};
	record     *r = &g->recs[idx];
	pgo_msg     m;
	pgo_error   err;
	bool        dirty = false;
	const char *problem = NULL;
	size_t      at = 0;

	for (size_t p = 0; p < r->len && problem == NULL; p++) {
		uint8_t orig = r->data[p];

		for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
			uint8_t b = variants[v] < 0 ? (uint8_t) (orig ^ 0xFF) : (uint8_t) variants[v];
			pgo_rc  rc;

			if (b == orig)
				continue;
			r->data[p] = b;
			rc = pgo_decode_message(*work, r->data, r->len, &m, &err);
			if (rc == PGO_OK) {
				problem = msg_violation(&m, r->data, r->len);
				if (m.type == PGO_MSG_RELATION)
					dirty = true;
				else if (m.type == PGO_MSG_STREAM_START)
					pgo_decoder_reset_stream(*work);
				else if (m.type == PGO_MSG_STREAM_STOP && last_start != SIZE_MAX) {
					record *s = &g->recs[last_start];

					(void) pgo_decode_message(*work, s->data, s->len, &m, &err);
				}
			} else if (rc < PGO_ERR_TRUNCATED || rc > PGO_ERR_NOMEM || err.reason == NULL ||
			           err.offset > r->len || err.code != rc) {
				problem = "bad error report";
			}
			if (problem != NULL) {
				at = p;
				break;
			}
		}
		r->data[p] = orig;
	}
	CHECK(problem == NULL, "%s: record %zu: corruption at byte %zu: %s", where, idx,
	      at, problem ? problem : "-");

	/* Bring *work to the state after record idx. */
	if (dirty ||
	    pgo_decode_message(*work, r->data, r->len, &m, &err) != PGO_OK) {
		pgo_decoder_free(*work);
		*work = replay(g, idx + 1);
	}
}

/* ---------------------------------------------------------------------------
 * Golden cases
 * ------------------------------------------------------------------------- */

static void
print_line(FILE *f, char sign, const char *s, size_t n)
{
	fputc(sign, f);
	fwrite(s, 1, n > 400 ? 400 : n, f);
	if (n > 400)
		fputs("[...]", f);
	fputc('\n', f);
}

/* Compare line by line; report the first difference as a tiny diff. */
static bool
compare_text(const char *where, const char *want, size_t wantlen, const char *got,
             size_t gotlen)
{
	size_t line = 1, wp = 0, gp = 0;

	while (wp < wantlen || gp < gotlen) {
		const char *we = memchr(want + wp, '\n', wantlen - wp);
		const char *ge = memchr(got + gp, '\n', gotlen - gp);
		size_t      wn = we ? (size_t) (we - (want + wp)) : wantlen - wp;
		size_t      gn = ge ? (size_t) (ge - (got + gp)) : gotlen - gp;
		bool        wdone = wp >= wantlen, gdone = gp >= gotlen;

		if (wdone || gdone || wn != gn || memcmp(want + wp, got + gp, wn) != 0) {
			fprintf(stderr, "%s: decoded text differs from expected at line %zu\n",
			        where, line);
			fprintf(stderr, "--- expected\n+++ decoded\n@@ -%zu +%zu @@\n", line, line);
			if (!wdone)
				print_line(stderr, '-', want + wp, wn);
			if (!gdone)
				print_line(stderr, '+', got + gp, gn);
			return false;
		}
		wp += wn + 1;
		gp += gn + 1;
		line++;
	}
	return true;
}

static void
run_golden(const char *dir, const char *name, bool write_expected)
{
	golden       g;
	pgo_decoder *ref, *work;
	strbuf       out = {0};
	char         path[4096];
	size_t       last_start = SIZE_MAX;
	uint8_t     *want;
	size_t       wantlen;

	if (!CHECK(golden_load(dir, &g), "%s: cannot load proto/input", name))
		return;
	ref = golden_decoder(&g);
	work = golden_decoder(&g);
	if (!CHECK(ref != NULL && work != NULL, "%s: proto %d%s", name, g.proto,
	           g.parallel ? ", streaming=parallel" : ""))
		goto done;

	for (size_t i = 0; i < g.nrecs; i++) {
		record   *r = &g.recs[i];
		pgo_msg   m;
		pgo_error err;
		pgo_rc    rc;

		if (!write_expected)
			truncation_sweep(ref, r, name, i);
		rc = pgo_decode_message(ref, r->data, r->len, &m, &err);
		if (rc == PGO_OK) {
			const char *v = msg_violation(&m, r->data, r->len);

			if (v != NULL)
				CHECK(false, "%s: record %zu: %s", name, i, v);
			dump_msg(&out, &m);
		} else
			strbuf_printf(&out, "ERROR %s offset=%zu reason=%s\n", pgo_rc_name(rc),
			              err.offset, err.reason);
		if (!write_expected)
			corruption_sweep(&work, &g, i, last_start, name);
		if (rc == PGO_OK && m.type == PGO_MSG_STREAM_START)
			last_start = i;
	}

	snprintf(path, sizeof path, "%s/expected", dir);
	if (write_expected) {
		FILE *f = fopen(path, "wb");

		CHECK(f != NULL && fwrite(out.data, 1, out.len, f) == out.len &&
		          fclose(f) == 0,
		      "%s: cannot write %s", name, path);
		printf("%s: wrote %zu messages\n", name, g.nrecs);
	} else if (CHECK(read_file(path, &want, &wantlen), "%s: cannot read %s", name, path)) {
		CHECK(compare_text(name, (char *) want, wantlen, out.data ? out.data : "", out.len),
		      "%s: golden output (%zu messages)", name, g.nrecs);
		free(want);
	}
done:
	pgo_decoder_free(ref);
	pgo_decoder_free(work);
	strbuf_free(&out);
	golden_free(&g);
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static bool
is_file(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool
is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * A case directory, or a directory of them and of further such directories
 * (cases/pg17/...: one per server major), run in sorted order.  A case is
 * named by its path below the top directory ("pg17/outbox_insert").
 * --write-expected does not descend: it rewrites only the cases it names.
 * Returns the number of cases run.
 */
static size_t
run_tree(const char *dir, const char *prefix, bool write_expected, int depth)
{
	char           path[4096], name[4096];
	DIR           *dp;
	struct dirent *de;
	char         **names = NULL;
	size_t         n = 0, cap = 0, ncases = 0;

	dp = opendir(dir);
	if (!CHECK(dp != NULL, "cannot open %s: %s", dir, strerror(errno)))
		return 0;
	while ((de = readdir(dp)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
		if (!is_dir(path))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			names = realloc(names, cap * sizeof *names);
			if (names == NULL)
				abort();
		}
		names[n] = strdup(de->d_name);
		if (names[n] == NULL)
			abort();
		n++;
	}
	closedir(dp);
	qsort(names, n, sizeof *names, cmp_names);
	for (size_t i = 0; i < n; i++) {
		snprintf(path, sizeof path, "%s/%s/input", dir, names[i]);
		snprintf(name, sizeof name, "%s%s", prefix, names[i]);
		if (is_file(path)) {
			snprintf(path, sizeof path, "%s/%s", dir, names[i]);
			run_golden(path, name, write_expected);
			ncases++;
		} else if (depth < 4 && !write_expected) {
			char sub[sizeof name + 1];

			snprintf(path, sizeof path, "%s/%s", dir, names[i]);
			snprintf(sub, sizeof sub, "%s/", name);
			ncases += run_tree(path, sub, write_expected, depth + 1);
		}
		free(names[i]);
	}
	free(names);
	if (depth == 0)
		CHECK(ncases > 0, "no cases in %s", dir);
	return ncases;
}

static void
run_dir(const char *dir, bool write_expected)
{
	char path[4096];

	snprintf(path, sizeof path, "%s/input", dir);
	if (is_file(path)) {
		const char *slash = strrchr(dir, '/');

		run_golden(dir, slash ? slash + 1 : dir, write_expected);
		return;
	}
	(void) run_tree(dir, "", write_expected, 0);
}

/* ---------------------------------------------------------------------------
 * Hand-built messages
 * ------------------------------------------------------------------------- */
typedef struct wbuf {
	uint8_t b[8192];
	size_t  n;
} wbuf;

static void
w8(wbuf *w, uint8_t v)
{
	if (w->n >= sizeof w->b)
		abort();
	w->b[w->n++] = v;
}

static void
w16(wbuf *w, uint16_t v)
{
	w8(w, (uint8_t) (v >> 8));
	w8(w, (uint8_t) v);
}

static void
w32(wbuf *w, uint32_t v)
{
	w16(w, (uint16_t) (v >> 16));
	w16(w, (uint16_t) v);
}

static void
w64(wbuf *w, uint64_t v)
{
	w32(w, (uint32_t) (v >> 32));
	w32(w, (uint32_t) v);
}

static void
wstr(wbuf *w, const char *s)
{
	do
		w8(w, (uint8_t) *s);
	while (*s++ != '\0');
}

static void
wtext(wbuf *w, const char *s)
{
	w8(w, 't');
	w32(w, (uint32_t) strlen(s));
	while (*s)
		w8(w, (uint8_t) *s++);
}

/* Relation oid in public with ncols text columns c0, c1, ... (c0 is key). */
static void
build_relation(wbuf *w, uint32_t oid, const char *nsp, uint16_t ncols)
{
	w->n = 0;
	w8(w, 'R');
	w32(w, oid);
	wstr(w, nsp);
	wstr(w, "t");
	w8(w, 'd');
	w16(w, ncols);
	for (uint16_t i = 0; i < ncols; i++) {
		char name[16];

		snprintf(name, sizeof name, "c%u", (unsigned) i);
		w8(w, i == 0 ? PGO_COLUMN_KEY : 0);
		wstr(w, name);
		w32(w, 25);
		w32(w, UINT32_MAX); /* typmod -1 */
	}
}

/* Insert of ncols text values "v0", "v1", ... */
static void
build_insert(wbuf *w, uint32_t oid, uint16_t ncols)
{
	w->n = 0;
	w8(w, 'I');
	w32(w, oid);
	w8(w, 'N');
	w16(w, ncols);
	for (uint16_t i = 0; i < ncols; i++) {
		char v[16];

		snprintf(v, sizeof v, "v%u", (unsigned) i);
		wtext(w, v);
	}
}

static pgo_rc
decode(pgo_decoder *d, const wbuf *w, pgo_msg *m, pgo_error *e)
{
	return pgo_decode_message(d, w->b, w->n, m, e);
}

static bool
bytes_eq(pgo_bytes b, const char *s)
{
	return b.len == strlen(s) && memcmp(b.ptr, s, b.len) == 0;
}

static void
test_envelope(void)
{
	uint8_t      buf[64];
	pgo_copydata cd;
	pgo_error    err;
	pgo_rc       rc;
	wbuf         w = {.n = 0};

	memset(buf, 0, sizeof buf);

	/* 'w' XLogData with a 3-byte payload */
	w8(&w, 'w');
	w64(&w, UINT64_C(0x0000000100000010));
	w64(&w, UINT64_C(0x0000000100000020));
	w64(&w, (uint64_t) INT64_C(-5));
	w8(&w, 'E');
	w8(&w, 'x');
	w8(&w, 'y');
	rc = pgo_decode_copydata(w.b, w.n, &cd, &err);
	CHECK(rc == PGO_OK && cd.kind == PGO_COPY_XLOGDATA &&
	          cd.wal_start == UINT64_C(0x100000010) && cd.wal_end == UINT64_C(0x100000020) &&
	          cd.send_time == -5 && cd.data.ptr == w.b + 25 && cd.data.len == 3 &&
	          !cd.reply_requested,
	      "xlogdata decodes");
	for (size_t k = 0; k < 25; k++) {
		size_t want = k == 0 ? 0 : k < 9 ? 1 : k < 17 ? 9 : 17;

		memcpy(buf, w.b, k);
		rc = pgo_decode_copydata(k ? buf : NULL, k, &cd, &err);
		CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, want, "xlogdata truncated");
	}
	rc = pgo_decode_copydata(w.b, 25, &cd, &err);
	CHECK(rc == PGO_OK && cd.data.len == 0, "xlogdata with empty payload");

	/* 'k' keepalive, reply requested or not */
	for (uint8_t reply = 0; reply <= 1; reply++) {
		w.n = 0;
		w8(&w, 'k');
		w64(&w, UINT64_C(0xABCDEF0123));
		w64(&w, 777);
		w8(&w, reply);
		rc = pgo_decode_copydata(w.b, w.n, &cd, &err);
		CHECK(rc == PGO_OK && cd.kind == PGO_COPY_KEEPALIVE &&
		          cd.wal_end == UINT64_C(0xABCDEF0123) && cd.send_time == 777 &&
		          cd.reply_requested == (reply == 1) && cd.data.len == 0 && cd.wal_start == 0,
		      "keepalive reply=%u", reply);
	}
	for (size_t k = 0; k < 18; k++) {
		size_t want = k == 0 ? 0 : k < 9 ? 1 : k < 17 ? 9 : 17;

		memcpy(buf, w.b, k);
		rc = pgo_decode_copydata(buf, k, &cd, &err);
		CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, want, "keepalive truncated");
	}
	w8(&w, 0);
	rc = pgo_decode_copydata(w.b, w.n, &cd, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, 18, "keepalive with trailing byte");
	w.n = 17;
	w8(&w, 2);
	rc = pgo_decode_copydata(w.b, w.n, &cd, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 17, "keepalive reply flag 2");

	buf[0] = 'x';
	rc = pgo_decode_copydata(buf, 25, &cd, &err);
	CHECK_ERR(rc, err, PGO_ERR_UNKNOWN_TYPE, 0, "unknown copydata kind");
	buf[0] = 'r'; /* a standby status update is client-to-server only */
	rc = pgo_decode_copydata(buf, 34, &cd, &err);
	CHECK_ERR(rc, err, PGO_ERR_UNKNOWN_TYPE, 0, "standby status update");
}

static void
test_relation_cache(void)
{
	pgo_decoder        *d = pgo_decoder_new(PGO_PROTO_V1);
	const pgo_relation *r1, *r2;
	pgo_msg             m;
	pgo_error           err;
	pgo_rc              rc;
	wbuf                w;

	build_relation(&w, 16385, "public", 2);
	rc = decode(d, &w, &m, &err);
	r1 = pgo_decoder_relation(d, 16385);
	CHECK(rc == PGO_OK && m.type == PGO_MSG_RELATION && m.u.relation.rel == r1 &&
	          r1 != NULL && r1->natts == 2 && strcmp(r1->nspname, "public") == 0 &&
	          strcmp(r1->relname, "t") == 0 && r1->replident == 'd' &&
	          strcmp(r1->atts[1].name, "c1") == 0 && r1->atts[0].flags == PGO_COLUMN_KEY &&
	          r1->atts[1].flags == 0 && r1->atts[0].type_oid == 25 && r1->atts[0].typmod == -1,
	      "relation cached");
	CHECK(pgo_decoder_relation(d, 16386) == NULL, "other oid not cached");

	build_insert(&w, 16385, 2);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.insert.relid == 16385 && m.u.insert.rel == r1 &&
	          m.u.insert.newtup.natts == 2 && m.u.insert.newtup.atts[1].kind == PGO_DATUM_TEXT &&
	          bytes_eq(m.u.insert.newtup.atts[1].value, "v1") && !m.has_xid,
	      "insert decodes");

	/* ALTER TABLE ADD COLUMN: a second Relation for the same OID */
	build_relation(&w, 16385, "public", 3);
	rc = decode(d, &w, &m, &err);
	r2 = pgo_decoder_relation(d, 16385);
	CHECK(rc == PGO_OK && r2 != NULL && r2->natts == 3 && m.u.relation.rel == r2 &&
	          strcmp(r2->atts[2].name, "c2") == 0,
	      "relation replaced");
	build_insert(&w, 16385, 2);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 6, "insert with the old width");
	build_insert(&w, 16385, 3);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.insert.rel == pgo_decoder_relation(d, 16385) &&
	          m.u.insert.newtup.natts == 3 && bytes_eq(m.u.insert.newtup.atts[2].value, "v2"),
	      "insert with the new width");

	/* A failed Relation leaves the entry alone: truncated, trailing, bad value */
	r2 = pgo_decoder_relation(d, 16385);
	build_relation(&w, 16385, "public", 5);
	rc = pgo_decode_message(d, w.b, w.n - 1, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, w.n - 4, "relation truncated in last typmod");
	w8(&w, 0);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, w.n - 1, "relation with trailing byte");
	CHECK(pgo_decoder_relation(d, 16385) == r2 && r2->natts == 3, "cache unchanged");
	build_relation(&w, 16385, "public", 5);
	w.b[17 + 12] = 4; /* flags of column 1; header 17 bytes, columns 12 */
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 17 + 12, "unknown column flags");
	build_relation(&w, 99, "public", 1);
	w.b[1 + 4 + 7 + 2] = 'x';
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 14, "unknown replica identity");
	w.b[14] = 'f';
	w.b[15] = 0x80; /* natts 0x8001 */
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 15, "negative relation column count");
	CHECK(pgo_decoder_relation(d, 16385) == r2 && pgo_decoder_relation(d, 99) == NULL,
	      "cache unchanged after errors");

	/* Empty namespace means pg_catalog */
	build_relation(&w, 1259, "", 1);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && strcmp(m.u.relation.rel->nspname, "pg_catalog") == 0,
	      "empty namespace is pg_catalog");

	/* Many relations, inserted out of order, all findable */
	for (uint32_t i = 0; i < 100; i++) {
		build_relation(&w, (i * 7919u) % 1000u + 20000u, "s", (uint16_t) (i % 3 + 1));
		rc = decode(d, &w, &m, &err);
		if (rc != PGO_OK)
			break;
	}
	CHECK(rc == PGO_OK, "100 relations decode");
	rc = PGO_OK;
	for (uint32_t i = 0; i < 100; i++) {
		const pgo_relation *r = pgo_decoder_relation(d, (i * 7919u) % 1000u + 20000u);

		if (r == NULL || r->natts != i % 3 + 1)
			rc = PGO_ERR_BAD_VALUE;
	}
	CHECK(rc == PGO_OK && pgo_decoder_relation(d, 16385) == r2 &&
	          pgo_decoder_relation(d, 19999) == NULL,
	      "100 relations cached");

	/* Zero columns (CREATE TABLE t ()) */
	build_relation(&w, 5, "public", 0);
	rc = decode(d, &w, &m, &err);
	build_insert(&w, 5, 0);
	rc = rc == PGO_OK ? decode(d, &w, &m, &err) : rc;
	CHECK(rc == PGO_OK && m.u.insert.newtup.natts == 0, "zero-column relation");
	pgo_decoder_free(d);
}

static void
test_tuples(void)
{
	pgo_decoder *d = pgo_decoder_new(PGO_PROTO_V1);
	pgo_msg      m;
	pgo_error    err;
	pgo_rc       rc;
	wbuf         w;
	size_t       at;

	build_insert(&w, 16385, 2);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_UNKNOWN_RELATION, 1, "insert for unknown relation");

	build_relation(&w, 16385, "public", 2);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK, "relation");

	build_insert(&w, 16385, 3);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 6, "tuple natts mismatch");

	/* text length larger than what remains: the value is short */
	build_insert(&w, 16385, 2);
	w.b[8 + 1 + 3] = 200; /* first value "v0" claims 200 bytes */
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, 8 + 1 + 4, "text length > remaining");
	memset(&w.b[9], 0xFF, 4);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 9, "text length 0xFFFFFFFF");
	memcpy(&w.b[9], "\x80\0\0\0", 4);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 9, "text length INT32_MIN");

	build_insert(&w, 16385, 2);
	w8(&w, 0);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, w.n - 1, "insert with trailing byte");
	build_insert(&w, 16385, 2);
	w.b[5] = 'K';
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 5, "insert without 'N'");
	build_insert(&w, 16385, 2);
	w.b[8] = 'x';
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 8, "unknown column kind");

	/* every kind; binary value with a NUL */
	w.n = 0;
	w8(&w, 'I');
	w32(&w, 16385);
	w8(&w, 'N');
	w16(&w, 2);
	w8(&w, 'b');
	w32(&w, 3);
	w8(&w, 0);
	w8(&w, 1);
	w8(&w, 0);
	w8(&w, 'n');
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.insert.newtup.atts[0].kind == PGO_DATUM_BINARY &&
	          m.u.insert.newtup.atts[0].value.len == 3 &&
	          m.u.insert.newtup.atts[0].value.ptr == w.b + 13 &&
	          m.u.insert.newtup.atts[1].kind == PGO_DATUM_NULL &&
	          m.u.insert.newtup.atts[1].value.len == 0,
	      "binary and null datums");

	/* update: key + new, unchanged toast */
	w.n = 0;
	w8(&w, 'U');
	w32(&w, 16385);
	w8(&w, 'K');
	w16(&w, 2);
	wtext(&w, "k");
	w8(&w, 'n');
	w8(&w, 'N');
	w16(&w, 2);
	wtext(&w, "k2");
	w8(&w, 'u');
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.update.oldkind == 'K' && m.u.update.oldtup.natts == 2 &&
	          bytes_eq(m.u.update.oldtup.atts[0].value, "k") &&
	          m.u.update.oldtup.atts[1].kind == PGO_DATUM_NULL &&
	          bytes_eq(m.u.update.newtup.atts[0].value, "k2") &&
	          m.u.update.newtup.atts[1].kind == PGO_DATUM_UNCHANGED,
	      "update with old key");
	at = 1 + 4 + 1 + 2 + 1 + 4 + 1 + 1;
	w.b[at] = 'O';
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, at, "update: old tuple not followed by 'N'");
	w.n = at;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, at, "update: ends after old tuple");
	w.b[5] = 'X';
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 5, "update: unknown tuple tag");

	/* update without old tuple */
	w.n = 0;
	w8(&w, 'U');
	w32(&w, 16385);
	w8(&w, 'N');
	w16(&w, 2);
	wtext(&w, "a");
	wtext(&w, "b");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.update.oldkind == 0 && m.u.update.oldtup.natts == 0 &&
	          bytes_eq(m.u.update.newtup.atts[1].value, "b"),
	      "update without old tuple");

	/* delete: 'O' ok, 'N' is not */
	w.n = 0;
	w8(&w, 'D');
	w32(&w, 16385);
	w8(&w, 'O');
	w16(&w, 2);
	wtext(&w, "a");
	w8(&w, 'n');
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.del.oldkind == 'O' && bytes_eq(m.u.del.oldtup.atts[0].value, "a"),
	      "delete with old row");
	w.b[5] = 'N';
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 5, "delete with new tuple");

	/* A wide relation: scratch grows, old and new stay distinct */
	build_relation(&w, 7, "public", 300);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK, "wide relation");
	w.n = 0;
	w8(&w, 'U');
	w32(&w, 7);
	w8(&w, 'O');
	w16(&w, 300);
	for (int i = 0; i < 300; i++)
		wtext(&w, "o");
	w8(&w, 'N');
	w16(&w, 300);
	for (int i = 0; i < 300; i++)
		wtext(&w, "n");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && bytes_eq(m.u.update.oldtup.atts[299].value, "o") &&
	          bytes_eq(m.u.update.newtup.atts[0].value, "n") &&
	          bytes_eq(m.u.update.newtup.atts[299].value, "n") &&
	          m.u.update.oldtup.atts + 300 <= m.u.update.newtup.atts,
	      "wide update");
	pgo_decoder_free(d);
}

static void
test_other_messages(void)
{
	pgo_decoder *d = pgo_decoder_new(PGO_PROTO_V3);
	pgo_msg      m;
	pgo_error    err;
	pgo_rc       rc;
	wbuf         w;

	w.n = 0;
	w8(&w, 'Z');
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_UNKNOWN_TYPE, 0, "unknown type 'Z'");
	rc = pgo_decode_message(d, w.b, 0, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, 0, "empty message");

	w.n = 0;
	w8(&w, 'B');
	w64(&w, 0x16B3748);
	w64(&w, 1000);
	w32(&w, 735);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.type == PGO_MSG_BEGIN && m.u.begin.final_lsn == 0x16B3748 &&
	          m.u.begin.commit_time == 1000 && m.u.begin.xid == 735,
	      "begin");
	w8(&w, 0);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, 21, "begin with trailing byte");
	memset(w.b + 1, 0, 8);
	w.n = 21;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 1, "begin with final lsn 0");

	w.n = 0;
	w8(&w, 'C');
	w8(&w, 1);
	w64(&w, 1);
	w64(&w, 2);
	w64(&w, 3);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 1, "commit flags 1");
	w.b[1] = 0;
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.commit.commit_lsn == 1 && m.u.commit.end_lsn == 2 &&
	          m.u.commit.commit_time == 3,
	      "commit");

	w.n = 0;
	w8(&w, 'T');
	w32(&w, 2);
	w8(&w, 3);
	w32(&w, 16385);
	w32(&w, 16390);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.truncate.nrelids == 2 && m.u.truncate.options == 3 &&
	          m.u.truncate.relids.len == 8 && m.u.truncate.relids.ptr == w.b + 6,
	      "truncate");
	w.b[5] = 4;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 5, "truncate unknown option");
	w.b[5] = 0;
	w.b[4] = 3;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, 6, "truncate count beyond input");
	memset(w.b + 1, 0xFF, 4);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 1, "truncate count 0xFFFFFFFF");

	w.n = 0;
	w8(&w, 'M');
	w8(&w, 1);
	w64(&w, 42);
	wstr(&w, "pfx");
	w32(&w, 2);
	w8(&w, 0);
	w8(&w, 'z');
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.message.flags == PGO_MESSAGE_TRANSACTIONAL &&
	          m.u.message.lsn == 42 && bytes_eq(m.u.message.prefix, "pfx") &&
	          m.u.message.content.len == 2 && m.u.message.content.ptr[1] == 'z',
	      "message");
	w.b[1] = 2;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 1, "message flags 2");
	w.b[1] = 0;
	w.b[14] = 0xFF;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 14, "message length negative");
	w.b[10] = 'x'; /* prefix loses its NUL: "pfxx\xff..." has none */
	w.b[13] = 'x';
	memset(w.b + 14, 'x', w.n - 14);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, 10, "message prefix not terminated");

	w.n = 0;
	w8(&w, 'Y');
	w32(&w, 16400);
	wstr(&w, "");
	wstr(&w, "mood");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.type.oid == 16400 && bytes_eq(m.u.type.nspname, "pg_catalog") &&
	          bytes_eq(m.u.type.name, "mood"),
	      "type with empty namespace");

	w.n = 0;
	w8(&w, 'O');
	w64(&w, 99);
	wstr(&w, "origin1");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.origin.commit_lsn == 99 && bytes_eq(m.u.origin.name, "origin1"),
	      "origin");

	/* two-phase */
	w.n = 0;
	w8(&w, 'b');
	w64(&w, 10);
	w64(&w, 20);
	w64(&w, 30);
	w32(&w, 40);
	wstr(&w, "g1");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.begin_prepare.prepare_lsn == 10 &&
	          m.u.begin_prepare.end_lsn == 20 && m.u.begin_prepare.prepare_time == 30 &&
	          m.u.begin_prepare.xid == 40 && bytes_eq(m.u.begin_prepare.gid, "g1"),
	      "begin prepare");
	memset(w.b + 9, 0, 8);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 9, "begin prepare end lsn 0");
	for (int t = 0; t < 3; t++) {
		uint8_t types[] = {'P', 'p', 'K'};

		w.n = 0;
		w8(&w, types[t]);
		w8(&w, 0);
		w64(&w, 10);
		w64(&w, 20);
		w64(&w, 30);
		w32(&w, 40);
		wstr(&w, "g2");
		rc = decode(d, &w, &m, &err);
		CHECK(rc == PGO_OK && m.type == (pgo_msg_type) types[t] &&
		          (t == 2 ? m.u.commit_prepared.end_lsn == 20 &&
		                        bytes_eq(m.u.commit_prepared.gid, "g2")
		                  : m.u.prepare.end_lsn == 20 && bytes_eq(m.u.prepare.gid, "g2")),
		      "prepare-like '%c'", types[t]);
		w.n--;
		rc = decode(d, &w, &m, &err);
		CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, 30, "gid not terminated");
	}
	w.n = 0;
	w8(&w, 'r');
	w8(&w, 0);
	w64(&w, 10);
	w64(&w, 20);
	w64(&w, 30);
	w64(&w, 31);
	w32(&w, 40);
	wstr(&w, "g3");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.rollback_prepared.prepare_end_lsn == 10 &&
	          m.u.rollback_prepared.rollback_end_lsn == 20 &&
	          m.u.rollback_prepared.prepare_time == 30 &&
	          m.u.rollback_prepared.rollback_time == 31 && m.u.rollback_prepared.xid == 40 &&
	          bytes_eq(m.u.rollback_prepared.gid, "g3"),
	      "rollback prepared");

	/* a v3 message on a v1 decoder is decoded all the same */
	pgo_decoder_free(d);
	d = pgo_decoder_new(PGO_PROTO_V1);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.type == PGO_MSG_ROLLBACK_PREPARED, "v3 message on v1 decoder");
	pgo_decoder_free(d);
}

static void
test_streaming(void)
{
	pgo_decoder *d = pgo_decoder_new(PGO_PROTO_V2);
	pgo_msg      m;
	pgo_error    err;
	pgo_rc       rc;
	wbuf         w, start, stop;

	start.n = 0;
	w8(&start, 'S');
	w32(&start, 900);
	w8(&start, 1);
	stop.n = 0;
	w8(&stop, 'E');
	w8(&stop, 0);
	stop.n = 1;

	rc = decode(d, &stop, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 0, "stream stop outside block");
	start.b[5] = 2;
	rc = decode(d, &start, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 5, "first segment 2");
	start.b[5] = 1;
	rc = decode(d, &start, &m, &err);
	CHECK(rc == PGO_OK && m.u.stream_start.xid == 900 && m.u.stream_start.first_segment == 1 &&
	          !m.has_xid,
	      "stream start");
	rc = decode(d, &start, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 0, "stream start inside block");

	/* in the block, changes carry an xid first */
	build_relation(&w, 16385, "public", 2);
	memmove(w.b + 5, w.b + 1, w.n - 1);
	w.b[1] = 0, w.b[2] = 0, w.b[3] = 0x03, w.b[4] = 0x85; /* xid 901 (a subxact) */
	w.n += 4;
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.has_xid && m.xid == 901 && m.u.relation.rel->oid == 16385,
	      "streamed relation");
	build_insert(&w, 16385, 2);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_UNKNOWN_RELATION, 5, "streamed insert read as xid + relid");
	memmove(w.b + 5, w.b + 1, w.n - 1);
	w.b[1] = 0, w.b[2] = 0, w.b[3] = 0x03, w.b[4] = 0x84;
	w.n += 4;
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.has_xid && m.xid == 900 && m.u.insert.relid == 16385,
	      "streamed insert");
	rc = pgo_decode_message(d, w.b, 3, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, 1, "streamed xid truncated");

	w.n = 0;
	w8(&w, 'O');
	w64(&w, 0);
	wstr(&w, "o");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && !m.has_xid, "origin inside block");
	w.n = 0;
	w8(&w, 'c');
	w32(&w, 900);
	w8(&w, 0);
	w64(&w, 1);
	w64(&w, 2);
	w64(&w, 3);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 0, "stream commit inside block");

	/* a failed stream stop keeps the block open */
	stop.n = 2;
	rc = decode(d, &stop, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, 1, "stream stop with trailing byte");
	stop.n = 1;
	rc = decode(d, &stop, &m, &err);
	CHECK(rc == PGO_OK && m.type == PGO_MSG_STREAM_STOP, "stream stop");

	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.stream_commit.xid == 900 && m.u.stream_commit.end_lsn == 2 &&
	          m.u.stream_commit.commit_time == 3,
	      "stream commit");
	w.b[5] = 1;
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_BAD_VALUE, 5, "stream commit flags 1");

	/* outside a block, a change has no xid */
	build_insert(&w, 16385, 2);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && !m.has_xid, "insert after the block");

	/* reset_stream forgets an open block */
	rc = decode(d, &start, &m, &err);
	pgo_decoder_reset_stream(d);
	rc = rc == PGO_OK ? decode(d, &w, &m, &err) : rc;
	CHECK(rc == PGO_OK && !m.has_xid, "reset_stream closes the block");

	/* stream abort: v2 = xid + subxid only */
	w.n = 0;
	w8(&w, 'A');
	w32(&w, 900);
	w32(&w, 902);
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.stream_abort.xid == 900 && m.u.stream_abort.subxid == 902 &&
	          !m.u.stream_abort.has_lsn,
	      "stream abort v2");
	w64(&w, 0x1234);
	w64(&w, 5678);
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, 9, "stream abort v2 with v4 fields");
	CHECK(!pgo_decoder_set_parallel_streaming(d, true) &&
	          pgo_decode_message(d, w.b, 9, &m, &err) == PGO_OK,
	      "parallel streaming refused before v4");
	pgo_decoder_free(d);

	/* v4, streaming on (the default): no abort LSN and time */
	d = pgo_decoder_new(PGO_PROTO_V4);
	rc = pgo_decode_message(d, w.b, 9, &m, &err);
	CHECK(rc == PGO_OK && !m.u.stream_abort.has_lsn, "stream abort v4 without lsn");
	rc = decode(d, &w, &m, &err);
	CHECK_ERR(rc, err, PGO_ERR_TRAILING, 9, "stream abort v4 with lsn, not parallel");

	/* v4, streaming = parallel: abort LSN and time, never a prefix of them */
	CHECK(pgo_decoder_set_parallel_streaming(d, true), "parallel streaming on v4");
	rc = decode(d, &w, &m, &err);
	CHECK(rc == PGO_OK && m.u.stream_abort.has_lsn && m.u.stream_abort.abort_lsn == 0x1234 &&
	          m.u.stream_abort.abort_time == 5678,
	      "stream abort v4 with lsn");
	for (size_t k = 9; k < w.n; k++) {
		rc = pgo_decode_message(d, w.b, k, &m, &err);
		CHECK_ERR(rc, err, PGO_ERR_TRUNCATED, k < 17 ? 9 : 17, "stream abort v4 truncated");
	}
	CHECK(pgo_decoder_set_parallel_streaming(d, false) &&
	          pgo_decode_message(d, w.b, 9, &m, &err) == PGO_OK,
	      "parallel streaming off again");
	pgo_decoder_free(d);
}

static void
test_misc(void)
{
	const pgo_rc codes[] = {PGO_OK,           PGO_ERR_TRUNCATED,        PGO_ERR_TRAILING,
	                        PGO_ERR_UNKNOWN_TYPE, PGO_ERR_BAD_VALUE, PGO_ERR_UNKNOWN_RELATION,
	                        PGO_ERR_NOMEM};
	bool         distinct = true;

	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
		for (size_t j = 0; j < i; j++)
			if (strcmp(pgo_rc_name(codes[i]), pgo_rc_name(codes[j])) == 0)
				distinct = false;
	CHECK(distinct && strcmp(pgo_rc_name(PGO_ERR_TRUNCATED), "truncated input") == 0,
	      "rc names");
	CHECK(pgo_decoder_new(0) == NULL && pgo_decoder_new(5) == NULL,
	      "proto version out of range");
	pgo_decoder_free(NULL);
}

int
main(int argc, char **argv)
{
	bool write_expected = false;
	int  ndirs = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--write-expected") == 0)
			write_expected = true;
		else
			ndirs++;
	}
	if (ndirs == 0 && write_expected) {
		fprintf(stderr, "usage: %s [--write-expected] DIR...\n", argv[0]);
		return 2;
	}
	if (!write_expected) {
		test_envelope();
		test_relation_cache();
		test_tuples();
		test_other_messages();
		test_streaming();
		test_misc();
	}
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--write-expected") != 0)
			run_dir(argv[i], write_expected);

	printf("decoder: %d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
