/*
 * kafka_txn.c — exactly-once delivery: the transactional sink.  See kafka.h.
 *
 * A message is "delivered" (reported ok) when the Kafka transaction that
 * holds it committed.  Every Kafka transaction holds the events of whole
 * source transactions and, last, one record in the compacted state topic:
 * key the transactional id, value {"lsn", "system_id", "slot", "timeline"}
 * where lsn is the end LSN of the last source transaction in it.  So a
 * committed Kafka transaction says by itself how far the slot is in Kafka,
 * whatever PostgreSQL was told before a crash.
 *
 * Start-up (at the client's first session, when it holds the slot):
 * init_transactions() fences an older producer with the same id and ends
 * its open transaction; then the state topic is created if missing
 * (compacted) and read with read_committed up to its end.  Events of a
 * source transaction whose commit LSN is below the stored LSN (the replay
 * from the slot's older confirmed position) are acknowledged without being
 * produced, so the slot is confirmed up to the stored LSN within moments.
 * For a source transaction T and the end E of a committed one, T ends at
 * or before E exactly when T's commit LSN (Begin's final LSN, carried as
 * sink_event.lsn) is below E: commit records do not overlap.
 *
 * Batching: a Kafka transaction is committed when the stream has nothing
 * more to read (sink_idle), or at the first source transaction end once it
 * is transaction_max_ms old or holds transaction_max_events events; never
 * in the middle of a source transaction.  Events handed over while a
 * commit runs wait in a bounded list (pending) and go into the next
 * transaction, so the stream is read on meanwhile.
 *
 * The loop never blocks on a transaction: librdkafka 2.0.2's
 * init_transactions(), commit_transaction() and abort_transaction() block
 * up to their timeout, so a worker thread of the sink makes those calls
 * (with WORKER_CALL_MS, resumed after a retriable time-out) and wakes the
 * loop through the sink's pipe when one is done; the loop meanwhile keeps
 * reading the stream (into the pending list), answering keepalives and
 * serving /metrics.  Short timeouts on the loop's own thread were tried
 * first and are unsafe in 2.0.2: the first phase of commit and abort is not
 * resumable, a call that times out there leaves its request queued, and the
 * stale answer is taken by the next call (seen as "Operation not valid in
 * state BeginAbort", and as begin_transaction() "succeeding" in state
 * Ready).  Only the worker calls those three; everything else
 * (begin_transaction, produce, poll, the reports) stays on the loop's
 * thread.  librdkafka's callbacks may run on either (commit's flush serves
 * them), so they only leave notes in `shared`, under its mutex, which the
 * loop collects.
 *
 * Errors:
 *   - refused at produce time (too large, bad topic): SINK_REFUSED, and the
 *     pipeline dead-letters the event inside the same transaction;
 *   - refused in a delivery report (a topic's max.message.bytes below the
 *     producer's, no write permission): librdkafka fails the whole
 *     transaction, so it is aborted and read again; the event is
 *     remembered (by content) and refused at produce time when it comes
 *     again, so the replay dead-letters it (or stops) instead of looping;
 *   - any other abortable error (timeouts, a broker restart): abort, drop
 *     what was taken (dropped reports: the pipeline reads its stream again
 *     from the slot's confirmed position, which is at or below the stored
 *     LSN, and the replay skips what is committed);
 *   - fatal, fenced included: sink_fatal(); main rebuilds the producer and
 *     the new one initializes only when its pipeline holds the slot again,
 *     so a fenced pgoutbox waits as a standby instead of fencing back;
 *   - a state record of another database or slot under our id, or a
 *     producer that cannot be configured: sink_misconfigured(), exit 1.
 *
 * One pipeline per transactional sink (the state record holds one LSN).
 */
#include "kafka_int.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LSN_FMT "%X/%X"
#define LSN_ARGS(lsn) (unsigned) ((lsn) >> 32), (unsigned) (lsn)

#define TXN_CALL_MS        10        /* longest a start-up step blocks the loop (state topic) */
#define WORKER_CALL_MS     5000      /* one transactional API call of the worker */
#define SHARED_REFUSALS    16        /* refusals noted by callbacks between two collects */
/*
 * After a commit, the next transaction begins this much later.  The
 * coordinator answers EndTxn before it has written the commit markers, and
 * until it has, the next transaction's AddPartitionsToTxn is answered
 * CONCURRENT_TRANSACTIONS, which librdkafka 2.0.2 retries after 20 ms.
 * Measured at 2,000 events/s on a 2-core machine, 10 s each, against a
 * broker with a 1 GB heap: 19 such retries in 2,614 commits without the
 * pause, 4 in 1,899 with 1 ms, none in 1,610 with 2 ms or in 1,346 with
 * 3 ms.  Every commit cycle is one pause long more, and an event waits up
 * to two cycles: p99 commit-to-consumer 14.0-14.2 ms with 2 ms in two
 * rounds of three (29.7 in a noisy one), 17.7-19.5 ms with 3 ms, 16.1-19.6
 * ms with 1 ms (docs/benchmarks.md).  Events read meanwhile wait in the
 * pending list; the commit's reports are not delayed.
 */
#define SETTLE_MS          2
#define PENDING_MAX_BYTES  (16u << 20)  /* events waiting for the next transaction */
#define REFUSED_MAX        256       /* events refused in reports, remembered */
#define SLOW_WARN_MS       10000     /* a step this slow is logged */
#define STATE_TOPIC_WAIT_MS 30000    /* for a state topic just created to show up */
#define DESTROY_CALL_MS    5000      /* at exit: finishing or aborting the open transaction */
#define STATE_OPAQUE       ((void *) (uintptr_t) UINT64_MAX)

typedef enum txn_state {
	TS_IDLE = 0,   /* no session yet, so no producer */
	TS_INIT,       /* init_transactions() */
	TS_TOPIC,      /* creating the state topic */
	TS_READ,       /* reading the state topic */
	TS_READY,      /* no Kafka transaction open */
	TS_OPEN,       /* a Kafka transaction open */
	TS_COMMIT,     /* committing it (the state record goes in first) */
	TS_ABORT,      /* aborting it */
	TS_FAILED,     /* fatal: see fatal_msg */
} txn_state;

/* Messages in a row with one opaque (and commit time): reported together. */
typedef struct txn_run {
	uint64_t packed;
	uint64_t count;
	uint64_t bytes;
	int64_t  timestamp_ms;
} txn_run;

typedef struct run_list {
	txn_run *v;
	size_t   n, cap;
	uint64_t messages;
} run_list;

/* An event taken while no transaction could receive it, or a source transaction's end. */
typedef struct pending {
	struct pending *next;
	sink_event     *ev;        /* owned (sink_event_dup); NULL: an end */
	uint64_t        packed;
	uint64_t        end_lsn;   /* an end */
	size_t          bytes;
	uint64_t        seq;       /* in the order taken */
} pending;

/* An event Kafka refused in a report, by content: refused at once when it comes again. */
typedef struct refusal {
	uint64_t   hash;
	sink_error err;
} refusal;

typedef enum txn_job { JOB_NONE = 0, JOB_INIT, JOB_COMMIT, JOB_ABORT } txn_job;

/*
 * Between the loop's thread, the worker, and librdkafka's callbacks (which
 * run on whichever thread serves the queue).  Everything under mu.
 */
typedef struct txn_shared {
	pthread_mutex_t   mu;
	pthread_cond_t    cv;
	/* the worker's job */
	txn_job           todo;          /* set by the loop, taken by the worker */
	bool              result_ready;
	rd_kafka_error_t *result;        /* of the job finished last (NULL: success) */
	bool              quit;
	/* notes of the callbacks */
	bool              doomed;
	char              doom_why[256];
	refusal           refused[SHARED_REFUSALS];
	size_t            nrefused;
	bool              fatal, fatal_config;
	char              fatal_msg[512];
	bool              have_error;
	char              last_error[256];
	bool              settled;       /* SETTLE_MS passed since the last commit */
} txn_shared;

typedef struct txn_sink {
	sink              base;          /* first: a txn_sink is a sink */
	kafka_txn_config  cfg;           /* strings borrowed (see kafka.h), except: */
	char             *state_topic;
	char             *id_override;
	metrics_txn_stats dummy_stats;   /* when cfg.stats is NULL */
	metrics_txn_stats *stats;

	rd_kafka_t       *rk;
	rd_kafka_queue_t *mainq;
	int               pipefd[2];
	kafka_topics      topics;
	rd_kafka_topic_t *state_rkt;
	long long         max_msg_bytes;
	uint64_t          queue_messages;

	txn_state         state;
	int64_t           phase_ms;      /* when the current state began */
	bool              slow_logged;
	char              txn_id[256];
	bool              have_origin;
	uint64_t          system_id;
	uint32_t          timeline;
	char              slot[128];

	/* start-up */
	rd_kafka_queue_t *adminq;
	bool              topic_tried;   /* the state topic was missing: CreateTopics was sent */
	int64_t           topic_tried_ms;
	bool              topic_failed;  /* CreateTopics failed: why */
	char              topic_error[256];
	rd_kafka_t       *consumer;
	rd_kafka_queue_t *cq;
	rd_kafka_topic_t *crkt;
	int64_t           read_target;   /* high watermark at the first end of the state partition */
	bool              read_missing;  /* the reader says the topic does not exist */
	bool              record_found;  /* the latest record of ours, and not a tombstone */
	int64_t           record_offset;
	char              record_text[1024];

	/* what is in Kafka */
	uint64_t          committed;     /* LSN of the last committed state record */
	bool              floor_valid;   /* committed compares with this stream's LSNs */
	uint64_t          end_seen;      /* highest source transaction end taken */

	/* the Kafka transaction open, committing or aborting */
	run_list          txn;
	uint64_t          txn_events;
	uint64_t          txn_end_lsn;   /* what its state record says */
	uint32_t          txn_timeline;
	int64_t           txn_started_ms;
	bool              record_in;     /* its state record was produced */
	uint64_t          partial_in_txn;  /* its events after the client's last end */
	bool              doomed;        /* Kafka failed it: abort */
	char              doom_why[256];
	bool              want_commit;   /* the stream ran dry since the last commit */

	/* waiting for the next transaction */
	pending          *pend_head, *pend_tail, *pend_marker;  /* marker: the last end in it */
	size_t            npend, pend_bytes;
	uint64_t          partial_in_pend;

	run_list          acks;          /* replayed events already in Kafka: ok reports due */
	run_list          drops;         /* dropped reports due */
	/*
	 * Dropped reports went out (or wait in drops): the client reads its
	 * stream again from its confirmed position.  When what was dropped was
	 * taken from the stream that still runs, nothing more is taken from it
	 * until the client's next session: an event of it taken now could be
	 * committed, and the replay of a dropped one would then be skipped.  A
	 * session that began since starts at the confirmed position: its
	 * events are safe to take (and the client may even ignore the drops,
	 * having forgotten that stream already).
	 */
	bool              awaiting_restart;
	uint64_t          session_no;    /* sessions of the client so far */
	uint64_t          taken_session; /* the session of the last event taken */

	refusal           refused[REFUSED_MAX];
	size_t            nrefused, refused_next;

	bool              fatal;
	char              fatal_msg[512];
	rd_kafka_resp_err_t last_err;    /* last transient error logged (callbacks only) */
	char              last_error[256];
	uint64_t          ncommits;      /* commits asked for (the test hook fails every Nth) */

	txn_shared        sh;
	bool              sh_ready;      /* mu and cv initialized */
	pthread_t         worker;
	bool              worker_started;
	bool              job_submitted; /* the worker has (or had) the current state's job */
	bool              settling;      /* a commit just ended: the next transaction waits */
	uint64_t          pend_seq;      /* numbers pending entries */
	uint64_t          idle_seq;      /* entries numbered below were handed over before the last idle */
} txn_sink;

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Make the main loop call serve() again at once. */
static void
wake(txn_sink *ts)
{
	if (ts->pipefd[1] >= 0 && write(ts->pipefd[1], "1", 1) < 0 && errno != EAGAIN)
		log_msg(LOG_DEBUG, "could not wake the main loop: %s", strerror(errno));
}

