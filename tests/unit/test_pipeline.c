/*
 * test_pipeline.c — one slot end to end without servers: golden captures
 * from a real PostgreSQL replayed through the pipeline into a fake sink.
 *
 * The replay source behaves like a walsender: each session starts at the
 * first transaction whose Commit ends past the slot's confirmed position
 * (the highest flush position the pipeline reported), resends the Relation
 * messages a new session needs, and ends with a keepalive.  It can break
 * the stream after a number of messages, and answer verifications with
 * the catalog a test wants.  The fake sink records what is produced and
 * reports it when the test says, in the order it says: acknowledged, or
 * refused at produce time or in the report; or full.
 *
 * Checked: every event of a committed transaction is produced (at least
 * once across reconnects), the flush position never passes an
 * unacknowledged event, dead letters follow on_error, and a broken
 * verification stops the pipeline without confirming past it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "log.h"
#include "outbox.h"
#include "pipeline.h"
#include "sink.h"
#include "source.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

static const char *cases_dir;

/* ---------------------------------------------------------------------------
 * The replay source
 * ------------------------------------------------------------------------- */

typedef struct record {
	uint8_t *msg;          /* pgoutput message */
	size_t   len;
	char     kind;         /* its first byte */
	uint64_t lsn;          /* Begin: final LSN; Commit: end LSN */
	int      txn;          /* index of the transaction it belongs to, -1: none */
} record;

typedef struct replay {
	source   base;
	record  *recs;
	size_t   nrecs;
	int      ntxns;
	uint64_t confirmed;    /* the slot: highest flush position reported */
	uint64_t last_end;     /* end LSN of the last transaction */
	bool     streaming;
	/* the session */
	uint8_t **queue;       /* CopyData messages of this session */
	size_t  *qlen;
	size_t   qn, qpos;
	int      sessions;
	int      break_after;  /* lose the stream after this many reads in a session (0: never) */
	int      reads;
	/* what verifications say */
	source_catalog cat;
	int      verifies;
	uint64_t system_id;
	uint32_t timeline;
	/* status updates seen */
	int      statuses;
	uint64_t max_flush;
} replay;

static uint64_t
get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void
put64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t) v;
		v >>= 8;
	}
}

/* Load cases/<name>/input: records of a big-endian Uint32 length + bytes. */
static bool
replay_load(replay *r, const char *name)
{
	char path[1024];
	FILE *f;
	uint8_t hdr[4];
	int txn = -1;

	snprintf(path, sizeof(path), "%s/%s/input", cases_dir, name);
	if ((f = fopen(path, "rb")) == NULL) {
		fprintf(stderr, "cannot open %s\n", path);
		return false;
	}
	while (fread(hdr, 1, 4, f) == 4) {
		size_t len = (size_t) hdr[0] << 24 | (size_t) hdr[1] << 16 | (size_t) hdr[2] << 8 | hdr[3];
		record *rec;

		r->recs = realloc(r->recs, (r->nrecs + 1) * sizeof(*r->recs));
		rec = &r->recs[r->nrecs++];
		rec->msg = malloc(len ? len : 1);
		rec->len = len;
		if (fread(rec->msg, 1, len, f) != len) {
			fclose(f);
			return false;
		}
		rec->kind = len ? (char) rec->msg[0] : 0;
		rec->lsn = 0;
		if (rec->kind == 'B' && len >= 9) {
			rec->lsn = get64(rec->msg + 1);
			txn = r->ntxns++;
		} else if (rec->kind == 'C' && len >= 18) {
			rec->lsn = get64(rec->msg + 10);
			r->last_end = rec->lsn;
		}
		rec->txn = txn;
		if (rec->kind == 'C')
			txn = -1;
	}
	fclose(f);
	return r->nrecs > 0;
}

