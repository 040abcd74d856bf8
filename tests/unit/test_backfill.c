/*
 * test_backfill.c — the backfill phase without servers: a fake reader hands
 * out batches of rows of the default outbox table, a fake sink records what
 * is produced and reports it when the test says, in the order it says.
 *
 * Checked: each row becomes the event the stream would give (topic, key,
 * value, id and type headers, timestamp); the phase is done only once every
 * row was read and acknowledged; the resume point is the end of the
 * acknowledged prefix whatever the order of the acknowledgements; a full
 * queue holds the row without producing it twice; an unmappable row stops
 * the phase (on_error = stop) or becomes a dead letter (dlq); a stop drains.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backfill.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "rows.h"
#include "sink.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

/* ---------------------------------------------------------------------------
 * The fake reader: nrows rows "id<i>", key "k<i%3>", order key "<i>", in
 * batches; row null_key has a NULL aggregateid.
 * ------------------------------------------------------------------------- */

#define NCOLS 5
static const char *const names[NCOLS] = {"id", "aggregatetype", "aggregateid", "type", "payload"};
static const uint32_t types[NCOLS] = {2950, 25, 25, 25, 3802};

typedef struct fake_reader {
	rows_reader base;
	rows_info   info;
	size_t      nrows, batch, next;
	long        null_key;
	bool        info_given, done;
	int         again;          /* answer ROWS_AGAIN this many times first */
	size_t      stall_at;       /* from this row on, answer ROWS_AGAIN (0: never) */
	bool        destroyed;
	/* the batch */
	char        text[64][5][32];
	const char *vals[64 * NCOLS];
	size_t      lens[64 * NCOLS];
	const char *keys[64];
	char        keytext[64][16];
	int64_t     times[64];
	uint32_t    xmins[64];
} fake_reader;

static rows_rc
fr_next(rows_reader *base, rows_batch *b, char *err, size_t errlen)
{
	fake_reader *r = (fake_reader *) base;
	size_t n;

	(void) err;
	(void) errlen;
	if (r->again > 0) {
		r->again--;
		return ROWS_AGAIN;
	}
	if (!r->info_given) {
		r->info_given = true;
		return ROWS_INFO;
	}
	if (r->stall_at && r->next >= r->stall_at)
		return ROWS_AGAIN;
	if (r->next >= r->nrows) {
		r->done = true;
		return ROWS_DONE;
	}
	n = r->nrows - r->next < r->batch ? r->nrows - r->next : r->batch;
	for (size_t i = 0; i < n; i++) {
		size_t row = r->next + i;
		snprintf(r->text[i][0], 32, "id%zu", row);
		snprintf(r->text[i][1], 32, "order");
		snprintf(r->text[i][2], 32, "k%zu", row % 3);
		snprintf(r->text[i][3], 32, "Placed");
		snprintf(r->text[i][4], 32, "{\"n\": %zu}", row);
		for (size_t c = 0; c < NCOLS; c++) {
			r->vals[i * NCOLS + c] = r->text[i][c];
			r->lens[i * NCOLS + c] = strlen(r->text[i][c]);
		}
		if ((long) row == r->null_key)
			r->vals[i * NCOLS + 2] = NULL;
		snprintf(r->keytext[i], 16, "%zu", row);
		r->keys[i] = r->keytext[i];
		r->times[i] = row % 2 ? ROWS_NO_TIME : (int64_t) row * 1000000;   /* µs */
		r->xmins[i] = 700 + (uint32_t) row;
	}
	*b = (rows_batch) {.table = 0, .nrows = n, .ncols = NCOLS, .names = names, .types = types,
	                   .vals = r->vals, .lens = r->lens, .keys = r->keys, .times = r->times,
	                   .xmins = r->xmins};
	r->next += n;
	return ROWS_OK;
}

