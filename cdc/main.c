/*
 * main.c — pgoutbox: options, signals and the one event loop.
 *
 * Data flows one way: source (libpq) → decoder → outbox → sink (librdkafka);
 * acknowledgements flow back: sink delivery report → ledger → the flush LSN
 * that source reports to PostgreSQL.  This loop is the only place that
 * blocks: it poll()s the replication socket and the pipe librdkafka signals
 * when delivery reports wait.  Signal handlers only set a flag.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "ledger.h"
#include "log.h"
#include "outbox.h"
#include "pgoutput.h"
#include "sink.h"
#include "source.h"

#ifndef PGOUTBOX_VERSION
#define PGOUTBOX_VERSION "unknown"
#endif

#define LSN_FMT "%X/%X"
#define LSN_ARGS(lsn) (unsigned) ((lsn) >> 32), (unsigned) (lsn)

/* Limits that keep one loop turn short and reconnects polite. */
#define READ_BUDGET          10000   /* messages per loop turn before serving Kafka */
#define STATUS_MIN_GAP_MS    100     /* fastest pace of status updates after progress */
#define BACKOFF_MIN_MS       1000
#define BACKOFF_MAX_MS       30000
#define BACKPRESSURE_POLL_MS 100
#define SLOT_BUSY_RETRY_MS   1000    /* a standby retries a busy slot this often */
#define REBUILD_LIMIT        5       /* producer rebuilds allowed per window ... */
#define REBUILD_WINDOW_MS    600000  /* ... before a fatal error exits 2 */

static volatile sig_atomic_t stop_signals = 0;

static void
on_stop_signal(int sig)
{
	(void) sig;
	stop_signals++;
}

typedef enum step_rc {
	STEP_OK = 0,      /* message consumed */
	STEP_FULL,        /* Kafka's queue is full: keep the message, retry later */
	STEP_FAIL,        /* unrecoverable: stop, exit 2 */
} step_rc;

/*
 * A message's opaque: the ledger sequence number of its transaction and
 * which source (outbox table, logical messages, or a dead-letter copy) it
 * came from, so that a delivery report can dead-letter it.
 */
#define OPAQUE_SOURCE_BITS 16
#define SOURCE_DLQ         0xFFFFu
#define OPAQUE(seq, src)   (((uint64_t) (seq) << OPAQUE_SOURCE_BITS) | (uint64_t) (src))
#define OPAQUE_SEQ(op)     ((ledger_seq) ((op) >> OPAQUE_SOURCE_BITS))
#define OPAQUE_SRC(op)     ((unsigned) ((op) & SOURCE_DLQ))

/* A dead-letter copy that found Kafka's queue full; already counted in the ledger. */
typedef struct deferred {
	struct deferred *next;
	sink_event      *ev;        /* owned (sink_event_dup) */
	uint64_t         opaque;
} deferred;

typedef struct app {
	config       cfg;
	source      *src;
	sink        *snk;
	outbox      *ob;
	pgo_decoder *dec;
	ledger       led;

	/* the transaction being received */
	bool         in_txn;
	ledger_seq   txn_seq;
	outbox_txn   txn;              /* commit LSN, time and xid of it */

	deferred    *dlq_head, *dlq_tail;   /* dead-letter copies waiting for room */

	uint64_t     received;         /* highest WAL position received (write) */
	uint64_t     reported;         /* last flush position sent to PostgreSQL */
	int64_t      last_status_ms;
	bool         reply_due;        /* keepalive asked for a reply */

	uint8_t     *held;             /* CopyData waiting for room in Kafka's queue */
	size_t       held_len;

	int64_t      next_connect_ms;
	int          backoff_ms;

	bool         stopping;
	int64_t      drain_deadline_ms;
	int          exit_code;

	uint64_t     events, txns;     /* counters for the log */
	uint64_t     dead_letters;
	bool         backpressure_logged;
	bool         busy_logged;      /* "slot busy" said once per streak */

	int64_t      last_recv_ms;     /* last message from the walsender */
	bool         ping_sent;        /* status update with reply requested is out */

	int          rebuilds;         /* producer rebuilds in the current window */
	int64_t      rebuild_window_ms;
	bool         discard_reports;  /* old producer going away: ignore its reports */
	uint64_t     test_fatal_after; /* test hook: force a fatal error after N events */
} app;

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Stop streaming; exit with code once what is in flight has drained. */
static void
begin_stop(app *a, int code)
{
	if (code > a->exit_code)
		a->exit_code = code;
	if (a->stopping)
		return;
	a->stopping = true;
	a->drain_deadline_ms = now_ms() + (int64_t) a->cfg.shutdown_timeout_s * 1000;
}

