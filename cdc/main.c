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
#include "metrics.h"
#include "notify.h"
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
static volatile sig_atomic_t reload_requested = 0;

static void
on_stop_signal(int sig)
{
	(void) sig;
	stop_signals++;
}

static void
on_hup_signal(int sig)
{
	(void) sig;
	reload_requested = 1;
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
	int          argc;             /* the command line, parsed again on SIGHUP */
	char       **argv;
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
	bool         more_input;       /* read_stream stopped at its budget, not at the end */
	bool         sink_woke;        /* the sink's pipe was readable: serve its reports */

	int64_t      next_connect_ms;
	int          backoff_ms;

	bool         stopping;
	int64_t      drain_deadline_ms;
	int          exit_code;

	uint64_t     events, txns;     /* counters for the log */
	uint64_t     acked_seen;       /* st.events when the loop last looked */
	int64_t      last_ack_ms;      /* when the loop last saw it grow */
	int64_t      waiting_since_ms; /* since when something is in flight; 0: nothing */
	uint64_t     dead_letters;
	bool         backpressure_logged;
	bool         busy_logged;      /* "slot busy" said once per streak */

	int64_t      last_recv_ms;     /* last message from the walsender */
	bool         ping_sent;        /* status update with reply requested is out */

	int          rebuilds;         /* producer rebuilds in the current window */
	int64_t      rebuild_window_ms;
	bool         discard_reports;  /* old producer going away: ignore its reports */
	uint64_t     test_fatal_after; /* test hook: force a fatal error after N events */

	metrics_stats st;              /* what /metrics shows; kept whether served or not */
	metrics     *mx;               /* the listener, NULL when metrics are off */
	char        *mx_addr;          /* the address mx listens on */
	int64_t      backpressure_since_ms;   /* 0: not paused */
	double       backpressure_done_s;     /* pauses that ended */
	int64_t      next_stats_ms;
	notifier    *nt;               /* systemd's $NOTIFY_SOCKET, or NULL */
	bool         ready_sent;
	int64_t      next_watchdog_ms;
	uint64_t     stats_events;     /* events published at the last stats line */
} app;

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Listen for metrics on addr (NULL: off), replacing the current listener.
 * On failure the current one stays and false is returned with errbuf set.
 */
