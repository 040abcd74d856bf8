/*
 * backfill.c — publish outbox rows read from a snapshot.  See backfill.h.
 *
 * Each row becomes a pgo_tuple of text datums over a pgo_relation named as
 * the configured table, with the columns the query returned; the outbox
 * mapping then sees what it would see in the stream.  Produced rows wait in
 * a ring in backfill order until Kafka acknowledged them (their dead-letter
 * copies too); the acknowledged prefix of the ring is the resume point.
 */
#include "backfill.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pgoutput.h"

#define LSN_FMT "%X/%X"
#define LSN_ARGS(lsn) (unsigned) ((lsn) >> 32), (unsigned) (lsn)
#define HOLD_RETRY_MS   100
#define ROWS_PER_TURN   5000    /* rows produced per loop turn before the loop serves Kafka */
#define SLOT_WAIT_LOG_MS 10000

/* One produced row (and its dead-letter copy, if any) not yet acknowledged. */
typedef struct inflight {
	uint32_t outstanding;
	size_t   table;
	char    *key;         /* order key, NULL: none */
} inflight;

struct backfill {
	char         *name;
	bool          on_error_dlq;
	char         *dlq_topic;
	bool          replay;
	outbox       *ob;
	rows_reader  *rd;
	sink         *snk;
	int           client;
	metrics_stats *st;

	backfill_state state;
	bool          stopping;
	bool          read_all;        /* the reader said ROWS_DONE */
	bool          have_info;
	rows_info     info;
	bool          db_set;

	rows_batch    batch;
	bool          have_batch;
	size_t        row;             /* next row of the batch to produce */
	int64_t       hold_until;      /* Kafka's queue was full: try again then */

	/* the relation of the table being read */
	pgo_relation  rel;
	size_t        rel_table;       /* SIZE_MAX: none yet */
	size_t        rel_cap;

	pgo_datum    *atts;
	size_t        atts_cap;

	/* produced rows in backfill order; ring[head] has sequence number head_seq */
	inflight     *ring;
	size_t        cap, head, count;
	uint64_t      head_seq;

	/* everything before this is acknowledged */
	size_t        resume_table;
	char         *resume_key;

	uint64_t      read, produced, acked, dead_letters, messages_pending;
	int64_t       started_ms, last_progress_ms, done_ms;
	uint64_t      progress_acked;
	bool          slot_wait_logged;
	char          error[768];
};

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_report(void *ctx, uint64_t opaque, const sink_report *rep);

bool
backfill_parse_resume(const char *s, size_t ntables, size_t *table, const char **key)
{
	char *end;
	unsigned long n;

	if (s == NULL || *s < '1' || *s > '9')
		return false;
	n = strtoul(s, &end, 10);
	if (*end != ':' || n == 0 || n > ntables)
		return false;
	*table = (size_t) n - 1;
	*key = end + 1;
	return true;
}