/* Queue a dead-letter copy that Kafka's queue had no room for. */
static bool
defer_dead_letter(app *a, const sink_event *ev, uint64_t opaque)
{
	deferred *d = malloc(sizeof(*d));

	if (d == NULL || (d->ev = sink_event_dup(ev)) == NULL) {
		free(d);
		return false;
	}
	d->next = NULL;
	d->opaque = opaque;
	if (a->dlq_tail)
		a->dlq_tail->next = d;
	else
		a->dlq_head = d;
	a->dlq_tail = d;
	return true;
}

/* Produce the dead-letter copies that waited for room; false on a hard failure. */
static bool
flush_deferred(app *a)
{
	char err[512];

	while (a->dlq_head != NULL) {
		deferred *d = a->dlq_head;

		switch (sink_produce(a->snk, d->ev, d->opaque, err, sizeof(err))) {
		case SINK_OK:
			break;
		case SINK_FULL:
		case SINK_FATAL:   /* a rebuilt producer starts afresh without them */
			return true;
		case SINK_FAILED:
			log_msg(LOG_ERROR, "could not produce to dead-letter topic \"%s\": %s",
			        a->cfg.dlq_topic, err);
			return false;
		}
		a->dlq_head = d->next;
		if (a->dlq_head == NULL)
			a->dlq_tail = NULL;
		free(d->ev);
		free(d);
	}
	return true;
}

static void
free_deferred(app *a)
{
	while (a->dlq_head != NULL) {
		deferred *d = a->dlq_head;
		a->dlq_head = d->next;
		free(d->ev);
		free(d);
	}
	a->dlq_tail = NULL;
}

/*
 * Kafka refused a message for good and on_error = dlq: produce its
 * dead-letter copy from here (the report still holds the original key, value
 * and headers).  The copy joins the same transaction in the ledger before
 * the refused message is acked, so the transaction is confirmed only once
 * the copy is acknowledged.  False when that cannot be done.
 */
static bool
dead_letter_refused(app *a, ledger_seq seq, unsigned src, const sink_report *rep)
{
	const ledger_txn *t = ledger_get(&a->led, seq);
	sink_event ev;
	outbox_dlq_buf buf;
	char err[512];
	const char *name;
	bool is_message;

	if (t == NULL || src == SOURCE_DLQ || src >= outbox_sources(a->ob))
		return false;
	memset(&ev, 0, sizeof(ev));
	ev.key = rep->key;
	ev.key_len = rep->key_len;
	ev.value = rep->value;
	ev.value_len = rep->value_len;
	ev.timestamp_ms = rep->timestamp_ms;
	ev.nheaders = rep->nheaders;
	memcpy(ev.headers, rep->headers, rep->nheaders * sizeof(ev.headers[0]));
	name = outbox_source_name(a->ob, src, &is_message);
	outbox_dead_letter(&ev, a->cfg.dlq_topic, rep->error, rep->topic, t->commit_lsn,
	                   is_message, name, &buf);
	if (ledger_add_to(&a->led, seq) != LEDGER_OK)
		return false;
	switch (sink_produce(a->snk, &ev, OPAQUE(seq, SOURCE_DLQ), err, sizeof(err))) {
	case SINK_OK:
		break;
	case SINK_FULL:
	case SINK_FATAL:
		if (!defer_dead_letter(a, &ev, OPAQUE(seq, SOURCE_DLQ))) {
			log_msg(LOG_ERROR, "out of memory keeping a dead-letter copy");
			return false;
		}
		break;
	case SINK_FAILED:
		log_msg(LOG_ERROR, "could not produce to dead-letter topic \"%s\": %s",
		        a->cfg.dlq_topic, err);
		return false;
	}
	log_msg(LOG_WARNING, "event %.*s of transaction at " LSN_FMT " sent to dead-letter topic "
	        "\"%s\": Kafka refused it for topic \"%s\": %s",
	        (int) rep->id_len, rep->id ? (const char *) rep->id : "(unknown)",
	        LSN_ARGS(t->commit_lsn), a->cfg.dlq_topic, rep->topic, rep->error);
	a->dead_letters++;
	return true;
}

