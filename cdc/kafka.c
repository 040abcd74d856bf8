/*
 * kafka.c — the Kafka producer on librdkafka.  See kafka.h.
 *
 * librdkafka's main queue (delivery reports, errors) is wired to a pipe with
 * rd_kafka_queue_io_event_enable(): librdkafka writes a byte whenever the
 * queue becomes non-empty, so the main loop can poll() it beside the libpq
 * socket instead of polling librdkafka on a timer.
 */
#include "kafka_int.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct kafka_sink {
	sink              base;        /* first: a kafka_sink is a sink */
	rd_kafka_t       *rk;
	kafka_topics      topics;
	rd_kafka_queue_t *mainq;
	int               pipefd[2];
	bool              fatal;
	rd_kafka_resp_err_t last_err;   /* last transient error logged, to avoid floods */
	char              last_error[256]; /* its text, for /healthz */
} kafka_sink;

/*
 * The one classifier of librdkafka's errors, for produce-time refusals and
 * delivery reports alike.  Retriable errors are those librdkafka retries by
 * itself (with no local message timeout it never gives up on one); a
 * delivery report that carries one anyway (a timeout set with -X) means
 * librdkafka gave up, which is permanent for that message.
 */
sink_class
kafka_classify(rd_kafka_resp_err_t err)
{
	switch (err) {
	case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
	case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
	case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		return SINK_CLASS_TOO_LARGE;
	case RD_KAFKA_RESP_ERR_INVALID_MSG:
	case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
	case RD_KAFKA_RESP_ERR__INVALID_ARG:
	case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
	case RD_KAFKA_RESP_ERR_INVALID_RECORD:
	case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
	case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
	case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
	case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
	case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
	case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
		return SINK_CLASS_PERMANENT;
	case RD_KAFKA_RESP_ERR__FATAL:
		return SINK_CLASS_FATAL;
	default:
		return SINK_CLASS_RETRIABLE;
	}
}

void
kafka_set_error(sink_error *e, rd_kafka_resp_err_t err)
{
	e->cls = kafka_classify(err);
	e->name = rd_kafka_err2name(err);
	snprintf(e->text, sizeof(e->text), "%s", rd_kafka_err2str(err));
}

static void
dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	kafka_sink *ks = opaque;
	sink_report rep;
	rd_kafka_headers_t *hdrs = NULL;
	const void *id = NULL;
	size_t id_len = 0;

	(void) rk;
	memset(&rep, 0, sizeof(rep));
	rep.ok = m->err == RD_KAFKA_RESP_ERR_NO_ERROR;
	rep.bytes = m->len + m->key_len;
	rep.timestamp_ms = rd_kafka_message_timestamp(m, NULL);
	rep.latency_us = rd_kafka_message_latency(m);
	rep.topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
	if (!rep.ok) {
		kafka_set_error(&rep.err, m->err);
		/* librdkafka gave up on it (a local timeout): it will not retry. */
		if (rep.err.cls == SINK_CLASS_RETRIABLE)
			rep.err.cls = SINK_CLASS_PERMANENT;
		rep.key = m->key;
		rep.key_len = m->key_len;
		rep.value = m->payload;
		rep.value_len = m->len;
		if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
			const char *name;
			const void *val;
			size_t len;

			if (rd_kafka_header_get_last(hdrs, "id", &id, &id_len) == RD_KAFKA_RESP_ERR_NO_ERROR) {
				rep.id = id;
				rep.id_len = id_len;
			}
			for (size_t i = 0; rep.nheaders < SINK_MAX_HEADERS &&
			     rd_kafka_header_get_all(hdrs, i, &name, &val, &len) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
				rep.headers[rep.nheaders++] = (sink_header) {name, val, len};
		}
	}
	sink_dispatch(&ks->base, (uint64_t) (uintptr_t) m->_private, &rep);
}

