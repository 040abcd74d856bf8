/*
 * pipeline.c — one replication slot end to end.  See pipeline.h.
 *
 * A CopyData message goes through step(): decoded, mapped, produced.  step()
 * has no side effect when it answers STEP_HOLD (Kafka's queue is full, or a
 * relation must be identified first): the same bytes are fed again later.
 * Reports come back through on_report(), the seam between sink and ledger.
 */
#define _GNU_SOURCE    /* POLLRDHUP */
#include "pipeline.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backfill.h"
#include "cleanup.h"
#include "ledger.h"
#include "log.h"
#include "pgoutput.h"

#define LSN_FMT "%X/%X"
#define LSN_ARGS(lsn) (unsigned) ((lsn) >> 32), (unsigned) (lsn)

/* Limits that keep one loop turn short and reconnects polite. */
#define READ_BUDGET          10000   /* messages per turn before the loop serves Kafka */
#define STATUS_MIN_GAP_MS    100     /* fastest pace of status updates after progress */
#define BACKOFF_MIN_MS       1000
#define BACKOFF_MAX_MS       30000
#define HOLD_RETRY_MS        100     /* how soon a held message is tried again */
#define SLOT_BUSY_RETRY_MS   1000    /* a standby retries a busy slot this often */
#define VERIFY_GAP_MS        200     /* verifications at most this often ... */
#define VERIFY_RETRY_MAX_MS  10000   /* ... and retried this slowly when they fail */
#define VERIFY_UNHEALTHY_MS  30000   /* failing for this long: /healthz says so */
#define FINISH_TIMEOUT_MS    5000
/*
 * Catching up on a backlog, a reader that takes each message as it arrives
 * makes the walsender send each one with a send() of its own; napping a
 * little whenever nothing is buffered lets its sends coalesce, which a bare
 * client measured at 2.5x the messages per second (docs/benchmarks.md).  So
 * pgoutbox naps NAP_US, but only while it is behind by more than BEHIND_BYTES
 * (the 'w' header's WAL end says how far), never when caught up: then
 * every message is read the moment it arrives.
 */
#define NAP_US               100
#define BEHIND_BYTES         (256 * 1024)

/*
 * A message's opaque (SINK_OPAQUE_BITS): the ledger sequence number of its
 * transaction and which outbox source (table, logical messages) it came
 * from, or SOURCE_DLQ for a dead-letter copy.
 */
#define OPAQUE_SOURCE_BITS 8
#define SOURCE_DLQ         0xFFu
#define OPAQUE(seq, src)   (((uint64_t) (seq) << OPAQUE_SOURCE_BITS) | (uint64_t) (src))
#define OPAQUE_SEQ(op)     ((ledger_seq) ((op) >> OPAQUE_SOURCE_BITS))
#define OPAQUE_SRC(op)     ((unsigned) ((op) & SOURCE_DLQ))
#define MAX_SEQ            ((UINT64_C(1) << (SINK_OPAQUE_BITS - OPAQUE_SOURCE_BITS)) - 1)

typedef enum step_rc {
	STEP_OK = 0,      /* message consumed */
	STEP_HOLD,        /* keep the message, feed it again later (see hold) */
	STEP_FAIL,        /* the pipeline stops: exit 2 */
} step_rc;

typedef enum hold_reason {
	HOLD_NONE = 0,
	HOLD_FULL,        /* Kafka's queue is full */
	HOLD_VERIFY,      /* a relation is being identified on the side connection */
} hold_reason;

/* A dead-letter copy that found Kafka's queue full; already counted in the ledger. */
typedef struct deferred {
	struct deferred *next;
	sink_event      *ev;        /* owned (sink_event_dup) */
	uint64_t         opaque;
} deferred;

/* A sorted set of relation OIDs. */
typedef struct oid_set {
	uint32_t *v;
	size_t    n, cap;
} oid_set;

struct pipeline {
	char        *name;             /* "" or "NAME: " for log lines */
	char        *source_name;      /* the configured name ("" for the only one) */
	char         database[128];    /* of the current (or last) session, for metrics */
	char        *slot, *publication, *dlq_topic;
	bool         on_error_dlq;
	int          status_interval_ms;
	int64_t      replication_timeout_ms;
	int64_t      stall_ms;
	int          shutdown_timeout_s;
	uint64_t     endpos;
	uint64_t     test_fatal_after;

	source      *src;
	backfill    *bf;               /* the backfill phase while it runs, else NULL */
	cleanup     *cl;               /* cleanup = delete, else NULL */
	bool         replay;           /* the backfill phase is all there is */
	sink        *snk;
	int          client;           /* our number at the sink */
	outbox      *ob;
	pgo_decoder *dec;
	ledger       led;
	ledger_seq   stale_below;      /* reports for older sequence numbers: a previous producer or server */
	bool         restart_due;      /* the sink dropped events it had taken: read the stream again */

	/* the session */
	bool         connecting;
	bool         in_session;       /* a stream started and was not lost yet */
	bool         have_server;      /* system_id/timeline below are known */
	uint64_t     system_id;
	uint32_t     timeline;
	char         host[256];
	int          sender_timeout_ms;
	uint64_t     server_wal_end;   /* highest WAL end the server told us of */

	/* the transaction being received */
	bool         in_txn;
	ledger_seq   txn_seq;
	outbox_txn   txn;
	int64_t      txn_received_us;  /* wall clock when its Begin was read; 0: observed */

	deferred    *dlq_head, *dlq_tail;

	uint64_t     received;         /* highest WAL position received (write) */
	uint64_t     reported;         /* last flush position sent to PostgreSQL */
	int64_t      last_status_ms;
	bool         reply_due;

	uint8_t     *held;             /* CopyData fed again later */
	size_t       held_len;
	hold_reason  hold;
	int64_t      hold_retry_ms;
	bool         more_input;       /* the read budget ran out: do not sleep */
	int64_t      nap_until_us;     /* behind: no reading before this (monotonic us) */

	int64_t      next_connect_ms;
	int          backoff_ms;
	bool         busy_logged;
	int64_t      last_recv_ms;
	bool         ping_sent;

	/* verification of the source (see pipeline.h) */
	uint64_t     verified_upto;    /* highest position a verification vouches for */
	int64_t      verified_wall_ms; /* when it was read */
	bool         verifying;
	uint32_t     verify_oid;       /* the relation a verification was asked for */
	int64_t      next_verify_ms;
	int          verify_backoff_ms;
	int64_t      verify_failing_since;
	char         verify_error[512];
	uint32_t     table_oid[OUTBOX_MAX_TABLES];   /* the catalog's OID of each table, 0: unknown */
	oid_set      ours;             /* relations seen in the stream as an outbox table */
	oid_set      neighbours;       /* relations verified not to be ours */
	oid_set      warned;           /* relations warned about once */

	/* stopping */
	bool         stopping;
	bool         finished;
	bool         slot_lost;        /* the slot is gone: what is in flight is in the gap */
	bool         source_bad;       /* a verification failed: never verify (or confirm) further */
	bool         server_stopping;  /* the server refuses connections: it is shutting down */
	int64_t      drain_deadline_ms;
	int          exit_code;
	uint64_t     refused;          /* in the ledger, refused for good: never acked */

	/* counters */
	uint64_t     events, txns, dead_letters, acks;
	uint64_t     acked_seen;       /* acks when the stall check last looked */
	int64_t      last_ack_ms;
	int64_t      waiting_since_ms; /* since when something is in flight; 0: nothing */
	bool         backpressure_logged;
	int64_t      backpressure_since_ms;
	double       backpressure_done_s;
	uint64_t     stats_events;
	metrics_stats st;
};

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------------------
 * Small sets
 * ------------------------------------------------------------------------- */

static size_t
oid_pos(const oid_set *s, uint32_t oid)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->v[mid] < oid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool
oid_has(const oid_set *s, uint32_t oid)
{
	size_t i = oid_pos(s, oid);

	return i < s->n && s->v[i] == oid;
}

/* Add oid; false when out of memory. */
static bool
oid_add(oid_set *s, uint32_t oid)
{
	size_t i = oid_pos(s, oid);

	if (i < s->n && s->v[i] == oid)
		return true;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		uint32_t *v = realloc(s->v, cap * sizeof(*v));
		if (v == NULL)
			return false;
		s->v = v;
		s->cap = cap;
	}
	memmove(s->v + i + 1, s->v + i, (s->n - i) * sizeof(*s->v));
	s->v[i] = oid;
	s->n++;
	return true;
}

static void
oid_clear(oid_set *s)
{
	s->n = 0;
}

static void
oid_free(oid_set *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

/* ---------------------------------------------------------------------------
 * Health, stopping
 * ------------------------------------------------------------------------- */

/* Say why the pipeline does not stream (empty: it does). */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
set_health(pipeline *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->st.health, sizeof(p->st.health), fmt, ap);
	va_end(ap);
}

void
pipeline_stop(pipeline *p, int code, int64_t now)
{
	if (code > p->exit_code)
		p->exit_code = code;
	if (p->bf != NULL)
		backfill_stop(p->bf);
	if (p->stopping)
		return;
	p->stopping = true;
	p->drain_deadline_ms = now + (int64_t) p->shutdown_timeout_s * 1000;
	/* Nothing more is read: what the sink holds is all there will be. */
	if (p->snk != NULL)
		sink_idle(p->snk, (unsigned) p->client, true);
}