/* Kafka's verdict on one message: the seam between sink and ledger. */
static void
on_delivery(void *ctx, uint64_t opaque, const sink_report *rep)
{
	app *a = ctx;
	ledger_seq seq = OPAQUE_SEQ(opaque);
	unsigned src = OPAQUE_SRC(opaque);
	const ledger_txn *t;

	if (a->discard_reports)
		return;
	if (!rep->ok && sink_fatal(a->snk, NULL, 0))
		return;    /* the producer is being rebuilt; the slot still has it */
	if (rep->ok || (rep->permanent && a->cfg.on_error_dlq && src != SOURCE_DLQ &&
	                dead_letter_refused(a, seq, src, rep))) {
		if (ledger_ack(&a->led, seq) != LEDGER_OK)
			log_msg(LOG_WARNING, "delivery report for unknown transaction %" PRIu64, seq);
		return;
	}
	/* Never acknowledged: the ledger will not confirm past this transaction,
	 * so a restart re-reads it from the slot. */
	t = ledger_get(&a->led, seq);
	log_detail(LOG_ERROR,
	           "pgoutbox stops without confirming past this transaction; fix the cause and restart",
	           "Kafka did not accept %sevent %.*s for topic \"%s\" (transaction at " LSN_FMT "): %s%s",
	           src == SOURCE_DLQ ? "the dead-letter copy of " : "",
	           (int) rep->id_len, rep->id ? (const char *) rep->id : "(unknown)", rep->topic,
	           LSN_ARGS(t ? t->commit_lsn : 0), rep->error,
	           rep->permanent ? "" : " (gave up retrying)");
	begin_stop(a, 2);
}

/* The stream broke: forget the half-received transaction and reconnect. */
static void
stream_lost(app *a, const char *why)
{
	log_msg(LOG_WARNING, "%s; reconnecting in %d ms", why, a->backoff_ms);
	source_close(a->src);
	ledger_stream_lost(&a->led);
	a->in_txn = false;
	if (a->held) {
		source_release(a->held);
		a->held = NULL;
	}
	a->next_connect_ms = now_ms() + a->backoff_ms;
	a->backoff_ms = a->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : a->backoff_ms * 2;
}

static step_rc
protocol_error(app *a, const pgo_copydata *cd, const char *what, const pgo_error *err)
{
	log_detail(LOG_ERROR, "pgoutbox stops without confirming past this position",
	           "could not decode %s at " LSN_FMT ": %s at byte %zu (%s)", what,
	           LSN_ARGS(cd ? cd->wal_start : a->received), pgo_rc_name(err->code),
	           err->offset, err->reason ? err->reason : "");
	return STEP_FAIL;
}

/*
 * pgoutbox never asks for streaming or two-phase decoding, because both send
 * changes before they commit.  If they arrive anyway, stop rather than risk
 * publishing a transaction that may still roll back.
 */
static step_rc
unexpected(app *a, const pgo_copydata *cd, const pgo_msg *m, const char *what)
{
	(void) a;
	log_detail(LOG_ERROR, "pgoutbox asks for neither; nothing past this position is confirmed",
	           "unexpected '%c' message at " LSN_FMT ": %s", (char) m->type,
	           LSN_ARGS(cd->wal_start), what);
	return STEP_FAIL;
}

/*
 * Hand one mapped (or unmappable) outbox event to Kafka.  An unmappable one
 * stops pgoutbox (on_error = stop) or goes to the dead-letter topic
 * (on_error = dlq).  No side effect when it returns STEP_FULL.
 */