static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	kafka_sink *ks = opaque;
	char buf[512];

	if (err == RD_KAFKA_RESP_ERR__FATAL) {
		rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof(buf));
		ks->fatal = true;
		log_msg(LOG_ERROR, "fatal Kafka producer error: %s: %s",
		        rd_kafka_err2name(orig), buf);
		return;
	}
	snprintf(ks->last_error, sizeof(ks->last_error), "%s", reason);
	/* Transient: librdkafka reconnects and retries by itself, and its log
	 * lines already say what happened; only "all brokers down" and a
	 * change of error are worth a line of our own. */
	if ((rd_kafka_resp_err_t) err != ks->last_err) {
		log_msg(err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ? LOG_WARNING : LOG_DEBUG,
		        "Kafka: %s", reason);
		ks->last_err = (rd_kafka_resp_err_t) err;
	}
}

/*
 * librdkafka's own log lines, served on the main thread (log.queue), in
 * pgoutbox's format.  Syslog levels: 0-2 error, 3-4 warning (librdkafka
 * reports transient connection failures at 3), 5-6 log, 7 debug.
 */
void
kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	log_level lvl = level <= 2 ? LOG_ERROR : level <= 4 ? LOG_WARNING :
	                level <= 6 ? LOG_INFO : LOG_DEBUG;

	(void) rk;
	log_msg(lvl, "Kafka %s: %s", fac, buf);
}

bool
kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
               char *errbuf, size_t errlen)
{
	char err[256];

	if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
		snprintf(errbuf, errlen, "invalid Kafka property \"%s\": %s", name, err);
		return false;
	}
	return true;
}

/*
 * Defaults.  No local message timeout: a message waits for the broker as
 * long as it takes (the WAL stays in the slot meanwhile), and the bounded
 * queue turns a long outage into backpressure instead of memory growth.
 */
static const kafka_property producer_defaults[] = {
	{"enable.idempotence", "true"},
	{"acks", "all"},
	/*
	 * One request in flight per connection.  librdkafka 2.0.2's
	 * idempotent producer already allows a partition only one request in
	 * flight (it subtracts messages, not requests, from its limit of 5),
	 * and while that request is out and the next batch is ready its broker
	 * thread busy-polls: a core spinning exactly when the broker is slow,
	 * which made it slower (p99 150-750 ms at 10,000 events/s on 2 cores).
	 * With one request per connection the ready batches wait in the output
	 * queue instead; drains are as fast (docs/benchmarks.md).
	 */
	{"max.in.flight.requests.per.connection", "1"},
	{"partitioner", "murmur2_random"},
	{"message.timeout.ms", "0"},
	{"queue.buffering.max.kbytes", "16384"},
	/* With librdkafka's ~0.5 kB per queued message, 100,000 let a drain of
	 * small events reach ~70 MB; 20,000 keep it near 16 MB at ~6 % of the
	 * drain rate of one huge transaction. */
	{"queue.buffering.max.messages", "20000"},
	{"linger.ms", "5"},
	{"socket.keepalive.enable", "true"},
	/* librdkafka sends one ProduceRequest per partition, back to back on
	 * one connection: with Nagle's algorithm the second waits for the ACK
	 * of the first, which the broker delays. */
	{"socket.nagle.disable", "true"},
	{"client.id", "pgoutbox"},
};

long long
kafka_conf_int(rd_kafka_conf_t *conf, const char *name)
{
	char buf[64], *end;
	size_t len = sizeof(buf);
	long long v;

	if (rd_kafka_conf_get(conf, name, buf, &len) != RD_KAFKA_CONF_OK)
		return -1;
	v = strtoll(buf, &end, 10);
	return end == buf ? -1 : v;
}

/*
 * An event up to message.max.bytes is accepted by librdkafka, so it must
 * fit the queue, or pgoutbox would wait for room that never comes.
 */