static void
set_state(txn_sink *ts, txn_state st)
{
	ts->state = st;
	ts->phase_ms = now_ms();
	ts->slow_logged = false;
	ts->job_submitted = false;     /* a state's job is its own */
}

/* Fatal: main rebuilds the sink, or exits 1 when config (a configuration error). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
fail(txn_sink *ts, bool config, const char *fmt, ...)
{
	va_list ap;

	if (ts->fatal)
		return;
	va_start(ap, fmt);
	vsnprintf(ts->fatal_msg, sizeof(ts->fatal_msg), fmt, ap);
	va_end(ap);
	ts->fatal = true;
	ts->base.misconfigured = config;
	set_state(ts, TS_FAILED);
	if (!config)
		log_msg(LOG_ERROR, "%s", ts->fatal_msg);
	wake(ts);
}

static void
set_last_error(txn_sink *ts, const char *fmt, const char *what)
{
	snprintf(ts->last_error, sizeof(ts->last_error), fmt, what);
}

/* ---------------------------------------------------------------------------
 * Runs and the pending list
 * ------------------------------------------------------------------------- */

static bool
runs_add(run_list *l, uint64_t packed, uint64_t count, uint64_t bytes, int64_t ts)
{
	if (l->n > 0 && l->v[l->n - 1].packed == packed && l->v[l->n - 1].timestamp_ms == ts) {
		l->v[l->n - 1].count += count;
		l->v[l->n - 1].bytes += bytes;
	} else {
		if (l->n == l->cap) {
			size_t cap = l->cap ? l->cap * 2 : 64;
			txn_run *v = cap <= SIZE_MAX / sizeof(*v) ? realloc(l->v, cap * sizeof(*v)) : NULL;

			if (v == NULL)
				return false;
			l->v = v;
			l->cap = cap;
		}
		l->v[l->n++] = (txn_run) {packed, count, bytes, ts};
	}
	l->messages += count;
	return true;
}

static void
runs_free(run_list *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/*
 * Report every message of l (ok, or dropped with why) and empty it.  The
 * list is taken first: a client callback may produce again.
 */
static void
runs_dispatch(txn_sink *ts, run_list *l, bool ok, const char *why)
{
	run_list mine = *l;
	sink_report rep;

	memset(l, 0, sizeof(*l));
	for (size_t i = 0; i < mine.n; i++) {
		const txn_run *r = &mine.v[i];

		for (uint64_t k = 0; k < r->count; k++) {
			memset(&rep, 0, sizeof(rep));
			rep.ok = ok;
			rep.dropped = !ok;
			rep.topic = "";
			/* Per-message sizes are not kept: the run's total, spread. */
			rep.bytes = (size_t) (r->bytes / r->count + (k == 0 ? r->bytes % r->count : 0));
			rep.timestamp_ms = r->timestamp_ms;
			if (!ok) {
				rep.err.cls = SINK_CLASS_RETRIABLE;
				rep.err.name = "TRANSACTION_ABORTED";
				snprintf(rep.err.text, sizeof(rep.err.text), "%s", why);
			}
			sink_dispatch(&ts->base, r->packed, &rep);
		}
	}
	free(mine.v);
}

static size_t
event_bytes(const sink_event *ev)
{
	return ev->key_len + (ev->value ? ev->value_len : 0);
}

/* Append an event (ev != NULL, copied) or an end to the pending list. */
static bool
pend_add(txn_sink *ts, const sink_event *ev, uint64_t packed, uint64_t end_lsn)
{
	pending *p = calloc(1, sizeof(*p));

	if (p == NULL || (ev != NULL && (p->ev = sink_event_dup(ev)) == NULL)) {
		free(p);
		return false;
	}
	p->packed = packed;
	p->end_lsn = end_lsn;
	p->bytes = ev ? event_bytes(ev) : 0;
	p->seq = ts->pend_seq++;
	if (ts->pend_tail)
		ts->pend_tail->next = p;
	else
		ts->pend_head = p;
	ts->pend_tail = p;
	if (ev == NULL) {
		ts->pend_marker = p;
		ts->partial_in_pend = 0;
	} else {
		ts->npend++;
		ts->pend_bytes += p->bytes;
		ts->partial_in_pend++;
	}
	return true;
}

static pending *
pend_pop(txn_sink *ts)
{
	pending *p = ts->pend_head;

	if (p == NULL)
		return NULL;
	ts->pend_head = p->next;
	if (ts->pend_head == NULL)
		ts->pend_tail = NULL;
	if (ts->pend_marker == p)
		ts->pend_marker = NULL;
	if (p->ev) {
		ts->npend--;
		ts->pend_bytes -= p->bytes;
		/* With no end after it, it was of the open source transaction. */
		if (ts->pend_marker == NULL && ts->partial_in_pend > 0)
			ts->partial_in_pend--;
	}
	return p;
}

static void
pend_free(pending *p)
{
	if (p != NULL) {
		free(p->ev);
		free(p);
	}
}

/*
 * Drop pending events to the drops list: all of them, or (tail) only those
 * after the last end, which belong to a source transaction that will not
 * end.  Returns how many events were dropped.
 */
static uint64_t
pend_drop(txn_sink *ts, bool tail)
{
	pending *keep_to = tail ? ts->pend_marker : NULL;
	pending *p, *next;
	uint64_t n = 0;

	p = keep_to ? keep_to->next : ts->pend_head;
	for (; p != NULL; p = next) {
		next = p->next;
		if (p->ev != NULL) {
			if (!runs_add(&ts->drops, p->packed, 1, p->bytes, p->ev->timestamp_ms))
				log_msg(LOG_ERROR, "out of memory keeping a dropped report");
			ts->npend--;
			ts->pend_bytes -= p->bytes;
			n++;
		}
		pend_free(p);
	}
	if (keep_to) {
		keep_to->next = NULL;
		ts->pend_tail = keep_to;
	} else {
		ts->pend_head = ts->pend_tail = ts->pend_marker = NULL;
	}
	ts->partial_in_pend = 0;
	return n;
}

/* ---------------------------------------------------------------------------
 * Refusals remembered by content
 * ------------------------------------------------------------------------- */

static uint64_t
fnv(uint64_t h, const void *p, size_t len)
{
	const unsigned char *b = p;

	/* The length first, so that ("ab", "c") and ("a", "bc") differ. */
	for (int i = 0; i < 8; i++)
		h = (h ^ ((len >> (8 * i)) & 0xff)) * 1099511628211u;
	for (size_t i = 0; i < len; i++)
		h = (h ^ b[i]) * 1099511628211u;
	return h;
}

/* The content of a message: topic, key, value, headers (empty and null alike). */
static uint64_t
hash_event(const sink_event *ev)
{
	uint64_t h = 14695981039346656037u;

	h = fnv(h, ev->topic, strlen(ev->topic));
	h = fnv(h, ev->key, ev->key ? ev->key_len : 0);
	h = fnv(h, ev->value, ev->value ? ev->value_len : 0);
	for (size_t i = 0; i < ev->nheaders; i++) {
		h = fnv(h, ev->headers[i].name, strlen(ev->headers[i].name));
		h = fnv(h, ev->headers[i].value, ev->headers[i].value ? ev->headers[i].len : 0);
	}
	return h;
}

static uint64_t
hash_message(const rd_kafka_message_t *m)
{
	uint64_t h = 14695981039346656037u;
	const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
	rd_kafka_headers_t *hdrs = NULL;

	h = fnv(h, topic, strlen(topic));
	h = fnv(h, m->key, m->key ? m->key_len : 0);
	h = fnv(h, m->payload, m->payload ? m->len : 0);
	if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
		const char *name;
		const void *val;
		size_t len;

		for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &len) ==
		     RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
			h = fnv(h, name, strlen(name));
			h = fnv(h, val, val ? len : 0);
		}
	}
	return h;
}

static void
remember_refusal(txn_sink *ts, uint64_t hash, const sink_error *err)
{
	for (size_t i = 0; i < ts->nrefused; i++)
		if (ts->refused[i].hash == hash)
			return;
	/* Bounded: the oldest goes first. */
	ts->refused[ts->refused_next] = (refusal) {hash, *err};
	ts->refused_next = (ts->refused_next + 1) % REFUSED_MAX;
	if (ts->nrefused < REFUSED_MAX)
		ts->nrefused++;
}

static const refusal *
refused_before(const txn_sink *ts, const sink_event *ev)
{
	uint64_t h;

	if (ts->nrefused == 0)
		return NULL;
	h = hash_event(ev);
	for (size_t i = 0; i < ts->nrefused; i++)
		if (ts->refused[i].hash == h)
			return &ts->refused[i];
	return NULL;
}

/* ---------------------------------------------------------------------------
 * librdkafka's callbacks (on the loop's thread or the worker's)
 * ------------------------------------------------------------------------- */

/* The loop's own: the transaction failed, abort it. */
static void
doom(txn_sink *ts, const char *why)
{
	if (!ts->doomed)
		snprintf(ts->doom_why, sizeof(ts->doom_why), "%.250s", why);
	ts->doomed = true;
	wake(ts);
}

/* From a callback: the same, noted for the loop. */
static void
note_doom(txn_sink *ts, const char *why)
{
	pthread_mutex_lock(&ts->sh.mu);
	if (!ts->sh.doomed)
		snprintf(ts->sh.doom_why, sizeof(ts->sh.doom_why), "%.250s", why);
	ts->sh.doomed = true;
	pthread_mutex_unlock(&ts->sh.mu);
	wake(ts);
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
note_fatal(txn_sink *ts, bool config, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ts->sh.mu);
	if (!ts->sh.fatal) {
		va_start(ap, fmt);
		vsnprintf(ts->sh.fatal_msg, sizeof(ts->sh.fatal_msg), fmt, ap);
		va_end(ap);
		ts->sh.fatal = true;
		ts->sh.fatal_config = config;
	}
	pthread_mutex_unlock(&ts->sh.mu);
	wake(ts);
}