static step_rc
publish(app *a, outbox_rc orc, sink_event *ev, unsigned src, const char *why)
{
	char err[512];
	const char *name;
	bool is_message;
	outbox_dlq_buf buf;
	uint64_t opaque = OPAQUE(a->txn_seq, src);
	int id_len = ev->nheaders ? (int) ev->headers[0].len : 9;
	const char *id = ev->nheaders ? (const char *) ev->headers[0].value : "(unknown)";

	switch (orc) {
	case OUTBOX_IGNORE:
		return STEP_OK;
	case OUTBOX_NOMEM:
		log_msg(LOG_ERROR, "%s", why);
		return STEP_FAIL;
	case OUTBOX_EVENT:
		break;
	case OUTBOX_UNMAPPABLE:
		/* The id header, when readable, is the first one. */
		if (ev->nheaders == 0 || strcmp(ev->headers[0].name, "id") != 0) {
			id_len = 9;
			id = "(unknown)";
		}
		name = outbox_source_name(a->ob, src, &is_message);
		if (!a->cfg.on_error_dlq) {
			log_detail(LOG_ERROR,
			           "pgoutbox stops without confirming past this transaction; fix the event or the mapping and restart, or set on_error = dlq",
			           "cannot map event %.*s of transaction at " LSN_FMT " (%s %s): %s",
			           id_len, id, LSN_ARGS(a->txn.commit_lsn),
			           is_message ? "logical message prefix" : "table", name, why);
			return STEP_FAIL;
		}
		outbox_dead_letter(ev, a->cfg.dlq_topic, why, ev->topic, a->txn.commit_lsn,
		                   is_message, name, &buf);
		opaque = OPAQUE(a->txn_seq, SOURCE_DLQ);
		break;
	}
	if (!a->in_txn) {
		log_msg(LOG_ERROR, "outbox event outside a transaction in the replication stream");
		return STEP_FAIL;
	}
	switch (sink_produce(a->snk, ev, opaque, err, sizeof(err))) {
	case SINK_OK:
		break;
	case SINK_FULL:
	case SINK_FATAL:       /* held until the producer is rebuilt */
		return STEP_FULL;
	case SINK_FAILED:
		log_msg(LOG_ERROR, "could not produce event %.*s of transaction at " LSN_FMT ": %s",
		        id_len, id, LSN_ARGS(a->txn.commit_lsn), err);
		return STEP_FAIL;
	}
	if (ledger_add(&a->led, a->txn_seq) != LEDGER_OK) {
		log_msg(LOG_ERROR, "internal error: could not record an in-flight message");
		return STEP_FAIL;
	}
	if (orc == OUTBOX_UNMAPPABLE) {
		log_msg(LOG_WARNING, "event %.*s of transaction at " LSN_FMT " sent to dead-letter topic "
		        "\"%s\": %s", id_len, id, LSN_ARGS(a->txn.commit_lsn), a->cfg.dlq_topic, why);
		a->dead_letters++;
	} else {
		a->events++;
		if (a->test_fatal_after && a->events == a->test_fatal_after)
			sink_test_fatal(a->snk);
	}
	return STEP_OK;
}

static step_rc
handle_insert(app *a, const pgo_msg *m)
{
	sink_event ev;
	char err[512];
	unsigned src = 0;
	outbox_rc orc;

	orc = outbox_map_insert(a->ob, m->u.insert.rel, &m->u.insert.newtup, &a->txn, &ev, &src,
	                        err, sizeof(err));
	return publish(a, orc, &ev, src, err);
}

static step_rc
handle_message(app *a, const pgo_msg *m)
{
	sink_event ev;
	char err[512];
	unsigned src = 0;
	outbox_rc orc;

	/* Transactional messages come between Begin and Commit; others are
	 * sent at once, whether or not their transaction commits: never events. */
	if (!(m->u.message.flags & PGO_MESSAGE_TRANSACTIONAL) || !a->in_txn)
		return STEP_OK;
	orc = outbox_map_message(a->ob, m->u.message.flags, m->u.message.prefix,
	                         m->u.message.content, &a->txn, &ev, &src, err, sizeof(err));
	return publish(a, orc, &ev, src, err);
}

/*
 * Act on one CopyData.  Must have no side effect when it returns STEP_FULL,
 * because the same bytes are fed again once Kafka's queue has room.
 */