backfill *
backfill_new(const backfill_config *cfg, rows_reader *r, sink *snk, metrics_stats *st,
             char *errbuf, size_t errlen)
{
	backfill *b = calloc(1, sizeof(*b));

	if (b == NULL) {
		r->ops->destroy(r);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	b->rd = r;
	b->st = st;
	b->snk = snk;
	b->rel_table = SIZE_MAX;
	b->on_error_dlq = cfg->on_error_dlq;
	b->replay = cfg->replay;
	b->resume_table = cfg->resume_table;
	if ((b->name = strdup(cfg->name ? cfg->name : "")) == NULL ||
	    (b->dlq_topic = strdup(cfg->dlq_topic ? cfg->dlq_topic : "")) == NULL ||
	    (cfg->resume_key != NULL && cfg->resume_key[0] != '\0' &&
	     (b->resume_key = strdup(cfg->resume_key)) == NULL)) {
		snprintf(errbuf, errlen, "out of memory");
		goto error;
	}
	if ((b->ob = outbox_new(cfg->outbox, errbuf, errlen)) == NULL)
		goto error;
	if ((b->client = sink_attach(snk, on_report, b)) < 0) {
		snprintf(errbuf, errlen, "too many clients of one producer (at most %d)", SINK_MAX_CLIENTS);
		goto error;
	}
	b->started_ms = b->last_progress_ms = mono_ms();
	st->backfill_active = true;
	return b;
error:
	backfill_free(b);
	return NULL;
}

static void
free_rel(backfill *b)
{
	for (size_t i = 0; i < b->rel.natts; i++)
		free(b->rel.atts[i].name);
	b->rel.natts = 0;
}

void
backfill_free(backfill *b)
{
	if (b == NULL)
		return;
	if (b->rd != NULL)
		b->rd->ops->destroy(b->rd);
	for (size_t i = 0; i < b->count; i++)
		free(b->ring[(b->head + i) % b->cap].key);
	free(b->ring);
	free_rel(b);
	free(b->rel.atts);
	free(b->atts);
	outbox_free(b->ob);
	free(b->resume_key);
	free(b->name);
	free(b->dlq_topic);
	free(b);
}

/* ---------------------------------------------------------------------------
 * The ring of produced rows and the resume point
 * ------------------------------------------------------------------------- */

static inflight *
ring_get(backfill *b, uint64_t seq)
{
	if (seq < b->head_seq || seq - b->head_seq >= b->count)
		return NULL;
	return &b->ring[(b->head + (size_t) (seq - b->head_seq)) % b->cap];
}

/* Append a row; its sequence number is head_seq + count before the call. */
static bool
ring_push(backfill *b, size_t table, const char *key)
{
	inflight *e;

	if (b->count == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 1024;
		inflight *nr = malloc(ncap * sizeof(*nr));

		if (nr == NULL)
			return false;
		for (size_t i = 0; i < b->count; i++)
			nr[i] = b->ring[(b->head + i) % b->cap];
		free(b->ring);
		b->ring = nr;
		b->cap = ncap;
		b->head = 0;
	}
	e = &b->ring[(b->head + b->count) % b->cap];
	e->outstanding = 1;
	e->table = table;
	e->key = NULL;
	if (key != NULL && (e->key = strdup(key)) == NULL)
		return false;
	b->count++;
	return true;
}

/* Retire the acknowledged prefix: it moves the resume point. */
static void
ring_retire(backfill *b)
{
	while (b->count > 0 && b->ring[b->head].outstanding == 0) {
		inflight *e = &b->ring[b->head];

		if (e->table != b->resume_table) {
			b->resume_table = e->table;
			free(b->resume_key);
			b->resume_key = NULL;
		}
		if (e->key != NULL) {
			free(b->resume_key);
			b->resume_key = e->key;
			e->key = NULL;
		}
		free(e->key);
		b->head = (b->head + 1) % b->cap;
		b->head_seq++;
		b->count--;
	}
}

static void
resume_text(const backfill *b, char *buf, size_t len)
{
	snprintf(buf, len, "%zu:%s", b->resume_table + 1, b->resume_key ? b->resume_key : "");
}

/* ---------------------------------------------------------------------------
 * Failing
 * ------------------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
fail(backfill *b, const char *fmt, ...)
{
	va_list ap;

	if (b->state == BACKFILL_FAILED)
		return;
	va_start(ap, fmt);
	vsnprintf(b->error, sizeof(b->error), fmt, ap);
	va_end(ap);
	log_msg(LOG_ERROR, "%s%s", b->name, b->error);
	b->state = BACKFILL_FAILED;
	b->stopping = true;
	if (b->rd != NULL) {
		b->rd->ops->destroy(b->rd);
		b->rd = NULL;
	}
	b->have_batch = false;
}

/* ---------------------------------------------------------------------------
 * Rows to events
 * ------------------------------------------------------------------------- */

/* The relation of batch's table, rebuilt when the table changes. */
static bool
set_relation(backfill *b, const rows_batch *bt)
{
	const char *nsp, *rel;
	int table;

	if (b->rel_table == bt->table && b->rel.natts == bt->ncols)
		return true;
	free_rel(b);
	if (bt->ncols > UINT16_MAX)
		return false;
	if (bt->ncols > b->rel_cap) {
		pgo_column *n = realloc(b->rel.atts, bt->ncols * sizeof(*n));
		if (n == NULL)
			return false;
		b->rel.atts = n;
		b->rel_cap = bt->ncols;
	}
	for (size_t i = 0; i < bt->ncols; i++) {
		b->rel.atts[i] = (pgo_column) {.name = strdup(bt->names[i]), .type_oid = bt->types[i]};
		if (b->rel.atts[i].name == NULL) {
			b->rel.natts = (uint16_t) i;
			return false;
		}
		b->rel.natts = (uint16_t) (i + 1);
	}
	outbox_table_ident(b->ob, bt->table, &nsp, &rel);
	b->rel.oid = (uint32_t) bt->table + 1;
	b->rel.nspname = (char *) nsp;
	b->rel.relname = (char *) rel;
	b->rel.replident = 'd';
	if (!outbox_relation(b->ob, &b->rel, &table))
		return false;
	b->rel_table = bt->table;
	return true;
}

static void
event_id(const sink_event *ev, const char **id, int *len)
{
	if (ev->nheaders > 0 && strcmp(ev->headers[0].name, "id") == 0 && ev->headers[0].value) {
		*id = ev->headers[0].value;
		*len = (int) ev->headers[0].len;
	} else {
		*id = "(unknown)";
		*len = 9;
	}
}

typedef enum row_rc { ROW_DONE = 0, ROW_FULL, ROW_FAIL } row_rc;

/*
 * Map and produce row i of the batch; no side effect when ROW_FULL.  An
 * unmappable row, or one Kafka refuses at once, follows on_error as in the
 * stream.
 */
static row_rc
produce_row(backfill *b, size_t i)
{
	const rows_batch *bt = &b->batch;
	uint64_t seq = b->head_seq + b->count;
	pgo_tuple tup;
	outbox_txn txn;
	sink_event ev;
	sink_error err;
	outbox_dlq_buf buf;
	char why[512], reason[320];
	const char *id, *srcname;
	const char *msg = why;
	unsigned src = 0;
	bool dlq = false, is_message;
	int id_len;
	outbox_rc orc;

	for (size_t c = 0; c < bt->ncols; c++) {
		const char *v = bt->vals[i * bt->ncols + c];
		b->atts[c].kind = v ? PGO_DATUM_TEXT : PGO_DATUM_NULL;
		b->atts[c].value.ptr = (const uint8_t *) v;
		b->atts[c].value.len = v ? bt->lens[i * bt->ncols + c] : 0;
	}
	tup.natts = (uint16_t) bt->ncols;
	tup.atts = b->atts;
	txn.commit_lsn = b->info.position;
	txn.commit_time = bt->times[i] != ROWS_NO_TIME ? bt->times[i] : b->info.snapshot_time;
	txn.xid = bt->xmins[i];
	orc = outbox_map_insert(b->ob, &b->rel, &tup, &txn, &ev, &src, why, sizeof(why));
	switch (orc) {
	case OUTBOX_EVENT:
		break;
	case OUTBOX_IGNORE:     /* not possible for a configured table; nothing to publish */
		return ROW_DONE;
	case OUTBOX_NOMEM:
		fail(b, "%s", why);
		return ROW_FAIL;
	case OUTBOX_UNMAPPABLE:
		dlq = true;
		break;
	}
	event_id(&ev, &id, &id_len);
	srcname = outbox_source_name(b->ob, src, &is_message);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (dlq) {
			if (!b->on_error_dlq) {
				fail(b, "cannot %s backfilled event %.*s (table %s): %s; set on_error = dlq to "
				     "send it to the dead-letter topic instead", attempt == 0 ? "map" : "publish",
				     id_len, id, srcname, msg);
				return ROW_FAIL;
			}
			outbox_dead_letter(&ev, b->dlq_topic, msg, ev.topic, b->info.position, false, srcname,
			                   attempt == 1 && err.cls == SINK_CLASS_TOO_LARGE, &buf);
		}
		switch (sink_produce(b->snk, (unsigned) b->client, &ev, seq, &err)) {
		case SINK_OK:
			goto produced;
		case SINK_FULL:
		case SINK_FATAL:
			return ROW_FULL;
		case SINK_REFUSED:
			if (dlq) {
				fail(b, "Kafka refused the dead-letter copy of backfilled event %.*s for topic "
				     "\"%s\": %s (%s)", id_len, id, b->dlq_topic, err.text, err.name);
				return ROW_FAIL;
			}
			metrics_count_error(b->st, err.name ? err.name : "UNKNOWN");
			snprintf(reason, sizeof(reason), "Kafka refused it for topic \"%s\": %s (%s)",
			         ev.topic, err.text, err.name);
			msg = reason;
			dlq = true;
			break;
		}
	}
	return ROW_FAIL;
produced:
	if (!ring_push(b, bt->table, bt->keys[i])) {
		/* Produced but not recorded: its report finds no entry.  Stop. */
		fail(b, "out of memory recording a backfilled event");
		return ROW_FAIL;
	}
	b->produced++;
	b->messages_pending++;
	if (dlq) {
		log_msg(LOG_WARNING, "%sbackfilled event %.*s sent to dead-letter topic \"%s\": %s",
		        b->name, id_len, id, b->dlq_topic, msg);
		b->dead_letters++;
	}
	return ROW_DONE;
}