static void
queue_add(replay *r, const uint8_t *data, size_t len, char kind, uint64_t wal)
{
	size_t n = kind == 'w' ? 25 + len : 18;
	uint8_t *m = malloc(n);

	m[0] = (uint8_t) kind;
	if (kind == 'w') {
		put64(m + 1, wal);
		put64(m + 9, r->last_end);
		put64(m + 17, 0);
		memcpy(m + 25, data, len);
	} else {
		put64(m + 1, wal);
		put64(m + 9, 0);
		m[17] = 0;
	}
	r->queue = realloc(r->queue, (r->qn + 1) * sizeof(*r->queue));
	r->qlen = realloc(r->qlen, (r->qn + 1) * sizeof(*r->qlen));
	r->queue[r->qn] = m;
	r->qlen[r->qn++] = n;
}

static void
queue_clear(replay *r)
{
	for (size_t i = r->qpos; i < r->qn; i++)
		free(r->queue[i]);
	free(r->queue);
	free(r->qlen);
	r->queue = NULL;
	r->qlen = NULL;
	r->qn = r->qpos = 0;
}

static source_rc
rp_start(source *s, source_session *ss, char *err, size_t errlen)
{
	replay *r = (replay *) s;
	int first = -1;
	uint64_t wal = 0;

	(void) err;
	(void) errlen;
	queue_clear(r);
	/* The first transaction that ends past the slot's position. */
	for (size_t i = 0; i < r->nrecs && first < 0; i++)
		if (r->recs[i].kind == 'C' && r->recs[i].lsn > r->confirmed)
			first = r->recs[i].txn >= 0 ? r->recs[i].txn : -1, first = first < 0 ? 0 : first;
	for (size_t i = 0; i < r->nrecs; i++) {
		int t = -1;

		/* the transaction of this record (Commit records carry -1) */
		for (size_t j = i + 1; t < 0 && j-- > 0;)
			if (r->recs[j].kind == 'B')
				t = r->recs[j].txn;
		if (first < 0 || t < first) {
			/* before the start: only what a new session sends again */
			if (r->recs[i].kind == 'R' || r->recs[i].kind == 'Y')
				queue_add(r, r->recs[i].msg, r->recs[i].len, 'w', wal);
			continue;
		}
		wal += 16;
		queue_add(r, r->recs[i].msg, r->recs[i].len, 'w', wal);
	}
	queue_add(r, NULL, 0, 'k', r->last_end);
	r->streaming = true;
	r->sessions++;
	r->reads = 0;
	memset(ss, 0, sizeof(*ss));
	ss->system_id = r->system_id;
	ss->timeline = r->timeline;
	ss->wal_end = r->last_end;
	ss->slot_confirmed = r->confirmed;
	ss->proto_version = 1;
	ss->server_version = 150000;
	ss->sender_timeout_ms = 60000;
	ss->database = "test";
	ss->host = "replay";
	/* IDENTIFY_SYSTEM's position: what was there at the start; more
	 * needs a verification on the side. */
	r->cat.valid_from = r->confirmed;
	ss->catalog = &r->cat;
	return SOURCE_OK;
}

static source_rc
rp_read(source *s, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
	replay *r = (replay *) s;

	if (!r->streaming) {
		snprintf(err, errlen, "not streaming");
		return SOURCE_LOST;
	}
	if (r->break_after && r->reads >= r->break_after) {
		r->break_after = 0;
		r->streaming = false;
		snprintf(err, errlen, "replay: stream broken on purpose");
		return SOURCE_LOST;
	}
	if (r->qpos >= r->qn)
		return SOURCE_AGAIN;
	r->reads++;
	*buf = r->queue[r->qpos];
	*len = r->qlen[r->qpos];
	r->queue[r->qpos++] = NULL;
	return SOURCE_OK;
}

static void rp_release(source *s, uint8_t *buf) { (void) s; free(buf); }

static source_rc
rp_status(source *s, uint64_t written, uint64_t flushed, bool reply, char *err, size_t errlen)
{
	replay *r = (replay *) s;

	(void) written;
	(void) reply;
	(void) err;
	(void) errlen;
	if (!r->streaming)
		return SOURCE_LOST;
	r->statuses++;
	if (flushed > r->confirmed)
		r->confirmed = flushed;
	if (flushed > r->max_flush)
		r->max_flush = flushed;
	return SOURCE_OK;
}

static source_rc rp_finish(source *s, int t, char *e, size_t el)
{
	(void) t; (void) e; (void) el;
	((replay *) s)->streaming = false;
	return SOURCE_OK;
}
static void rp_close(source *s) { ((replay *) s)->streaming = false; }