static step_rc
step(app *a, const uint8_t *buf, size_t len)
{
	pgo_copydata cd;
	pgo_msg m;
	pgo_error err;

	if (pgo_decode_copydata(buf, len, &cd, &err) != PGO_OK)
		return protocol_error(a, NULL, "replication message", &err);

	if (cd.kind == PGO_COPY_KEEPALIVE) {
		if (cd.wal_end > a->received)
			a->received = cd.wal_end;
		/* Everything up to wal_end was sent to us: once nothing is in
		 * flight it is all delivered, so an idle outbox does not pin WAL. */
		ledger_sent_position(&a->led, cd.wal_end);
		if (cd.reply_requested)
			a->reply_due = true;
		return STEP_OK;
	}

	if (pgo_decode_message(a->dec, cd.data.ptr, cd.data.len, &m, &err) != PGO_OK)
		return protocol_error(a, &cd, "pgoutput message", &err);
	if (m.has_xid)
		return unexpected(a, &cd, &m, "a change of a streamed, uncommitted transaction");

	switch (m.type) {
	case PGO_MSG_BEGIN:
		if (a->in_txn) {
			log_msg(LOG_ERROR, "BEGIN inside a transaction at " LSN_FMT, LSN_ARGS(cd.wal_start));
			return STEP_FAIL;
		}
		if (ledger_begin(&a->led, m.u.begin.final_lsn, &a->txn_seq) != LEDGER_OK) {
			log_msg(LOG_ERROR, "out of memory recording a transaction");
			return STEP_FAIL;
		}
		a->in_txn = true;
		a->txn.commit_lsn = m.u.begin.final_lsn;
		a->txn.commit_time = m.u.begin.commit_time;
		a->txn.xid = m.u.begin.xid;
		break;
	case PGO_MSG_COMMIT:
		if (!a->in_txn || ledger_commit(&a->led, m.u.commit.end_lsn) != LEDGER_OK) {
			log_msg(LOG_ERROR, "COMMIT without BEGIN at " LSN_FMT, LSN_ARGS(cd.wal_start));
			return STEP_FAIL;
		}
		a->in_txn = false;
		a->txns++;
		break;
	case PGO_MSG_INSERT: {
		step_rc rc = handle_insert(a, &m);
		if (rc != STEP_OK)
			return rc;
		break;
	}
	case PGO_MSG_MESSAGE: {
		step_rc rc = handle_message(a, &m);
		if (rc != STEP_OK)
			return rc;
		break;
	}
	case PGO_MSG_RELATION:
		/* Resolve the outbox mapping's column indexes once per Relation. */
		if (!outbox_relation(a->ob, m.u.relation.rel)) {
			log_msg(LOG_ERROR, "out of memory resolving relation %s.%s",
			        m.u.relation.rel->nspname, m.u.relation.rel->relname);
			return STEP_FAIL;
		}
		break;
	case PGO_MSG_STREAM_START:
	case PGO_MSG_STREAM_STOP:
	case PGO_MSG_STREAM_COMMIT:
	case PGO_MSG_STREAM_ABORT:
	case PGO_MSG_STREAM_PREPARE:
		return unexpected(a, &cd, &m, "streaming of in-progress transactions");
	case PGO_MSG_BEGIN_PREPARE:
	case PGO_MSG_PREPARE:
	case PGO_MSG_COMMIT_PREPARED:
	case PGO_MSG_ROLLBACK_PREPARED:
		return unexpected(a, &cd, &m, "two-phase decoding");
	default:
		/* Type messages feed the decoder's cache; Origin, updates,
		 * deletes and truncates are not outbox events. */
		break;
	}
	if (cd.wal_start > a->received)
		a->received = cd.wal_start;
	return STEP_OK;
}

static void
send_status(app *a, int64_t now, bool reply)
{
	char err[512];
	uint64_t flush = ledger_confirmable(&a->led);
	source_rc rc;

	rc = source_send_status(a->src, a->received > flush ? a->received : flush, flush,
	                        reply, err, sizeof(err));
	if (rc == SOURCE_LOST) {
		stream_lost(a, err);
		return;
	}
	if (rc == SOURCE_OK || rc == SOURCE_AGAIN) {
		if (flush != a->reported)
			log_msg(LOG_DEBUG, "confirmed " LSN_FMT, LSN_ARGS(flush));
		a->reported = flush;
		a->last_status_ms = now;
		a->reply_due = false;
	}
}