/* librdkafka's fatal error, named (a fence says what it means here). */
static void
note_fatal_error(txn_sink *ts, rd_kafka_t *rk)
{
	char buf[512];
	rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof(buf));

	if (orig == RD_KAFKA_RESP_ERR_PRODUCER_FENCED || orig == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH ||
	    orig == RD_KAFKA_RESP_ERR__FENCED)
		note_fatal(ts, false, "the Kafka producer was fenced (%s: %s): another pgoutbox with "
		           "transactional id \"%s\" took over, or the broker aborted a transaction older "
		           "than transaction.timeout.ms; this one stands by until it holds the slot again",
		           rd_kafka_err2name(orig), buf, ts->txn_id);
	else
		note_fatal(ts, false, "fatal Kafka producer error: %s: %s", rd_kafka_err2name(orig), buf);
}

static void
dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	txn_sink *ts = opaque;
	sink_error e;
	char why[512];

	(void) rk;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;      /* delivered, not committed: reported at the commit */
	if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
		note_doom(ts, "messages purged");
		return;      /* librdkafka purges after the error that failed the transaction */
	}
	kafka_set_error(&e, m->err);
	if (m->_private == STATE_OPAQUE) {
		snprintf(why, sizeof(why), "Kafka refused the state record for topic \"%s\": %s (%s)",
		         ts->state_topic, e.text, e.name);
		if (e.cls == SINK_CLASS_PERMANENT || e.cls == SINK_CLASS_TOO_LARGE)
			note_fatal(ts, true, "%s: exactly-once delivery cannot commit", why);
		else
			note_doom(ts, why);
		return;
	}
	snprintf(why, sizeof(why), "Kafka refused a message for topic \"%s\": %s (%s)",
	         m->rkt ? rd_kafka_topic_name(m->rkt) : "", e.text, e.name);
	if (e.cls == SINK_CLASS_PERMANENT || e.cls == SINK_CLASS_TOO_LARGE) {
		/* For good: refused at produce time when the replay brings it again. */
		uint64_t h = hash_message(m);

		pthread_mutex_lock(&ts->sh.mu);
		if (ts->sh.nrefused < SHARED_REFUSALS)
			ts->sh.refused[ts->sh.nrefused++] = (refusal) {h, e};
		pthread_mutex_unlock(&ts->sh.mu);
		log_msg(LOG_WARNING, "%s; aborting the Kafka transaction: the event is refused at once "
		        "when it is read again", why);
	}
	note_doom(ts, why);
}

static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	txn_sink *ts = opaque;
	bool again;

	if (err == RD_KAFKA_RESP_ERR__FATAL) {
		note_fatal_error(ts, rk);
		return;
	}
	pthread_mutex_lock(&ts->sh.mu);
	snprintf(ts->sh.last_error, sizeof(ts->sh.last_error), "%s", reason);
	ts->sh.have_error = true;
	again = (rd_kafka_resp_err_t) err == ts->last_err;
	ts->last_err = (rd_kafka_resp_err_t) err;
	pthread_mutex_unlock(&ts->sh.mu);
	if (!again)
		log_msg(err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ? LOG_WARNING : LOG_DEBUG, "Kafka: %s", reason);
}

/*
 * The producer's lines.  While a transaction coordinator loads (a new
 * cluster, a broker restart) librdkafka warns of every retry to get a
 * producer id; note_slow() says so once if it lasts.
 */
static void
producer_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (strcmp(fac, "GETPID") == 0 && strstr(buf, "retrying") != NULL)
		level = 7;
	kafka_log_cb(rk, level, fac, buf);
}

/* The state reader's lines: "producer property ignored by this consumer" is ours to expect. */
static void
consumer_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (strcmp(fac, "CONFWARN") == 0)
		level = 7;
	kafka_log_cb(rk, level, fac, buf);
}

static void
consumer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	txn_sink *ts = opaque;

	(void) rk;
	set_last_error(ts, "reading the state topic: %s", reason);   /* on the loop's thread */
	/* The legacy consumer says so here, not in its queue. */
	if (err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	    err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION)
		ts->read_missing = true;
}

/* ---------------------------------------------------------------------------
 * The producer
 * ------------------------------------------------------------------------- */

static void *worker_main(void *arg);

/* The producer's configuration with transactional id id; NULL with errbuf filled. */
static rd_kafka_conf_t *
txn_conf(txn_sink *ts, const char *id, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = kafka_make_conf(ts->cfg.brokers, ts->cfg.props, ts->cfg.nprops, true,
	                                        &ts->queue_messages, errbuf, errlen);
	long long tto;

	if (conf == NULL)
		return NULL;
	if (!kafka_conf_set(conf, "transactional.id", id, errbuf, errlen))
		goto error;
	tto = kafka_conf_int(conf, "transaction.timeout.ms");
	if (tto > 0 && ts->cfg.max_ms >= tto) {
		snprintf(errbuf, errlen, "transaction_max_ms = %d must be below the Kafka property "
		         "transaction.timeout.ms (%lld): the broker would abort the transaction first",
		         ts->cfg.max_ms, tto);
		goto error;
	}
	ts->max_msg_bytes = kafka_conf_int(conf, "message.max.bytes");
	return conf;
error:
	rd_kafka_conf_destroy(conf);
	return NULL;
}

/* Make the producer for the transactional id in ts->txn_id; false with errbuf filled. */
static bool
make_producer(txn_sink *ts, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = txn_conf(ts, ts->txn_id, errbuf, errlen);
	char err[256];

	if (conf == NULL)
		return false;
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rd_kafka_conf_set_log_cb(conf, producer_log_cb);
	if (!kafka_conf_set(conf, "log.queue", "true", errbuf, errlen)) {
		rd_kafka_conf_destroy(conf);
		return false;
	}
	rd_kafka_conf_set_opaque(conf, ts);
	/* rd_kafka_new() takes ownership of conf on success only. */
	if ((ts->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err))) == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(errbuf, errlen, "could not create the transactional Kafka producer: %s", err);
		return false;
	}
	if (!kafka_wakeup_open(ts->rk, ts->pipefd, &ts->mainq, errbuf, errlen))
		return false;
	if ((errno = pthread_create(&ts->worker, NULL, worker_main, ts)) != 0) {
		snprintf(errbuf, errlen, "could not start a thread: %s", strerror(errno));
		return false;
	}
	ts->worker_started = true;
	return true;
}

/* ---------------------------------------------------------------------------
 * Start-up: init_transactions, the state topic
 * ------------------------------------------------------------------------- */

/* Log once when a step of start-up or a commit takes long. */
static void
note_slow(txn_sink *ts, const char *what, const char *why)
{
	if (!ts->slow_logged && now_ms() - ts->phase_ms >= SLOW_WARN_MS) {
		ts->slow_logged = true;
		log_msg(LOG_WARNING, "%s takes more than %d s: %s", what, SLOW_WARN_MS / 1000,
		        why && why[0] ? why : "no answer yet");
	}
}

/* ---------------------------------------------------------------------------
 * The worker: init, commit and abort, which block
 * ------------------------------------------------------------------------- */

static rd_kafka_error_t *
run_call(txn_sink *ts, txn_job job)
{
	switch (job) {
	case JOB_INIT:
		return rd_kafka_init_transactions(ts->rk, WORKER_CALL_MS);
	case JOB_COMMIT:
		return rd_kafka_commit_transaction(ts->rk, WORKER_CALL_MS);
	case JOB_ABORT:
		return rd_kafka_abort_transaction(ts->rk, WORKER_CALL_MS);
	case JOB_NONE:
		break;
	}
	return NULL;
}

/*
 * One job to its end: a retriable error (a time-out, a coordinator still
 * loading) is called again, which resumes the operation, until it
 * succeeds, fails for good, or the sink goes away.  The loop is woken
 * after every call, so that it can say when a step takes long.
 */
static rd_kafka_error_t *
run_job(txn_sink *ts, txn_job job)
{
	for (;;) {
		rd_kafka_error_t *e = run_call(ts, job);
		bool quit;

		if (e == NULL || rd_kafka_error_is_fatal(e) || rd_kafka_error_txn_requires_abort(e) ||
		    !rd_kafka_error_is_retriable(e))
			return e;
		pthread_mutex_lock(&ts->sh.mu);
		if (rd_kafka_error_code(e) != RD_KAFKA_RESP_ERR__TIMED_OUT) {
			snprintf(ts->sh.last_error, sizeof(ts->sh.last_error), "%s", rd_kafka_error_string(e));
			ts->sh.have_error = true;
		}
		quit = ts->sh.quit;
		pthread_mutex_unlock(&ts->sh.mu);
		if (quit)
			return e;
		if (rd_kafka_error_code(e) != RD_KAFKA_RESP_ERR__TIMED_OUT) {
			struct timespec pause = {0, 100 * 1000 * 1000};   /* an immediate answer: not a spin */
			nanosleep(&pause, NULL);
		}
		rd_kafka_error_destroy(e);
		wake(ts);
	}
}

static void *
worker_main(void *arg)
{
	txn_sink *ts = arg;

	pthread_mutex_lock(&ts->sh.mu);
	for (;;) {
		txn_job job;
		rd_kafka_error_t *e;

		while (ts->sh.todo == JOB_NONE && !ts->sh.quit)
			pthread_cond_wait(&ts->sh.cv, &ts->sh.mu);
		if (ts->sh.quit)
			break;
		job = ts->sh.todo;
		ts->sh.todo = JOB_NONE;
		pthread_mutex_unlock(&ts->sh.mu);
		e = run_job(ts, job);
		pthread_mutex_lock(&ts->sh.mu);
		ts->sh.result = e;
		ts->sh.result_ready = true;
		ts->sh.settled = false;
		pthread_mutex_unlock(&ts->sh.mu);
		wake(ts);
		if (job == JOB_COMMIT && e == NULL) {
			struct timespec pause = {0, SETTLE_MS * 1000000L};
			nanosleep(&pause, NULL);
		}
		pthread_mutex_lock(&ts->sh.mu);
		ts->sh.settled = true;
		pthread_mutex_unlock(&ts->sh.mu);
		wake(ts);
		pthread_mutex_lock(&ts->sh.mu);
	}
	pthread_mutex_unlock(&ts->sh.mu);
	return NULL;
}

/*
 * The current state's job: handed to the worker on the first call; true
 * once it finished, *error its result (taken; NULL: success).
 */
static bool
job_done(txn_sink *ts, txn_job job, rd_kafka_error_t **error)
{
	bool done = false;

	pthread_mutex_lock(&ts->sh.mu);
	if (!ts->job_submitted) {
		ts->sh.todo = job;
		ts->sh.result_ready = false;
		ts->job_submitted = true;
		pthread_cond_signal(&ts->sh.cv);
	} else if (ts->sh.result_ready) {
		*error = ts->sh.result;
		ts->sh.result = NULL;
		ts->sh.result_ready = false;
		ts->job_submitted = false;
		done = true;
	}
	pthread_mutex_unlock(&ts->sh.mu);
	return done;
}