rd_kafka_conf_t *
kafka_make_conf(const char *brokers, const kafka_property *props, size_t nprops,
                bool transactional, uint64_t *queue_messages, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	long long mmb, qkb, qmsg;

	if (conf == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < sizeof(producer_defaults) / sizeof(producer_defaults[0]); i++) {
		/* Messages of a transaction time out with it (librdkafka sets
		 * message.timeout.ms to transaction.timeout.ms). */
		if (transactional && strcmp(producer_defaults[i].name, "message.timeout.ms") == 0)
			continue;
		if (!kafka_conf_set(conf, producer_defaults[i].name, producer_defaults[i].value, errbuf, errlen))
			goto error;
	}
	if (!kafka_conf_set(conf, "bootstrap.servers", brokers, errbuf, errlen))
		goto error;
	for (size_t i = 0; i < nprops; i++)
		if (!kafka_conf_set(conf, props[i].name, props[i].value, errbuf, errlen))
			goto error;
	mmb = kafka_conf_int(conf, "message.max.bytes");
	qkb = kafka_conf_int(conf, "queue.buffering.max.kbytes");
	qmsg = kafka_conf_int(conf, "queue.buffering.max.messages");
	if (mmb > 0 && qkb > 0 && mmb > qkb * 1024) {
		snprintf(errbuf, errlen, "Kafka property message.max.bytes = %lld exceeds the producer "
		         "queue (queue.buffering.max.kbytes = %lld, %lld bytes): an event that large would "
		         "wait for room forever; raise queue.buffering.max.kbytes to at least %lld or "
		         "lower message.max.bytes", mmb, qkb, qkb * 1024, (mmb + 1023) / 1024);
		goto error;
	}
	if (queue_messages != NULL)
		*queue_messages = qmsg > 0 ? (uint64_t) qmsg : 0;
	return conf;

error:
	rd_kafka_conf_destroy(conf);
	return NULL;
}

bool
kafka_config_valid(const char *brokers, const kafka_property *props, size_t nprops,
                   char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = kafka_make_conf(brokers, props, nprops, false, NULL, errbuf, errlen);

	if (conf == NULL)
		return false;
	rd_kafka_conf_destroy(conf);
	return true;
}

static sink_rc kafka_produce(sink *s, const sink_event *ev, uint64_t opaque, sink_error *err);
static void    kafka_serve(sink *s);
static int     kafka_fd(const sink *s);
static int     kafka_outstanding(const sink *s);
static const char *kafka_last_error(const sink *s);
static bool    kafka_fatal(sink *s, char *errbuf, size_t errlen);
static void    kafka_test_fatal(sink *s);
static void    kafka_destroy(sink *s);

static const sink_ops kafka_ops = {
	.produce = kafka_produce,
	.txn_end = NULL,           /* at least once: a report is the acknowledgement */
	.serve = kafka_serve,
	.fd = kafka_fd,
	.outstanding = kafka_outstanding,
	.last_error = kafka_last_error,
	.fatal = kafka_fatal,
	.test_fatal = kafka_test_fatal,
	.destroy = kafka_destroy,
};

