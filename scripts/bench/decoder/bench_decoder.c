/*
 * bench_decoder.c — throughput of decoder/ over a captured pgoutput stream.
 *
 * Usage: bench_decoder [-w WARMUP] [-r REPS] [-p PROTO] [-m MODE] FILE
 *
 *   FILE    records of Uint32 big-endian length + one pgoutput message, as
 *           scripts/bench/decoder/capture.sh writes them (the format of the
 *           golden inputs in tests/decoder/cases/)
 *   WARMUP  untimed passes per mode before measuring (default 3)
 *   REPS    timed passes per mode (default 31); median, min and max reported
 *   PROTO   protocol version the decoder is created with (default 3)
 *   MODE    msg, env or both (default both)
 *
 * A pass decodes every record once, on one thread, with one decoder that
 * lives for the whole run (as in the daemon, where it lives for a session):
 *
 *   message only        pgo_decode_message() on each bare message
 *   envelope + message  pgo_decode_copydata() on each message wrapped in a
 *                       25-byte XLogData header ('w', start LSN, end LSN,
 *                       send time), then pgo_decode_message() on its data:
 *                       what the daemon does with each PQgetCopyData() buffer
 *
 * The stream is loaded and the envelopes are built before timing starts;
 * messages sit back to back in memory, so a pass reads the stream from memory
 * like the daemon reads libpq's buffers.  Passes of the two modes alternate,
 * so that a change of machine load affects both alike.  A pass is timed with
 * the thread's CPU clock (per core: time the thread spent waiting for a CPU
 * on a busy machine does not count) and with the wall clock; the table uses
 * the CPU clock, the wall-clock medians are printed below it.  Each pass
 * folds a few decoded fields into a checksum, so nothing can be optimized
 * away, and any decode error aborts the run.
 *
 * Output: a markdown table (messages/s, MB/s with MB = 10^6 bytes of decoder
 * input, ns/message).  pass_message() and pass_envelope() are kept out of
 * line so that callgrind can count their instructions alone
 * (--toggle-collect=pass_message, see run.sh --callgrind).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pgoutput.h"

#define XLOGDATA_HEADER 25 /* 'w' + Int64 start + Int64 end + Int64 send time */

/* Issue 3: at least 5 million messages/s per core (under 2% of a walsender). */
#define TARGET_MSGS_PER_SEC 5e6

#if defined(__GNUC__)
#define BENCH_NOINLINE __attribute__((noinline))
#else
#define BENCH_NOINLINE
#endif

typedef struct view {
	const uint8_t *ptr;
	size_t         len;
} view;

/* The stream, twice: bare messages and CopyData payloads. */
typedef struct stream {
	uint8_t *file;      /* the file as read: length-prefixed messages */
	size_t   file_len;
	view    *msgs;      /* into file */
	uint8_t *env_buf;   /* envelopes back to back */
	view    *envs;      /* into env_buf */
	size_t   n;
	size_t   msg_bytes; /* sum of message lengths */
	size_t   env_bytes; /* sum of envelope lengths */
	size_t   inserts;
} stream;

typedef struct result {
	double *secs;       /* thread CPU seconds, one per timed pass */
	double *wall;       /* wall-clock seconds, one per timed pass */
	int     n;
} result;

static void
die(const char *fmt, const char *arg)
{
	fprintf(stderr, "bench_decoder: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(1);
}

static void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		die("%s", "out of memory");
	return p;
}

static double
now_sec(clockid_t clock)
{
	struct timespec ts;

	if (clock_gettime(clock, &ts) != 0)
		die("%s", "clock_gettime failed");
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void
put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t) v;
		v >>= 8;
	}
}

static void
read_whole_file(const char *path, stream *s)
{
	FILE  *f = fopen(path, "rb");
	size_t cap = 1 << 20, n;

	if (f == NULL)
		die("could not open \"%s\"", path);
	s->file = xmalloc(cap);
	s->file_len = 0;
	while ((n = fread(s->file + s->file_len, 1, cap - s->file_len, f)) > 0) {
		s->file_len += n;
		if (s->file_len == cap) {
			cap *= 2;
			s->file = realloc(s->file, cap);
			if (s->file == NULL)
				die("%s", "out of memory");
		}
	}
	if (ferror(f))
		die("could not read \"%s\"", path);
	fclose(f);
}