/* Take the callbacks' notes: doom, refusals, a fatal error, the last error. */
static void
collect(txn_sink *ts)
{
	bool doomed, fatal, config;
	char why[256], msg[512];
	refusal r[SHARED_REFUSALS];
	size_t nr;

	pthread_mutex_lock(&ts->sh.mu);
	doomed = ts->sh.doomed;
	snprintf(why, sizeof(why), "%s", ts->sh.doom_why);
	ts->sh.doomed = false;
	nr = ts->sh.nrefused;
	memcpy(r, ts->sh.refused, nr * sizeof(r[0]));
	ts->sh.nrefused = 0;
	fatal = ts->sh.fatal;
	config = ts->sh.fatal_config;
	snprintf(msg, sizeof(msg), "%s", ts->sh.fatal_msg);
	if (ts->sh.have_error) {
		snprintf(ts->last_error, sizeof(ts->last_error), "%s", ts->sh.last_error);
		ts->sh.have_error = false;
	}
	if (ts->sh.settled)
		ts->settling = false;
	pthread_mutex_unlock(&ts->sh.mu);
	for (size_t i = 0; i < nr; i++)
		remember_refusal(ts, r[i].hash, &r[i].err);
	if (doomed)
		doom(ts, why);
	if (fatal)
		fail(ts, config, "%s", msg);
}

/* A transactional API result: NULL (done) or an error object, taken. */
typedef enum api_rc { API_DONE, API_AGAIN, API_ABORT, API_FATAL } api_rc;

static api_rc
api_result(txn_sink *ts, rd_kafka_error_t *error, const char *what)
{
	api_rc rc;

	if (error == NULL)
		return API_DONE;
	if (rd_kafka_error_is_fatal(error)) {
		if (rd_kafka_fatal_error(ts->rk, NULL, 0) != RD_KAFKA_RESP_ERR_NO_ERROR) {
			note_fatal_error(ts, ts->rk);     /* names a fence as such */
			collect(ts);
		} else {
			fail(ts, false, "%s failed fatally: %s (%s)", what, rd_kafka_error_string(error),
			     rd_kafka_error_name(error));
		}
		rc = API_FATAL;
	} else if (rd_kafka_error_txn_requires_abort(error)) {
		doom(ts, rd_kafka_error_string(error));
		rc = API_ABORT;
	} else if (rd_kafka_error_is_retriable(error)) {
		if (rd_kafka_error_code(error) != RD_KAFKA_RESP_ERR__TIMED_OUT) {
			set_last_error(ts, "%s", rd_kafka_error_string(error));
			log_msg(LOG_DEBUG, "%s: %s (retrying)", what, rd_kafka_error_string(error));
		}
		rc = API_AGAIN;
	} else {
		fail(ts, false, "%s failed: %s (%s)", what, rd_kafka_error_string(error),
		     rd_kafka_error_name(error));
		rc = API_FATAL;
	}
	rd_kafka_error_destroy(error);
	return rc;
}

static void
start_topic(txn_sink *ts)
{
	rd_kafka_NewTopic_t *nt;
	rd_kafka_AdminOptions_t *opt;
	char err[256];

	set_state(ts, TS_TOPIC);
	ts->topic_tried = true;
	ts->topic_tried_ms = ts->phase_ms;
	ts->adminq = rd_kafka_queue_new(ts->rk);
	/* One partition (the record goes to partition 0); replication as the
	 * broker's default; compacted, in small segments, so that a start reads
	 * little more than the latest record of each id. */
	nt = rd_kafka_NewTopic_new(ts->state_topic, 1, -1, err, sizeof(err));
	opt = rd_kafka_AdminOptions_new(ts->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	if (ts->adminq == NULL || nt == NULL || opt == NULL ||
	    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact") ||
	    rd_kafka_NewTopic_set_config(nt, "segment.bytes", "16777216") ||
	    rd_kafka_NewTopic_set_config(nt, "segment.ms", "3600000") ||
	    rd_kafka_NewTopic_set_config(nt, "min.cleanable.dirty.ratio", "0.1") ||
	    rd_kafka_AdminOptions_set_request_timeout(opt, 10000, err, sizeof(err))) {
		ts->topic_failed = true;
		snprintf(ts->topic_error, sizeof(ts->topic_error), "%s", nt ? err : "out of memory");
	} else {
		rd_kafka_CreateTopics(ts->rk, &nt, 1, opt, ts->adminq);
	}
	if (nt)
		rd_kafka_NewTopic_destroy(nt);
	if (opt)
		rd_kafka_AdminOptions_destroy(opt);
}

static void start_read(txn_sink *ts);

static void
step_topic(txn_sink *ts)
{
	rd_kafka_event_t *ev = NULL;

	if (!ts->topic_failed && (ev = rd_kafka_queue_poll(ts->adminq, TXN_CALL_MS)) == NULL) {
		note_slow(ts, "creating the state topic", NULL);
		return;
	}
	if (ev != NULL) {
		const rd_kafka_CreateTopics_result_t *r = rd_kafka_event_CreateTopics_result(ev);
		const rd_kafka_topic_result_t **tr;
		size_t n = 0;

		if (rd_kafka_event_error(ev)) {
			ts->topic_failed = true;
			snprintf(ts->topic_error, sizeof(ts->topic_error), "%s", rd_kafka_event_error_string(ev));
		} else if (r != NULL && (tr = rd_kafka_CreateTopics_result_topics(r, &n)) != NULL && n == 1) {
			rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[0]);

			if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
				log_msg(LOG_INFO, "created state topic \"%s\" (compacted)", ts->state_topic);
			else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
				ts->topic_failed = true;
				snprintf(ts->topic_error, sizeof(ts->topic_error), "%s",
				         rd_kafka_topic_result_error_string(tr[0]) ?
				         rd_kafka_topic_result_error_string(tr[0]) : rd_kafka_err2str(e));
			}
		}
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_queue_destroy(ts->adminq);
	ts->adminq = NULL;
	if (ts->topic_failed) {
		fail(ts, true, "state topic \"%s\" does not exist and could not be created: %s; create it "
		     "with cleanup.policy=compact", ts->state_topic, ts->topic_error);
		return;
	}
	start_read(ts);
}

static void
stop_reader(txn_sink *ts)
{
	if (ts->crkt != NULL) {
		rd_kafka_consume_stop(ts->crkt, 0);
		rd_kafka_topic_destroy(ts->crkt);
		ts->crkt = NULL;
	}
	if (ts->cq != NULL) {
		rd_kafka_queue_destroy(ts->cq);
		ts->cq = NULL;
	}
	if (ts->consumer != NULL) {
		rd_kafka_destroy(ts->consumer);
		ts->consumer = NULL;
	}
}

/*
 * Read the state topic's partition 0 from the start with read_committed,
 * with a consumer configured like the producer (TLS, SASL) and no group.
 */
static void
start_read(txn_sink *ts)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char err[512];

	set_state(ts, TS_READ);
	ts->read_target = -1;
	ts->read_missing = false;
	if (conf == NULL) {
		fail(ts, false, "out of memory");
		return;
	}
	if (!kafka_conf_set(conf, "bootstrap.servers", ts->cfg.brokers, err, sizeof(err)))
		goto conf_error;
	for (size_t i = 0; i < ts->cfg.nprops; i++)
		if (!kafka_conf_set(conf, ts->cfg.props[i].name, ts->cfg.props[i].value, err, sizeof(err)))
			goto conf_error;
	if (!kafka_conf_set(conf, "client.id", "pgoutbox-state", err, sizeof(err)) ||
	    !kafka_conf_set(conf, "isolation.level", "read_committed", err, sizeof(err)) ||
	    !kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err)) ||
	    /* The end of the partition is what it waits for: no fetch lingers. */
	    !kafka_conf_set(conf, "fetch.wait.max.ms", "10", err, sizeof(err)) ||
	    /* From offset 0, which needs no offset lookup (librdkafka retries one
	     * after 500 ms when the leader is not known yet); compaction may have
	     * removed the first records: then the earliest one. */
	    !kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof(err)) ||
	    /* A missing topic is reported after this (librdkafka's 30 s wait
	     * for a new topic to propagate): it is then created and read again. */
	    !kafka_conf_set(conf, "topic.metadata.propagation.max.ms", "1000", err, sizeof(err)) ||
	    !kafka_conf_set(conf, "log.queue", "true", err, sizeof(err)))
		goto conf_error;
	rd_kafka_conf_set_log_cb(conf, consumer_log_cb);
	rd_kafka_conf_set_error_cb(conf, consumer_error_cb);
	rd_kafka_conf_set_opaque(conf, ts);
	if ((ts->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err))) == NULL)
		goto conf_error;
	rd_kafka_set_log_queue(ts->consumer, NULL);
	if ((ts->crkt = rd_kafka_topic_new(ts->consumer, ts->state_topic, NULL)) == NULL ||
	    (ts->cq = rd_kafka_queue_new(ts->consumer)) == NULL ||
	    rd_kafka_consume_start_queue(ts->crkt, 0, 0, ts->cq) != 0) {
		fail(ts, false, "could not read state topic \"%s\": %s", ts->state_topic,
		     rd_kafka_err2str(rd_kafka_last_error()));
		return;
	}
	return;
conf_error:
	if (ts->consumer == NULL)
		rd_kafka_conf_destroy(conf);
	fail(ts, true, "could not create the state topic's reader: %s", err);
}

/* The latest record of ours (value NULL: a tombstone, the state was reset). */
static void
keep_record(txn_sink *ts, const rd_kafka_message_t *m)
{
	ts->record_found = m->payload != NULL;
	ts->record_offset = m->offset;
	snprintf(ts->record_text, sizeof(ts->record_text), "%.*s",
	         (int) (m->len < sizeof(ts->record_text) - 1 ? m->len : sizeof(ts->record_text) - 1),
	         m->payload ? (const char *) m->payload : "");
}

/* The latest record, parsed: false (after fail()) when it is not ours to use. */
static bool
take_record(txn_sink *ts)
{
	json_t *root;
	json_error_t je;
	const char *lsn_s = NULL, *sys_s = NULL, *slot_s = NULL;
	json_int_t tl = 0;
	uint64_t lsn_hi, lsn_lo, sys = 0;
	char *end;
	bool ok;

	root = json_loads(ts->record_text, 0, &je);
	ok = root != NULL && json_unpack(root, "{s:s, s:s, s:s, s:I}", "lsn", &lsn_s, "system_id", &sys_s,
	                                 "slot", &slot_s, "timeline", &tl) == 0 &&
	     sscanf(lsn_s, "%" SCNx64 "/%" SCNx64, &lsn_hi, &lsn_lo) == 2 && lsn_hi <= UINT32_MAX &&
	     lsn_lo <= UINT32_MAX;
	if (ok) {
		errno = 0;
		sys = strtoull(sys_s, &end, 10);
		ok = end != sys_s && *end == '\0' && errno == 0;
	}
	if (!ok) {
		json_decref(root);
		fail(ts, true, "the state record of transactional id \"%s\" in topic \"%s\" (offset %" PRId64
		     ") is not pgoutbox's: %s", ts->txn_id, ts->state_topic, ts->record_offset, ts->record_text);
		return false;
	}
	if (sys != ts->system_id || strcmp(slot_s, ts->slot) != 0) {
		fail(ts, true, "the state record of transactional id \"%s\" in topic \"%s\" is of database "
		     "system %s, slot \"%s\", but this pgoutbox streams system %" PRIu64 ", slot \"%s\": "
		     "give each slot its own transactional_id", ts->txn_id, ts->state_topic, sys_s, slot_s,
		     ts->system_id, ts->slot);
		json_decref(root);
		return false;
	}
	ts->committed = lsn_hi << 32 | lsn_lo;
	ts->floor_valid = (uint32_t) tl == ts->timeline;
	json_decref(root);
	return true;
}