/* What the log calls the position the slot was last confirmed at. */
static void
describe_confirmed(const pipeline *p, char *buf, size_t len)
{
	char t[32];

	if (p->reported == 0) {
		snprintf(buf, len, "nothing was confirmed by this pgoutbox run");
		return;
	}
	if (p->led.confirmed_time != 0) {
		outbox_format_time(p->led.confirmed_time, t, sizeof(t));
		snprintf(buf, len, "the last position this pgoutbox confirmed is " LSN_FMT
		         "; the last transaction confirmed committed at %s", LSN_ARGS(p->reported), t);
	} else {
		snprintf(buf, len, "the last position this pgoutbox confirmed is " LSN_FMT,
		         LSN_ARGS(p->reported));
	}
}

/*
 * The slot is gone (dropped, invalidated): events committed after its last
 * confirmed position are not in any new slot.  Say exactly where the gap
 * starts and the commands that close it: a new slot created together with
 * a backfill of the rows committed since (backfill.h), selected by commit
 * time from a second before the last transaction Kafka acknowledged.
 */
static void
slot_gone(pipeline *p, const char *why)
{
	char conf[256], since[96], detail[1024];

	p->slot_lost = true;
	describe_confirmed(p, conf, sizeof(conf));
	if (p->led.confirmed_time != 0) {
		char t[32];
		outbox_format_time(p->led.confirmed_time - 1000000, t, sizeof(t));
		snprintf(since, sizeof(since), "'%s'", t);
	} else {
		snprintf(since, sizeof(since), "'<the timestamp of the last event in Kafka, less a second>'");
	}
	snprintf(detail, sizeof(detail),
	         "events committed after the slot's last confirmed position are not in the stream of any "
	         "new slot: re-create the slot together with a backfill of those rows from the outbox "
	         "table: scripts/setup-slot.sh --recreate --slot %s -d ..., then pgoutbox --backfill "
	         "--since %s with the same settings (--since compares with the rows' commit times, which "
	         "needs track_commit_timestamp = on; or set backfill_since_column to a creation-time "
	         "column); consumers de-duplicate by id (docs/guarantees.md)", p->slot, since);
	log_detail(LOG_ERROR, detail, "%s%s; %s", p->name, why, conf);
	set_health(p, "stopping: %.200s", why);
}

/* Whether a fatal source error says the slot is gone (dropped or invalidated). */
static bool
is_slot_gone(const char *err)
{
	return strstr(err, "replication slot") != NULL &&
	       (strstr(err, "does not exist") != NULL || strstr(err, "invalidated") != NULL ||
	        strstr(err, "can no longer get changes") != NULL);
}

/* ---------------------------------------------------------------------------
 * The stream breaks, the session starts
 * ------------------------------------------------------------------------- */

static void
end_backpressure(pipeline *p, int64_t now)
{
	if (p->backpressure_since_ms != 0) {
		p->backpressure_done_s += (double) (now - p->backpressure_since_ms) / 1000.0;
		p->backpressure_since_ms = 0;
	}
	if (p->backpressure_logged) {
		log_msg(LOG_INFO, "%sKafka's producer queue has room again: resuming", p->name);
		p->backpressure_logged = false;
	}
}

static void
drop_held(pipeline *p)
{
	if (p->held != NULL)
		p->src->ops->release(p->src, p->held);
	p->held = NULL;
	p->hold = HOLD_NONE;
}

static void
free_deferred(pipeline *p)
{
	while (p->dlq_head != NULL) {
		deferred *d = p->dlq_head;
		p->dlq_head = d->next;
		free(d->ev);
		free(d);
	}
	p->dlq_tail = NULL;
}

/* The stream broke: forget the half-received transaction and reconnect. */
static void
stream_lost(pipeline *p, const char *why, int64_t now)
{
	log_msg(LOG_WARNING, "%s%s; reconnecting in %d ms", p->name, why, p->backoff_ms);
	set_health(p, "not streaming: %s", why);
	p->st.reconnects++;
	p->src->ops->close(p->src);
	if (p->in_session)
		sink_idle(p->snk, (unsigned) p->client, true);    /* its open transaction never ends here */
	p->connecting = false;
	p->in_session = false;
	ledger_stream_lost(&p->led);
	p->in_txn = false;
	drop_held(p);
	p->verifying = false;
	end_backpressure(p, now);
	p->next_connect_ms = now + p->backoff_ms;
	p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
}

/*
 * Flush position to report: acknowledged, verified, and on this server.
 *
 * One exception to "verified": a server that is shutting down refuses the
 * verification's connection, and its walsender waits (fast shutdown) until
 * pgoutbox confirms everything it sent.  No transaction can commit any more
 * then, so once nothing is in flight the walsender's position is confirmed
 * unverified rather than holding up the shutdown; the next session's own
 * verification (before it streams) catches a change made in between.
 */
static uint64_t
flush_position(pipeline *p)
{
	uint64_t flush = ledger_confirmable(&p->led);

	if (flush > p->verified_upto &&
	    !(p->server_stopping && ledger_pending(&p->led) == 0 && !p->in_txn && !p->source_bad))
		flush = p->verified_upto;
	if (flush > p->server_wal_end)
		flush = p->server_wal_end;
	/* Never backwards within a session: the server ignores it anyway. */
	return flush > p->reported ? flush : p->reported;
}

static void
send_status(pipeline *p, int64_t now, bool reply)
{
	char err[512];
	uint64_t flush = flush_position(p);
	source_rc rc;

	rc = p->src->ops->send_status(p->src, p->received > flush ? p->received : flush, flush,
	                              reply, err, sizeof(err));
	if (rc == SOURCE_LOST) {
		stream_lost(p, err, now);
		return;
	}
	if (flush != p->reported)
		log_msg(LOG_DEBUG, "%sconfirmed " LSN_FMT, p->name, LSN_ARGS(flush));
	p->reported = flush;
	if (p->cl != NULL)
		cleanup_confirmed(p->cl, flush);     /* rows before it may go (cleanup.h) */
	p->last_status_ms = now;
	p->reply_due = false;
}

/*
 * Time between status updates: status_interval, but at most half the
 * server's wal_sender_timeout, because while Kafka's queue is full these
 * updates are all that keeps the walsender from timing the session out.
 */
static int
status_interval(const pipeline *p)
{
	int wst = p->sender_timeout_ms;

	if (wst > 0 && wst / 2 < p->status_interval_ms)
		return wst / 2 > 100 ? wst / 2 : 100;
	return p->status_interval_ms;
}

/* ---------------------------------------------------------------------------
 * Verification: is the configured outbox what PostgreSQL streams?
 * ------------------------------------------------------------------------- */