static source_rc
rp_verify(source *s, uint32_t asked, source_catalog *cat, char *err, size_t errlen)
{
	replay *r = (replay *) s;

	(void) err;
	(void) errlen;
	r->verifies++;
	*cat = r->cat;
	cat->asked_oid = asked;
	cat->asked_exists = asked != 0;     /* a neighbour table */
	cat->valid_from = r->last_end;
	return SOURCE_OK;
}

static int rp_pollfds(source *s, struct pollfd *p, int m) { (void) s; (void) p; (void) m; return 0; }
static void rp_events(source *s, const struct pollfd *p, int n) { (void) s; (void) p; (void) n; }
static int64_t rp_deadline(const source *s) { (void) s; return -1; }
static bool rp_streaming(const source *s) { return ((const replay *) s)->streaming; }
static void rp_destroy(source *s) { (void) s; }

static const source_ops replay_ops = {
	.start = rp_start, .read = rp_read, .release = rp_release, .send_status = rp_status,
	.finish = rp_finish, .close = rp_close, .verify = rp_verify, .pollfds = rp_pollfds,
	.events = rp_events, .deadline = rp_deadline, .streaming = rp_streaming, .destroy = rp_destroy,
};

static void
replay_init(replay *r)
{
	memset(r, 0, sizeof(*r));
	r->base.ops = &replay_ops;
	r->system_id = 7000000000000000001ULL;
	r->timeline = 1;
	r->cat.pub_exists = r->cat.pub_insert = true;
	r->cat.ntables = 1;
	r->cat.tables[0] = (source_table_state) {.exists = true, .oid = 0, .relkind = 'r', .in_pub = true};
}

static void
replay_free(replay *r)
{
	queue_clear(r);
	for (size_t i = 0; i < r->nrecs; i++)
		free(r->recs[i].msg);
	free(r->recs);
}

/* ---------------------------------------------------------------------------
 * The fake sink
 * ------------------------------------------------------------------------- */

#define FAKE_MAX 4096

typedef struct produced {
	char     topic[128];
	char     id[64];
	char     key[64];
	size_t   value_len;
	bool     dlq;           /* has pgoutbox.error */
	bool     trimmed;       /* has pgoutbox.original.sha256 */
	uint64_t opaque;        /* packed */
	uint64_t lsn;           /* the event's source commit LSN */
	bool     reported;
	char     value[256];    /* start of it */
} produced;

typedef struct fake_sink {
	sink      base;
	produced  p[FAKE_MAX];
	size_t    n;
	int       full_next;    /* answer SINK_FULL this many times */
	const char *refuse_id;  /* refuse this id at produce time ... */
	sink_class refuse_cls;
	const char *fail_id;    /* ... or in its report */
	sink_class fail_cls;
	int       produce_calls;
	/* the stream's hooks, as a transactional sink sees them */
	int       sessions;
	sink_origin origin;     /* of the last session (slot copied below) */
	char      origin_slot[64];
	int       idles, ended;  /* sink_idle() calls, with ended */
	int       txn_ends;
	uint64_t  last_end;     /* end LSN of the last sink_txn_end() */
} fake_sink;