static void
finish_read(txn_sink *ts)
{
	stop_reader(ts);
	if (ts->record_found && !take_record(ts))
		return;
	/* Only now: a producer's handle asks for the topic's metadata, which
	 * lets a broker with auto.create.topics.enable create a missing topic,
	 * not compacted. */
	if ((ts->state_rkt = rd_kafka_topic_new(ts->rk, ts->state_topic, NULL)) == NULL) {
		fail(ts, true, "state topic \"%s\": %s", ts->state_topic,
		     rd_kafka_err2str(rd_kafka_last_error()));
		return;
	}
	if (!ts->record_found) {
		ts->committed = 0;
		ts->floor_valid = true;
		log_msg(LOG_INFO, "exactly-once delivery with transactional id \"%s\": no state record in "
		        "topic \"%s\" yet", ts->txn_id, ts->state_topic);
	} else if (ts->floor_valid) {
		log_msg(LOG_INFO, "exactly-once delivery with transactional id \"%s\": Kafka has every "
		        "transaction up to " LSN_FMT " (state topic \"%s\"); the replay up to there is "
		        "acknowledged without sending it again", ts->txn_id, LSN_ARGS(ts->committed),
		        ts->state_topic);
	} else {
		log_detail(LOG_WARNING, "exactly-once holds within a timeline only: transactions of the "
		           "new timeline are sent even if their LSN is below the recorded one, and those "
		           "before the switch may be sent twice",
		           "the state record of transactional id \"%s\" is of another timeline than %u (%s)",
		           ts->txn_id, ts->timeline, ts->record_text);
		ts->committed = 0;
	}
	ts->end_seen = ts->committed;
	set_state(ts, TS_READY);
	ts->last_error[0] = '\0';
}

static void
step_read(txn_sink *ts)
{
	rd_kafka_message_t *msgs[64];
	ssize_t n;
	bool done = false;

	rd_kafka_poll(ts->consumer, 0);
	n = rd_kafka_consume_batch_queue(ts->cq, TXN_CALL_MS, msgs, 64);
	for (ssize_t i = 0; i < n; i++) {
		rd_kafka_message_t *m = msgs[i];
		int64_t lo, hi;

		if (done || ts->state != TS_READ) {
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			/* At the end of what is committed.  Later records are of
			 * transactions open now (of other ids: ours was fenced):
			 * read up to the high watermark seen at the first end. */
			if (rd_kafka_get_watermark_offsets(ts->consumer, ts->state_topic, 0, &lo, &hi) != 0)
				hi = -1;
			if (ts->read_target < 0)
				ts->read_target = hi;
			done = hi < 0 || m->offset >= ts->read_target;
		} else if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
		           m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		           m->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION) {
			ts->read_missing = true;
		} else if (m->err) {
			set_last_error(ts, "reading the state topic: %s", rd_kafka_err2str(m->err));
		} else if (m->key_len == strlen(ts->txn_id) && m->key != NULL &&
		           memcmp(m->key, ts->txn_id, m->key_len) == 0) {
			keep_record(ts, m);
		}
		rd_kafka_message_destroy(m);
	}
	/* Not before every message is destroyed: rd_kafka_destroy() waits for them. */
	if (done && ts->state == TS_READ) {
		finish_read(ts);
	} else if (ts->read_missing && ts->state == TS_READ) {
		/* No state topic: create it, then read it with a fresh reader
		 * (one cannot see it before its next metadata refresh), at most
		 * every half second while it does not show up. */
		if (!ts->topic_tried) {
			stop_reader(ts);
			start_topic(ts);
		} else if (now_ms() - ts->topic_tried_ms > STATE_TOPIC_WAIT_MS) {
			stop_reader(ts);
			fail(ts, true, "state topic \"%s\" was created but does not show up", ts->state_topic);
		} else if (now_ms() - ts->phase_ms >= 500) {
			stop_reader(ts);
			start_read(ts);
		}
	}
	if (ts->state == TS_READ)
		note_slow(ts, "reading the state topic", ts->last_error);
}

static void
step_init(txn_sink *ts)
{
	rd_kafka_error_t *error = NULL;

	if (!job_done(ts, JOB_INIT, &error)) {
		note_slow(ts, "initializing Kafka transactions", ts->last_error);
		return;
	}
	switch (api_result(ts, error, "initializing Kafka transactions")) {
	case API_DONE:
		log_msg(LOG_DEBUG, "Kafka transactions initialized for transactional id \"%s\"", ts->txn_id);
		start_read(ts);
		break;
	case API_AGAIN:      /* the worker gave up (the sink goes away) */
		break;
	case API_ABORT:      /* not for init: treated as fatal */
		fail(ts, false, "could not initialize Kafka transactions: %s", ts->doom_why);
		break;
	case API_FATAL:
		break;
	}
}

/* ---------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------- */

static bool
have_uncommitted(const txn_sink *ts)
{
	return ts->txn.messages > 0 || ts->pend_head != NULL;
}

/* The transaction's content is final: new events wait for the next one. */
static void
begin_commit(txn_sink *ts)
{
	if (ts->cfg.test_abort_every && ++ts->ncommits % ts->cfg.test_abort_every == 0) {
		/* As an abortable error at commit time would. */
		doom(ts, "forced by PGOUTBOX_TEST_ABORT_EVERY");
		return;
	}
	set_state(ts, TS_COMMIT);
	if (ts->pend_head == NULL || ts->pend_head->seq >= ts->idle_seq)
		ts->want_commit = false;
	ts->record_in = false;
	ts->job_submitted = false;
	wake(ts);
}

/* Commit when due: at a source transaction boundary, with something in it. */
static void
maybe_commit(txn_sink *ts)
{
	if (ts->state != TS_OPEN || ts->doomed || ts->partial_in_txn > 0 || ts->txn.messages == 0)
		return;
	/* The stream ran dry: commit once what was handed over before is in. */
	if ((ts->want_commit && (ts->pend_head == NULL || ts->pend_head->seq >= ts->idle_seq)) ||
	    ts->txn_events >= (uint64_t) ts->cfg.max_events ||
	    now_ms() - ts->txn_started_ms >= ts->cfg.max_ms)
		begin_commit(ts);
}

/* A source transaction ended: its events are all in. */
static void
apply_end(txn_sink *ts, uint64_t end_lsn)
{
	ts->partial_in_txn = 0;
	if (ts->state == TS_OPEN && end_lsn > ts->txn_end_lsn)
		ts->txn_end_lsn = end_lsn;
	maybe_commit(ts);
}

static bool
begin_txn(txn_sink *ts)
{
	switch (api_result(ts, rd_kafka_begin_transaction(ts->rk), "beginning a Kafka transaction")) {
	case API_DONE:
		set_state(ts, TS_OPEN);
		ts->txn_started_ms = ts->phase_ms;
		ts->txn_events = 0;
		ts->txn_end_lsn = ts->committed;
		ts->txn_timeline = ts->timeline;
		ts->partial_in_txn = 0;
		return true;
	case API_AGAIN:
	case API_ABORT:
		fail(ts, false, "could not begin a Kafka transaction");
		return false;
	case API_FATAL:
		return false;
	}
	return false;
}

typedef enum put_rc { PUT_OK, PUT_FULL, PUT_REFUSED, PUT_FATAL } put_rc;

/*
 * Produce ev into the open transaction (beginning one if none is open).
 * PUT_REFUSED with *e: librdkafka refused it at once (ev is not in Kafka).
 */
static put_rc
put(txn_sink *ts, const sink_event *ev, uint64_t packed, sink_error *e)
{
	rd_kafka_topic_t *rkt;
	rd_kafka_headers_t *hdrs;
	rd_kafka_resp_err_t err;

	if ((rkt = kafka_topic_handle(&ts->topics, ts->rk, ev->topic, e)) == NULL)
		return e->cls == SINK_CLASS_FATAL ? PUT_FATAL : PUT_REFUSED;
	if ((hdrs = kafka_headers(ev, e)) == NULL)
		return PUT_REFUSED;
	if (ts->state == TS_READY && !begin_txn(ts)) {
		rd_kafka_headers_destroy(hdrs);
		return PUT_FATAL;
	}
	err = rd_kafka_producev(ts->rk,
	                        RD_KAFKA_V_RKT(rkt),
	                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                        RD_KAFKA_V_KEY(ev->key, ev->key_len),
	                        RD_KAFKA_V_VALUE((void *) ev->value, ev->value ? ev->value_len : 0),
	                        RD_KAFKA_V_TIMESTAMP(ev->timestamp_ms),
	                        RD_KAFKA_V_HEADERS(hdrs),
	                        RD_KAFKA_V_OPAQUE((void *) (uintptr_t) packed),
	                        RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		if (!runs_add(&ts->txn, packed, 1, event_bytes(ev), ev->timestamp_ms)) {
			/* In Kafka's transaction, but it could not be reported: fail it. */
			doom(ts, "out of memory");
			return PUT_OK;
		}
		ts->txn_events++;
		ts->partial_in_txn++;
		return PUT_OK;
	}
	rd_kafka_headers_destroy(hdrs);
	switch (err) {
	case RD_KAFKA_RESP_ERR__QUEUE_FULL:
		return PUT_FULL;
	case RD_KAFKA_RESP_ERR__STATE:
		/* The transaction failed (an abortable error not served yet). */
		doom(ts, "the Kafka transaction failed");
		return PUT_FULL;
	case RD_KAFKA_RESP_ERR__FATAL:
		return PUT_FULL;    /* error_cb makes it fatal when served */
	default:
		kafka_set_error(e, err);
		if (e->cls == SINK_CLASS_RETRIABLE)
			return PUT_FULL;
		return PUT_REFUSED;
	}
}