static void
try_connect(app *a)
{
	char err[1024];
	source_rc rc = source_start(a->src, err, sizeof(err));

	if (rc == SOURCE_OK) {
		/* A new session describes its relations again; start afresh with
		 * the protocol version this server speaks. */
		pgo_decoder_free(a->dec);
		a->dec = pgo_decoder_new(source_proto_version(a->src));
		outbox_forget_relations(a->ob);
		if (a->dec == NULL || !outbox_set_database(a->ob, source_database(a->src))) {
			log_msg(LOG_ERROR, "out of memory");
			source_close(a->src);
			begin_stop(a, 2);
			return;
		}
		log_msg(LOG_INFO, "streaming from slot \"%s\" (publication \"%s\", protocol %d) to Kafka",
		        a->cfg.slot, a->cfg.publication, source_proto_version(a->src));
		a->backoff_ms = BACKOFF_MIN_MS;
		a->last_status_ms = 0;     /* report our position right away */
		a->last_recv_ms = now_ms();
		a->ping_sent = false;
		a->busy_logged = false;
		return;
	}
	if (rc == SOURCE_FATAL) {
		log_msg(LOG_ERROR, "%s", err);
		begin_stop(a, 2);
		return;
	}
	if (rc == SOURCE_BUSY) {
		/* Another pgoutbox holds the slot: stand by and take over quickly
		 * once it is gone, without the growing back-off. */
		if (!a->busy_logged)
			log_msg(LOG_INFO, "%s; standing by, retrying every %d ms", err, SLOT_BUSY_RETRY_MS);
		a->busy_logged = true;
		a->next_connect_ms = now_ms() + SLOT_BUSY_RETRY_MS;
		return;
	}
	stream_lost(a, err);
}

/* Read and act on what the walsender sent, up to a budget. */
static void
read_stream(app *a)
{
	char err[1024];

	for (int budget = READ_BUDGET; budget > 0 && !a->stopping; budget--) {
		uint8_t *buf;
		size_t len;
		step_rc rc;

		if (a->held != NULL) {
			buf = a->held;
			len = a->held_len;
			a->held = NULL;
		} else {
			source_rc src = source_read(a->src, &buf, &len, err, sizeof(err));
			if (src == SOURCE_AGAIN)
				return;
			if (src == SOURCE_FATAL) {
				log_msg(LOG_ERROR, "%s", err);
				begin_stop(a, 2);
				return;
			}
			if (src != SOURCE_OK) {
				stream_lost(a, err);
				return;
			}
			a->last_recv_ms = now_ms();
			a->ping_sent = false;
		}
		rc = step(a, buf, len);
		if (rc == STEP_FULL) {
			a->held = buf;
			a->held_len = len;
			if (!a->backpressure_logged) {
				log_msg(LOG_INFO, "Kafka's producer queue is full: pausing the replication stream");
				a->backpressure_logged = true;
			}
			return;
		}
		source_release(buf);
		if (a->backpressure_logged) {
			log_msg(LOG_INFO, "Kafka's producer queue has room again: resuming");
			a->backpressure_logged = false;
		}
		if (rc == STEP_FAIL) {
			begin_stop(a, 2);
			return;
		}
	}
}

/*
 * Detect a silent connection (a network that drops packets, a frozen
 * server): ask for a reply after half the replication timeout without a
 * message, give up on the stream after the whole timeout.  While Kafka's
 * queue is full pgoutbox does not read, so silence then proves nothing.
 */
static void
check_liveness(app *a, int64_t now)
{
	int64_t timeout = (int64_t) a->cfg.replication_timeout_s * 1000;
	char why[128];

	if (timeout == 0 || a->stopping || !source_connected(a->src))
		return;
	if (a->held != NULL) {
		a->last_recv_ms = now;
		return;
	}
	if (now - a->last_recv_ms >= timeout) {
		snprintf(why, sizeof(why), "no message from the server for %d s",
		         a->cfg.replication_timeout_s);
		stream_lost(a, why);
	} else if (now - a->last_recv_ms >= timeout / 2 && !a->ping_sent) {
		send_status(a, now, true);
		a->ping_sent = true;
	}
}

/*
 * The producer hit a fatal error (e.g. the idempotence guarantee broke).
 * Its unacknowledged messages are lost to it, but not to us: nothing past
 * them was confirmed, so a new producer and a new stream from the slot's
 * confirmed position deliver them again.  Repeated failures exit 2.
 */