static void
log_time(int64_t wall, char *buf, size_t len)
{
	time_t t = (time_t) (wall / 1000);
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

/*
 * Judge a verification.  Returns false (after logging why, with the gap it
 * leaves) when the outbox is not what PostgreSQL streams: the pipeline then
 * stops without confirming past the last good verification.  Also learns
 * the partitions of the tables and warns, once each, of what may have
 * skipped rows but cannot be proved from here.
 */
static bool
judge(pipeline *p, const source_catalog *cat)
{
	char why[1024] = "", since[80], table[300], lsn_text[32];
	size_t nt = outbox_tables(p->ob);
	bool ok = true;

	snprintf(lsn_text, sizeof(lsn_text), LSN_FMT, LSN_ARGS(p->verified_upto));
	since[0] = ' ';
	since[1] = '(';
	log_time(p->verified_wall_ms ? p->verified_wall_ms : wall_ms(), since + 2, sizeof(since) - 3);
	strcat(since, ")");
	if (!cat->pub_exists) {
		snprintf(why, sizeof(why), "publication \"%s\" does not exist (dropped?)", p->publication);
		ok = false;
	} else if (!cat->pub_insert) {
		snprintf(why, sizeof(why), "publication \"%s\" does not publish inserts "
		         "(ALTER PUBLICATION %s SET (publish = 'insert'))", p->publication, p->publication);
		ok = false;
	}
	for (size_t i = 0; ok && i < nt && i < cat->ntables; i++) {
		const source_table_state *t = &cat->tables[i];
		bool msg;

		snprintf(table, sizeof(table), "%s", outbox_source_name(p->ob, (unsigned) i, &msg));
		if (!t->exists) {
			snprintf(why, sizeof(why), "outbox table %s does not exist (dropped or renamed?)", table);
			ok = false;
		} else if (!t->in_pub) {
			snprintf(why, sizeof(why), "outbox table %s is not in publication \"%s\", so PostgreSQL "
			         "streams none of its rows (re-created? ALTER PUBLICATION %s ADD TABLE %s)",
			         table, p->publication, p->publication, table);
			ok = false;
		} else {
			if (p->table_oid[i] != 0 && p->table_oid[i] != t->oid && !oid_has(&p->warned, t->oid)) {
				(void) oid_add(&p->warned, t->oid);
				log_detail(LOG_WARNING, "if rows were inserted into the new table before it was added "
				           "to the publication, they are not in the stream: re-send them (consumers "
				           "de-duplicate by id)",
				           "%soutbox table %s was re-created (OID %u, now %u)", p->name, table,
				           p->table_oid[i], t->oid);
			}
			p->table_oid[i] = t->oid;
			if (t->row_filter && !oid_has(&p->warned, t->oid)) {
				(void) oid_add(&p->warned, t->oid);
				log_msg(LOG_WARNING, "%spublication \"%s\" publishes only some rows of %s (a row "
				        "filter): rows it filters out never become events", p->name, p->publication,
				        table);
			}
		}
	}
	if (!ok) {
		char conf[256];

		describe_confirmed(p, conf, sizeof(conf));
		char resend[600], t[32];
		int64_t wall = p->verified_wall_ms ? p->verified_wall_ms : wall_ms();

		/* A minute before that verification, for clock skew with the server. */
		outbox_format_time((wall - 60000) * 1000 - PGO_EPOCH_OFFSET_USEC, t, sizeof(t));
		snprintf(resend, sizeof(resend),
		         "pgoutbox stops without confirming past its last good verification; rows inserted "
		         "since then into a table PostgreSQL does not publish are not in the stream: fix the "
		         "publication, re-send those rows with pgoutbox --replay --since '%s' and the same "
		         "settings (consumers de-duplicate by id), and restart", t);
		log_detail(LOG_ERROR, resend,
		           "%sthe configured outbox is not what PostgreSQL streams: %s; %s%s%s; %s", p->name, why,
		           p->verified_upto ? "verified good last up to " : "no verification succeeded in this run",
		           p->verified_upto ? lsn_text : "", p->verified_upto ? since : "", conf);
		set_health(p, "stopping: %.200s", why);
		return false;
	}
	{
		uint32_t *oids = NULL;
		int *tabs = NULL;

		if (cat->nparts > 0 && ((oids = malloc(cat->nparts * sizeof(*oids))) == NULL ||
		                        (tabs = malloc(cat->nparts * sizeof(*tabs))) == NULL)) {
			free(oids);
			log_msg(LOG_ERROR, "%sout of memory", p->name);
			return false;
		}
		for (size_t i = 0; i < cat->nparts; i++) {
			oids[i] = cat->parts[i].oid;
			tabs[i] = cat->parts[i].table;
		}
		ok = outbox_set_partitions(p->ob, oids, tabs, cat->nparts);
		free(oids);
		free(tabs);
		if (!ok) {
			log_msg(LOG_ERROR, "%sout of memory", p->name);
			return false;
		}
	}
	return true;
}

/* Begin or continue a verification on the side; act on its result. */
static void
verify(pipeline *p, int64_t now)
{
	source_catalog cat;
	char err[512];
	source_rc rc;

	rc = p->src->ops->verify(p->src, p->verify_oid, &cat, err, sizeof(err));
	if (rc == SOURCE_AGAIN) {
		p->verifying = true;
		return;
	}
	p->verifying = false;
	if (rc != SOURCE_OK) {
		if (strstr(err, "shutting down") != NULL && !p->server_stopping) {
			p->server_stopping = true;
			log_msg(LOG_INFO, "%sthe server is shutting down: confirming the walsender's position "
			        "without a verification once nothing is in flight, so that it can stop", p->name);
		}
		if (p->verify_failing_since == 0)
			p->verify_failing_since = now;
		snprintf(p->verify_error, sizeof(p->verify_error), "%s", err);
		if (now - p->verify_failing_since >= VERIFY_UNHEALTHY_MS)
			log_msg(LOG_WARNING, "%scould not verify the outbox tables for %d s (nothing new is "
			        "confirmed meanwhile): %s", p->name, (int) ((now - p->verify_failing_since) / 1000),
			        err);
		else
			log_msg(LOG_DEBUG, "%scould not verify the outbox tables: %s", p->name, err);
		p->next_verify_ms = now + p->verify_backoff_ms;
		p->verify_backoff_ms = p->verify_backoff_ms * 2 > VERIFY_RETRY_MAX_MS ? VERIFY_RETRY_MAX_MS
		                                                                     : p->verify_backoff_ms * 2;
		return;
	}
	p->verify_failing_since = 0;
	p->verify_error[0] = '\0';
	p->verify_backoff_ms = VERIFY_GAP_MS;
	p->next_verify_ms = now + VERIFY_GAP_MS;
	if (!judge(p, &cat)) {
		p->source_bad = true;
		pipeline_stop(p, 2, now);
		return;
	}
	if (cat.valid_from > p->verified_upto) {
		p->verified_upto = cat.valid_from;
		p->verified_wall_ms = wall_ms();
	}
	if (p->verify_oid != 0) {
		/* The relation asked about: a partition of ours is in the new
		 * partition list (judge); anything else is a neighbour. */
		if (!cat.asked_exists && !oid_has(&p->warned, p->verify_oid)) {
			(void) oid_add(&p->warned, p->verify_oid);
			log_msg(LOG_WARNING, "%srelation with OID %u in the stream no longer exists; its changes "
			        "are ignored as not an outbox table's (it is neither named as one nor a partition "
			        "of one now)", p->name, p->verify_oid);
		}
		if (!oid_add(&p->neighbours, p->verify_oid)) {
			log_msg(LOG_ERROR, "%sout of memory", p->name);
			pipeline_stop(p, 2, now);
			return;
		}
		p->verify_oid = 0;
	}
	/* A relation waiting for a verification is looked at again (and asks
	 * for one of its own if this one was not about it). */
	if (p->hold == HOLD_VERIFY)
		p->hold = HOLD_NONE;
}

/* ---------------------------------------------------------------------------
 * Kafka's reports
 * ------------------------------------------------------------------------- */

/* Queue a dead-letter copy that Kafka's queue had no room for. */
static bool
defer_dead_letter(pipeline *p, const sink_event *ev, uint64_t opaque)
{
	deferred *d = malloc(sizeof(*d));

	if (d == NULL || (d->ev = sink_event_dup(ev)) == NULL) {
		free(d);
		return false;
	}
	d->next = NULL;
	d->opaque = opaque;
	if (p->dlq_tail)
		p->dlq_tail->next = d;
	else
		p->dlq_head = d;
	p->dlq_tail = d;
	return true;
}

/* Produce the dead-letter copies that waited for room; false on a hard failure. */
static bool
flush_deferred(pipeline *p)
{
	sink_error err;

	while (p->dlq_head != NULL) {
		deferred *d = p->dlq_head;

		switch (sink_produce(p->snk, (unsigned) p->client, d->ev, d->opaque, &err)) {
		case SINK_OK:
			break;
		case SINK_FULL:
		case SINK_FATAL:   /* a rebuilt producer starts afresh without them */
			return true;
		case SINK_REFUSED:
			log_msg(LOG_ERROR, "%sKafka refused a copy for dead-letter topic \"%s\": %s", p->name,
			        p->dlq_topic, err.text);
			return false;
		}
		p->dlq_head = d->next;
		if (p->dlq_head == NULL)
			p->dlq_tail = NULL;
		free(d->ev);
		free(d);
	}
	return true;
}

/*
 * Kafka refused a message for good and on_error = dlq: produce its
 * dead-letter copy from here (the report still holds the original key, value
 * and headers).  The copy joins the same transaction in the ledger before
 * the refused message is acked, so the transaction is confirmed only once
 * the copy is acknowledged.  False when that cannot be done.
 */
static bool
dead_letter_refused(pipeline *p, ledger_seq seq, unsigned src, const sink_report *rep)
{
	const ledger_txn *t = ledger_get(&p->led, seq);
	sink_event ev;
	outbox_dlq_buf buf;
	sink_error err;
	const char *name;
	bool is_message;

	if (t == NULL || src == SOURCE_DLQ || src >= outbox_sources(p->ob))
		return false;
	memset(&ev, 0, sizeof(ev));
	ev.key = rep->key;
	ev.key_len = rep->key_len;
	ev.value = rep->value;
	ev.value_len = rep->value_len;
	ev.timestamp_ms = rep->timestamp_ms;
	ev.lsn = t->commit_lsn;
	ev.nheaders = rep->nheaders;
	memcpy(ev.headers, rep->headers, rep->nheaders * sizeof(ev.headers[0]));
	name = outbox_source_name(p->ob, src, &is_message);
	outbox_dead_letter(&ev, p->dlq_topic, rep->err.text, rep->topic, t->commit_lsn, is_message,
	                   name, rep->err.cls == SINK_CLASS_TOO_LARGE, &buf);
	if (ledger_add_to(&p->led, seq) != LEDGER_OK)
		return false;
	switch (sink_produce(p->snk, (unsigned) p->client, &ev, OPAQUE(seq, SOURCE_DLQ), &err)) {
	case SINK_OK:
		break;
	case SINK_FULL:
	case SINK_FATAL:
		if (!defer_dead_letter(p, &ev, OPAQUE(seq, SOURCE_DLQ))) {
			log_msg(LOG_ERROR, "%sout of memory keeping a dead-letter copy", p->name);
			return false;
		}
		break;
	case SINK_REFUSED:
		log_msg(LOG_ERROR, "%sKafka refused the copy for dead-letter topic \"%s\" too: %s", p->name,
		        p->dlq_topic, err.text);
		return false;
	}
	log_msg(LOG_WARNING, "%sevent %.*s of transaction at " LSN_FMT " sent to dead-letter topic "
	        "\"%s\": Kafka refused it for topic \"%s\": %s (%s)", p->name,
	        (int) rep->id_len, rep->id ? (const char *) rep->id : "(unknown)",
	        LSN_ARGS(t->commit_lsn), p->dlq_topic, rep->topic, rep->err.text, rep->err.name);
	p->dead_letters++;
	return true;
}

/* Kafka's verdict on one message of ours: the seam between sink and ledger. */
static void
on_report(void *ctx, uint64_t opaque, const sink_report *rep)
{
	pipeline *p = ctx;
	ledger_seq seq = OPAQUE_SEQ(opaque);
	unsigned src = OPAQUE_SRC(opaque);
	const ledger_txn *t;

	if (seq < p->stale_below)
		return;    /* of a previous producer or server: the slot has it again */
	if (rep->dropped) {
		/* Not in Kafka, nor anything after it: read it all again (in
		 * pipeline_serve, not from inside the sink's callback). */
		if (!p->restart_due)
			log_msg(LOG_INFO, "%sthe producer gave up events it had taken (%s): reading the stream "
			        "again from the slot's confirmed position", p->name, rep->err.text);
		p->restart_due = true;
		return;
	}
	if (rep->ok) {
		if (ledger_ack(&p->led, seq) != LEDGER_OK)
			log_msg(LOG_WARNING, "%sdelivery report for unknown transaction %" PRIu64, p->name, seq);
		p->acks++;
		if (src != SOURCE_DLQ) {
			p->st.events++;
			p->st.bytes += rep->bytes;
			if (rep->timestamp_ms >= 0)
				metrics_observe(&p->st.commit_to_ack, (double) (wall_ms() - rep->timestamp_ms) / 1000.0);
			if (rep->latency_us >= 0)
				metrics_observe(&p->st.produce_to_ack, (double) rep->latency_us / 1e6);
		}
		return;
	}
	if (rep->err.cls == SINK_CLASS_FATAL || sink_fatal(p->snk, NULL, 0))
		return;    /* the producer is being rebuilt; the slot still has it */
	metrics_count_error(&p->st, rep->err.name ? rep->err.name : "UNKNOWN");
	if (p->on_error_dlq && src != SOURCE_DLQ && dead_letter_refused(p, seq, src, rep)) {
		if (ledger_ack(&p->led, seq) != LEDGER_OK)
			log_msg(LOG_WARNING, "%sdelivery report for unknown transaction %" PRIu64, p->name, seq);
		return;
	}
	/* Never acknowledged: the ledger will not confirm past this transaction,
	 * so a restart re-reads it from the slot. */
	t = ledger_get(&p->led, seq);
	log_detail(LOG_ERROR,
	           p->on_error_dlq || src == SOURCE_DLQ
	           ? "pgoutbox stops without confirming past this transaction; fix the cause and restart"
	           : "pgoutbox stops without confirming past this transaction; fix the cause and restart, "
	             "or set on_error = dlq",
	           "%sKafka refused %sevent %.*s for topic \"%s\" (transaction at " LSN_FMT "): %s (%s)",
	           p->name, src == SOURCE_DLQ ? "the dead-letter copy of " : "",
	           (int) rep->id_len, rep->id ? (const char *) rep->id : "(unknown)", rep->topic,
	           LSN_ARGS(t ? t->commit_lsn : 0), rep->err.text, rep->err.name);
	/* Its report came: the drain waits for the others, not for this one. */
	p->refused++;
	pipeline_stop(p, 2, mono_ms());
}

/* ---------------------------------------------------------------------------
 * One CopyData message
 * ------------------------------------------------------------------------- */

static step_rc
protocol_error(pipeline *p, const pgo_copydata *cd, const char *what, const pgo_error *err)
{
	log_detail(LOG_ERROR, "pgoutbox stops without confirming past this position",
	           "%scould not decode %s at " LSN_FMT ": %s at byte %zu (%s)", p->name, what,
	           LSN_ARGS(cd ? cd->wal_start : p->received), pgo_rc_name(err->code),
	           err->offset, err->reason ? err->reason : "");
	return STEP_FAIL;
}

/*
 * pgoutbox never asks for streaming or two-phase decoding, because both send
 * changes before they commit.  If they arrive anyway, stop rather than risk
 * publishing a transaction that may still roll back.
 */
static step_rc
unexpected(pipeline *p, const pgo_copydata *cd, const pgo_msg *m, const char *what)
{
	log_detail(LOG_ERROR, "pgoutbox asks for neither; nothing past this position is confirmed",
	           "%sunexpected '%c' message at " LSN_FMT ": %s", p->name, (char) m->type,
	           LSN_ARGS(cd->wal_start), what);
	return STEP_FAIL;
}

/* The id of a (partial) event for messages: its first header when that is "id". */
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

/*
 * Hand one mapped (or unmappable) event to Kafka.  An event that cannot be
 * mapped, or that Kafka refuses at once, stops the pipeline (on_error =
 * stop) or goes to the dead-letter topic (on_error = dlq).  No side effect
 * when it returns STEP_HOLD.
 */
static step_rc
publish(pipeline *p, outbox_rc orc, sink_event *ev, unsigned src, const char *why)
{
	sink_error err;
	const char *name, *id;
	char reason[320];
	bool is_message, dlq = false;
	outbox_dlq_buf buf;
	uint64_t opaque = OPAQUE(p->txn_seq, src);
	int id_len;

	switch (orc) {
	case OUTBOX_IGNORE:
		return STEP_OK;
	case OUTBOX_NOMEM:
		log_msg(LOG_ERROR, "%s%s", p->name, why);
		return STEP_FAIL;
	case OUTBOX_EVENT:
		break;
	case OUTBOX_UNMAPPABLE:
		dlq = true;
		break;
	}
	if (!p->in_txn) {
		log_msg(LOG_ERROR, "%soutbox event outside a transaction in the replication stream", p->name);
		return STEP_FAIL;
	}
	event_id(ev, &id, &id_len);
	name = outbox_source_name(p->ob, src, &is_message);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (dlq) {
			if (!p->on_error_dlq) {
				log_detail(LOG_ERROR,
				           "pgoutbox stops without confirming past this transaction; fix the event or "
				           "the mapping and restart, or set on_error = dlq",
				           "%s%s event %.*s of transaction at " LSN_FMT " (%s %s): %s", p->name,
				           attempt == 0 ? "cannot map" : "cannot publish", id_len, id,
				           LSN_ARGS(p->txn.commit_lsn),
				           is_message ? "logical message prefix" : "table", name, why);
				return STEP_FAIL;
			}
			outbox_dead_letter(ev, p->dlq_topic, why, ev->topic, p->txn.commit_lsn, is_message,
			                   name, attempt == 1 && err.cls == SINK_CLASS_TOO_LARGE, &buf);
			opaque = OPAQUE(p->txn_seq, SOURCE_DLQ);
		}
		ev->lsn = p->txn.commit_lsn;
		switch (sink_produce(p->snk, (unsigned) p->client, ev, opaque, &err)) {
		case SINK_OK:
			goto produced;
		case SINK_FULL:
		case SINK_FATAL:       /* held until the producer is rebuilt */
			return STEP_HOLD;
		case SINK_REFUSED:
			if (dlq) {
				log_detail(LOG_ERROR, "pgoutbox stops without confirming past this transaction",
				           "%sKafka refused the copy of event %.*s (transaction at " LSN_FMT
				           ") for dead-letter topic \"%s\": %s (%s)", p->name, id_len, id,
				           LSN_ARGS(p->txn.commit_lsn), p->dlq_topic, err.text, err.name);
				return STEP_FAIL;
			}
			/* Refused at once (too large, unknown topic): the same policy
			 * as an unmappable event, with Kafka's reason. */
			metrics_count_error(&p->st, err.name ? err.name : "UNKNOWN");
			snprintf(reason, sizeof(reason), "Kafka refused it for topic \"%s\": %s (%s)",
			         ev->topic, err.text, err.name);
			why = reason;
			dlq = true;
			break;
		}
	}
	return STEP_FAIL;     /* not reached: the second attempt is a dead letter */

produced:
	if (ledger_add(&p->led, p->txn_seq) != LEDGER_OK) {
		log_msg(LOG_ERROR, "%sinternal error: could not record an in-flight message", p->name);
		return STEP_FAIL;
	}
	if (dlq) {
		log_msg(LOG_WARNING, "%sevent %.*s of transaction at " LSN_FMT " sent to dead-letter topic "
		        "\"%s\": %s", p->name, id_len, id, LSN_ARGS(p->txn.commit_lsn), p->dlq_topic, why);
		p->dead_letters++;
	} else {
		p->events++;
		if (p->test_fatal_after && p->events == p->test_fatal_after)
			sink_test_fatal(p->snk);
	}
	/* Once per transaction with events: how long it took PostgreSQL to send it. */
	if (p->txn_received_us != 0) {
		metrics_observe(&p->st.commit_to_receive,
		                (double) (p->txn_received_us - (p->txn.commit_time + PGO_EPOCH_OFFSET_USEC)) / 1e6);
		p->txn_received_us = 0;
	}
	return STEP_OK;
}