/* The checks that refuse an event before it is taken; true with *e set. */
static bool
refuse_now(txn_sink *ts, const sink_event *ev, sink_error *e)
{
	const refusal *r = refused_before(ts, ev);
	size_t hdr_bytes = 0;

	if (r != NULL) {
		*e = r->err;
		snprintf(e->text, sizeof(e->text), "%.200s (refused in an earlier, aborted Kafka transaction)",
		         r->err.text);
		return true;
	}
	/* What librdkafka refuses at produce time, checked before an event
	 * waits in the pending list (librdkafka adds a little overhead, which
	 * a replay then refuses by content). */
	for (size_t i = 0; i < ev->nheaders; i++)
		hdr_bytes += strlen(ev->headers[i].name) + (ev->headers[i].value ? ev->headers[i].len : 0);
	if (ts->max_msg_bytes > 0 && event_bytes(ev) + hdr_bytes > (size_t) ts->max_msg_bytes) {
		kafka_set_error(e, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
		return true;
	}
	return false;
}

/* Produce what waited, in order, until a transaction end starts a commit or Kafka's queue is full. */
static void
drain_pending(txn_sink *ts)
{
	sink_error e;

	while (ts->pend_head != NULL && (ts->state == TS_OPEN || (ts->state == TS_READY && !ts->settling)) &&
	       !ts->doomed) {
		pending *p = ts->pend_head;

		if (p->ev == NULL) {
			pend_pop(ts);
			if (p->end_lsn > ts->end_seen)
				ts->end_seen = p->end_lsn;
			apply_end(ts, p->end_lsn);
			pend_free(p);
			continue;
		}
		if (ts->floor_valid && p->ev->lsn != 0 && p->ev->lsn < ts->committed) {
			/* Taken while the state topic was being read: already in Kafka. */
			pend_pop(ts);
			if (!runs_add(&ts->acks, p->packed, 1, p->bytes, p->ev->timestamp_ms))
				log_msg(LOG_ERROR, "out of memory keeping an acknowledgement");
			pend_free(p);
			continue;
		}
		switch (put(ts, p->ev, p->packed, &e)) {
		case PUT_OK:
			break;
		case PUT_FULL:
			return;
		case PUT_REFUSED:
			/* Taken earlier, refused now: it cannot be dead-lettered from
			 * here, so the transaction fails and the replay refuses it at
			 * once (by content), where the pipeline can. */
			remember_refusal(ts, hash_event(p->ev), &e);
			doom(ts, e.text);
			if (!runs_add(&ts->drops, p->packed, 1, p->bytes, p->ev->timestamp_ms))
				log_msg(LOG_ERROR, "out of memory keeping a dropped report");
			break;
		case PUT_FATAL:
			return;
		}
		pend_pop(ts);
		pend_free(p);
	}
}

/*
 * Everything not committed is given up: dropped reports for the
 * transaction's messages and the pending events.  restart: the client must
 * read its stream again (hold it until its next session).
 */
static void
drop_all(txn_sink *ts, const char *why)
{
	uint64_t n = ts->txn.messages;

	for (size_t i = 0; i < ts->txn.n; i++)
		if (!runs_add(&ts->drops, ts->txn.v[i].packed, ts->txn.v[i].count, ts->txn.v[i].bytes,
		              ts->txn.v[i].timestamp_ms))
			log_msg(LOG_ERROR, "out of memory keeping a dropped report");
	runs_free(&ts->txn);
	n += pend_drop(ts, false);
	ts->txn_events = 0;
	ts->partial_in_txn = 0;
	ts->doomed = false;
	ts->end_seen = ts->committed;
	if (n > 0)
		snprintf(ts->doom_why, sizeof(ts->doom_why), "%.250s", why);
	wake(ts);
}

static void
start_abort(txn_sink *ts)
{
	log_msg(LOG_WARNING, "aborting the Kafka transaction (%" PRIu64 " events, %" PRIu64 " waiting): %s; "
	        "they are read again from the slot", ts->txn.messages, (uint64_t) ts->npend, ts->doom_why);
	set_state(ts, TS_ABORT);
	wake(ts);
}

static void
step_abort(txn_sink *ts)
{
	char why[300];
	rd_kafka_error_t *error = NULL;

	if (!job_done(ts, JOB_ABORT, &error)) {
		note_slow(ts, "aborting the Kafka transaction", ts->last_error);
		return;
	}
	switch (api_result(ts, error, "aborting the Kafka transaction")) {
	case API_DONE:
		ts->stats->aborted++;
		snprintf(why, sizeof(why), "the Kafka transaction was aborted: %s", ts->doom_why);
		drop_all(ts, why);
		set_state(ts, TS_READY);
		break;
	case API_AGAIN:
	case API_ABORT:      /* again */
		break;
	case API_FATAL:
		break;
	}
}

/* The state record: the transaction's last source end, the source it is of. */
static bool
put_record(txn_sink *ts)
{
	char lsn_s[32], sys_s[32], *value;
	json_t *root;
	rd_kafka_resp_err_t err;

	snprintf(lsn_s, sizeof(lsn_s), LSN_FMT, LSN_ARGS(ts->txn_end_lsn));
	snprintf(sys_s, sizeof(sys_s), "%" PRIu64, ts->system_id);
	root = json_pack("{s:s, s:s, s:s, s:I}", "lsn", lsn_s, "system_id", sys_s, "slot", ts->slot,
	                 "timeline", (json_int_t) ts->txn_timeline);
	value = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(root);
	if (value == NULL) {
		doom(ts, "out of memory");
		return false;
	}
	err = rd_kafka_producev(ts->rk,
	                        RD_KAFKA_V_RKT(ts->state_rkt),
	                        RD_KAFKA_V_PARTITION(0),
	                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                        RD_KAFKA_V_KEY(ts->txn_id, strlen(ts->txn_id)),
	                        RD_KAFKA_V_VALUE(value, strlen(value)),
	                        RD_KAFKA_V_OPAQUE(STATE_OPAQUE),
	                        RD_KAFKA_V_END);
	free(value);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return true;
	if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		doom(ts, rd_kafka_err2str(err));
	return false;    /* queue full: again when reports made room */
}

static void
step_commit(txn_sink *ts)
{
	double secs;
	rd_kafka_error_t *error = NULL;

	if (!ts->record_in) {
		if (!put_record(ts))
			return;
		ts->record_in = true;
	}
	if (!job_done(ts, JOB_COMMIT, &error)) {
		note_slow(ts, "committing the Kafka transaction", ts->last_error);
		return;
	}
	switch (api_result(ts, error, "committing the Kafka transaction")) {
	case API_DONE:
		secs = (double) (now_ms() - ts->phase_ms) / 1000.0;
		metrics_observe_commit(ts->stats, secs, ts->txn_events);
		log_msg(LOG_DEBUG, "committed a Kafka transaction of %" PRIu64 " events up to " LSN_FMT
		        " in %.3f s", ts->txn_events, LSN_ARGS(ts->txn_end_lsn), secs);
		ts->committed = ts->txn_end_lsn;
		ts->floor_valid = ts->txn_timeline == ts->timeline;
		ts->txn_events = 0;
		ts->doomed = false;
		set_state(ts, TS_READY);
		pthread_mutex_lock(&ts->sh.mu);
		ts->settling = !ts->sh.settled;
		pthread_mutex_unlock(&ts->sh.mu);
		runs_dispatch(ts, &ts->txn, true, NULL);
		break;
	case API_AGAIN:      /* again */
		break;
	case API_ABORT:
		start_abort(ts);
		break;
	case API_FATAL:
		break;
	}
}

/* ---------------------------------------------------------------------------
 * The sink interface
 * ------------------------------------------------------------------------- */

static sink_rc
txn_produce(sink *s, const sink_event *ev, uint64_t packed, sink_error *e)
{
	txn_sink *ts = (txn_sink *) s;
	sink_rc rc = SINK_OK;

	if (ts->fatal)
		return SINK_FATAL;
	if (ts->awaiting_restart || ts->drops.n > 0 || ts->rk == NULL || ts->state == TS_ABORT ||
	    ts->doomed)
		return SINK_FULL;
	if (ts->state >= TS_READY && ts->floor_valid && ev->lsn != 0 && ev->lsn < ts->committed) {
		/* Replayed: in a committed transaction already. */
		if (!runs_add(&ts->acks, packed, 1, event_bytes(ev), ev->timestamp_ms))
			return SINK_FULL;
		wake(ts);
		return SINK_OK;
	}
	if (ev->lsn != 0 && ev->lsn < ts->end_seen) {
		/* Replayed, in a transaction not committed yet: wait for it. */
		ts->want_commit = true;
		ts->idle_seq = ts->pend_seq;
		maybe_commit(ts);
		/* No wake: the commit's end wakes the loop (a wake here spins it). */
		return SINK_FULL;
	}
	if (refuse_now(ts, ev, e))
		return SINK_REFUSED;
	if ((ts->state == TS_OPEN || (ts->state == TS_READY && !ts->settling)) && ts->pend_head == NULL) {
		switch (put(ts, ev, packed, e)) {
		case PUT_OK:
			ts->taken_session = ts->session_no;
			return SINK_OK;
		case PUT_FULL:
			return SINK_FULL;
		case PUT_REFUSED:
			return SINK_REFUSED;
		case PUT_FATAL:
			return ts->fatal ? SINK_FATAL : SINK_FULL;
		}
	}
	/* Starting, committing, or older events wait: this one waits after them. */
	if (ts->npend >= (ts->queue_messages ? ts->queue_messages : 20000) ||
	    ts->pend_bytes + event_bytes(ev) > PENDING_MAX_BYTES)
		return SINK_FULL;
	if (!pend_add(ts, ev, packed, 0))
		return SINK_FULL;
	ts->taken_session = ts->session_no;
	return rc;
}

static void
txn_end(sink *s, unsigned client, uint64_t end_lsn)
{
	txn_sink *ts = (txn_sink *) s;

	(void) client;
	if (ts->fatal || ts->awaiting_restart || ts->drops.n > 0 || ts->state == TS_ABORT)
		return;
	if (end_lsn > ts->end_seen)
		ts->end_seen = end_lsn;
	if ((ts->state == TS_READY || ts->state == TS_OPEN) && ts->pend_head == NULL) {
		apply_end(ts, end_lsn);
		return;
	}
	if (ts->pend_head == NULL && ts->state != TS_COMMIT) {
		/* Starting: nothing taken, nothing to mark. */
		return;
	}
	if (!pend_add(ts, NULL, 0, end_lsn))
		doom(ts, "out of memory");
}

static void
txn_idle(sink *s, unsigned client, bool ended)
{
	txn_sink *ts = (txn_sink *) s;

	(void) client;
	if (ts->fatal || ts->awaiting_restart || ts->drops.n > 0)
		return;
	if (ended) {
		if (ts->partial_in_txn > 0 && (ts->state == TS_OPEN || ts->state == TS_COMMIT)) {
			/* Its source transaction will not end in this stream. */
			doom(ts, "the stream ended inside a source transaction");
			return;
		}
		if (ts->partial_in_pend > 0 && pend_drop(ts, true) > 0) {
			snprintf(ts->doom_why, sizeof(ts->doom_why),
			         "the stream ended inside a source transaction");
			wake(ts);
		}
	}
	if (have_uncommitted(ts)) {
		/*
		 * No wake: maybe_commit starts the commit (which wakes), and
		 * otherwise the loop is woken by the worker or a report; a wake
		 * on every idle read kept the loop spinning through commits.
		 */
		ts->want_commit = true;
		ts->idle_seq = ts->pend_seq;
		maybe_commit(ts);
	}
}

static void
txn_session(sink *s, unsigned client, const sink_origin *o)
{
	txn_sink *ts = (txn_sink *) s;
	char err[1024];

	if (ts->fatal)
		return;
	if (client != 0) {
		fail(ts, true, "exactly-once delivery takes one pipeline per producer");
		return;
	}
	ts->awaiting_restart = false;
	ts->session_no++;
	if (!ts->have_origin) {
		ts->have_origin = true;
		ts->system_id = o->system_id;
		ts->timeline = o->timeline;
		snprintf(ts->slot, sizeof(ts->slot), "%s", o->slot);
		if (ts->id_override != NULL)
			snprintf(ts->txn_id, sizeof(ts->txn_id), "%s", ts->id_override);
		else
			snprintf(ts->txn_id, sizeof(ts->txn_id), "pgoutbox-%" PRIu64 "-%s", o->system_id, o->slot);
		if (!make_producer(ts, err, sizeof(err))) {
			fail(ts, true, "%s", err);
			return;
		}
		log_msg(LOG_INFO, "exactly-once delivery: initializing Kafka transactions for transactional "
		        "id \"%s\" (an older producer with this id is fenced)", ts->txn_id);
		set_state(ts, TS_INIT);
		wake(ts);
		return;
	}
	if (o->system_id != ts->system_id || strcmp(o->slot, ts->slot) != 0) {
		fail(ts, true, "the stream now comes from database system %" PRIu64 ", slot \"%s\", but "
		     "transactional id \"%s\" is of system %" PRIu64 ", slot \"%s\": restart pgoutbox",
		     o->system_id, o->slot, ts->txn_id, ts->system_id, ts->slot);
		return;
	}
	if (o->timeline != ts->timeline) {
		log_detail(LOG_WARNING, "exactly-once holds within a timeline only: this timeline's "
		           "transactions are not compared with the recorded LSN",
		           "the stream is on timeline %u now (was %u)", o->timeline, ts->timeline);
		ts->timeline = o->timeline;
		ts->floor_valid = false;
		ts->end_seen = 0;
		/* What the old timeline left is committed as the old timeline's. */
		if (ts->state == TS_OPEN && ts->txn.messages > 0 && ts->partial_in_txn == 0)
			begin_commit(ts);
	}
	if (have_uncommitted(ts)) {
		/*
		 * No wake: maybe_commit starts the commit (which wakes), and
		 * otherwise the loop is woken by the worker or a report; a wake
		 * on every idle read kept the loop spinning through commits.
		 */
		ts->want_commit = true;
		ts->idle_seq = ts->pend_seq;
		maybe_commit(ts);
	}
}

static void
txn_serve(sink *s)
{
	txn_sink *ts = (txn_sink *) s;

	if (ts->rk == NULL)
		return;
	kafka_wakeup_drain(ts->pipefd[0]);
	/*
	 * Not while the worker commits or aborts: its flush serves the
	 * delivery reports and waits until they are all served, but only
	 * looks again every 10 ms when another thread took them (measured:
	 * commits of 12 ms instead of a few).
	 */
	if (!((ts->state == TS_COMMIT || ts->state == TS_ABORT) && ts->job_submitted))
		rd_kafka_poll(ts->rk, 0);
	collect(ts);
	switch (ts->state) {
	case TS_INIT:
		step_init(ts);
		break;
	case TS_TOPIC:
		step_topic(ts);
		break;
	case TS_READ:
		step_read(ts);
		break;
	case TS_COMMIT:
		step_commit(ts);
		break;
	case TS_ABORT:
		step_abort(ts);
		break;
	case TS_OPEN:
	case TS_READY:
	case TS_IDLE:
	case TS_FAILED:
		break;
	}
	if (ts->doomed && !ts->fatal) {
		if (ts->state == TS_OPEN)
			start_abort(ts);
		else if (ts->state == TS_READY) {
			/* Failed before a transaction held anything (a late refusal). */
			drop_all(ts, ts->doom_why);
		}
	}
	/* Reports due: acknowledgements of replayed events, drops. */
	if (ts->acks.n > 0)
		runs_dispatch(ts, &ts->acks, true, NULL);
	if (ts->drops.n > 0) {
		char why[300];

		ts->awaiting_restart = ts->taken_session == ts->session_no;
		snprintf(why, sizeof(why), "%s", ts->doom_why);
		runs_dispatch(ts, &ts->drops, false, why);
	}
	if (!ts->fatal) {
		drain_pending(ts);
		maybe_commit(ts);
	}
	/* Start-up steps poll; the worker wakes the loop when its job is done. */
	if (ts->state == TS_TOPIC || ts->state == TS_READ || (ts->state == TS_INIT && !ts->job_submitted) ||
	    ts->acks.n > 0 || ts->drops.n > 0 || (ts->doomed && !ts->fatal))
		wake(ts);
}

static int
txn_fd(const sink *s)
{
	return ((const txn_sink *) s)->pipefd[0];
}

static int
txn_outstanding(const sink *s)
{
	const txn_sink *ts = (const txn_sink *) s;

	return (int) (ts->txn.messages + ts->npend + ts->acks.messages + ts->drops.messages);
}

static const char *
txn_last_error(const sink *s)
{
	return ((const txn_sink *) s)->last_error;
}

static bool
txn_fatal(sink *s, char *errbuf, size_t errlen)
{
	txn_sink *ts = (txn_sink *) s;

	if (!ts->fatal)
		return false;
	if (errbuf != NULL && errlen > 0)
		snprintf(errbuf, errlen, "%s", ts->fatal_msg);
	return true;
}

static void
txn_test_fatal(sink *s)
{
	txn_sink *ts = (txn_sink *) s;

	if (ts->rk != NULL)
		rd_kafka_test_fatal_error(ts->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
		                          "forced by PGOUTBOX_TEST_FATAL_AFTER");
}

static void
txn_destroy(sink *s)
{
	txn_sink *ts = (txn_sink *) s;
	pending *p;

	if (ts->worker_started) {
		/* Its call returns within WORKER_CALL_MS. */
		pthread_mutex_lock(&ts->sh.mu);
		ts->sh.quit = true;
		pthread_cond_signal(&ts->sh.cv);
		pthread_mutex_unlock(&ts->sh.mu);
		pthread_join(ts->worker, NULL);
		if (ts->sh.result != NULL)
			rd_kafka_error_destroy(ts->sh.result);
	}
	if (ts->rk != NULL && !ts->fatal) {
		rd_kafka_error_t *error = NULL;

		/* At exit: finish a commit under way (a replay skips it), or end
		 * the open transaction, so that read_committed consumers are not
		 * held up until the broker's transaction timeout. */
		if (ts->state == TS_COMMIT && ts->record_in)
			error = rd_kafka_commit_transaction(ts->rk, DESTROY_CALL_MS);
		else if (ts->state == TS_OPEN || ts->state == TS_COMMIT || ts->state == TS_ABORT)
			error = rd_kafka_abort_transaction(ts->rk, DESTROY_CALL_MS);
		if (error != NULL) {
			log_msg(LOG_DEBUG, "ending the Kafka transaction at exit: %s", rd_kafka_error_string(error));
			rd_kafka_error_destroy(error);
		}
	}
	stop_reader(ts);
	if (ts->adminq != NULL)
		rd_kafka_queue_destroy(ts->adminq);
	kafka_wakeup_close(ts->pipefd, ts->mainq);
	kafka_topics_free(&ts->topics);
	if (ts->state_rkt != NULL)
		rd_kafka_topic_destroy(ts->state_rkt);
	if (ts->rk != NULL) {
		rd_kafka_purge(ts->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_destroy(ts->rk);
	}
	for (int i = 0; i < 2; i++)
		if (ts->pipefd[i] >= 0)
			close(ts->pipefd[i]);
	while ((p = pend_pop(ts)) != NULL)
		pend_free(p);
	runs_free(&ts->txn);
	runs_free(&ts->acks);
	runs_free(&ts->drops);
	if (ts->sh_ready) {
		pthread_cond_destroy(&ts->sh.cv);
		pthread_mutex_destroy(&ts->sh.mu);
	}
	free(ts->state_topic);
	free(ts->id_override);
	free(ts);
}

static const sink_ops txn_ops = {
	.produce = txn_produce,
	.txn_end = txn_end,
	.session = txn_session,
	.idle = txn_idle,
	.serve = txn_serve,
	.fd = txn_fd,
	.outstanding = txn_outstanding,
	.last_error = txn_last_error,
	.fatal = txn_fatal,
	.test_fatal = txn_test_fatal,
	.destroy = txn_destroy,
};

sink *
kafka_txn_sink_new(const kafka_txn_config *cfg, char *errbuf, size_t errlen)
{
	txn_sink *ts = calloc(1, sizeof(*ts));
	rd_kafka_conf_t *conf;
	rd_kafka_t *probe;
	char err[512];

	if (ts == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	ts->pipefd[0] = ts->pipefd[1] = -1;
	if (pthread_mutex_init(&ts->sh.mu, NULL) != 0 || pthread_cond_init(&ts->sh.cv, NULL) != 0) {
		snprintf(errbuf, errlen, "could not initialize a mutex");
		free(ts);
		return NULL;
	}
	ts->sh_ready = true;
	ts->sh.settled = true;
	ts->cfg = *cfg;
	ts->stats = cfg->stats ? cfg->stats : &ts->dummy_stats;
	ts->stats->on = true;
	if ((ts->state_topic = strdup(cfg->state_topic)) == NULL ||
	    (cfg->transactional_id != NULL && (ts->id_override = strdup(cfg->transactional_id)) == NULL)) {
		snprintf(errbuf, errlen, "out of memory");
		goto error;
	}
	ts->cfg.state_topic = ts->state_topic;
	ts->cfg.transactional_id = ts->id_override;
	/* A bad property is a configuration error now, not at the first session. */
	if ((conf = txn_conf(ts, "pgoutbox-check", errbuf, errlen)) == NULL)
		goto error;
	if ((probe = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err))) == NULL) {
		rd_kafka_conf_destroy(conf);
		snprintf(errbuf, errlen, "could not create the transactional Kafka producer: %s", err);
		goto error;
	}
	rd_kafka_destroy(probe);
	sink_init(&ts->base, &txn_ops, ts->queue_messages);
	ts->floor_valid = true;
	return &ts->base;
error:
	pthread_cond_destroy(&ts->sh.cv);
	pthread_mutex_destroy(&ts->sh.mu);
	free(ts->state_topic);
	free(ts->id_override);
	free(ts);
	return NULL;
}

/* --check ---------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 5, 6)))
#endif
static void
creport(check_report_fn report, void *ctx, check_status st, const char *name, const char *fmt, ...)
{
	char detail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	report(ctx, st, name, detail);
}

static void
check_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void) rk;
	(void) level;
	log_msg(LOG_DEBUG, "Kafka %s: %s", fac, buf);
}

/* Wait for one admin result on q; NULL when none came. */
static rd_kafka_event_t *
admin_wait(rd_kafka_queue_t *q, int timeout_ms)
{
	return rd_kafka_queue_poll(q, timeout_ms + 1000);
}

/* DescribeConfigs of one resource: each wanted name's value into vals (NULL: not shown). */
static bool
describe(rd_kafka_t *rk, rd_kafka_ResourceType_t type, const char *name, int timeout_ms,
         const char *const *wanted, char vals[][128], size_t nwanted, char *why, size_t whylen)
{
	rd_kafka_ConfigResource_t *res = rd_kafka_ConfigResource_new(type, name);
	rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_event_t *ev = NULL;
	bool ok = false;
	char err[256];

	for (size_t i = 0; i < nwanted; i++)
		vals[i][0] = '\0';
	snprintf(why, whylen, "no answer within %d ms", timeout_ms);
	if (res == NULL || opt == NULL || q == NULL ||
	    rd_kafka_AdminOptions_set_request_timeout(opt, timeout_ms, err, sizeof(err)) != 0)
		goto out;
	if (type == RD_KAFKA_RESOURCE_BROKER &&
	    rd_kafka_AdminOptions_set_broker(opt, (int32_t) strtol(name, NULL, 10), err, sizeof(err)) != 0)
		goto out;
	rd_kafka_DescribeConfigs(rk, &res, 1, opt, q);
	if ((ev = admin_wait(q, timeout_ms)) != NULL) {
		const rd_kafka_DescribeConfigs_result_t *r = rd_kafka_event_DescribeConfigs_result(ev);
		const rd_kafka_ConfigResource_t **rs;
		size_t nres = 0, nent = 0;

		if (rd_kafka_event_error(ev)) {
			snprintf(why, whylen, "%s", rd_kafka_event_error_string(ev));
		} else if (r && (rs = rd_kafka_DescribeConfigs_result_resources(r, &nres)) && nres == 1) {
			if (rd_kafka_ConfigResource_error(rs[0])) {
				snprintf(why, whylen, "%s", rd_kafka_ConfigResource_error_string(rs[0]));
			} else {
				const rd_kafka_ConfigEntry_t **ents = rd_kafka_ConfigResource_configs(rs[0], &nent);

				for (size_t i = 0; i < nent; i++)
					for (size_t w = 0; w < nwanted; w++)
						if (strcmp(rd_kafka_ConfigEntry_name(ents[i]), wanted[w]) == 0 &&
						    rd_kafka_ConfigEntry_value(ents[i]) != NULL)
							snprintf(vals[w], sizeof(vals[w]), "%s", rd_kafka_ConfigEntry_value(ents[i]));
				ok = true;
			}
		}
	}
out:
	if (ev)
		rd_kafka_event_destroy(ev);
	if (q)
		rd_kafka_queue_destroy(q);
	if (opt)
		rd_kafka_AdminOptions_destroy(opt);
	if (res)
		rd_kafka_ConfigResource_destroy(res);
	return ok;
}

int
kafka_txn_check(const kafka_txn_config *cfg, int timeout_ms, check_report_fn report, void *ctx)
{
	txn_sink probe;
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk = NULL;
	const struct rd_kafka_metadata *md = NULL;
	const struct rd_kafka_metadata_topic *tstate = NULL, *tours = NULL;
	static const char *const broker_keys[] = {
		"transaction.state.log.replication.factor", "transaction.state.log.min.isr",
		"transaction.max.timeout.ms",
	};
	static const char *const topic_keys[] = {"cleanup.policy"};
	char bvals[3][128], tvals[1][128], why[512], err[512];
	long long tto;
	int fails = 0;

	memset(&probe, 0, sizeof(probe));
	probe.cfg = *cfg;
	if ((conf = txn_conf(&probe, "pgoutbox-check", err, sizeof(err))) == NULL) {
		creport(report, ctx, CHECK_FAIL, "kafka transactions", "%s", err);
		return -1;
	}
	tto = kafka_conf_int(conf, "transaction.timeout.ms");
	/* A plain client: the check must not fence the running pgoutbox. */
	rd_kafka_conf_destroy(conf);
	if ((conf = kafka_make_conf(cfg->brokers, cfg->props, cfg->nprops, true, NULL, err, sizeof(err))) == NULL) {
		creport(report, ctx, CHECK_FAIL, "kafka transactions", "%s", err);
		return -1;
	}
	rd_kafka_conf_set_log_cb(conf, check_log_cb);
	kafka_conf_set(conf, "client.id", "pgoutbox-check", err, sizeof(err));
	if ((rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err))) == NULL) {
		rd_kafka_conf_destroy(conf);
		creport(report, ctx, CHECK_FAIL, "kafka transactions", "could not create a Kafka client: %s", err);
		return -1;
	}
	if (rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR || md == NULL) {
		creport(report, ctx, CHECK_FAIL, "kafka transactions", "no metadata within %d ms", timeout_ms);
		fails++;
		goto out;
	}
	for (int i = 0; i < md->topic_cnt; i++) {
		if (strcmp(md->topics[i].topic, "__transaction_state") == 0 && md->topics[i].err == 0)
			tstate = &md->topics[i];
		if (strcmp(md->topics[i].topic, cfg->state_topic) == 0 && md->topics[i].err == 0)
			tours = &md->topics[i];
	}
	/* The transaction coordinators need the transaction state log. */
	{
		char id[16];
		long rf, tmax;

		snprintf(id, sizeof(id), "%" PRId32, md->orig_broker_id);
		if (!describe(rk, RD_KAFKA_RESOURCE_BROKER, id, timeout_ms, broker_keys, bvals, 3, why, sizeof(why))) {
			if (tstate != NULL)
				creport(report, ctx, CHECK_OK, "kafka transactions", "the transaction state log "
				        "exists (%d partitions); broker settings not visible: %s", tstate->partition_cnt, why);
			else
				creport(report, ctx, CHECK_WARN, "kafka transactions", "broker settings not visible "
				        "(%s): the transaction state log is created at the first transaction with "
				        "transaction.state.log.replication.factor replicas, which needs that many brokers", why);
		} else {
			rf = bvals[0][0] ? strtol(bvals[0], NULL, 10) : 3;
			tmax = bvals[2][0] ? strtol(bvals[2], NULL, 10) : 900000;
			if (tstate == NULL && rf > md->broker_cnt) {
				creport(report, ctx, CHECK_FAIL, "kafka transactions", "transactions cannot start: "
				        "transaction.state.log.replication.factor = %ld but the cluster has %d broker(s); "
				        "lower it (and transaction.state.log.min.isr = %s) or add brokers", rf,
				        md->broker_cnt, bvals[1][0] ? bvals[1] : "?");
				fails++;
			} else if (tto > tmax) {
				creport(report, ctx, CHECK_FAIL, "kafka transactions", "transaction.timeout.ms = %lld is "
				        "above the broker's transaction.max.timeout.ms = %ld", tto, tmax);
				fails++;
			} else {
				creport(report, ctx, CHECK_OK, "kafka transactions", "%s (replication factor %ld, "
				        "min.isr %s); transaction.timeout.ms %lld within the broker's %ld",
				        tstate ? "the transaction state log exists" : "the transaction state log will "
				        "be created at the first transaction", rf, bvals[1][0] ? bvals[1] : "?", tto, tmax);
			}
		}
	}
	/* The state topic. */
	if (tours == NULL) {
		creport(report, ctx, CHECK_OK, "kafka state topic", "\"%s\" does not exist yet: it is created "
		        "(compacted) at start, which needs permission to create topics", cfg->state_topic);
	} else if (!describe(rk, RD_KAFKA_RESOURCE_TOPIC, cfg->state_topic, timeout_ms, topic_keys, tvals, 1,
	                     why, sizeof(why))) {
		creport(report, ctx, CHECK_WARN, "kafka state topic", "\"%s\" exists; its settings are not "
		        "visible: %s", cfg->state_topic, why);
	} else if (strstr(tvals[0], "compact") == NULL) {
		creport(report, ctx, CHECK_WARN, "kafka state topic", "\"%s\" exists with cleanup.policy = %s: "
		        "not compacted, its records pile up and every start reads them all; set "
		        "cleanup.policy=compact", cfg->state_topic, tvals[0][0] ? tvals[0] : "?");
	} else {
		creport(report, ctx, CHECK_OK, "kafka state topic", "\"%s\" exists, compacted", cfg->state_topic);
	}
	/* ACLs, as far as they can be seen. */
	{
		rd_kafka_AclBindingFilter_t *f = rd_kafka_AclBindingFilter_new(
			RD_KAFKA_RESOURCE_ANY, NULL, RD_KAFKA_RESOURCE_PATTERN_ANY, NULL, NULL,
			RD_KAFKA_ACL_OPERATION_ANY, RD_KAFKA_ACL_PERMISSION_TYPE_ANY, err, sizeof(err));
		rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBEACLS);
		rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
		rd_kafka_event_t *ev = NULL;

		if (f != NULL && opt != NULL && q != NULL &&
		    rd_kafka_AdminOptions_set_request_timeout(opt, timeout_ms, err, sizeof(err)) == 0) {
			rd_kafka_DescribeAcls(rk, f, opt, q);
			ev = admin_wait(q, timeout_ms);
		}
		if (ev == NULL) {
			creport(report, ctx, CHECK_WARN, "kafka ACLs", "not visible (no answer): the principal needs "
			        "Write and Describe on its TransactionalId and Write on the topics");
		} else if (rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR_SECURITY_DISABLED) {
			creport(report, ctx, CHECK_OK, "kafka ACLs", "no authorizer on the brokers: transactions "
			        "are allowed");
		} else if (rd_kafka_event_error(ev)) {
			creport(report, ctx, CHECK_WARN, "kafka ACLs", "not visible (%s): the principal needs Write "
			        "and Describe on its TransactionalId and Write on the topics",
			        rd_kafka_event_error_string(ev));
		} else {
			size_t n = 0;
			const rd_kafka_DescribeAcls_result_t *r = rd_kafka_event_DescribeAcls_result(ev);

			if (r)
				rd_kafka_DescribeAcls_result_acls(r, &n);
			/* librdkafka 2.0.2 drops DescribeAcls' error code: no authorizer
			 * (SECURITY_DISABLED) and no right to see them both show as none. */
			if (n == 0)
				creport(report, ctx, CHECK_OK, "kafka ACLs", "no ACL bindings visible (no authorizer, "
				        "or none this principal may see); with an authorizer the principal needs Write "
				        "and Describe on its TransactionalId and Write on the topics and on \"%s\"",
				        cfg->state_topic);
			else
				creport(report, ctx, CHECK_WARN, "kafka ACLs", "an authorizer is on (%zu ACL bindings "
				        "visible); which apply to this principal cannot be told here: it needs Write and "
				        "Describe on its TransactionalId, Write on the topics and on \"%s\"", n,
				        cfg->state_topic);
		}
		if (ev)
			rd_kafka_event_destroy(ev);
		if (q)
			rd_kafka_queue_destroy(q);
		if (opt)
			rd_kafka_AdminOptions_destroy(opt);
		if (f)
			rd_kafka_AclBinding_destroy(f);
	}
out:
	if (md)
		rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	return fails;
}