static const rows_info *fr_info(const rows_reader *base) { return &((const fake_reader *) base)->info; }
static int fr_pollfds(rows_reader *r, struct pollfd *p, int m) { (void) r; (void) p; (void) m; return 0; }
static int64_t fr_deadline(const rows_reader *r) { (void) r; return -1; }
static void fr_destroy(rows_reader *r) { ((fake_reader *) r)->destroyed = true; }

static const rows_reader_ops fr_ops = {
	.next = fr_next, .info = fr_info, .pollfds = fr_pollfds, .deadline = fr_deadline,
	.destroy = fr_destroy,
};

static void
reader_init(fake_reader *r, size_t nrows, size_t batch)
{
	memset(r, 0, sizeof(*r));
	r->base.ops = &fr_ops;
	r->nrows = nrows;
	r->batch = batch;
	r->null_key = -1;
	r->info = (rows_info) {.position = 0x1000, .snapshot_time = 5000000, .total = nrows,
	                       .created_slot = true, .database = "app"};
}

/* ---------------------------------------------------------------------------
 * The fake sink
 * ------------------------------------------------------------------------- */

#define FAKE_MAX 256

typedef struct produced {
	char     topic[64], id[32], key[32], value[64], type[32];
	int64_t  ts;
	uint64_t opaque;
	bool     reported, dlq;
} produced;

typedef struct fake_sink {
	sink     base;
	produced p[FAKE_MAX];
	size_t   n;
	int      full_next;
} fake_sink;

static const char *
hdr(const sink_event *ev, const char *name, size_t *len)
{
	for (size_t i = 0; i < ev->nheaders; i++)
		if (strcmp(ev->headers[i].name, name) == 0) {
			*len = ev->headers[i].len;
			return ev->headers[i].value;
		}
	return NULL;
}

static sink_rc
fk_produce(sink *s, const sink_event *ev, uint64_t opaque, sink_error *err)
{
	fake_sink *f = (fake_sink *) s;
	produced *p;
	const char *v;
	size_t l = 0;

	(void) err;
	if (f->full_next > 0) {
		f->full_next--;
		return SINK_FULL;
	}
	if (f->n >= FAKE_MAX)
		return SINK_FULL;
	p = &f->p[f->n++];
	memset(p, 0, sizeof(*p));
	snprintf(p->topic, sizeof(p->topic), "%s", ev->topic);
	if ((v = hdr(ev, "id", &l)) != NULL)
		snprintf(p->id, sizeof(p->id), "%.*s", (int) l, v);
	if ((v = hdr(ev, "type", &l)) != NULL)
		snprintf(p->type, sizeof(p->type), "%.*s", (int) l, v);
	if (ev->key)
		snprintf(p->key, sizeof(p->key), "%.*s", (int) ev->key_len, (const char *) ev->key);
	if (ev->value)
		snprintf(p->value, sizeof(p->value), "%.*s", (int) ev->value_len, (const char *) ev->value);
	p->ts = ev->timestamp_ms;
	p->dlq = hdr(ev, "pgoutbox.error", &l) != NULL;
	p->opaque = opaque;
	return SINK_OK;
}

static void fk_serve(sink *s) { (void) s; }
static int fk_fd(const sink *s) { (void) s; return -1; }
static int fk_outstanding(const sink *s) { (void) s; return 0; }
static const char *fk_last_error(const sink *s) { (void) s; return ""; }
static bool fk_fatal(sink *s, char *e, size_t l) { (void) s; (void) e; (void) l; return false; }
static void fk_test_fatal(sink *s) { (void) s; }
static void fk_destroy(sink *s) { (void) s; }

static const sink_ops fake_ops = {
	.produce = fk_produce, .serve = fk_serve, .fd = fk_fd, .outstanding = fk_outstanding,
	.last_error = fk_last_error, .fatal = fk_fatal, .test_fatal = fk_test_fatal,
	.destroy = fk_destroy,
};

static void
ack(fake_sink *f, size_t i)
{
	sink_report rep;

	if (f->p[i].reported)
		return;
	f->p[i].reported = true;
	memset(&rep, 0, sizeof(rep));
	rep.ok = true;
	rep.topic = f->p[i].topic;
	rep.timestamp_ms = -1;
	sink_dispatch(&f->base, f->p[i].opaque, &rep);
}