static const char *
header(const sink_event *ev, const char *name, size_t *len)
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
	const char *id;
	size_t idlen = 0, l;

	f->produce_calls++;
	if (f->full_next > 0) {
		f->full_next--;
		return SINK_FULL;
	}
	id = header(ev, "id", &idlen);
	if (f->refuse_id && id && idlen == strlen(f->refuse_id) && memcmp(id, f->refuse_id, idlen) == 0 &&
	    header(ev, "pgoutbox.error", &l) == NULL) {
		err->cls = f->refuse_cls;
		err->name = f->refuse_cls == SINK_CLASS_TOO_LARGE ? "MSG_SIZE_TOO_LARGE" : "UNKNOWN_TOPIC";
		snprintf(err->text, sizeof(err->text), "refused by the fake sink");
		return SINK_REFUSED;
	}
	if (f->n >= FAKE_MAX)
		return SINK_FULL;
	p = &f->p[f->n++];
	memset(p, 0, sizeof(*p));
	snprintf(p->topic, sizeof(p->topic), "%s", ev->topic);
	if (id)
		snprintf(p->id, sizeof(p->id), "%.*s", (int) idlen, id);
	if (ev->key)
		snprintf(p->key, sizeof(p->key), "%.*s", (int) ev->key_len, (const char *) ev->key);
	p->value_len = ev->value ? ev->value_len : 0;
	if (ev->value)
		snprintf(p->value, sizeof(p->value), "%.*s", (int) (ev->value_len < 255 ? ev->value_len : 255),
		         (const char *) ev->value);
	p->dlq = header(ev, "pgoutbox.error", &l) != NULL;
	p->trimmed = header(ev, "pgoutbox.original.sha256", &l) != NULL;
	p->opaque = opaque;
	p->lsn = ev->lsn;
	return SINK_OK;
}

static void
fk_session(sink *s, unsigned client, const sink_origin *o)
{
	fake_sink *f = (fake_sink *) s;

	(void) client;
	f->sessions++;
	f->origin = *o;
	snprintf(f->origin_slot, sizeof(f->origin_slot), "%s", o->slot);
	f->origin.slot = f->origin_slot;
}

static void
fk_idle(sink *s, unsigned client, bool ended)
{
	fake_sink *f = (fake_sink *) s;

	(void) client;
	f->idles++;
	f->ended += ended;
}

static void
fk_txn_end(sink *s, unsigned client, uint64_t end_lsn)
{
	fake_sink *f = (fake_sink *) s;

	(void) client;
	f->txn_ends++;
	f->last_end = end_lsn;
}

static void fk_serve(sink *s) { (void) s; }
static int fk_fd(const sink *s) { (void) s; return -1; }
static int
fk_outstanding(const sink *s)
{
	const fake_sink *f = (const fake_sink *) s;
	int n = 0;

	for (size_t i = 0; i < f->n; i++)
		n += !f->p[i].reported;
	return n;
}
static const char *fk_last_error(const sink *s) { (void) s; return ""; }
static bool fk_fatal(sink *s, char *e, size_t l) { (void) s; (void) e; (void) l; return false; }
static void fk_test_fatal(sink *s) { (void) s; }
static void fk_destroy(sink *s) { (void) s; }

static const sink_ops fake_ops = {
	.produce = fk_produce, .txn_end = fk_txn_end, .session = fk_session, .idle = fk_idle,
	.serve = fk_serve, .fd = fk_fd, .outstanding = fk_outstanding,
	.last_error = fk_last_error, .fatal = fk_fatal, .test_fatal = fk_test_fatal,
	.destroy = fk_destroy,
};

/* Report message i: acknowledged, or refused when it is fail_id's. */
static void
fk_report(fake_sink *f, size_t i)
{
	produced *p = &f->p[i];
	sink_report rep;

	if (p->reported)
		return;
	p->reported = true;
	memset(&rep, 0, sizeof(rep));
	rep.topic = p->topic;
	rep.ok = true;
	rep.timestamp_ms = -1;
	rep.bytes = p->value_len;
	if (f->fail_id && strcmp(p->id, f->fail_id) == 0 && !p->dlq) {
		rep.ok = false;
		rep.err.cls = f->fail_cls;
		rep.err.name = "MSG_SIZE_TOO_LARGE";
		snprintf(rep.err.text, sizeof(rep.err.text), "refused in the report");
		rep.id = p->id;
		rep.id_len = strlen(p->id);
		rep.key = p->key;
		rep.key_len = strlen(p->key);
		rep.value = p->value;
		rep.value_len = strlen(p->value);
		rep.nheaders = 1;
		rep.headers[0] = (sink_header) {"id", p->id, strlen(p->id)};
	}
	sink_dispatch(&f->base, p->opaque, &rep);
}