/*
 * A Relation message: is it one of ours?  By name (or as a known partition)
 * it is; a relation the stream showed as ours before under another name was
 * renamed, which pgoutbox does not follow; a relation verified to be a
 * neighbour is not; anything else is identified on the side connection
 * first (a partition attached since the last verification), holding the
 * stream meanwhile.
 */
static step_rc
handle_relation(pipeline *p, const pgo_relation *rel, int64_t now)
{
	int table;
	size_t nt = outbox_tables(p->ob);

	if (!outbox_relation(p->ob, rel, &table)) {
		log_msg(LOG_ERROR, "%sout of memory resolving relation %s.%s", p->name, rel->nspname,
		        rel->relname);
		return STEP_FAIL;
	}
	if (table >= 0) {
		if (!oid_add(&p->ours, rel->oid)) {
			log_msg(LOG_ERROR, "%sout of memory", p->name);
			return STEP_FAIL;
		}
		/* The stream names the table, but with another OID than the
		 * catalog has now: it was re-created since these changes. */
		if ((size_t) table < nt && p->table_oid[table] != 0 && p->table_oid[table] != rel->oid &&
		    !oid_has(&p->warned, rel->oid)) {
			const char *nsp, *relname;
			bool msg;

			outbox_table_ident(p->ob, (size_t) table, &nsp, &relname);
			if (strcmp(nsp, rel->nspname) == 0 && strcmp(relname, rel->relname) == 0) {
				(void) oid_add(&p->warned, rel->oid);
				log_detail(LOG_WARNING, "its rows streamed from before the change are delivered as "
				           "usual; if rows were inserted into the new table before it was added to "
				           "the publication, they are not in the stream: re-send them",
				           "%sthe stream shows outbox table %s as OID %u, the catalog now as OID %u: "
				           "the table was re-created", p->name,
				           outbox_source_name(p->ob, (unsigned) table, &msg), rel->oid,
				           p->table_oid[table]);
			}
		}
		return STEP_OK;
	}
	if (oid_has(&p->ours, rel->oid)) {
		log_detail(LOG_ERROR, "pgoutbox stops without confirming past this position; set table to "
		           "the new name (or rename it back) and restart",
		           "%san outbox table was renamed: the stream now names relation %u \"%s.%s\"",
		           p->name, rel->oid, rel->nspname, rel->relname);
		return STEP_FAIL;
	}
	for (size_t i = 0; i < nt; i++)
		if (p->table_oid[i] == rel->oid) {
			bool msg;
			log_detail(LOG_ERROR, "pgoutbox stops without confirming past this position; set table "
			           "to the name the stream uses and restart",
			           "%soutbox table %s (OID %u) appears in the stream as \"%s.%s\"", p->name,
			           outbox_source_name(p->ob, (unsigned) i, &msg), rel->oid, rel->nspname,
			           rel->relname);
			return STEP_FAIL;
		}
	if (oid_has(&p->neighbours, rel->oid))
		return STEP_OK;
	/* Unknown: identify it before anything of it is read. */
	if (!p->verifying) {
		p->verify_oid = rel->oid;
		verify(p, now);
		if (p->stopping)
			return STEP_FAIL;
		if (oid_has(&p->neighbours, rel->oid))
			return STEP_OK;
		if (!outbox_relation(p->ob, rel, &table))
			return STEP_FAIL;
		if (table >= 0)
			return handle_relation(p, rel, now);
	}
	return STEP_HOLD;
}