/* ---------------------------------------------------------------------------
 * Setup
 * ------------------------------------------------------------------------- */

static const outbox_table table = {
	.table = "public.outbox",
	.map = {.topic_template = "outbox.event.${aggregatetype}", .col_id = "id",
	        .col_key = "aggregateid", .col_type = "type", .col_payload = "payload",
	        .col_aggregatetype = "aggregatetype"},
};
static const outbox_config ocfg = {.tables = &table, .ntables = 1};

static backfill *
make(fake_reader *r, fake_sink *f, metrics_stats *st, bool dlq)
{
	char err[256];
	backfill_config bc = {.name = "", .outbox = &ocfg, .on_error_dlq = dlq, .dlq_topic = "dlq"};
	backfill *b;

	memset(f, 0, sizeof(*f));
	sink_init(&f->base, &fake_ops, 0);
	memset(st, 0, sizeof(*st));
	b = backfill_new(&bc, &r->base, &f->base, st, err, sizeof(err));
	if (b == NULL)
		fprintf(stderr, "backfill_new: %s\n", err);
	return b;
}

static void
serve(backfill *b, int turns)
{
	for (int i = 0; i < turns; i++)
		backfill_serve(b, 1000000 + i * 1000);
}

/* ---------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------- */

static void
test_rows_become_events(void)
{
	fake_reader r;
	fake_sink f;
	metrics_stats st;
	backfill *b;

	reader_init(&r, 10, 4);
	b = make(&r, &f, &st, false);
	serve(b, 10);
	CHECK(f.n == 10);
	CHECK(strcmp(f.p[0].topic, "outbox.event.order") == 0);
	CHECK(strcmp(f.p[3].id, "id3") == 0 && strcmp(f.p[3].key, "k0") == 0);
	CHECK(strcmp(f.p[4].value, "{\"n\": 4}") == 0 && strcmp(f.p[4].type, "Placed") == 0);
	/* timestamps: the row's time (µs since 2000) or the snapshot's */
	CHECK(f.p[2].ts == (2000000 + 946684800000000LL) / 1000);
	CHECK(f.p[3].ts == (5000000 + 946684800000000LL) / 1000);
	CHECK(backfill_state_of(b) == BACKFILL_RUNNING);   /* nothing acknowledged yet */
	CHECK(st.backfill_expected == 10 && st.backfill_read == 10);
	for (size_t i = 0; i < f.n; i++)
		ack(&f, i);
	serve(b, 1);
	CHECK(backfill_state_of(b) == BACKFILL_DONE);
	CHECK(st.backfill_acked == 10 && st.events == 10);
	CHECK(backfill_position(b) == 0x1000);
	backfill_finish(b);
	backfill_free(b);
	CHECK(r.destroyed);
}

static void
test_resume_point_is_the_acked_prefix(void)
{
	fake_reader r;
	fake_sink f;
	metrics_stats st;
	char point[64];
	backfill *b;

	reader_init(&r, 20, 4);
	r.stall_at = 12;                                  /* the rest is slow to come */
	b = make(&r, &f, &st, false);
	serve(b, 3);
	CHECK(f.n == 12);
	backfill_resume_point(b, point, sizeof(point));
	CHECK(strcmp(point, "1:") == 0);                  /* nothing acknowledged: the table's start */
	ack(&f, 5);
	ack(&f, 1);
	backfill_resume_point(b, point, sizeof(point));
	CHECK(strcmp(point, "1:") == 0);                  /* row 0 still out */
	ack(&f, 0);
	backfill_resume_point(b, point, sizeof(point));
	CHECK(strcmp(point, "1:1") == 0);                 /* 0 and 1: resume at 1 (inclusive) */
	for (size_t i = 2; i < 5; i++)
		ack(&f, i);
	backfill_resume_point(b, point, sizeof(point));
	CHECK(strcmp(point, "1:5") == 0);                 /* 0..5 acknowledged */
	/* Interrupted: reads no more, drains what is in flight. */
	backfill_stop(b);
	CHECK(r.destroyed);
	serve(b, 1);
	CHECK(backfill_state_of(b) == BACKFILL_RUNNING);
	for (size_t i = 6; i < 12; i++)
		ack(&f, i);
	serve(b, 1);
	CHECK(backfill_state_of(b) == BACKFILL_STOPPED);
	backfill_resume_point(b, point, sizeof(point));
	CHECK(strcmp(point, "1:11") == 0);
	backfill_finish(b);
	backfill_free(b);
}