/* Give message i up (an aborted Kafka transaction): a dropped report. */
static void
fk_drop(fake_sink *f, size_t i)
{
	produced *p = &f->p[i];
	sink_report rep;

	if (p->reported)
		return;
	p->reported = true;
	memset(&rep, 0, sizeof(rep));
	rep.topic = p->topic;
	rep.dropped = true;
	rep.timestamp_ms = -1;
	rep.err.cls = SINK_CLASS_RETRIABLE;
	rep.err.name = "ABORTED";
	snprintf(rep.err.text, sizeof(rep.err.text), "the Kafka transaction was aborted");
	sink_dispatch(&f->base, p->opaque, &rep);
}

/* Report every unreported message, in order or from the last. */
static void
fk_report_all(fake_sink *f, bool reverse)
{
	for (size_t k = 0; k < f->n; k++)
		fk_report(f, reverse ? f->n - 1 - k : k);
}

static fake_sink *
fake_new(void)
{
	fake_sink *f = calloc(1, sizeof(*f));

	sink_init(&f->base, &fake_ops, 0);
	return f;
}

/* ---------------------------------------------------------------------------
 * Driving a pipeline
 * ------------------------------------------------------------------------- */

typedef struct rig {
	replay     r;
	fake_sink *f;
	pipeline  *p;
	int64_t    now;
	outbox_table table;
	outbox_config oc;
	pipeline_config pc;
} rig;

static bool
rig_start(rig *g, const char *case_name, bool dlq)
{
	char err[512];

	memset(g, 0, sizeof(*g));
	replay_init(&g->r);
	if (!replay_load(&g->r, case_name))
		return false;
	g->f = fake_new();
	g->table.table = "public.outbox";
	g->oc = (outbox_config) {.tables = &g->table, .ntables = 1, .messages_prefix = "outbox"};
	g->pc = (pipeline_config) {
		.name = "", .slot = "s", .publication = "pgoutbox", .outbox = &g->oc,
		.on_error_dlq = dlq, .dlq_topic = "dead.letters", .status_interval_ms = 10000,
		.replication_timeout_s = 30, .kafka_stall_timeout_s = 60, .shutdown_timeout_s = 5,
	};
	g->now = 1000000;
	g->p = pipeline_new(&g->pc, &g->r.base, &g->f->base, err, sizeof(err));
	if (g->p == NULL)
		fprintf(stderr, "pipeline_new: %s\n", err);
	return g->p != NULL;
}

/* Run the pipeline's turns: the clock moves on by step_ms each. */
static void
rig_turns(rig *g, int turns, int64_t step_ms)
{
	for (int i = 0; i < turns; i++) {
		pipeline_serve(g->p, NULL, 0, g->now);
		g->now += step_ms;
	}
}

static void
rig_end(rig *g)
{
	pipeline_free(g->p);
	replay_free(&g->r);
	free(g->f);
}

/* Ids of the outbox rows committed in the case: every 'I' of a committed transaction. */
static size_t
count_events(const fake_sink *f, bool dlq)
{
	size_t n = 0;

	for (size_t i = 0; i < f->n; i++)
		n += f->p[i].dlq == dlq;
	return n;
}

static bool
has_id(const fake_sink *f, const char *id)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->p[i].id, id) == 0)
			return true;
	return false;
}

/* ---------------------------------------------------------------------------
 * The tests
 * ------------------------------------------------------------------------- */

/* outbox_insert: 8 events in 5 transactions (see its expected file). */
static void
test_deliver_and_confirm(bool reverse)
{
	rig g;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	rig_turns(&g, 3, 10);
	CHECK(g.f->n == 8);                       /* every event, once */
	CHECK(g.r.max_flush < g.r.last_end);      /* nothing acknowledged: not confirmed */
	CHECK(strcmp(g.f->p[0].topic, "outbox.event.order") == 0);
	CHECK(strcmp(g.f->p[0].key, "o-1") == 0);
	/* Acknowledge all but the first: still nothing past it. */
	for (size_t i = g.f->n; i-- > 1;)
		if (reverse)
			fk_report(g.f, i);
	if (reverse) {
		rig_turns(&g, 30, 200);
		CHECK(g.r.max_flush < g.r.recs[0].lsn + 1);
	}
	fk_report_all(g.f, reverse);
	rig_turns(&g, 30, 200);                   /* verification, status pace */
	CHECK(g.r.max_flush == g.r.last_end);     /* the keepalive's position, once all is acked */
	CHECK(g.r.verifies >= 1);
	CHECK(pipeline_stats(g.p)->events == 8);
	rig_end(&g);
}