/* Index the records and build their XLogData envelopes. */
static void
stream_load(const char *path, stream *s)
{
	size_t   pos = 0, cap = 0;
	uint8_t *e;
	uint64_t lsn = 0x1000000;

	memset(s, 0, sizeof *s);
	read_whole_file(path, s);
	while (pos < s->file_len) {
		size_t n;

		if (s->file_len - pos < 4)
			die("\"%s\": truncated record length", path);
		n = (size_t) s->file[pos] << 24 | (size_t) s->file[pos + 1] << 16 |
		    (size_t) s->file[pos + 2] << 8 | s->file[pos + 3];
		pos += 4;
		if (n == 0 || n > s->file_len - pos)
			die("\"%s\": bad record length", path);
		if (s->n == cap) {
			cap = cap ? cap * 2 : 1024;
			s->msgs = realloc(s->msgs, cap * sizeof *s->msgs);
			if (s->msgs == NULL)
				die("%s", "out of memory");
		}
		s->msgs[s->n].ptr = s->file + pos;
		s->msgs[s->n].len = n;
		s->msg_bytes += n;
		s->inserts += s->file[pos] == PGO_MSG_INSERT;
		s->n++;
		pos += n;
	}
	if (s->n == 0)
		die("\"%s\": no records", path);

	s->env_bytes = s->msg_bytes + s->n * XLOGDATA_HEADER;
	s->env_buf = xmalloc(s->env_bytes);
	s->envs = xmalloc(s->n * sizeof *s->envs);
	e = s->env_buf;
	for (size_t i = 0; i < s->n; i++) {
		size_t n = s->msgs[i].len;

		e[0] = 'w';
		put_u64(e + 1, lsn);
		put_u64(e + 9, lsn + n);
		put_u64(e + 17, UINT64_C(770000000000000) + i); /* a 2024 timestamp */
		memcpy(e + XLOGDATA_HEADER, s->msgs[i].ptr, n);
		s->envs[i].ptr = e;
		s->envs[i].len = XLOGDATA_HEADER + n;
		e += XLOGDATA_HEADER + n;
		lsn += n;
	}
}

static void
stream_free(stream *s)
{
	free(s->file);
	free(s->msgs);
	free(s->env_buf);
	free(s->envs);
}

static void
decode_failed(size_t i, const pgo_error *err)
{
	fprintf(stderr, "bench_decoder: record %zu: %s at offset %zu: %s\n", i,
	        pgo_rc_name(err->code), err->offset, err->reason);
	exit(1);
}

/* Fold what a consumer would look at into the checksum. */
static inline uint64_t
consume(const pgo_msg *m)
{
	switch (m->type) {
	case PGO_MSG_INSERT:
		return m->u.insert.newtup.natts +
		       (m->u.insert.newtup.natts ? m->u.insert.newtup.atts[0].value.len : 0);
	case PGO_MSG_BEGIN:
		return m->u.begin.xid;
	case PGO_MSG_COMMIT:
		return m->u.commit.end_lsn;
	default:
		return m->type;
	}
}

BENCH_NOINLINE static uint64_t
pass_message(pgo_decoder *d, const stream *s)
{
	uint64_t  sum = 0;
	pgo_msg   m;
	pgo_error err;

	for (size_t i = 0; i < s->n; i++) {
		if (pgo_decode_message(d, s->msgs[i].ptr, s->msgs[i].len, &m, &err) != PGO_OK)
			decode_failed(i, &err);
		sum += consume(&m);
	}
	return sum;
}