static step_rc
step(pipeline *p, const uint8_t *buf, size_t len, hold_reason *why, int64_t now)
{
	pgo_copydata cd;
	pgo_msg m;
	pgo_error err;
	sink_event ev;
	char ebuf[512];
	unsigned src = 0;
	outbox_rc orc;
	step_rc rc = STEP_OK;

	if (pgo_decode_copydata(buf, len, &cd, &err) != PGO_OK)
		return protocol_error(p, NULL, "replication message", &err);

	if (cd.wal_end > p->server_wal_end)
		p->server_wal_end = cd.wal_end;
	if (cd.kind == PGO_COPY_KEEPALIVE) {
		if (cd.wal_end > p->received)
			p->received = cd.wal_end;
		/* Everything up to wal_end was sent to us: once nothing is in
		 * flight it is all delivered, so an idle outbox does not pin WAL. */
		ledger_sent_position(&p->led, cd.wal_end);
		if (cd.reply_requested)
			p->reply_due = true;
		return STEP_OK;
	}

	if (pgo_decode_message(p->dec, cd.data.ptr, cd.data.len, &m, &err) != PGO_OK)
		return protocol_error(p, &cd, "pgoutput message", &err);
	if (m.has_xid)
		return unexpected(p, &cd, &m, "a change of a streamed, uncommitted transaction");

	switch (m.type) {
	case PGO_MSG_BEGIN:
		if (p->in_txn) {
			log_msg(LOG_ERROR, "%sBEGIN inside a transaction at " LSN_FMT, p->name,
			        LSN_ARGS(cd.wal_start));
			return STEP_FAIL;
		}
		if (ledger_begin(&p->led, m.u.begin.final_lsn, m.u.begin.commit_time, &p->txn_seq) !=
		    LEDGER_OK || p->txn_seq > MAX_SEQ) {
			log_msg(LOG_ERROR, "%sout of memory recording a transaction", p->name);
			return STEP_FAIL;
		}
		p->in_txn = true;
		p->txn_received_us = wall_us();
		p->txn.commit_lsn = m.u.begin.final_lsn;
		p->txn.commit_time = m.u.begin.commit_time;
		p->txn.xid = m.u.begin.xid;
		break;
	case PGO_MSG_COMMIT:
		if (!p->in_txn || ledger_commit(&p->led, m.u.commit.end_lsn) != LEDGER_OK) {
			log_msg(LOG_ERROR, "%sCOMMIT without BEGIN at " LSN_FMT, p->name, LSN_ARGS(cd.wal_start));
			return STEP_FAIL;
		}
		sink_txn_end(p->snk, (unsigned) p->client, m.u.commit.end_lsn);
		p->in_txn = false;
		p->txns++;
		break;
	case PGO_MSG_INSERT:
		orc = outbox_map_insert(p->ob, m.u.insert.rel, &m.u.insert.newtup, &p->txn, &ev, &src,
		                        ebuf, sizeof(ebuf));
		rc = publish(p, orc, &ev, src, ebuf);
		*why = HOLD_FULL;
		break;
	case PGO_MSG_MESSAGE:
		/* Transactional messages come between Begin and Commit; others are
		 * sent at once, whether or not their transaction commits: never events. */
		if (!(m.u.message.flags & PGO_MESSAGE_TRANSACTIONAL) || !p->in_txn)
			break;
		orc = outbox_map_message(p->ob, m.u.message.flags, m.u.message.prefix, m.u.message.content,
		                         &p->txn, &ev, &src, ebuf, sizeof(ebuf));
		rc = publish(p, orc, &ev, src, ebuf);
		*why = HOLD_FULL;
		break;
	case PGO_MSG_RELATION:
		rc = handle_relation(p, m.u.relation.rel, now);
		*why = HOLD_VERIFY;
		break;
	case PGO_MSG_STREAM_START:
	case PGO_MSG_STREAM_STOP:
	case PGO_MSG_STREAM_COMMIT:
	case PGO_MSG_STREAM_ABORT:
	case PGO_MSG_STREAM_PREPARE:
		return unexpected(p, &cd, &m, "streaming of in-progress transactions");
	case PGO_MSG_BEGIN_PREPARE:
	case PGO_MSG_PREPARE:
	case PGO_MSG_COMMIT_PREPARED:
	case PGO_MSG_ROLLBACK_PREPARED:
		return unexpected(p, &cd, &m, "two-phase decoding");
	default:
		/* Type messages feed the decoder's cache; Origin, updates,
		 * deletes and truncates are not outbox events. */
		break;
	}
	if (rc != STEP_OK)
		return rc;
	if (cd.wal_start > p->received)
		p->received = cd.wal_start;
	return STEP_OK;
}

/* ---------------------------------------------------------------------------
 * Connecting, reading
 * ------------------------------------------------------------------------- */