/* Kafka's queue full for a while: the message is held and fed again, once. */
static void
test_backpressure(void)
{
	rig g;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	g.f->full_next = 7;
	rig_turns(&g, 20, 50);
	CHECK(g.f->n == 8);                       /* all of them, none twice */
	CHECK(g.f->produce_calls == 8 + 7);
	for (size_t i = 0; i + 1 < g.f->n; i++)
		CHECK(strcmp(g.f->p[i].id, g.f->p[i + 1].id) != 0);
	fk_report_all(g.f, false);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	rig_end(&g);
}

/* The stream breaks mid-way: the new session resends from the confirmed position. */
static void
test_reconnect(void)
{
	rig g;
	size_t before;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	g.r.break_after = 9;                      /* inside the second transaction */
	rig_turns(&g, 2, 10);
	before = g.f->n;
	CHECK(before < 9);
	CHECK(g.r.sessions == 1);
	fk_report_all(g.f, false);                /* what got out is acknowledged */
	rig_turns(&g, 40, 100);                   /* back-off, reconnect, resend */
	CHECK(g.r.sessions == 2);
	fk_report_all(g.f, false);
	rig_turns(&g, 30, 200);
	/* Every id arrived at least once; the resent prefix only where unconfirmed. */
	CHECK(has_id(g.f, "6f1c0f4e-4c1b-4a59-9f0b-1d2f3a4b5c6d"));
	for (int k = 2; k <= 8; k++) {
		char id[64];
		snprintf(id, sizeof(id), "00000000-0000-0000-0000-%012d", k);
		CHECK(has_id(g.f, id));
	}
	CHECK(g.f->n >= 8);
	CHECK(g.r.max_flush == g.r.last_end);
	CHECK(pipeline_stats(g.p)->reconnects == 1);
	rig_end(&g);
}

/* Refused at produce time: stop (exit 2, nothing past it) or a dead letter. */
static void
test_refused_at_produce(bool dlq, sink_class cls)
{
	rig g;
	const char *bad = "00000000-0000-0000-0000-000000000003";

	if (!rig_start(&g, "outbox_insert", dlq)) {
		failed++;
		return;
	}
	g.f->refuse_id = bad;
	g.f->refuse_cls = cls;
	rig_turns(&g, 3, 10);
	fk_report_all(g.f, false);
	rig_turns(&g, 60, 200);
	if (!dlq) {
		CHECK(pipeline_exit_code(g.p) == 2);
		CHECK(pipeline_done(g.p, g.now));
		CHECK(count_events(g.f, true) == 0);
		/* Nothing at or past the transaction of the refused event (0/1925450). */
		CHECK(g.r.max_flush < 0x1925450);
		CHECK(g.f->n == 2);                   /* stopped there */
	} else {
		CHECK(pipeline_exit_code(g.p) == 0);
		CHECK(count_events(g.f, true) == 1);
		CHECK(g.f->n == 8);
		for (size_t i = 0; i < g.f->n; i++)
			if (g.f->p[i].dlq) {
				CHECK(strcmp(g.f->p[i].topic, "dead.letters") == 0);
				CHECK(strcmp(g.f->p[i].id, bad) == 0);
				CHECK(g.f->p[i].trimmed == (cls == SINK_CLASS_TOO_LARGE));
			}
		CHECK(g.r.max_flush == g.r.last_end);
	}
	rig_end(&g);
}

/* Refused in the delivery report: the dead-letter copy must be acknowledged first. */
static void
test_refused_in_report(void)
{
	rig g;
	const char *bad = "00000000-0000-0000-0000-000000000002";

	if (!rig_start(&g, "outbox_insert", true)) {
		failed++;
		return;
	}
	g.f->fail_id = bad;
	g.f->fail_cls = SINK_CLASS_TOO_LARGE;
	rig_turns(&g, 3, 10);
	CHECK(g.f->n == 8);
	/* Report only the originals: the refused one's copy is produced now. */
	for (size_t i = 0; i < 8; i++)
		fk_report(g.f, i);
	CHECK(g.f->n == 9 && g.f->p[8].dlq && g.f->p[8].trimmed);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush < 0x1925480);         /* the copy is not acknowledged yet */
	fk_report(g.f, 8);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	CHECK(pipeline_stats(g.p)->events == 7);  /* the dead letter is not counted as published */
	rig_end(&g);
}