BENCH_NOINLINE static uint64_t
pass_envelope(pgo_decoder *d, const stream *s)
{
	uint64_t     sum = 0;
	pgo_copydata cd;
	pgo_msg      m;
	pgo_error    err;

	for (size_t i = 0; i < s->n; i++) {
		if (pgo_decode_copydata(s->envs[i].ptr, s->envs[i].len, &cd, &err) != PGO_OK)
			decode_failed(i, &err);
		if (pgo_decode_message(d, cd.data.ptr, cd.data.len, &m, &err) != PGO_OK)
			decode_failed(i, &err);
		sum += consume(&m) + cd.wal_start;
	}
	return sum;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *) a, y = *(const double *) b;

	return (x > y) - (x < y);
}

/* Seconds per pass (sorts secs): median, fastest, slowest. */
static void
summarize(double *secs, int n, double *median, double *fastest, double *slowest)
{
	qsort(secs, (size_t) n, sizeof *secs, cmp_double);
	*fastest = secs[0];
	*slowest = secs[n - 1];
	if (n % 2)
		*median = secs[n / 2];
	else
		*median = (secs[n / 2 - 1] + secs[n / 2]) / 2;
}

/* Another pass, timed. */
typedef uint64_t (*pass_fn)(pgo_decoder *, const stream *);

static uint64_t
timed_pass(pass_fn pass, pgo_decoder *d, const stream *s, result *r, int i)
{
	double   cpu = now_sec(CLOCK_THREAD_CPUTIME_ID), wall = now_sec(CLOCK_MONOTONIC);
	uint64_t sum = pass(d, s);

	r->secs[i] = now_sec(CLOCK_THREAD_CPUTIME_ID) - cpu;
	r->wall[i] = now_sec(CLOCK_MONOTONIC) - wall;
	return sum;
}

static void
result_init(result *r, int n)
{
	r->secs = xmalloc((size_t) n * sizeof(double));
	r->wall = xmalloc((size_t) n * sizeof(double));
	r->n = n;
}

static void
result_free(result *r)
{
	free(r->secs);
	free(r->wall);
}

/* One markdown cell, padded to width characters (UTF-8 aware, for "–"). */
static void
cell(const char *text, int width, bool right)
{
	int chars = 0;

	for (const char *p = text; *p; p++)
		chars += ((unsigned char) *p & 0xC0) != 0x80;
	printf(" %*s%s%*s |", right ? width - chars : 0, "", text,
	       right ? 0 : width - chars, "");
}

/* Prints the row; returns the median messages/s. */
static double
print_row(const char *mode, result *r, size_t nmsgs, size_t bytes)
{
	double med, lo, hi;
	char   buf[5][64];

	summarize(r->secs, r->n, &med, &lo, &hi);
	snprintf(buf[0], sizeof buf[0], "%.2f M", nmsgs / med / 1e6);
	snprintf(buf[1], sizeof buf[1], "%.2f – %.2f M", nmsgs / hi / 1e6, nmsgs / lo / 1e6);
	snprintf(buf[2], sizeof buf[2], "%.0f", bytes / med / 1e6);
	snprintf(buf[3], sizeof buf[3], "%.0f – %.0f", bytes / hi / 1e6, bytes / lo / 1e6);
	snprintf(buf[4], sizeof buf[4], "%.1f", med * 1e9 / nmsgs);
	printf("|");
	cell(mode, 18, false);
	cell(buf[0], 10, true);
	cell(buf[1], 17, true);
	cell(buf[2], 6, true);
	cell(buf[3], 13, true);
	cell(buf[4], 10, true);
	printf("\n");
	return nmsgs / med;
}

static void
print_wall(const char *mode, result *r, size_t nmsgs)
{
	double med, lo, hi;

	summarize(r->wall, r->n, &med, &lo, &hi);
	printf("wall clock, %s: %.2f M messages/s (median; %.2f – %.2f M)\n", mode,
	       nmsgs / med / 1e6, nmsgs / hi / 1e6, nmsgs / lo / 1e6);
}