static void
rebuild_producer(app *a, const char *cause)
{
	char err[512];
	int64_t now = now_ms();

	if (now - a->rebuild_window_ms > REBUILD_WINDOW_MS) {
		a->rebuild_window_ms = now;
		a->rebuilds = 0;
	}
	if (++a->rebuilds > REBUILD_LIMIT) {
		log_msg(LOG_ERROR, "Kafka producer failed fatally %d times in %d minutes: giving up",
		        REBUILD_LIMIT + 1, REBUILD_WINDOW_MS / 60000);
		begin_stop(a, 2);
		return;
	}
	log_detail(LOG_WARNING, cause,
	           "rebuilding the Kafka producer after a fatal error; resuming from the slot's confirmed position " LSN_FMT,
	           LSN_ARGS(ledger_confirmable(&a->led)));
	if (source_connected(a->src))
		send_status(a, now, false);        /* keep what was acknowledged */
	source_close(a->src);
	if (a->held) {
		source_release(a->held);
		a->held = NULL;
	}
	a->in_txn = false;
	free_deferred(a);          /* dead-letter copies of the old stream */
	a->backpressure_logged = false;
	a->discard_reports = true;
	sink_free(a->snk);
	a->discard_reports = false;
	ledger_reset(&a->led);
	a->snk = sink_new(a->cfg.brokers, a->cfg.kafka, a->cfg.nkafka, on_delivery, a,
	                  err, sizeof(err));
	if (a->snk == NULL) {
		log_msg(LOG_ERROR, "%s", err);
		a->exit_code = 2;
		a->stopping = true;
		return;
	}
	a->next_connect_ms = now;
}

static int
run(app *a)
{
	char err[512];

	a->backoff_ms = BACKOFF_MIN_MS;
	for (;;) {
		int64_t now = now_ms();
		int64_t timeout;
		struct pollfd pfd[2];
		int nfds = 0;
		uint64_t confirmable;

		if (stop_signals > 0 && !a->stopping) {
			log_msg(LOG_INFO, "received shutdown signal: draining in-flight events (up to %d s)",
			        a->cfg.shutdown_timeout_s);
			begin_stop(a, 0);
		}
		if (stop_signals > 1) {
			log_msg(LOG_WARNING, "second shutdown signal: exiting without waiting for Kafka");
			break;
		}
		if (!a->stopping && sink_fatal(a->snk, err, sizeof(err)))
			rebuild_producer(a, err);
		if (a->snk == NULL)
			break;
		if (a->dlq_head != NULL && !flush_deferred(a))
			begin_stop(a, 2);

		if (!a->stopping && !source_connected(a->src) && now >= a->next_connect_ms)
			try_connect(a);
		if (!a->stopping && source_connected(a->src) && a->dlq_head == NULL)
			read_stream(a);

		sink_serve(a->snk);
		confirmable = ledger_confirmable(&a->led);
		now = now_ms();
		if (source_connected(a->src) &&
		    (a->reply_due || now - a->last_status_ms >= a->cfg.status_interval_ms ||
		     (confirmable != a->reported && now - a->last_status_ms >= STATUS_MIN_GAP_MS)))
			send_status(a, now, false);
		check_liveness(a, now);

		if (a->cfg.endpos && confirmable >= a->cfg.endpos && !a->stopping) {
			log_msg(LOG_INFO, "reached end position " LSN_FMT, LSN_ARGS(a->cfg.endpos));
			begin_stop(a, 0);
		}
		if (a->stopping) {
			/* Nothing left to report: what is still pending was refused. */
			if (sink_outstanding(a->snk) == 0)
				break;
			if (now >= a->drain_deadline_ms) {
				log_msg(LOG_WARNING, "shutdown timeout: %d messages not acknowledged by Kafka; "
				        "they will be sent again after restart", sink_outstanding(a->snk));
				break;
			}
		}

		/* Sleep until the socket, Kafka or a timer needs us. */
		timeout = 1000;
		if (source_connected(a->src)) {
			int64_t due = a->last_status_ms + a->cfg.status_interval_ms;
			if (confirmable != a->reported)
				due = a->last_status_ms + STATUS_MIN_GAP_MS;
			if (due - now < timeout)
				timeout = due - now;
		} else if (!a->stopping && a->next_connect_ms - now < timeout) {
			timeout = a->next_connect_ms - now;
		}
		if ((a->held != NULL || a->dlq_head != NULL) && timeout > BACKPRESSURE_POLL_MS)
			timeout = BACKPRESSURE_POLL_MS;
		if (timeout < 0)
			timeout = 0;

		pfd[nfds++] = (struct pollfd) {.fd = sink_fd(a->snk), .events = POLLIN};
		if (source_connected(a->src)) {
			short ev = 0;
			if (!a->stopping && a->held == NULL)
				ev |= POLLIN;
			if (source_wants_write(a->src))
				ev |= POLLOUT;
			pfd[nfds++] = (struct pollfd) {.fd = source_fd(a->src), .events = ev};
		}
		if (poll(pfd, (nfds_t) nfds, (int) timeout) < 0 && errno != EINTR) {
			log_msg(LOG_ERROR, "poll failed: %s", strerror(errno));
			begin_stop(a, 2);
			break;
		}
		if (nfds > 1 && (pfd[1].revents & POLLOUT) && source_connected(a->src)) {
			if (source_flush(a->src, err, sizeof(err)) == SOURCE_LOST)
				stream_lost(a, err);
		}
	}

	/* Confirm what Kafka acknowledged before leaving. */
	if (a->snk != NULL)
		sink_serve(a->snk);
	if (source_connected(a->src)) {
		/* End the COPY and wait (bounded) for the server to end it too: it
		 * answers only after processing our last status update, so the
		 * slot shows the confirmed position once pgoutbox has exited. */
		send_status(a, now_ms(), false);
		if (source_finish(a->src, 5000, err, sizeof(err)) != SOURCE_OK)
			log_msg(LOG_WARNING, "could not end replication cleanly: %s", err);
	}
	log_msg(LOG_INFO, "stopped: %" PRIu64 " events in %" PRIu64 " transactions published, "
	        "%" PRIu64 " sent to the dead-letter topic, confirmed " LSN_FMT, a->events, a->txns,
	        a->dead_letters, LSN_ARGS(ledger_confirmable(&a->led)));
	return a->exit_code;
}