/*
 * A dead-letter copy that found the queue full waits, and pgoutbox reads
 * nothing meanwhile: that silence is not the server's, so the liveness
 * timer (replication_timeout, 30 s here) must not reconnect.
 */
static void
test_deferred_dead_letter_is_not_silence(void)
{
	rig g;

	if (!rig_start(&g, "outbox_insert", true)) {
		failed++;
		return;
	}
	g.f->fail_id = "00000000-0000-0000-0000-000000000004";
	g.f->fail_cls = SINK_CLASS_PERMANENT;
	rig_turns(&g, 3, 10);
	g.f->full_next = 1000000;                 /* no room for the copy */
	for (size_t i = 0; i < 8; i++)
		fk_report(g.f, i);
	rig_turns(&g, 120, 1000);                 /* two minutes without reading */
	CHECK(g.r.sessions == 1);
	CHECK(pipeline_stats(g.p)->reconnects == 0);
	CHECK(g.r.max_flush < 0x1925558);         /* its transaction is not confirmed */
	g.f->full_next = 0;
	rig_turns(&g, 3, 100);
	CHECK(g.f->n == 9 && g.f->p[8].dlq && !g.f->p[8].trimmed);
	fk_report(g.f, 8);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	rig_end(&g);
}

/* PostgreSQL 13 (protocol 1): the same delivery, from its own capture. */
static void
test_pg13(void)
{
	rig g;

	if (!rig_start(&g, "pg13/outbox_insert", false)) {
		failed++;
		return;
	}
	rig_turns(&g, 3, 10);
	CHECK(g.f->n == 8);
	fk_report_all(g.f, true);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	rig_end(&g);
}

/* The catalog says the table left the publication: stop, confirm nothing past it. */
static void
test_verification_fails(void)
{
	rig g;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	rig_turns(&g, 3, 10);
	g.r.cat.tables[0].in_pub = false;         /* from the next verification on */
	fk_report_all(g.f, false);
	rig_turns(&g, 60, 200);
	CHECK(pipeline_exit_code(g.p) == 2);
	/* The session start vouched for its WAL position (the whole case here)
	 * only: nothing is confirmed from the failed verification on. */
	CHECK(g.r.verifies >= 1);
	rig_end(&g);
}

/* mixed_dml: updates, deletes, other tables, empty transactions: only inserts become events. */
static void
test_mixed(void)
{
	rig g;

	if (!rig_start(&g, "mixed_dml", false)) {
		failed++;
		return;
	}
	rig_turns(&g, 3, 10);
	CHECK(g.f->n > 0);
	fk_report_all(g.f, true);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	/* the ledger folded the transactions without events */
	CHECK(pipeline_stats(g.p)->in_flight == 0);
	rig_end(&g);
}

/* A new session from another server: nothing of the old one is confirmed to it. */
static void
test_other_server(void)
{
	rig g;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	g.r.break_after = 12;
	rig_turns(&g, 2, 10);
	/* The stream breaks; the next session is a promoted standby whose slot
	 * is behind, on a new timeline. */
	g.r.timeline = 2;
	g.r.confirmed = 0;
	rig_turns(&g, 40, 100);
	CHECK(g.r.sessions == 2);
	/* Reports for the old session's events are ignored ... */
	for (size_t i = 0; i < g.f->n; i++)
		fk_report(g.f, i);
	rig_turns(&g, 30, 200);
	/* ... the new session's events are produced again and confirmed once acked. */
	CHECK(g.f->n >= 8 + 4);
	fk_report_all(g.f, false);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	rig_end(&g);
}

/*
 * What a transactional sink needs to know, through the generic hooks: where
 * the stream comes from (once per session, before its first event), each
 * event's source commit LSN, each transaction's end, and when the stream has
 * nothing more for now or is over.
 */