sink *
kafka_sink_new(const char *brokers, const kafka_property *props, size_t nprops,
               char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf;
	kafka_sink *ks;
	uint64_t qmsg = 0;
	char err[512];

	ks = calloc(1, sizeof(*ks));
	if (ks == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	ks->pipefd[0] = ks->pipefd[1] = -1;
	if ((conf = kafka_make_conf(brokers, props, nprops, false, &qmsg, errbuf, errlen)) == NULL) {
		free(ks);
		return NULL;
	}
	sink_init(&ks->base, &kafka_ops, qmsg);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
	if (!kafka_conf_set(conf, "log.queue", "true", errbuf, errlen))
		goto error_conf;
	rd_kafka_conf_set_opaque(conf, ks);

	/* rd_kafka_new() takes ownership of conf on success only. */
	ks->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (ks->rk == NULL) {
		snprintf(errbuf, errlen, "could not create Kafka producer: %s", err);
		goto error_conf;
	}

	if (!kafka_wakeup_open(ks->rk, ks->pipefd, &ks->mainq, errbuf, errlen))
		goto error;
	return &ks->base;

error_conf:
	rd_kafka_conf_destroy(conf);
error:
	kafka_destroy(&ks->base);
	return NULL;
}

static void
kafka_destroy(sink *s)
{
	kafka_sink *ks = (kafka_sink *) s;

	kafka_wakeup_close(ks->pipefd, ks->mainq);
	ks->mainq = NULL;
	kafka_topics_free(&ks->topics);
	if (ks->rk != NULL) {
		/* Whatever was not delivered is dropped here; the clients confirmed
		 * nothing past it, so their slots still hold it. */
		rd_kafka_purge(ks->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_destroy(ks->rk);
	}
	for (int i = 0; i < 2; i++)
		if (ks->pipefd[i] >= 0)
			close(ks->pipefd[i]);
	free(ks);
}

bool
kafka_wakeup_open(rd_kafka_t *rk, int pipefd[2], rd_kafka_queue_t **mainq,
                  char *errbuf, size_t errlen)
{
	if (pipe(pipefd) != 0) {
		pipefd[0] = pipefd[1] = -1;
		snprintf(errbuf, errlen, "could not create pipe: %s", strerror(errno));
		return false;
	}
	for (int i = 0; i < 2; i++) {
		int fl = fcntl(pipefd[i], F_GETFL);
		if (fl < 0 || fcntl(pipefd[i], F_SETFL, fl | O_NONBLOCK) < 0 ||
		    fcntl(pipefd[i], F_SETFD, FD_CLOEXEC) < 0) {
			snprintf(errbuf, errlen, "could not configure pipe: %s", strerror(errno));
			return false;
		}
	}
	/* Log lines go to the main queue too, so only the main thread prints. */
	rd_kafka_set_log_queue(rk, NULL);
	*mainq = rd_kafka_queue_get_main(rk);
	rd_kafka_queue_io_event_enable(*mainq, pipefd[1], "1", 1);
	return true;
}

/* Stop the wakeups; the caller closes the pipe after destroying the handle. */
void
kafka_wakeup_close(int pipefd[2], rd_kafka_queue_t *mainq)
{
	(void) pipefd;
	if (mainq != NULL) {
		rd_kafka_queue_io_event_enable(mainq, -1, NULL, 0);
		rd_kafka_queue_destroy(mainq);
	}
}

void
kafka_wakeup_drain(int fd)
{
	char buf[256];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

static int
kafka_fd(const sink *s)
{
	return ((const kafka_sink *) s)->pipefd[0];
}

static uint32_t
topic_hash(const char *name)
{
	uint32_t h = 2166136261u;      /* FNV-1a */

	for (const unsigned char *p = (const unsigned char *) name; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h;
}

/*
 * The slot of name in a table that has a free slot: where it is, or the
 * free slot where it belongs.  With name NULL (rehashing), the first free
 * slot from hash's place.
 */
static size_t
topic_slot(const kafka_topic *tab, size_t cap, const char *name, uint32_t hash)
{
	size_t i = hash & (cap - 1);

	while (tab[i].name != NULL &&
	       (name == NULL || tab[i].hash != hash || strcmp(tab[i].name, name) != 0))
		i = (i + 1) & (cap - 1);
	return i;
}

static bool
topics_grow(kafka_topics *t)
{
	size_t cap = t->cap ? t->cap * 2 : 16;
	kafka_topic *tab;

	if (cap > SIZE_MAX / sizeof(*tab) || (tab = calloc(cap, sizeof(*tab))) == NULL)
		return false;
	for (size_t i = 0; i < t->cap; i++)
		if (t->tab[i].name != NULL)
			tab[topic_slot(tab, cap, NULL, t->tab[i].hash)] = t->tab[i];
	free(t->tab);
	t->tab = tab;
	t->cap = cap;
	t->last = 0;
	return true;
}

/*
 * Topic handles, one per topic name, kept for the life of the producer
 * (librdkafka keeps every topic it has produced to anyway).  Producing with
 * a handle skips librdkafka's per-message topic lookup, and creating the
 * handle with rd_kafka_topic_new() asks for the topic's metadata at once:
 * librdkafka up to 2.10.0 delays the first message of a topic named only in
 * rd_kafka_producev() by up to a second (librdkafka #5032).
 */
rd_kafka_topic_t *
kafka_topic_handle(kafka_topics *t, rd_kafka_t *rk, const char *name, sink_error *err)
{
	uint32_t hash;
	size_t i;
	char *copy;
	rd_kafka_topic_t *rkt;

	/* Events of one aggregate type come in runs: try the last one first. */
	if (t->cap > 0 && t->tab[t->last].name != NULL && strcmp(t->tab[t->last].name, name) == 0)
		return t->tab[t->last].rkt;
	hash = topic_hash(name);
	if (t->cap > 0) {
		i = topic_slot(t->tab, t->cap, name, hash);
		if (t->tab[i].name != NULL) {
			t->last = i;
			return t->tab[i].rkt;
		}
	}
	/* New: keep the table at most half full. */
	if (((t->n + 1) * 2 > t->cap && !topics_grow(t)) || (copy = strdup(name)) == NULL) {
		err->cls = SINK_CLASS_FATAL;
		err->name = "OUT_OF_MEMORY";
		snprintf(err->text, sizeof(err->text), "out of memory");
		return NULL;
	}
	if ((rkt = rd_kafka_topic_new(rk, name, NULL)) == NULL) {
		kafka_set_error(err, rd_kafka_last_error());
		if (err->cls == SINK_CLASS_RETRIABLE)
			err->cls = SINK_CLASS_PERMANENT;
		snprintf(err->text, sizeof(err->text), "topic \"%s\": %s", name,
		         rd_kafka_err2str(rd_kafka_last_error()));
		free(copy);
		return NULL;
	}
	i = topic_slot(t->tab, t->cap, name, hash);
	t->tab[i] = (kafka_topic) {copy, hash, rkt};
	t->n++;
	t->last = i;
	return rkt;
}

void
kafka_topics_free(kafka_topics *t)
{
	for (size_t i = 0; i < t->cap; i++)
		if (t->tab[i].name != NULL) {
			rd_kafka_topic_destroy(t->tab[i].rkt);
			free(t->tab[i].name);
		}
	free(t->tab);
	memset(t, 0, sizeof(*t));
}

rd_kafka_headers_t *
kafka_headers(const sink_event *ev, sink_error *e)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(ev->nheaders);
	rd_kafka_resp_err_t err;

	for (size_t i = 0; i < ev->nheaders; i++) {
		err = rd_kafka_header_add(hdrs, ev->headers[i].name, -1,
		                          ev->headers[i].value, (ssize_t) ev->headers[i].len);
		if (err) {
			rd_kafka_headers_destroy(hdrs);
			kafka_set_error(e, err);
			e->cls = SINK_CLASS_PERMANENT;
			snprintf(e->text, sizeof(e->text), "could not add header \"%s\": %s",
			         ev->headers[i].name, rd_kafka_err2str(err));
			return NULL;
		}
	}
	return hdrs;
}

static sink_rc
kafka_produce(sink *s, const sink_event *ev, uint64_t opaque, sink_error *e)
{
	kafka_sink *ks = (kafka_sink *) s;
	rd_kafka_headers_t *hdrs;
	rd_kafka_resp_err_t err;
	rd_kafka_topic_t *rkt;

	if ((rkt = kafka_topic_handle(&ks->topics, ks->rk, ev->topic, e)) == NULL)
		return e->cls == SINK_CLASS_FATAL ? SINK_FATAL : SINK_REFUSED;
	if ((hdrs = kafka_headers(ev, e)) == NULL)
		return SINK_REFUSED;
	err = rd_kafka_producev(ks->rk,
	                        RD_KAFKA_V_RKT(rkt),
	                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                        RD_KAFKA_V_KEY(ev->key, ev->key_len),
	                        RD_KAFKA_V_VALUE((void *) ev->value, ev->value ? ev->value_len : 0),
	                        RD_KAFKA_V_TIMESTAMP(ev->timestamp_ms),
	                        RD_KAFKA_V_HEADERS(hdrs),
	                        RD_KAFKA_V_OPAQUE((void *) (uintptr_t) opaque),
	                        RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return SINK_OK;     /* headers now belong to the message */
	rd_kafka_headers_destroy(hdrs);
	if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		return SINK_FULL;
	kafka_set_error(e, err);
	switch (e->cls) {
	case SINK_CLASS_FATAL:
		ks->fatal = true;   /* error_cb may not have been served yet */
		return SINK_FATAL;
	case SINK_CLASS_RETRIABLE:
		/* librdkafka would retry a message it holds; one it did not take
		 * is worth another try later, like a full queue. */
		return SINK_FULL;
	default:
		return SINK_REFUSED;
	}
}

static void
kafka_serve(sink *s)
{
	kafka_sink *ks = (kafka_sink *) s;

	/* Drain the wakeup pipe first, then the queue: a report that arrives in
	 * between writes a new byte, so nothing is missed. */
	kafka_wakeup_drain(ks->pipefd[0]);
	rd_kafka_poll(ks->rk, 0);
}

static int
kafka_outstanding(const sink *s)
{
	return rd_kafka_outq_len(((const kafka_sink *) s)->rk);
}

static const char *
kafka_last_error(const sink *s)
{
	return ((const kafka_sink *) s)->last_error;
}

static bool
kafka_fatal(sink *s, char *errbuf, size_t errlen)
{
	kafka_sink *ks = (kafka_sink *) s;

	if (!ks->fatal)
		return false;
	if (errbuf != NULL && errlen > 0)
		rd_kafka_fatal_error(ks->rk, errbuf, errlen);
	return true;
}

static void
kafka_test_fatal(sink *s)
{
	rd_kafka_test_fatal_error(((kafka_sink *) s)->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
	                          "forced by PGOUTBOX_TEST_FATAL_AFTER");
}

const char *
kafka_library_version(void)
{
	return rd_kafka_version_str();
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

/* librdkafka's lines while checking are only of interest with -v: the
 * check's own lines say what failed.  Called from librdkafka's threads;
 * log_msg() writes each line with one call. */
static void
check_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void) rk;
	(void) level;
	log_msg(LOG_DEBUG, "Kafka %s: %s", fac, buf);
}

/*
 * The last connection error of a check, e.g. "SASL authentication error:
 * ..." or "SSL handshake failed: ...", which a failed metadata request only
 * calls "Broker transport failure".  Error events wait on the main queue until
 * sink_check() serves them with rd_kafka_poll() on its own thread.
 */
typedef struct check_errors {
	char last[512];
} check_errors;

static void
check_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	check_errors *ce = opaque;

	(void) rk;
	if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)   /* says no more than the failure */
		snprintf(ce->last, sizeof(ce->last), "%s", reason);
}

/* auto.create.topics.enable of broker_id, into value; false when not visible (why in value). */
static bool
broker_auto_create(rd_kafka_t *rk, int32_t broker_id, int timeout_ms, char *value, size_t vlen)
{
	char id[16], err[256];
	rd_kafka_ConfigResource_t *res;
	rd_kafka_AdminOptions_t *opt;
	rd_kafka_queue_t *q;
	rd_kafka_event_t *ev;
	bool found = false;

	snprintf(id, sizeof(id), "%" PRId32, broker_id);
	snprintf(value, vlen, "no answer within %d ms", timeout_ms);
	res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_BROKER, id);
	opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
	q = rd_kafka_queue_new(rk);
	if (res == NULL || opt == NULL || q == NULL) {
		snprintf(value, vlen, "out of memory");
		goto out;
	}
	if (rd_kafka_AdminOptions_set_request_timeout(opt, timeout_ms, err, sizeof(err)) != 0 ||
	    rd_kafka_AdminOptions_set_broker(opt, broker_id, err, sizeof(err)) != 0) {
		snprintf(value, vlen, "%s", err);
		goto out;
	}
	rd_kafka_DescribeConfigs(rk, &res, 1, opt, q);
	ev = rd_kafka_queue_poll(q, timeout_ms + 1000);
	if (ev != NULL) {
		const rd_kafka_DescribeConfigs_result_t *r = rd_kafka_event_DescribeConfigs_result(ev);
		const rd_kafka_ConfigResource_t **rs;
		size_t nres = 0;

		if (rd_kafka_event_error(ev)) {
			snprintf(value, vlen, "%s", rd_kafka_event_error_string(ev));
		} else if (r != NULL && (rs = rd_kafka_DescribeConfigs_result_resources(r, &nres)) &&
		           nres == 1) {
			const rd_kafka_ConfigEntry_t **ents;
			size_t nent = 0;

			if (rd_kafka_ConfigResource_error(rs[0])) {
				snprintf(value, vlen, "%s", rd_kafka_ConfigResource_error_string(rs[0]));
			} else {
				ents = rd_kafka_ConfigResource_configs(rs[0], &nent);
				snprintf(value, vlen, "not in the broker's answer");
				for (size_t i = 0; i < nent; i++) {
					const char *v = rd_kafka_ConfigEntry_value(ents[i]);
					if (strcmp(rd_kafka_ConfigEntry_name(ents[i]), "auto.create.topics.enable") == 0 &&
					    v != NULL) {
						snprintf(value, vlen, "%s", v);
						found = true;
					}
				}
			}
		}
		rd_kafka_event_destroy(ev);
	}
out:
	if (q)
		rd_kafka_queue_destroy(q);
	if (opt)
		rd_kafka_AdminOptions_destroy(opt);
	if (res)
		rd_kafka_ConfigResource_destroy(res);
	return found;
}