/* Kafka refused a backfilled message for good: its dead-letter copy, or stop. */
static void
refused(backfill *b, uint64_t seq, inflight *e, const sink_report *rep)
{
	sink_event ev;
	outbox_dlq_buf buf;
	sink_error err;
	bool is_message;
	const char *name = outbox_source_name(b->ob, (unsigned) e->table, &is_message);

	metrics_count_error(b->st, rep->err.name ? rep->err.name : "UNKNOWN");
	if (!b->on_error_dlq) {
		fail(b, "Kafka refused backfilled event %.*s for topic \"%s\": %s (%s); set on_error = dlq "
		     "to send it to the dead-letter topic instead", (int) rep->id_len,
		     rep->id ? (const char *) rep->id : "(unknown)", rep->topic, rep->err.text, rep->err.name);
		return;
	}
	memset(&ev, 0, sizeof(ev));
	ev.key = rep->key;
	ev.key_len = rep->key_len;
	ev.value = rep->value;
	ev.value_len = rep->value_len;
	ev.timestamp_ms = rep->timestamp_ms;
	ev.nheaders = rep->nheaders;
	memcpy(ev.headers, rep->headers, rep->nheaders * sizeof(ev.headers[0]));
	outbox_dead_letter(&ev, b->dlq_topic, rep->err.text, rep->topic, b->info.position, false, name,
	                   rep->err.cls == SINK_CLASS_TOO_LARGE, &buf);
	if (sink_produce(b->snk, (unsigned) b->client, &ev, seq, &err) != SINK_OK) {
		/* From inside a report there is no holding on: stop, the resume point is before it. */
		fail(b, "could not produce the dead-letter copy of backfilled event %.*s: %s",
		     (int) rep->id_len, rep->id ? (const char *) rep->id : "(unknown)", err.text);
		return;
	}
	e->outstanding++;
	b->messages_pending++;
	b->dead_letters++;
	log_msg(LOG_WARNING, "%sbackfilled event %.*s sent to dead-letter topic \"%s\": Kafka refused it "
	        "for topic \"%s\": %s (%s)", b->name, (int) rep->id_len,
	        rep->id ? (const char *) rep->id : "(unknown)", b->dlq_topic, rep->topic, rep->err.text,
	        rep->err.name);
}