static void
test_sink_hooks(void)
{
	rig g;
	int idles;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	rig_turns(&g, 3, 10);
	CHECK(g.f->sessions == 1);
	CHECK(g.f->origin.system_id == g.r.system_id && g.f->origin.timeline == 1);
	CHECK(strcmp(g.f->origin_slot, "s") == 0);
	CHECK(g.f->n == 8);
	/* Each event carries its transaction's Begin final LSN (see the case's expected). */
	CHECK(g.f->p[0].lsn == 0x19251D8);
	CHECK(g.f->p[1].lsn == 0x1925450 && g.f->p[2].lsn == 0x1925450 && g.f->p[3].lsn == 0x1925450);
	CHECK(g.f->p[4].lsn == 0x1925528);
	CHECK(g.f->p[7].lsn == 0x19257A8);
	CHECK(g.f->txn_ends == 5 && g.f->last_end == 0x19257D8);
	/* The replay ran dry: idle, not ended. */
	CHECK(g.f->idles >= 1 && g.f->ended == 0);
	idles = g.f->idles;
	/* The stream breaks: the sink hears that it is over. */
	g.r.streaming = false;
	rig_turns(&g, 1, 10);
	CHECK(g.f->ended == 1);
	CHECK(g.f->idles == idles + 1);
	/* Reconnected: a second session, announced again before its events. */
	rig_turns(&g, 40, 100);
	CHECK(g.f->sessions == 2);
	fk_report_all(g.f, false);
	rig_turns(&g, 30, 200);
	/* Stopping ends the stream too. */
	pipeline_stop(g.p, 0, g.now);
	CHECK(g.f->ended == 2);
	rig_end(&g);
}

/*
 * The sink drops what it had taken (an aborted Kafka transaction): nothing
 * of it may be confirmed, the stream restarts from the slot's confirmed
 * position, and the events come again; reports of the dropped ones that
 * come later are ignored.
 */
static void
test_dropped_restarts(void)
{
	rig g;
	size_t first;

	if (!rig_start(&g, "outbox_insert", false)) {
		failed++;
		return;
	}
	rig_turns(&g, 3, 10);
	CHECK(g.f->n == 8);
	/* The first transaction is acknowledged (committed), the rest dropped. */
	fk_report(g.f, 0);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == 0x1925208);        /* the end of the first transaction */
	fk_drop(g.f, 1);
	fk_drop(g.f, 2);
	CHECK(g.r.sessions == 1);
	rig_turns(&g, 1, 10);
	/* Read again from the confirmed position: the seven others, once more. */
	CHECK(g.r.sessions == 2);
	first = 8;
	CHECK(g.f->n == first + 7);
	CHECK(strcmp(g.f->p[first].id, "00000000-0000-0000-0000-000000000002") == 0);
	CHECK(g.r.max_flush == 0x1925208);        /* nothing of the dropped ones */
	/* Late reports of the old messages change nothing ... */
	for (size_t i = 3; i < first; i++)
		fk_report(g.f, i);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == 0x1925208);
	/* ... the new ones do. */
	fk_report_all(g.f, false);
	rig_turns(&g, 30, 200);
	CHECK(g.r.max_flush == g.r.last_end);
	CHECK(pipeline_exit_code(g.p) == 0);
	rig_end(&g);
}

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: test_pipeline CASES_DIR\n");
		return 2;
	}
	cases_dir = argv[1];
	log_set_level(getenv("TEST_PIPELINE_LOG") ? LOG_DEBUG : (log_level) (LOG_FATAL + 1));
	test_deliver_and_confirm(false);
	test_deliver_and_confirm(true);
	test_backpressure();
	test_reconnect();
	test_refused_at_produce(false, SINK_CLASS_PERMANENT);
	test_refused_at_produce(true, SINK_CLASS_PERMANENT);
	test_refused_at_produce(true, SINK_CLASS_TOO_LARGE);
	test_refused_in_report();
	test_verification_fails();
	test_deferred_dead_letter_is_not_silence();
	test_pg13();
	test_mixed();
	test_other_server();
	test_sink_hooks();
	test_dropped_restarts();
	printf("pipeline: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