static void
print_target(const char *mode, double rate)
{
	printf("target %.0f M messages/s per core, %s: %s (%.1f x)\n", TARGET_MSGS_PER_SEC / 1e6,
	       mode, rate >= TARGET_MSGS_PER_SEC ? "met" : "NOT met", rate / TARGET_MSGS_PER_SEC);
}

static void
print_header(void)
{
	const char *h[] = {"messages/s", "min – max", "MB/s", "min – max", "ns/message"};
	const int   w[] = {10, 17, 6, 13, 10};

	printf("|");
	cell("mode", 18, false);
	for (int i = 0; i < 5; i++)
		cell(h[i], w[i], true);
	printf("\n|--------------------|");
	for (int i = 0; i < 5; i++)
		printf("%.*s:|", w[i] + 1, "--------------------");
	printf("\n");
}

static int
parse_int(const char *s, int min, int max)
{
	char *end;
	long  v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || end == s || v < min || v > max)
		die("bad number \"%s\"", s);
	return (int) v;
}

static void
usage(void)
{
	fprintf(stderr, "usage: bench_decoder [-w WARMUP] [-r REPS] [-p PROTO] "
	                "[-m msg|env|both] FILE\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	int          warmup = 3, reps = 31, proto = PGO_PROTO_V3, opt;
	bool         do_msg = true, do_env = true;
	stream       s;
	pgo_decoder *d;
	result       rm, re;
	uint64_t     sum = 0;
	double       rate_msg = 0, rate_env = 0;

	while ((opt = getopt(argc, argv, "w:r:p:m:")) != -1) {
		switch (opt) {
		case 'w':
			warmup = parse_int(optarg, 0, 1000);
			break;
		case 'r':
			reps = parse_int(optarg, 1, 10000);
			break;
		case 'p':
			proto = parse_int(optarg, PGO_PROTO_V1, PGO_PROTO_V4);
			break;
		case 'm':
			do_msg = strcmp(optarg, "env") != 0;
			do_env = strcmp(optarg, "msg") != 0;
			if (strcmp(optarg, "msg") && strcmp(optarg, "env") && strcmp(optarg, "both"))
				usage();
			break;
		default:
			usage();
		}
	}
	if (optind != argc - 1)
		usage();

	stream_load(argv[optind], &s);
	d = pgo_decoder_new(proto);
	if (d == NULL)
		die("%s", "pgo_decoder_new failed");

	for (int i = 0; i < warmup; i++) {
		if (do_msg)
			sum += pass_message(d, &s);
		if (do_env)
			sum += pass_envelope(d, &s);
	}
	result_init(&rm, reps);
	result_init(&re, reps);
	for (int i = 0; i < reps; i++) {
		if (do_msg)
			sum += timed_pass(pass_message, d, &s, &rm, i);
		if (do_env)
			sum += timed_pass(pass_envelope, d, &s, &re, i);
	}

	printf("stream: %s\n", argv[optind]);
	printf("        %zu messages (%zu inserts), %.1f MB of messages, "
	       "%.1f MB as CopyData (+%d bytes each)\n",
	       s.n, s.inserts, s.msg_bytes / 1e6, s.env_bytes / 1e6, XLOGDATA_HEADER);
	printf("run:    proto_version %d, one thread, %d warm-up + %d timed passes per mode "
	       "(checksum %016" PRIx64 ")\n\n",
	       proto, warmup, reps, sum);
	print_header();
	if (do_msg)
		rate_msg = print_row("message only", &rm, s.n, s.msg_bytes);
	if (do_env)
		rate_env = print_row("envelope + message", &re, s.n, s.env_bytes);
	printf("\nthread CPU time; median of the timed passes, min – max: slowest and "
	       "fastest pass;\nMB = 10^6 bytes of decoder input\n");
	if (do_msg)
		print_wall("message only", &rm, s.n);
	if (do_env)
		print_wall("envelope + message", &re, s.n);
	if (do_msg)
		print_target("message only", rate_msg);
	if (do_env)
		print_target("envelope + message", rate_env);

	result_free(&rm);
	result_free(&re);
	pgo_decoder_free(d);
	stream_free(&s);
	return 0;
}