static void
on_report(void *ctx, uint64_t seq, const sink_report *rep)
{
	backfill *b = ctx;
	inflight *e = ring_get(b, seq);

	b->hold_until = 0;   /* a report makes room: a held row is tried again on the next turn */
	if (e == NULL || e->outstanding == 0)
		return;    /* of a lost producer, or after a failure freed the ring */
	if (b->messages_pending > 0)
		b->messages_pending--;
	if (!rep->ok) {
		if (rep->err.cls == SINK_CLASS_FATAL || sink_fatal(b->snk, NULL, 0))
			return;    /* the producer is being replaced: sink_lost() follows */
		refused(b, seq, e, rep);
		if (b->state == BACKFILL_FAILED)
			return;
	} else {
		/* Kafka's part of the latency counts; commit-to-ack would count the rows' age. */
		b->st->events++;
		b->st->bytes += rep->bytes;
		if (rep->latency_us >= 0)
			metrics_observe(&b->st->produce_to_ack, (double) rep->latency_us / 1e6);
	}
	if (--e->outstanding == 0) {
		b->acked++;
		b->st->backfill_acked = b->acked;
	}
	ring_retire(b);
}

/* ---------------------------------------------------------------------------
 * The phase
 * ------------------------------------------------------------------------- */

static void
progress(backfill *b, int64_t now, bool force)
{
	char resume[320];
	double secs = (double) (now - b->last_progress_ms) / 1000.0;
	double total_s = (double) (now - b->started_ms) / 1000.0;

	if (!force && now - b->last_progress_ms < BACKFILL_PROGRESS_MS)
		return;
	resume_text(b, resume, sizeof(resume));
	log_msg(LOG_INFO, "%s%s: %" PRIu64 " of %" PRIu64 " rows read, %" PRIu64 " acknowledged by Kafka "
	        "(%.0f%%), %.0f rows/s (%.0f rows/s overall); resume point %.280s", b->name,
	        b->replay ? "replay" : "backfill", b->read, b->info.total, b->acked,
	        b->info.total ? 100.0 * (double) b->acked / (double) b->info.total : 100.0,
	        secs > 0 ? (double) (b->acked - b->progress_acked) / secs : 0.0,
	        total_s > 0 ? (double) b->acked / total_s : 0.0, resume);
	b->last_progress_ms = now;
	b->progress_acked = b->acked;
}