static void
test_full_queue_holds_the_row(void)
{
	fake_reader r;
	fake_sink f;
	metrics_stats st;
	backfill *b;

	reader_init(&r, 6, 6);
	r.again = 2;
	b = make(&r, &f, &st, false);
	serve(b, 1);
	CHECK(f.n == 0);                                  /* the reader was not ready */
	serve(b, 2);
	CHECK(f.n == 6);
	backfill_free(b);

	reader_init(&r, 6, 6);
	b = make(&r, &f, &st, false);
	f.full_next = 3;
	serve(b, 1);                                      /* full at row 0: held */
	CHECK(f.n == 0);
	for (int i = 0; i < 10; i++)
		backfill_serve(b, 2000000 + i * 200);         /* past the hold, full twice more */
	CHECK(f.n == 6);
	for (size_t i = 0; i < f.n; i++)
		CHECK(f.p[i].id[2] == (char) ('0' + i));      /* each once, in order */
	backfill_free(b);
}

static void
test_unmappable_row(void)
{
	fake_reader r;
	fake_sink f;
	metrics_stats st;
	char point[64];
	backfill *b;

	/* on_error = stop: the phase fails; everything before the row may be acknowledged. */
	reader_init(&r, 8, 8);
	r.null_key = 4;
	b = make(&r, &f, &st, false);
	serve(b, 3);
	CHECK(backfill_state_of(b) == BACKFILL_FAILED);
	CHECK(f.n == 4);
	for (size_t i = 0; i < f.n; i++)
		ack(&f, i);
	backfill_resume_point(b, point, sizeof(point));
	CHECK(strcmp(point, "1:3") == 0);
	backfill_finish(b);
	backfill_free(b);

	/* on_error = dlq: a dead letter in its place, the phase goes on. */
	reader_init(&r, 8, 8);
	r.null_key = 4;
	b = make(&r, &f, &st, true);
	serve(b, 3);
	CHECK(f.n == 8);
	CHECK(f.p[4].dlq && strcmp(f.p[4].topic, "dlq") == 0 && strcmp(f.p[4].id, "id4") == 0);
	for (size_t i = 0; i < f.n; i++)
		ack(&f, i);
	serve(b, 1);
	CHECK(backfill_state_of(b) == BACKFILL_DONE);
	backfill_free(b);
}

static void
test_parse_resume(void)
{
	size_t t;
	const char *k;

	CHECK(backfill_parse_resume("1:abc", 1, &t, &k) && t == 0 && strcmp(k, "abc") == 0);
	CHECK(backfill_parse_resume("2:", 2, &t, &k) && t == 1 && k[0] == '\0');
	CHECK(backfill_parse_resume("1:2024-01-01 10:00:00+00", 1, &t, &k) &&
	      strcmp(k, "2024-01-01 10:00:00+00") == 0);
	CHECK(!backfill_parse_resume("3:x", 2, &t, &k));
	CHECK(!backfill_parse_resume("0:x", 2, &t, &k));
	CHECK(!backfill_parse_resume("x", 2, &t, &k));
	CHECK(!backfill_parse_resume("1x", 2, &t, &k));
}

int
main(void)
{
	log_set_level((log_level) (LOG_FATAL + 1));
	test_rows_become_events();
	test_resume_point_is_the_acked_prefix();
	test_full_queue_holds_the_row();
	test_unmappable_row();
	test_parse_resume();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