/* A session began: the server's view is the truth from now on. */
static bool
session_started(pipeline *p, const source_session *ss, int64_t now)
{
	bool other = p->have_server && (ss->system_id != p->system_id || ss->timeline != p->timeline);

	/* Nothing of an earlier session is fed to this one. */
	drop_held(p);
	p->in_txn = false;
	pgo_decoder_free(p->dec);
	p->dec = pgo_decoder_new(ss->proto_version);
	outbox_forget_relations(p->ob);
	oid_clear(&p->ours);
	oid_clear(&p->neighbours);
	if (p->dec == NULL || !outbox_set_database(p->ob, ss->database)) {
		log_msg(LOG_ERROR, "%sout of memory", p->name);
		return false;
	}
	if (other)
		log_detail(LOG_WARNING, "nothing pgoutbox learnt from the previous server is confirmed to "
		           "this one; the stream resumes from this server's slot",
		           "%sconnected to another server: %s (system %" PRIu64 ", timeline %u) instead of "
		           "system %" PRIu64 " timeline %u; its slot is confirmed up to " LSN_FMT ", pgoutbox "
		           "had confirmed " LSN_FMT " on the previous one", p->name, ss->host, ss->system_id,
		           ss->timeline, p->system_id, p->timeline, LSN_ARGS(ss->slot_confirmed),
		           LSN_ARGS(p->reported));
	if (!p->have_server || other) {
		/* Start from this server's slot: in-flight events of the old
		 * stream are not confirmed here (their reports are ignored). */
		ledger_rebase(&p->led, ss->slot_confirmed);
		p->stale_below = p->led.head_seq;
		p->reported = ss->slot_confirmed;
		p->received = ss->slot_confirmed;
		p->verified_upto = 0;
		p->server_wal_end = 0;
		memset(p->table_oid, 0, sizeof(p->table_oid));
		if (p->cl != NULL)
			cleanup_reset(p->cl);
	}
	p->have_server = true;
	snprintf(p->database, sizeof(p->database), "%s", ss->database ? ss->database : "");
	p->server_stopping = false;
	p->verify_failing_since = 0;
	p->system_id = ss->system_id;
	p->timeline = ss->timeline;
	snprintf(p->host, sizeof(p->host), "%s", ss->host ? ss->host : "");
	p->sender_timeout_ms = ss->sender_timeout_ms;
	if (ss->wal_end > p->server_wal_end)
		p->server_wal_end = ss->wal_end;
	if (p->reported > p->server_wal_end) {
		/* The same system and timeline, but less WAL than we confirmed
		 * (a restore?): never claim past what the server has. */
		log_msg(LOG_WARNING, "%sthe server's WAL ends at " LSN_FMT ", before the position "
		        "pgoutbox confirmed (" LSN_FMT ")", p->name, LSN_ARGS(p->server_wal_end),
		        LSN_ARGS(p->reported));
	}
	if (!judge(p, ss->catalog))
		return false;
	p->verified_upto = ss->catalog->valid_from;
	p->verified_wall_ms = wall_ms();
	p->next_verify_ms = now + VERIFY_GAP_MS;
	p->verify_backoff_ms = VERIFY_GAP_MS;
	{
		sink_origin o = {.system_id = ss->system_id, .timeline = ss->timeline, .slot = p->slot};
		sink_session(p->snk, (unsigned) p->client, &o);
	}
	return true;
}

static void
try_connect(pipeline *p, int64_t now)
{
	char err[1024];
	source_session ss;
	source_rc rc = p->src->ops->start(p->src, &ss, err, sizeof(err));

	if (rc == SOURCE_AGAIN) {
		p->connecting = true;
		return;
	}
	p->connecting = false;
	if (rc == SOURCE_OK) {
		if (!session_started(p, &ss, now)) {
			p->src->ops->close(p->src);
			pipeline_stop(p, 2, now);
			return;
		}
		log_msg(LOG_INFO, "%sstreaming from slot \"%s\" on %s (publication \"%s\", protocol %d%s) to "
		        "Kafka, from " LSN_FMT, p->name, p->slot, ss.host, p->publication, ss.proto_version,
		        ss.in_recovery ? ", a standby" : "", LSN_ARGS(ss.slot_confirmed));
		p->in_session = true;
		p->backoff_ms = BACKOFF_MIN_MS;
		p->last_status_ms = 0;     /* report our position right away */
		p->last_recv_ms = now;
		p->ping_sent = false;
		p->busy_logged = false;
		p->st.health[0] = '\0';
		return;
	}
	if (rc == SOURCE_FATAL) {
		if (is_slot_gone(err))
			slot_gone(p, err);
		else
			log_msg(LOG_ERROR, "%s%s", p->name, err);
		set_health(p, "stopping: %.200s", err);
		pipeline_stop(p, 2, now);
		return;
	}
	if (rc == SOURCE_BUSY) {
		/* Another pgoutbox holds the slot: stand by and take over quickly
		 * once it is gone, without the growing back-off. */
		if (!p->busy_logged)
			log_msg(LOG_INFO, "%s%s; standing by, retrying every %d ms", p->name, err,
			        SLOT_BUSY_RETRY_MS);
		set_health(p, "standing by: %.200s", err);
		p->busy_logged = true;
		p->next_connect_ms = now + SLOT_BUSY_RETRY_MS;
		return;
	}
	if (p->src->ops->next_host != NULL && p->src->ops->next_host(p->src)) {
		/* Another host of the list (a promoted standby?) is asked at
		 * once; the back-off grows only after a whole round failed. */
		log_msg(LOG_WARNING, "%s%s; trying the next host", p->name, err);
		set_health(p, "not streaming: %s", err);
		p->next_connect_ms = now;
		return;
	}
	stream_lost(p, err, now);
}

/*
 * Read and act on what the walsender sent, up to a budget.  When the budget
 * runs out, libpq may hold whole messages that poll() cannot see:
 * more_input tells the loop not to sleep.
 */
static void
read_stream(pipeline *p, int64_t now)
{
	char err[1024];

	for (int budget = READ_BUDGET; !p->stopping; budget--) {
		uint8_t *buf;
		size_t len;
		step_rc rc;
		hold_reason why = HOLD_FULL;

		if (budget == 0) {
			p->more_input = true;
			return;
		}
		if (p->held != NULL) {
			buf = p->held;
			len = p->held_len;
			p->held = NULL;
			p->hold = HOLD_NONE;
		} else {
			source_rc src = p->src->ops->read(p->src, &buf, &len, err, sizeof(err));
			if (src == SOURCE_AGAIN) {
				if (p->server_wal_end > p->received + BEHIND_BYTES)
					p->nap_until_us = mono_us() + NAP_US;
				sink_idle(p->snk, (unsigned) p->client, false);
				return;
			}
			if (src == SOURCE_FATAL) {
				if (is_slot_gone(err))
					slot_gone(p, err);
				else
					log_msg(LOG_ERROR, "%s%s", p->name, err);
				p->in_session = false;
				pipeline_stop(p, 2, now);
				return;
			}
			if (src != SOURCE_OK) {
				stream_lost(p, err, now);
				return;
			}
			p->last_recv_ms = now;
			p->ping_sent = false;
		}
		rc = step(p, buf, len, &why, now);
		if (rc == STEP_HOLD) {
			p->held = buf;
			p->held_len = len;
			p->hold = why;
			p->hold_retry_ms = now + HOLD_RETRY_MS;
			if (why == HOLD_FULL) {
				if (p->backpressure_since_ms == 0)
					p->backpressure_since_ms = now;
				if (!p->backpressure_logged) {
					log_msg(LOG_INFO, "%sKafka's producer queue is full: pausing the replication "
					        "stream", p->name);
					p->backpressure_logged = true;
				}
			}
			return;
		}
		p->src->ops->release(p->src, buf);
		end_backpressure(p, now);
		if (rc == STEP_FAIL) {
			pipeline_stop(p, 2, now);
			return;
		}
	}
}

/*
 * Detect a silent connection (a network that drops packets, a frozen
 * server): ask for a reply after half the replication timeout without a
 * message, give up on the stream after the whole timeout.  Silence proves
 * nothing while pgoutbox itself does not read (a held message, dead-letter
 * copies waiting for room).
 */
static void
check_liveness(pipeline *p, int64_t now)
{
	char why[128];

	if (p->replication_timeout_ms == 0 || p->stopping || !p->src->ops->streaming(p->src))
		return;
	if (p->held != NULL || p->dlq_head != NULL) {
		p->last_recv_ms = now;
		return;
	}
	if (now - p->last_recv_ms >= p->replication_timeout_ms) {
		snprintf(why, sizeof(why), "no message from the server for %d s",
		         (int) (p->replication_timeout_ms / 1000));
		stream_lost(p, why, now);
	} else if (now - p->last_recv_ms >= p->replication_timeout_ms / 2 && !p->ping_sent) {
		send_status(p, now, true);
		p->ping_sent = true;
	}
}

/*
 * Kafka may refuse us for good without an error that stops anything (a
 * wrong SASL password, an untrusted certificate, a broker that accepts
 * connections but never answers): librdkafka retries forever, the WAL
 * waits in the slot, and nothing else would show it.  When events have
 * waited kafka_stall_timeout with no acknowledgement at all, say so once
 * and make /healthz answer 503 with librdkafka's last error, until one
 * comes.  A message held for lack of room counts as waiting too.
 */
static void
check_kafka_stall(pipeline *p, int64_t now)
{
	uint64_t pending = ledger_pending(&p->led) + (p->hold == HOLD_FULL ? 1 : 0);
	int64_t since;
	bool stalled;

	if (p->acks != p->acked_seen) {
		p->acked_seen = p->acks;
		p->last_ack_ms = now;
	}
	if (pending == 0)
		p->waiting_since_ms = 0;
	else if (p->waiting_since_ms == 0)
		p->waiting_since_ms = now;
	since = p->waiting_since_ms > p->last_ack_ms ? p->waiting_since_ms : p->last_ack_ms;
	stalled = p->stall_ms > 0 && pending > 0 && now - since >= p->stall_ms;
	if (stalled) {
		const char *why = sink_last_error(p->snk);

		if (!p->st.kafka_stalled)
			log_detail(LOG_WARNING, "nothing is confirmed to PostgreSQL meanwhile; the WAL waits in the slot",
			           "%sKafka has acknowledged nothing for %d s while %" PRIu64 " events wait%s%.200s",
			           p->name, (int) ((now - since) / 1000), pending, why[0] ? "; last Kafka error: " : "",
			           why);
		if (p->st.streaming)
			set_health(p, "Kafka has acknowledged nothing for %d s while %" PRIu64 " events wait%s%.150s",
			           (int) ((now - since) / 1000), pending, why[0] ? "; last Kafka error: " : "", why);
	} else if (p->st.kafka_stalled) {
		log_msg(LOG_INFO, "%sKafka acknowledges events again", p->name);
		if (p->st.streaming)
			p->st.health[0] = '\0';
	}
	p->st.kafka_stalled = stalled;
}