static void
got_info(backfill *b)
{
	b->info = *b->rd->ops->info(b->rd);
	b->have_info = true;
	b->st->backfill_expected = b->info.total;
	if (!outbox_set_database(b->ob, b->info.database ? b->info.database : "")) {
		fail(b, "out of memory");
		return;
	}
	if (b->info.created_slot)
		log_msg(LOG_INFO, "%sbackfill: created the slot at its consistent point " LSN_FMT "; reading "
		        "%" PRIu64 " rows in its snapshot (transactions committed after it come from the slot)",
		        b->name, LSN_ARGS(b->info.position), b->info.total);
	else
		log_msg(LOG_INFO, "%s%s: reading %" PRIu64 " rows in a snapshot at " LSN_FMT "%s", b->name,
		        b->replay ? "replay" : "backfill (resumed)", b->info.total, LSN_ARGS(b->info.position),
		        b->replay ? " (no slot is touched)" : "");
	if (b->info.unknown_commit > 0)
		log_msg(LOG_INFO, "%s%" PRIu64 " of these rows have no known commit time (committed before "
		        "track_commit_timestamp was on, or long ago) and are included whatever --since says",
		        b->name, b->info.unknown_commit);
}

void
backfill_serve(backfill *b, int64_t now)
{
	char err[768];
	int budget = ROWS_PER_TURN;

	if (b->state != BACKFILL_RUNNING)
		return;
	while (!b->stopping && budget > 0) {
		if (!b->have_batch) {
			rows_rc rc;

			if (b->read_all)
				break;
			rc = b->rd->ops->next(b->rd, &b->batch, err, sizeof(err));
			if (rc == ROWS_AGAIN) {
				const rows_info *ri = b->rd->ops->info(b->rd);
				if (!b->have_info && ri->created_slot && ri->position == 0 &&
				    !b->slot_wait_logged && now - b->started_ms >= SLOT_WAIT_LOG_MS) {
					log_msg(LOG_INFO, "%sbackfill: creating the slot waits for the transactions "
					        "running now to end", b->name);
					b->slot_wait_logged = true;
				}
				break;
			}
			if (rc == ROWS_INFO) {
				got_info(b);
				continue;
			}
			if (rc == ROWS_DONE) {
				b->read_all = true;
				b->rd->ops->destroy(b->rd);
				b->rd = NULL;
				break;
			}
			if (rc == ROWS_FAIL) {
				if (strstr(err, "already exists") != NULL)
					fail(b, "%s; --backfill creates the slot: to replace an invalidated slot drop it "
					     "first (scripts/setup-slot.sh --recreate), to resume an interrupted backfill "
					     "use --backfill-resume, to re-publish rows without a slot use --replay", err);
				else
					fail(b, "%s could not read the outbox table: %s", b->replay ? "replay" : "backfill",
					     err);
				return;
			}
			/* ROWS_OK */
			if (b->batch.ncols > b->atts_cap) {
				pgo_datum *n = realloc(b->atts, b->batch.ncols * sizeof(*n));
				if (n == NULL) {
					fail(b, "out of memory");
					return;
				}
				b->atts = n;
				b->atts_cap = b->batch.ncols;
			}
			if (!set_relation(b, &b->batch)) {
				fail(b, "out of memory describing the outbox table");
				return;
			}
			b->have_batch = true;
			b->row = 0;
			b->read += b->batch.nrows;
			b->st->backfill_read = b->read;
		}
		if (now < b->hold_until)
			break;
		while (b->row < b->batch.nrows && budget > 0) {
			row_rc rc = produce_row(b, b->row);

			if (rc == ROW_FULL) {
				b->hold_until = now + HOLD_RETRY_MS;
				budget = 0;
				break;
			}
			if (rc == ROW_FAIL)
				return;
			b->row++;
			budget--;
		}
		if (b->row >= b->batch.nrows)
			b->have_batch = false;
	}
	progress(b, now, false);
	if (b->state == BACKFILL_RUNNING && b->count == 0 && !b->have_batch) {
		if (b->read_all) {
			b->state = BACKFILL_DONE;
			b->done_ms = now;
		} else if (b->stopping) {
			b->state = BACKFILL_STOPPED;
		}
	}
}