int
kafka_check(const char *brokers, const kafka_property *props, size_t nprops,
           const char *fixed_topic, int timeout_ms, check_report_fn report, void *ctx)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err;
	check_errors ce = {.last = ""};
	char buf[1024], value[256];
	int fails = 0;
	size_t n = 0;

	if (conf == NULL) {
		creport(report, ctx, CHECK_FAIL, "kafka brokers", "out of memory");
		return -1;
	}
	if (!kafka_conf_set(conf, "bootstrap.servers", brokers, buf, sizeof(buf)) ||
	    !kafka_conf_set(conf, "client.id", "pgoutbox-check", buf, sizeof(buf)))
		goto conf_error;
	for (size_t i = 0; i < nprops; i++)
		if (!kafka_conf_set(conf, props[i].name, props[i].value, buf, sizeof(buf)))
			goto conf_error;
	rd_kafka_conf_set_log_cb(conf, check_log_cb);
	rd_kafka_conf_set_error_cb(conf, check_error_cb);
	rd_kafka_conf_set_opaque(conf, &ce);
	/* rd_kafka_new() takes ownership of conf on success only. */
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, value, sizeof(value));
	if (rk == NULL) {
		snprintf(buf, sizeof(buf), "could not create a Kafka client: %s", value);
		goto conf_error;
	}

	err = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR || md == NULL || md->broker_cnt == 0) {
		rd_kafka_poll(rk, 0);   /* serves check_error_cb */
		creport(report, ctx, CHECK_FAIL, "kafka brokers", "no metadata from %s within %d ms: %s%s%s%s",
		       brokers, timeout_ms, rd_kafka_err2str(err), ce.last[0] ? " (last error: " : "",
		       ce.last, ce.last[0] ? ")" : "");
		fails++;
		goto out;
	}
	for (int i = 0; i < md->broker_cnt && n < sizeof(buf); i++) {
		int r = snprintf(buf + n, sizeof(buf) - n, "%s%s:%d", i ? ", " : "",
		                 md->brokers[i].host, md->brokers[i].port);
		if (r < 0)
			break;
		n += (size_t) r;
	}
	creport(report, ctx, CHECK_OK, "kafka brokers", "%d broker(s) answered: %s", md->broker_cnt, buf);

	if (fixed_topic != NULL) {
		const struct rd_kafka_metadata_topic *t = NULL;

		for (int i = 0; i < md->topic_cnt; i++)
			if (strcmp(md->topics[i].topic, fixed_topic) == 0)
				t = &md->topics[i];
		if (t != NULL && t->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
			creport(report, ctx, CHECK_OK, "kafka topic", "topic \"%s\" exists with %d partition(s); "
			       "write permission shows only when producing", fixed_topic, t->partition_cnt);
			goto out;
		}
	}
	if (broker_auto_create(rk, md->orig_broker_id, timeout_ms, value, sizeof(value))) {
		if (strcmp(value, "true") == 0)
			creport(report, ctx, CHECK_OK, "kafka topic creation", "auto.create.topics.enable = true on "
			       "broker %d: topics are created by the first event; write permission "
			       "shows only when producing", (int) md->orig_broker_id);
		else
			creport(report, ctx, CHECK_WARN, "kafka topic creation", "auto.create.topics.enable = %s on "
			       "broker %d: create every topic the template can name before its first event",
			       value, (int) md->orig_broker_id);
	} else {
		creport(report, ctx, CHECK_WARN, "kafka topic creation", "auto.create.topics.enable is not "
		       "visible (%s): make sure the topics exist or may be created; write permission "
		       "shows only when producing", value);
	}
out:
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	return fails;

conf_error:
	rd_kafka_conf_destroy(conf);
	creport(report, ctx, CHECK_FAIL, "kafka configuration", "%s", buf);
	return -1;
}