static bool
metrics_listen(app *a, const char *addr, char *errbuf, size_t errlen)
{
	metrics *m = NULL;
	char *copy = NULL;

	if ((a->mx_addr == NULL && addr == NULL) ||
	    (a->mx_addr != NULL && addr != NULL && strcmp(a->mx_addr, addr) == 0))
		return true;
	if (addr != NULL) {
		if ((copy = strdup(addr)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return false;
		}
		if ((m = metrics_new(addr, PGOUTBOX_VERSION, &a->st, errbuf, errlen)) == NULL) {
			free(copy);
			return false;
		}
		log_msg(LOG_INFO, "serving metrics on http://%s/metrics", addr);
	}
	metrics_free(a->mx);
	free(a->mx_addr);
	a->mx = m;
	a->mx_addr = copy;
	return true;
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
	notify_send(a->nt, "STOPPING=1\nSTATUS=stopping: draining in-flight events");
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
		a->st.events++;
		a->st.bytes += rep->bytes;
		if (rep->timestamp_ms >= 0)
			metrics_observe_latency(&a->st, (double) (wall_ms() - rep->timestamp_ms) / 1000.0);
		return;
	}
	metrics_count_error(&a->st, rep->error_name ? rep->error_name : "UNKNOWN");
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

/*
 * SIGHUP: load the command line and the -c file again.  A configuration with
 * errors is reported and changes nothing; otherwise the reloadable settings
 * take effect at once.
 */
static void
reload_config(app *a)
{
	config next;
	char err[1024];

	switch (config_load(&next, a->argc, a->argv, err, sizeof(err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		config_free(&next);
		return;
	case CONFIG_ERROR:
		log_detail(LOG_ERROR, "the running configuration is kept",
		           "could not reload the configuration: %s", err);
		return;
	}
	if (config_reload(&a->cfg, &next) == 0)
		log_msg(LOG_INFO, "configuration reloaded: no reloadable setting changed");
	else
		log_msg(LOG_INFO, "configuration reloaded");
	config_free(&next);
	log_set_level((log_level) a->cfg.log_level);
	log_set_format((log_format) a->cfg.log_format);
	a->next_stats_ms = 0;      /* restart the stats period */
	if (!metrics_listen(a, a->cfg.metrics, err, sizeof(err)))
		log_detail(LOG_ERROR, a->mx_addr ? "metrics stay on the previous address" : "metrics stay off",
		           "%s", err);
}

/*
 * Tell systemd a reload began (it then waits for READY=1); its clock
 * reading lets systemd tell this reload from an earlier one.  Only once
 * READY=1 was sent: before that, systemd still waits for the start.
 */
static void
notify_reloading(app *a)
{
	struct timespec ts;
	char msg[64];

	if (a->nt == NULL || !a->ready_sent)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%lld",
	         (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
	notify_send(a->nt, msg);
}

/* The stream broke: forget the half-received transaction and reconnect. */
static void
stream_lost(app *a, const char *why)
{
	log_msg(LOG_WARNING, "%s; reconnecting in %d ms", why, a->backoff_ms);
	snprintf(a->st.health, sizeof(a->st.health), "not streaming: %s", why);
	if (a->nt != NULL) {
		char status[300];
		snprintf(status, sizeof(status), "STATUS=%.250s", a->st.health);
		notify_send(a->nt, status);
	}
	a->st.reconnects++;
	source_close(a->src);
	ledger_stream_lost(&a->led);
	a->in_txn = false;
	if (a->held) {
		source_release(a->held);
		a->held = NULL;
	}
	if (a->backpressure_since_ms != 0) {
		a->backpressure_done_s += (double) (now_ms() - a->backpressure_since_ms) / 1000.0;
		a->backpressure_since_ms = 0;
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

	if (cd.wal_end > a->st.server_wal_end)
		a->st.server_wal_end = cd.wal_end;
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
		a->st.health[0] = '\0';
		if (a->nt != NULL) {
			char status[300];
			/* READY once, when streaming first starts; later only the status. */
			snprintf(status, sizeof(status), "%sSTATUS=streaming from slot \"%.200s\"",
			         a->ready_sent ? "" : "READY=1\n", a->cfg.slot);
			if (notify_send(a->nt, status))
				a->ready_sent = true;
		}
		return;
	}
	if (rc == SOURCE_FATAL) {
		log_msg(LOG_ERROR, "%s", err);
		snprintf(a->st.health, sizeof(a->st.health), "stopping: %.200s", err);
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

/*
 * Read and act on what the walsender sent, up to a budget.  When the budget
 * runs out, libpq may hold whole messages that poll() cannot see: more_input
 * tells the loop not to sleep.
 */
static void
read_stream(app *a)
{
	char err[1024];

	for (int budget = READ_BUDGET; !a->stopping; budget--) {
		if (budget == 0) {
			a->more_input = true;
			return;
		}
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
			if (a->backpressure_since_ms == 0)
				a->backpressure_since_ms = now_ms();
			if (!a->backpressure_logged) {
				log_msg(LOG_INFO, "Kafka's producer queue is full: pausing the replication stream");
				a->backpressure_logged = true;
			}
			return;
		}
		source_release(buf);
		if (a->backpressure_since_ms != 0) {
			a->backpressure_done_s += (double) (now_ms() - a->backpressure_since_ms) / 1000.0;
			a->backpressure_since_ms = 0;
		}
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
/*
 * Time between status updates: status_interval, but at most half the
 * server's wal_sender_timeout, because while Kafka's queue is full these
 * updates are all that keeps the walsender from timing the session out.
 */
static int
status_interval(const app *a)
{
	int wst = source_sender_timeout_ms(a->src);

	if (wst > 0 && wst / 2 < a->cfg.status_interval_ms)
		return wst / 2 > 100 ? wst / 2 : 100;
	return a->cfg.status_interval_ms;
}

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
	a->sink_woke = true;
	a->next_connect_ms = now;
}

/*
 * Kafka may refuse us for good without an error that stops anything (a
 * wrong SASL password, an untrusted certificate, a broker that accepts
 * connections but never answers): librdkafka retries forever, the WAL
 * waits in the slot, and nothing else would show it.  When events have
 * waited kafka_stall_timeout with no acknowledgement at all, say so once
 * and make /healthz answer 503 with librdkafka's last error, until one
 * comes.
 */
static void
check_kafka_stall(app *a, int64_t now)
{
	int64_t limit = (int64_t) a->cfg.kafka_stall_timeout_s * 1000;
	uint64_t pending = ledger_pending(&a->led);
	int64_t since;
	bool stalled;

	if (a->st.events != a->acked_seen) {
		a->acked_seen = a->st.events;
		a->last_ack_ms = now;
	}
	if (pending == 0)
		a->waiting_since_ms = 0;
	else if (a->waiting_since_ms == 0)
		a->waiting_since_ms = now;
	since = a->waiting_since_ms > a->last_ack_ms ? a->waiting_since_ms : a->last_ack_ms;
	stalled = limit > 0 && pending > 0 && a->snk != NULL && now - since >= limit;
	if (stalled) {
		const char *why = sink_last_error(a->snk);

		if (!a->st.kafka_stalled)
			log_detail(LOG_WARNING, "nothing is confirmed to PostgreSQL meanwhile; the WAL waits in the slot",
			           "Kafka has acknowledged nothing for %d s while %" PRIu64 " events wait%s%.200s",
			           (int) ((now - since) / 1000), pending, why[0] ? "; last Kafka error: " : "", why);
		/* The reason /healthz gives, unless the stream itself is down. */
		if (a->st.streaming)
			snprintf(a->st.health, sizeof(a->st.health),
			         "Kafka has acknowledged nothing for %d s while %" PRIu64 " events wait%s%.150s",
			         (int) ((now - since) / 1000), pending, why[0] ? "; last Kafka error: " : "", why);
	} else if (a->st.kafka_stalled) {
		log_msg(LOG_INFO, "Kafka acknowledges events again");
		if (a->st.streaming)
			a->st.health[0] = '\0';
	}
	a->st.kafka_stalled = stalled;
}

/* The periodic one-line summary (stats_interval). */
static void
log_stats(app *a)
{
	const metrics_stats *st = &a->st;

	log_msg(LOG_INFO, "stats: %s, %" PRIu64 " events (+%" PRIu64 ") in %" PRIu64 " transactions "
	        "published, %" PRIu64 " in flight, received " LSN_FMT ", confirmed " LSN_FMT
	        ", lag %" PRIu64 " bytes, %" PRIu64 " reconnects, %.1f s backpressure",
	        st->streaming ? "streaming" : "not streaming", st->events, st->events - a->stats_events,
	        st->txns, st->in_flight, LSN_ARGS(st->received_lsn), LSN_ARGS(st->confirmed_lsn),
	        st->server_wal_end > st->confirmed_lsn ? st->server_wal_end - st->confirmed_lsn : 0,
	        st->reconnects, st->backpressure_seconds);
	a->stats_events = st->events;
}

static int
run(app *a)
{
	char err[512];

	a->backoff_ms = BACKOFF_MIN_MS;
	for (;;) {
		int64_t now = now_ms();
		int64_t timeout;
		struct pollfd pfd[2 + METRICS_MAX_CLIENTS + 1];
		int nfds = 0, src_idx = -1, mx_idx = 0, mx_n = 0;
		uint64_t confirmable;

		if (stop_signals > 0 && !a->stopping) {
			log_msg(LOG_INFO, "received shutdown signal: draining in-flight events (up to %d s)",
			        a->cfg.shutdown_timeout_s);
			begin_stop(a, 0);
		}
		if (reload_requested) {
			reload_requested = 0;
			log_msg(LOG_INFO, "received SIGHUP: reloading the configuration");
			notify_reloading(a);
			reload_config(a);
			if (a->nt != NULL && a->ready_sent)
				notify_send(a->nt, "READY=1");
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
		a->more_input = false;
		if (!a->stopping && source_connected(a->src) && a->dlq_head == NULL)
			read_stream(a);

		/* Reports wake the pipe; serving them on every turn would cost a
		 * read() per turn for nothing (sink_serve drains the pipe before
		 * the queue, so a report that arrives meanwhile wakes it again). */
		if (a->sink_woke || a->stopping) {
			a->sink_woke = false;
			sink_serve(a->snk);
		}
		confirmable = ledger_confirmable(&a->led);
		now = now_ms();
		if (source_connected(a->src) &&
		    (a->reply_due || now - a->last_status_ms >= status_interval(a) ||
		     (confirmable != a->reported && now - a->last_status_ms >= STATUS_MIN_GAP_MS)))
			send_status(a, now, false);
		check_liveness(a, now);

		if (a->cfg.endpos && confirmable >= a->cfg.endpos && !a->stopping) {
			log_msg(LOG_INFO, "reached end position " LSN_FMT, LSN_ARGS(a->cfg.endpos));
			begin_stop(a, 0);
		}
		/* What /metrics and /healthz show. */
		a->st.in_flight = ledger_pending(&a->led);
		check_kafka_stall(a, now);
		/* A pause that goes on shows in the counter as it grows. */
		a->st.backpressure_seconds = a->backpressure_done_s +
			(a->backpressure_since_ms ? (double) (now - a->backpressure_since_ms) / 1000.0 : 0);
		a->st.received_lsn = a->received;
		a->st.confirmed_lsn = a->reported;
		a->st.txns = a->txns;
		a->st.streaming = source_connected(a->src) && !a->stopping;
		if (a->stopping && a->st.health[0] == '\0')
			snprintf(a->st.health, sizeof(a->st.health), "stopping");
		else if (!a->st.streaming && a->st.health[0] == '\0')
			snprintf(a->st.health, sizeof(a->st.health), "connecting to PostgreSQL");

		if (a->cfg.stats_interval_s > 0) {
			if (a->next_stats_ms == 0)
				a->next_stats_ms = now + (int64_t) a->cfg.stats_interval_s * 1000;
			else if (now >= a->next_stats_ms) {
				log_stats(a);
				a->next_stats_ms = now + (int64_t) a->cfg.stats_interval_s * 1000;
			}
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
			int64_t due = a->last_status_ms + status_interval(a);
			if (confirmable != a->reported)
				due = a->last_status_ms + STATUS_MIN_GAP_MS;
			if (due - now < timeout)
				timeout = due - now;
		} else if (!a->stopping && a->next_connect_ms - now < timeout) {
			timeout = a->next_connect_ms - now;
		}
		if ((a->held != NULL || a->dlq_head != NULL) && timeout > BACKPRESSURE_POLL_MS)
			timeout = BACKPRESSURE_POLL_MS;
		if (a->more_input && a->held == NULL)
			timeout = 0;
		if (notify_watchdog_ms(a->nt) > 0) {
			if (now >= a->next_watchdog_ms) {
				notify_send(a->nt, "WATCHDOG=1");
				a->next_watchdog_ms = now + notify_watchdog_ms(a->nt);
			}
			if (a->next_watchdog_ms - now < timeout)
				timeout = a->next_watchdog_ms - now;
		}
		if (a->cfg.stats_interval_s > 0 && a->next_stats_ms - now < timeout)
			timeout = a->next_stats_ms - now;
		if (a->mx != NULL) {
			int64_t due = metrics_next_deadline(a->mx);
			if (due >= 0 && due - now < timeout)
				timeout = due - now;
		}
		if (timeout < 0)
			timeout = 0;

		pfd[nfds++] = (struct pollfd) {.fd = sink_fd(a->snk), .events = POLLIN};
		if (source_connected(a->src)) {
			short ev = 0;
			if (!a->stopping && a->held == NULL)
				ev |= POLLIN;
			if (source_wants_write(a->src))
				ev |= POLLOUT;
			src_idx = nfds;
			pfd[nfds++] = (struct pollfd) {.fd = source_fd(a->src), .events = ev};
		}
		if (a->mx != NULL) {
			mx_idx = nfds;
			mx_n = metrics_pollfds(a->mx, pfd + nfds, (int) (sizeof(pfd) / sizeof(pfd[0])) - nfds);
			nfds += mx_n;
		}
		if (poll(pfd, (nfds_t) nfds, (int) timeout) < 0 && errno != EINTR) {
			log_msg(LOG_ERROR, "poll failed: %s", strerror(errno));
			begin_stop(a, 2);
			break;
		}
		if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP))
			a->sink_woke = true;
		if (src_idx >= 0 && (pfd[src_idx].revents & POLLOUT) && source_connected(a->src)) {
			if (source_flush(a->src, err, sizeof(err)) == SOURCE_LOST)
				stream_lost(a, err);
		}
		if (a->mx != NULL && mx_n > 0)
			metrics_serve(a->mx, pfd + mx_idx, mx_n, now_ms());
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
	{
		uint64_t confirmed = ledger_confirmable(&a->led);
		char pos[64];

		if (confirmed)
			snprintf(pos, sizeof(pos), "confirmed " LSN_FMT, LSN_ARGS(confirmed));
		else
			snprintf(pos, sizeof(pos), "nothing confirmed in this run");
		log_msg(LOG_INFO, "stopped: %" PRIu64 " events in %" PRIu64 " transactions produced, "
		        "%" PRIu64 " acknowledged by Kafka, %" PRIu64 " sent to the dead-letter topic, %s",
		        a->events, a->txns, a->st.events, a->dead_letters, pos);
	}
	return a->exit_code;
}

/* --check ---------------------------------------------------------------- */

#define CHECK_KAFKA_TIMEOUT_MS 5000
#define CHECK_MAX_COLUMNS      16

typedef struct check_ctx {
	const config *cfg;
	const char   *pg_secret;
	int           fails, warns;
} check_ctx;

/* Print one result; whatever the libraries said, no password gets through. */
static void
print_check(void *ctx, check_status st, const char *check, const char *detail)
{
	check_ctx *c = ctx;
	char line[2048];
	size_t n;

	/* One line per item: libpq's multi-line messages are joined. */
	for (n = 0; *detail != '\0' && n + 1 < sizeof(line); detail++) {
		if (*detail == '\n' || *detail == '\t' || *detail == '\r') {
			if (n > 0 && line[n - 1] != ' ')
				line[n++] = ' ';
			continue;
		}
		line[n++] = *detail;
	}
	line[n] = '\0';
	redact_secret(line, sizeof(line), c->pg_secret);
	for (size_t i = 0; i < c->cfg->nkafka; i++)
		if (strstr(c->cfg->kafka[i].name, "password") || strstr(c->cfg->kafka[i].name, "secret"))
			redact_secret(line, sizeof(line), c->cfg->kafka[i].value);
	if (st == CHECK_FAIL)
		c->fails++;
	else if (st == CHECK_WARN)
		c->warns++;
	printf("%-4s  %s: %s\n", st == CHECK_OK ? "ok" : st == CHECK_WARN ? "warn" : "FAIL",
	       check, line);
	fflush(stdout);
}

/*
 * The columns the template routes by: each ${name} not listed yet, copied
 * into buf (NUL separated) and appended to cols[0..n).  Returns the new count.
 */
static size_t
template_columns(const char *tpl, char *buf, size_t buflen, const char **cols, size_t n,
                 size_t max)
{
	size_t used = 0;
	const char *p = tpl;

	while (n < max && (p = strstr(p, "${")) != NULL) {
		const char *end = strchr(p + 2, '}');
		size_t len;

		if (end == NULL)
			break;
		len = (size_t) (end - p - 2);
		if (used + len + 1 > buflen)
			break;
		memcpy(buf + used, p + 2, len);
		buf[used + len] = '\0';
		p = end + 1;
		for (size_t i = 0; i < n && buf[used] != '\0'; i++)
			if (strcmp(cols[i], buf + used) == 0)
				buf[used] = '\0';
		if (buf[used] == '\0')
			continue;
		cols[n++] = buf + used;
		used += len + 1;
	}
	return n;
}

/* What --check verifies of one outbox table: the columns its mapping reads. */
typedef struct check_table_cols {
	const char *cols[CHECK_MAX_COLUMNS + 1];
	const char *notnull[3];
	char        buf[1024];
} check_table_cols;

/*
 * --check: configuration errors exit 1, a failed check 2, all passed
 * (warnings allowed) 0.  Blocking is fine here: nothing streams.
 */
static int
run_check(const config *cfg)
{
	char err[1024];
	check_ctx c = {.cfg = cfg};
	source_config sc = {
		.conninfo = cfg->conninfo, .slot = cfg->slot, .publication = cfg->publication,
	};
	outbox_config oc = {
		.tables = cfg->tables, .ntables = cfg->ntables,
		.messages_prefix = cfg->messages_prefix, .messages = cfg->messages,
	};
	check_table_cols *tc = NULL;
	source_check_spec *specs = NULL;
	const char *fixed_topic = NULL;
	outbox *ob;
	source *src;
	int kafka;

	/* The mapping is validated as the daemon would. */
	if ((ob = outbox_new(&oc, err, sizeof(err))) == NULL) {
		fprintf(stderr, "pgoutbox: %s\n", err);
		return 1;
	}
	outbox_free(ob);
	/* Every outbox table against its own mapping. */
	if ((tc = calloc(cfg->ntables, sizeof(*tc))) == NULL ||
	    (specs = calloc(cfg->ntables, sizeof(*specs))) == NULL) {
		fprintf(stderr, "pgoutbox: out of memory\n");
		free(tc);
		return 1;
	}
	for (size_t i = 0; i < cfg->ntables; i++) {
		const outbox_mapping *map = &cfg->tables[i].map;
		size_t n;

		tc[i].cols[0] = map->col_id;
		tc[i].cols[1] = map->col_key;
		tc[i].cols[2] = map->col_type;
		tc[i].cols[3] = map->col_payload;
		n = template_columns(map->topic_template, tc[i].buf, sizeof(tc[i].buf), tc[i].cols, 4,
		                     CHECK_MAX_COLUMNS);
		tc[i].cols[n] = NULL;
		tc[i].notnull[0] = map->col_id;
		tc[i].notnull[1] = map->col_key;
		specs[i] = (source_check_spec) {.table = cfg->tables[i].table, .columns = tc[i].cols,
		                                .notnull = tc[i].notnull};
		/* A fixed topic (no ${...}) shared by all tables can be looked up. */
		if (i == 0 && strstr(map->topic_template, "${") == NULL)
			fixed_topic = map->topic_template;
		else if (fixed_topic != NULL && strcmp(fixed_topic, map->topic_template) != 0)
			fixed_topic = NULL;
	}
	if ((src = source_new(&sc, err, sizeof(err))) == NULL) {
		fprintf(stderr, "pgoutbox: %s\n", err);
		free(specs);
		free(tc);
		return 1;
	}
	c.pg_secret = source_secret(src);
	source_check(src, specs, cfg->ntables, print_check, &c);
	/* src stays alive until the end: c.pg_secret points into it. */
	kafka = sink_check(cfg->brokers, cfg->kafka, cfg->nkafka, fixed_topic,
	                   CHECK_KAFKA_TIMEOUT_MS, print_check, &c);
	source_free(src);
	free(specs);
	free(tc);
	if (kafka < 0)
		return 1;
	printf("%s: %d failed, %d warning(s)\n", c.fails ? "check failed" : "all checks passed",
	       c.fails, c.warns);
	return c.fails ? 2 : 0;
}

int
main(int argc, char **argv)
{
	app a;
	char err[1024];
	struct sigaction sa;
	int code;

	memset(&a, 0, sizeof(a));
	a.argc = argc;
	a.argv = argv;
	switch (config_load(&a.cfg, argc, argv, err, sizeof(err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		if (a.cfg.show_help)
			config_usage(stdout);
		else if (a.cfg.list_settings)
			config_list_settings(stdout);
		else
			printf("pgoutbox %s\n", PGOUTBOX_VERSION);
		return 0;
	case CONFIG_ERROR:
		fprintf(stderr, "pgoutbox: %s\nTry \"pgoutbox --help\" for more information.\n", err);
		return 1;
	}
	log_set_level((log_level) a.cfg.log_level);
	log_set_format((log_format) a.cfg.log_format);
	if (a.cfg.check) {
		code = run_check(&a.cfg);
		config_free(&a.cfg);
		return code;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup_signal;
	sigaction(SIGHUP, &sa, NULL);
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
	a.sink_woke = true;
	{
		/* Test hook for the fault tests; not a setting. */
		const char *v = getenv("PGOUTBOX_TEST_FATAL_AFTER");
		if (v != NULL)
			a.test_fatal_after = strtoull(v, NULL, 10);
	}
	log_msg(LOG_INFO, "pgoutbox %s starting (librdkafka %s)", PGOUTBOX_VERSION,
	        sink_library_version());
	a.nt = notify_open(err, sizeof(err));
	if (a.nt == NULL && err[0] != '\0')
		log_msg(LOG_WARNING, "%s; not notifying systemd", err);
	if (!metrics_listen(&a, a.cfg.metrics, err, sizeof(err))) {
		log_msg(LOG_ERROR, "%s", err);
		code = 1;
		goto out;
	}
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
	metrics_free(a.mx);
	free(a.mx_addr);
	notify_close(a.nt);
	config_free(&a.cfg);
	return code;
}