int
backfill_pollfds(backfill *b, struct pollfd *pfd, int max)
{
	if (b->rd == NULL || b->stopping || b->have_batch)
		return 0;
	return b->rd->ops->pollfds(b->rd, pfd, max);
}

int64_t
backfill_deadline(backfill *b, int64_t now)
{
	int64_t due = b->last_progress_ms + BACKFILL_PROGRESS_MS, d;

	if (b->state != BACKFILL_RUNNING)
		return now + 60000;
	if (b->have_batch)
		return b->hold_until > now ? b->hold_until : now;
	if (b->rd != NULL && !b->stopping) {
		d = b->rd->ops->deadline(b->rd);
		if (d >= 0 && d < due)
			due = d;
	}
	return due;
}

void
backfill_stop(backfill *b)
{
	if (b->stopping)
		return;
	b->stopping = true;
	b->have_batch = false;
	if (b->rd != NULL) {
		b->rd->ops->destroy(b->rd);
		b->rd = NULL;
	}
	if (b->state == BACKFILL_RUNNING && b->count == 0)
		b->state = b->read_all ? BACKFILL_DONE : BACKFILL_STOPPED;
}

void
backfill_sink_lost(backfill *b)
{
	fail(b, "the Kafka producer failed fatally during the %s: the events it had not delivered are "
	     "not in any slot", b->replay ? "replay" : "backfill");
}

backfill_state
backfill_state_of(const backfill *b)
{
	return b->state;
}

uint64_t
backfill_pending(const backfill *b)
{
	return b->count;
}

void
backfill_resume_point(backfill *b, char *buf, size_t len)
{
	ring_retire(b);
	resume_text(b, buf, len);
}

uint64_t
backfill_position(const backfill *b)
{
	return b->have_info ? b->info.position : 0;
}

void
backfill_finish(backfill *b)
{
	char resume[320];
	int64_t now = mono_ms();
	double secs = (double) ((b->done_ms ? b->done_ms : now) - b->started_ms) / 1000.0;
	const char *what = b->replay ? "replay" : "backfill";

	b->st->backfill_active = false;
	if (b->state == BACKFILL_DONE) {
		log_msg(LOG_INFO, "%s%s complete: %" PRIu64 " rows published and acknowledged by Kafka in "
		        "%.1f s (%.0f rows/s)%s", b->name, what, b->acked, secs,
		        secs > 0 ? (double) b->acked / secs : 0.0,
		        b->dead_letters ? ", some of them as dead letters (see the warnings)" : "");
		return;
	}
	ring_retire(b);
	resume_text(b, resume, sizeof(resume));
	if (b->replay) {
		log_detail(LOG_WARNING, "every row before the resume point is in Kafka; rows from it on are "
		           "published again by the resumed run (consumers de-duplicate by id)",
		           "%sreplay %s after %" PRIu64 " of %" PRIu64 " rows acknowledged; resume with "
		           "pgoutbox --replay --backfill-resume '%s' and the same settings", b->name,
		           b->state == BACKFILL_FAILED ? "failed" : "interrupted", b->acked, b->info.total,
		           resume);
		return;
	}
	if (!b->have_info || b->info.position == 0) {
		log_msg(LOG_WARNING, "%sbackfill %s before its snapshot was taken; if the slot exists now, "
		        "resume with pgoutbox --backfill --backfill-resume '%s', else run it again", b->name,
		        b->state == BACKFILL_FAILED ? "failed" : "was interrupted", resume);
		return;
	}
	log_detail(LOG_WARNING, "the slot stays at its consistent point: start pgoutbox only with "
	           "--backfill-resume until the backfill is complete, or the rows from the resume point on "
	           "are never published; rows committed since the slot was created may be published twice "
	           "by the resumed run (consumers de-duplicate by id)",
	           "%sbackfill %s after %" PRIu64 " of %" PRIu64 " rows acknowledged (consistent point "
	           LSN_FMT "); resume with pgoutbox --backfill --backfill-resume '%s' and the same settings",
	           b->name, b->state == BACKFILL_FAILED ? "failed" : "interrupted", b->acked,
	           b->info.total, LSN_ARGS(b->info.position), resume);
}