/* ---------------------------------------------------------------------------
 * The interface
 * ------------------------------------------------------------------------- */

pipeline *
pipeline_new(const pipeline_config *cfg, source *src, sink *snk, char *errbuf, size_t errlen)
{
	pipeline *p = calloc(1, sizeof(*p));
	rows_reader *reader = cfg->backfill;   /* owned until the backfill takes it */
	rows_cleaner *cleaner = cfg->cleaner;  /* likewise, until the cleanup takes it */
	size_t nlen;

	if (p == NULL) {
		source_free(src);
		if (reader != NULL)
			reader->ops->destroy(reader);
		if (cleaner != NULL)
			cleaner->ops->destroy(cleaner);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	p->src = src;
	nlen = strlen(cfg->name ? cfg->name : "") + 3;
	if ((p->name = malloc(nlen)) == NULL || (p->slot = strdup(cfg->slot)) == NULL ||
	    (p->publication = strdup(cfg->publication)) == NULL ||
	    (p->dlq_topic = strdup(cfg->dlq_topic ? cfg->dlq_topic : "")) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto error;
	}
	snprintf(p->name, nlen, "%s%s", cfg->name ? cfg->name : "", cfg->name && cfg->name[0] ? ": " : "");
	if ((p->source_name = strdup(cfg->name ? cfg->name : "")) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto error;
	}
	if ((p->ob = outbox_new(cfg->outbox, errbuf, errlen)) == NULL)
		goto error;
	p->on_error_dlq = cfg->on_error_dlq;
	p->status_interval_ms = cfg->status_interval_ms;
	p->replication_timeout_ms = (int64_t) cfg->replication_timeout_s * 1000;
	p->stall_ms = (int64_t) cfg->kafka_stall_timeout_s * 1000;
	p->shutdown_timeout_s = cfg->shutdown_timeout_s;
	p->endpos = cfg->endpos;
	p->test_fatal_after = cfg->test_fatal_after;
	p->backoff_ms = BACKOFF_MIN_MS;
	p->verify_backoff_ms = VERIFY_GAP_MS;
	ledger_init(&p->led, 0);
	set_health(p, "connecting to PostgreSQL");
	if (!pipeline_attach(p, snk)) {
		snprintf(errbuf, errlen, "too many pipelines for one producer (at most %d)", SINK_MAX_CLIENTS);
		goto error;
	}
	if (reader != NULL) {
		backfill_config bc = {
			.name = p->name, .outbox = cfg->outbox, .on_error_dlq = cfg->on_error_dlq,
			.dlq_topic = cfg->dlq_topic, .replay = cfg->replay,
			.resume_table = cfg->resume_table, .resume_key = cfg->resume_key,
		};
		p->bf = backfill_new(&bc, reader, snk, &p->st, errbuf, errlen);
		reader = NULL;
		if (p->bf == NULL)
			goto error;
		p->replay = cfg->replay;
		set_health(p, "%s", cfg->replay ? "replaying the outbox table(s)" : "backfilling");
	}
	if (cleaner != NULL) {
		cleanup_config cc = {
			.name = p->name, .ntables = outbox_tables(p->ob), .batch = cfg->cleanup_batch,
			.interval_ms = cfg->cleanup_interval_ms,
		};
		p->cl = cleanup_new(&cc, cleaner, &p->st);
		cleaner = NULL;
		if (p->cl == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			goto error;
		}
	}
	return p;

error:
	if (reader != NULL)
		reader->ops->destroy(reader);
	if (cleaner != NULL)
		cleaner->ops->destroy(cleaner);
	pipeline_free(p);
	return NULL;
}

void
pipeline_free(pipeline *p)
{
	if (p == NULL)
		return;
	if (p->src != NULL) {
		drop_held(p);
		source_free(p->src);
	}
	backfill_free(p->bf);
	cleanup_free(p->cl);
	free_deferred(p);
	outbox_free(p->ob);
	pgo_decoder_free(p->dec);
	ledger_free(&p->led);
	oid_free(&p->ours);
	oid_free(&p->neighbours);
	oid_free(&p->warned);
	free(p->name);
	free(p->source_name);
	free(p->slot);
	free(p->publication);
	free(p->dlq_topic);
	free(p);
}

bool
pipeline_attach(pipeline *p, sink *snk)
{
	int c = sink_attach(snk, on_report, p);

	if (c < 0)
		return false;
	p->snk = snk;
	p->client = c;
	return true;
}

/*
 * What was in flight is gone (the producer is replaced, or the sink dropped
 * it): forget it (the slot still has it), close the stream, and reconnect
 * at once to read it again.
 */
static void
restart_stream(pipeline *p, int64_t now)
{
	if (p->bf != NULL) {
		backfill_sink_lost(p->bf);
		pipeline_stop(p, 2, now);
		return;
	}
	if (p->src->ops->streaming(p->src))
		send_status(p, now, false);        /* keep what was acknowledged */
	p->src->ops->close(p->src);
	p->connecting = false;
	p->in_session = false;
	drop_held(p);
	p->in_txn = false;
	free_deferred(p);          /* dead-letter copies of the old stream */
	p->backpressure_logged = false;
	ledger_reset(&p->led);
	p->refused = 0;
	p->stale_below = p->led.head_seq;
	p->next_connect_ms = now;
}

void
pipeline_sink_lost(pipeline *p)
{
	restart_stream(p, mono_ms());
}

int
pipeline_pollfds(pipeline *p, struct pollfd *pfd, int max)
{
	int n;

	if (p->finished)
		return 0;
	if (p->bf != NULL)
		return backfill_pollfds(p->bf, pfd, max);
	n = p->src->ops->pollfds(p->src, pfd, max);
	/*
	 * Not reading: watch for the server going away only.  A walsender that
	 * exits closes its end (FIN): without POLLIN that shows as POLLRDHUP,
	 * not POLLHUP, and nothing would notice until reading resumed.
	 */
	if (n > 0 && p->src->ops->streaming(p->src) &&
	    (p->held != NULL || p->stopping || p->nap_until_us != 0)) {
		pfd[0].events &= (short) ~POLLIN;
#ifdef POLLRDHUP
		pfd[0].events |= POLLRDHUP;
#endif
	}
	if (p->cl != NULL && !p->stopping && n < max)
		n += cleanup_pollfds(p->cl, pfd + n, max - n);
	return n;
}

/*
 * The backfill phase: nothing streams meanwhile.  Once every backfilled
 * event is acknowledged the pipeline streams from the slot (or, for a
 * replay, stops); a failed or interrupted backfill stops it and leaves its
 * last words to pipeline_finish().
 */
static void
serve_backfill(pipeline *p, int64_t now)
{
	backfill_serve(p->bf, now);
	p->st.in_flight = backfill_pending(p->bf);
	p->st.streaming = false;
	switch (backfill_state_of(p->bf)) {
	case BACKFILL_RUNNING:
		if (!p->stopping)
			set_health(p, "%s: %" PRIu64 " of %" PRIu64 " rows acknowledged",
			           p->replay ? "replaying the outbox table(s)" : "backfilling",
			           p->st.backfill_acked, p->st.backfill_expected);
		return;
	case BACKFILL_DONE:
		backfill_finish(p->bf);
		backfill_free(p->bf);
		p->bf = NULL;
		if (p->replay) {
			pipeline_stop(p, 0, now);
			set_health(p, "stopping: the replay is complete");
		} else {
			set_health(p, "connecting to PostgreSQL");
			p->next_connect_ms = now;
		}
		return;
	case BACKFILL_FAILED:
		pipeline_stop(p, 2, now);
		set_health(p, "stopping: the backfill failed");
		return;
	case BACKFILL_STOPPED:
		return;
	}
}

void
pipeline_serve(pipeline *p, const struct pollfd *pfd, int n, int64_t now)
{
	uint64_t confirmable;
	bool streaming;

	if (p->finished)
		return;
	if (p->bf != NULL) {
		(void) pfd;
		(void) n;
		serve_backfill(p, now);
		if (p->bf != NULL || p->stopping)
			return;
	}
	p->src->ops->events(p->src, pfd, n);
	if (p->restart_due) {
		p->restart_due = false;
		restart_stream(p, now);
	}
	if (p->in_session && !p->src->ops->streaming(p->src)) {
		/* The source found the connection broken (a hang-up while not
		 * reading): its reason comes with the next read. */
		char err[512];
		uint8_t *buf;
		size_t len;

		if (p->src->ops->read(p->src, &buf, &len, err, sizeof(err)) == SOURCE_OK)
			p->src->ops->release(p->src, buf);
		stream_lost(p, err, now);
	}
	if (p->dlq_head != NULL && !flush_deferred(p))
		pipeline_stop(p, 2, now);

	if (!p->stopping && !p->src->ops->streaming(p->src) &&
	    (p->connecting || now >= p->next_connect_ms))
		try_connect(p, now);
	streaming = p->src->ops->streaming(p->src);
	p->more_input = false;
	if (streaming && p->verifying && !p->source_bad)
		verify(p, now);
	/* A message held for Kafka's room is tried again on every turn (a
	 * delivery report may have made room); dead-letter copies go first; a
	 * relation being identified waits for its verification. */
	if (!p->stopping && streaming && p->dlq_head == NULL && p->hold != HOLD_VERIFY &&
	    (p->nap_until_us == 0 || mono_us() >= p->nap_until_us)) {
		p->nap_until_us = 0;
		read_stream(p, now);
	}
	streaming = p->src->ops->streaming(p->src);

	/* Verify when there is something new to confirm (and at the end). */
	confirmable = ledger_confirmable(&p->led);
	if (streaming && !p->verifying && !p->source_bad && confirmable > p->verified_upto &&
	    now >= p->next_verify_ms && (!p->stopping || ledger_pending(&p->led) == 0)) {
		p->verify_oid = 0;
		verify(p, now);
	}
	if (streaming &&
	    (p->reply_due || now - p->last_status_ms >= status_interval(p) ||
	     (flush_position(p) != p->reported && now - p->last_status_ms >= STATUS_MIN_GAP_MS)))
		send_status(p, now, false);
	check_liveness(p, now);
	streaming = p->src->ops->streaming(p->src);
	if (p->cl != NULL && streaming && !p->stopping)
		cleanup_serve(p->cl, now);

	if (p->endpos && p->reported >= p->endpos && !p->stopping) {
		log_msg(LOG_INFO, "%sreached end position " LSN_FMT, p->name, LSN_ARGS(p->endpos));
		pipeline_stop(p, 0, now);
	}

	/* What /metrics and /healthz show. */
	p->st.in_flight = ledger_pending(&p->led);
	p->st.streaming = streaming && !p->stopping;
	check_kafka_stall(p, now);
	p->st.backpressure_seconds = p->backpressure_done_s +
		(p->backpressure_since_ms ? (double) (now - p->backpressure_since_ms) / 1000.0 : 0);
	p->st.received_lsn = p->received;
	p->st.confirmed_lsn = p->reported;
	p->st.server_wal_end = p->server_wal_end;
	p->st.txns = p->txns;
	if (p->st.streaming && p->verify_failing_since != 0 &&
	    now - p->verify_failing_since >= VERIFY_UNHEALTHY_MS)
		set_health(p, "cannot verify the outbox tables for %d s (nothing new is confirmed): %.150s",
		           (int) ((now - p->verify_failing_since) / 1000), p->verify_error);
	else if (p->st.streaming && !p->st.kafka_stalled && p->verify_failing_since == 0 &&
	         strncmp(p->st.health, "cannot verify", 13) == 0)
		p->st.health[0] = '\0';
	if (p->stopping && p->st.health[0] == '\0')
		set_health(p, "stopping");
	else if (!p->st.streaming && p->st.health[0] == '\0')
		set_health(p, "connecting to PostgreSQL");
}

int64_t
pipeline_deadline(pipeline *p, int64_t now)
{
	int64_t due = now + 1000;
	int64_t d;

	if (p->finished)
		return now + 60000;
	if (p->bf != NULL) {
		d = backfill_deadline(p->bf, now);
		return p->stopping && p->drain_deadline_ms < d ? p->drain_deadline_ms : d;
	}
	if (p->more_input && p->held == NULL)
		return now;
	if (p->src->ops->streaming(p->src)) {
		d = p->last_status_ms + (p->reported != ledger_confirmable(&p->led)
		                         ? STATUS_MIN_GAP_MS : status_interval(p));
		if (d < due)
			due = d;
		if (ledger_confirmable(&p->led) > p->verified_upto && !p->verifying &&
		    p->next_verify_ms < due)
			due = p->next_verify_ms;
		if (p->held != NULL && p->hold == HOLD_FULL && p->hold_retry_ms < due)
			due = p->hold_retry_ms;
		if (p->replication_timeout_ms > 0) {
			d = p->last_recv_ms + (p->ping_sent ? p->replication_timeout_ms
			                                    : p->replication_timeout_ms / 2);
			if (d < due)
				due = d;
		}
	} else if (!p->stopping && !p->connecting && p->next_connect_ms < due) {
		due = p->next_connect_ms;
	}
	if (p->dlq_head != NULL && now + HOLD_RETRY_MS < due)
		due = now + HOLD_RETRY_MS;
	d = p->src->ops->deadline(p->src);
	if (d >= 0 && d < due)
		due = d;
	if (p->cl != NULL && !p->stopping && p->src->ops->streaming(p->src) &&
	    (d = cleanup_deadline(p->cl, now)) < due)
		due = d;
	if (p->stopping && p->drain_deadline_ms < due)
		due = p->drain_deadline_ms;
	return due;
}

bool
pipeline_done(pipeline *p, int64_t now)
{
	if (p->finished)
		return true;
	if (!p->stopping)
		return false;
	if (now >= p->drain_deadline_ms)
		return true;
	if (p->bf != NULL)
		return backfill_state_of(p->bf) != BACKFILL_RUNNING;
	if (ledger_pending(&p->led) > p->refused || p->dlq_head != NULL)
		return false;
	/* Drained: one last verification, so that the final status confirms
	 * everything acknowledged (not when the stream or the source failed). */
	if (p->exit_code == 0 && p->src->ops->streaming(p->src) &&
	    ledger_confirmable(&p->led) > p->verified_upto &&
	    (p->verifying || p->verify_failing_since == 0))
		return false;
	return true;
}

void
pipeline_finish(pipeline *p)
{
	char err[512], pos[320];
	uint64_t pending = ledger_pending(&p->led);

	/* Refused events had their report: not part of a timeout. */
	pending = pending > p->refused ? pending - p->refused : 0;
	if (p->finished)
		return;
	p->finished = true;
	if (p->bf != NULL) {
		backfill_finish(p->bf);
		p->st.backfill_active = false;
		p->src->ops->close(p->src);
		return;
	}
	if (p->stopping && pending > 0) {
		if (p->slot_lost)
			log_msg(LOG_WARNING, "%s%" PRIu64 " events were not acknowledged by Kafka in time; "
			        "the slot is gone, so they will NOT be sent again by a restart: they belong to "
			        "the gap described above", p->name, pending);
		else
			log_msg(LOG_WARNING, "%sshutdown timeout: %" PRIu64 " events not acknowledged by Kafka; "
			        "nothing past them is confirmed, so they will be sent again after restart",
			        p->name, pending);
	}
	if (p->src->ops->streaming(p->src)) {
		/* End the COPY and wait (bounded) for the server to end it too: it
		 * answers only after processing our last status update, so the
		 * slot shows the confirmed position once pgoutbox has exited. */
		send_status(p, mono_ms(), false);
		if (p->src->ops->streaming(p->src) &&
		    p->src->ops->finish(p->src, FINISH_TIMEOUT_MS, err, sizeof(err)) != SOURCE_OK)
			log_msg(LOG_WARNING, "%scould not end replication cleanly: %s", p->name, err);
	}
	p->src->ops->close(p->src);
	p->in_session = false;
	if (p->reported)
		snprintf(pos, sizeof(pos), "confirmed " LSN_FMT, LSN_ARGS(p->reported));
	else
		snprintf(pos, sizeof(pos), "nothing confirmed in this run");
	log_msg(LOG_INFO, "%sstopped: %" PRIu64 " events in %" PRIu64 " transactions produced, "
	        "%" PRIu64 " acknowledged by Kafka, %" PRIu64 " sent to the dead-letter topic, %s",
	        p->name, p->events, p->txns, p->st.events, p->dead_letters, pos);
}

int64_t
pipeline_nap_us(const pipeline *p)
{
	int64_t left;

	if (p->nap_until_us == 0)
		return 0;
	left = p->nap_until_us - mono_us();
	return left > 0 ? left : 1;
}

int
pipeline_exit_code(const pipeline *p)
{
	return p->exit_code;
}

const metrics_stats *
pipeline_stats(const pipeline *p)
{
	return &p->st;
}

bool
pipeline_streaming(const pipeline *p)
{
	return p->st.streaming;
}

const char *
pipeline_name(const pipeline *p)
{
	return p->source_name;
}

const char *
pipeline_slot(const pipeline *p)
{
	return p->slot;
}

const char *
pipeline_database(const pipeline *p)
{
	return p->database;
}

bool
pipeline_finished(const pipeline *p)
{
	return p->finished;
}

void
pipeline_log_stats(pipeline *p)
{
	const metrics_stats *st = &p->st;

	log_msg(LOG_INFO, "%sstats: %s, %" PRIu64 " events (+%" PRIu64 ") in %" PRIu64 " transactions "
	        "published, %" PRIu64 " in flight, received " LSN_FMT ", confirmed " LSN_FMT
	        ", lag %" PRIu64 " bytes, %" PRIu64 " reconnects, %.1f s backpressure", p->name,
	        st->streaming ? "streaming" : "not streaming", st->events, st->events - p->stats_events,
	        st->txns, st->in_flight, LSN_ARGS(st->received_lsn), LSN_ARGS(st->confirmed_lsn),
	        st->server_wal_end > st->confirmed_lsn ? st->server_wal_end - st->confirmed_lsn : 0,
	        st->reconnects, st->backpressure_seconds);
	p->stats_events = st->events;
}