int
main(int argc, char **argv)
{
	app a;
	char err[1024];
	struct sigaction sa;
	int code;

	memset(&a, 0, sizeof(a));
	switch (config_load(&a.cfg, argc, argv, err, sizeof(err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		if (a.cfg.show_help)
			config_usage(stdout);
		else
			printf("pgoutbox %s\n", PGOUTBOX_VERSION);
		return 0;
	case CONFIG_ERROR:
		fprintf(stderr, "pgoutbox: %s\nTry \"pgoutbox --help\" for more information.\n", err);
		return 1;
	}
	log_set_level((log_level) a.cfg.log_level);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	code = 1;
	{
		source_config sc = {
			.conninfo = a.cfg.conninfo, .slot = a.cfg.slot,
			.publication = a.cfg.publication, .proto_version = 0,
		};
		outbox_config oc = {
			.tables = a.cfg.tables, .ntables = a.cfg.ntables,
			.messages_prefix = a.cfg.messages_prefix, .messages = a.cfg.messages,
		};

		if ((a.ob = outbox_new(&oc, err, sizeof(err))) == NULL ||
		    (a.src = source_new(&sc, err, sizeof(err))) == NULL ||
		    (a.snk = sink_new(a.cfg.brokers, a.cfg.kafka, a.cfg.nkafka, on_delivery, &a,
		                      err, sizeof(err))) == NULL) {
			log_msg(LOG_ERROR, "%s", err);
			goto out;
		}
	}
	ledger_init(&a.led, 0);
	{
		/* Test hook for the fault tests; not a setting. */
		const char *v = getenv("PGOUTBOX_TEST_FATAL_AFTER");
		if (v != NULL)
			a.test_fatal_after = strtoull(v, NULL, 10);
	}
	log_msg(LOG_INFO, "pgoutbox %s starting (librdkafka %s)", PGOUTBOX_VERSION,
	        sink_library_version());
	code = run(&a);

out:
	if (a.held)
		source_release(a.held);
	free_deferred(&a);
	source_free(a.src);
	sink_free(a.snk);
	outbox_free(a.ob);
	pgo_decoder_free(a.dec);
	ledger_free(&a.led);
	config_free(&a.cfg);
	return code;
}
