/*
 * test_sink.c — the Kafka sink against librdkafka's in-process mock cluster.
 *
 *   topics:      messages for many topics, produced in an order that keeps
 *                coming back to earlier ones, are each reported exactly once,
 *                acknowledged, for the topic they were produced to (the
 *                handle table grows several times and probes past collisions);
 *   refusals:    one classifier for produce-time refusals and delivery
 *                reports: an event above message.max.bytes is refused at
 *                once as TOO_LARGE; a broker's MSG_SIZE_TOO_LARGE and
 *                TOPIC_AUTHORIZATION_FAILED come back as refused reports of
 *                the right class;
 *   queue bound: a configuration whose message.max.bytes exceeds the queue
 *                is refused, naming both;
 *   fair shares: with two clients and a broker that does not answer, the
 *                first cannot take the whole queue.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "kafka.h"
#include "sink.h"

#define NTOPICS   61        /* the table grows 16 -> 32 -> 64 -> 128 */
#define NMESSAGES 600
#define DEADLINE_S 60

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

static char expected_topic[NMESSAGES][32];
static int  reports[NMESSAGES];
static int  wrong_topic, not_ok, out_of_range;
static sink_report last_bad;
static char last_bad_text[256];

static void
on_report(void *ctx, uint64_t opaque, const sink_report *rep)
{
	(void) ctx;
	if (opaque >= NMESSAGES) {
		out_of_range++;
		return;
	}
	reports[opaque]++;
	if (!rep->ok) {
		not_ok++;
		last_bad = *rep;
		snprintf(last_bad_text, sizeof(last_bad_text), "%s", rep->err.text);
	}
	if (rep->topic == NULL || strcmp(rep->topic, expected_topic[opaque]) != 0) {
		wrong_topic++;
		fprintf(stderr, "message %llu reported for topic %s, produced to %s\n",
		        (unsigned long long) opaque, rep->topic ? rep->topic : "(null)",
		        expected_topic[opaque]);
	}
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void
reset_reports(void)
{
	memset(reports, 0, sizeof(reports));
	wrong_topic = not_ok = out_of_range = 0;
	memset(&last_bad, 0, sizeof(last_bad));
}

static int
total_reports(void)
{
	int total = 0;

	for (int i = 0; i < NMESSAGES; i++)
		total += reports[i];
	return total;
}

/* Serve reports as pgoutbox does (poll the sink's fd) until want came. */
static void
serve_until(sink *s, int want)
{
	double deadline = now_s() + DEADLINE_S;

	while (now_s() < deadline && (total_reports() < want || sink_outstanding(s) > 0)) {
		struct pollfd pfd = {.fd = sink_fd(s), .events = POLLIN};

		poll(&pfd, 1, 100);
		sink_serve(s);
	}
}

static sink_event
event(int i, const char *topic, const char *value, size_t value_len)
{
	sink_event ev;
	static char key[16];

	snprintf(expected_topic[i], sizeof(expected_topic[i]), "%s", topic);
	snprintf(key, sizeof(key), "k%d", i % 13);
	memset(&ev, 0, sizeof(ev));
	ev.topic = expected_topic[i];
	ev.key = key;
	ev.key_len = strlen(key);
	ev.value = value;
	ev.value_len = value_len;
	ev.timestamp_ms = 1700000000000LL + i;
	ev.nheaders = 1;
	ev.headers[0] = (sink_header) {"id", key, strlen(key)};
	return ev;
}

static void
test_topics(void)
{
	static const kafka_property props[] = {
		{"test.mock.num.brokers", "1"},
		{"linger.ms", "1"},
	};
	char err[512];
	sink_error e;
	sink *s;
	int client;

	reset_reports();
	s = kafka_sink_new("unused:9092", props, 2, err, sizeof(err));
	if (s == NULL) {
		fprintf(stderr, "kafka_sink_new: %s\n", err);
		failed++;
		return;
	}
	client = sink_attach(s, on_report, NULL);
	CHECK(client == 0);
	for (int i = 0; i < NMESSAGES; i++) {
		/* 7 is coprime with NTOPICS: every topic, in a scattered order. */
		char topic[32], value[64];
		sink_event ev;
		sink_rc rc;

		snprintf(topic, sizeof(topic), "unit.sink.t%d", (i * 7) % NTOPICS);
		snprintf(value, sizeof(value), "{\"n\": %d}", i);
		ev = event(i, topic, value, strlen(value));
		rc = sink_produce(s, (unsigned) client, &ev, (uint64_t) i, &e);
		if (rc != SINK_OK)
			fprintf(stderr, "sink_produce %d: rc %d %s\n", i, (int) rc, e.text);
		CHECK(rc == SINK_OK);
	}
	serve_until(s, NMESSAGES);
	CHECK(total_reports() == NMESSAGES);
	for (int i = 0; i < NMESSAGES; i++)
		if (reports[i] != 1) {
			fprintf(stderr, "message %d reported %d times\n", i, reports[i]);
			failed++;
		}
	CHECK(not_ok == 0);
	CHECK(wrong_topic == 0);
	CHECK(out_of_range == 0);
	CHECK(sink_outstanding(s) == 0);
	CHECK(s->clients[0].queued == 0);
	CHECK(!sink_fatal(s, NULL, 0));
	sink_free(s);
}

/* A mock cluster of our own, so that its errors can be scripted. */
typedef struct mock {
	rd_kafka_t              *rk;
	rd_kafka_mock_cluster_t *mc;
} mock;

static bool
mock_start(mock *m)
{
	char err[256];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();

	rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
	m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (m->rk == NULL) {
		fprintf(stderr, "rd_kafka_new: %s\n", err);
		return false;
	}
	m->mc = rd_kafka_mock_cluster_new(m->rk, 1);
	return m->mc != NULL;
}

static void
mock_stop(mock *m)
{
	if (m->mc)
		rd_kafka_mock_cluster_destroy(m->mc);
	if (m->rk)
		rd_kafka_destroy(m->rk);
}

static void
test_refusals(void)
{
	static const kafka_property props[] = {
		{"message.max.bytes", "4096"},
		{"linger.ms", "1"},
		{"log_level", "0"},
	};
	char err[512], *big;
	sink_error e;
	sink_event ev;
	sink *s;
	mock m = {0};
	int client;

	reset_reports();
	if (!mock_start(&m)) {
		failed++;
		mock_stop(&m);
		return;
	}
	rd_kafka_mock_topic_create(m.mc, "unit.refuse", 1, 1);
	s = kafka_sink_new(rd_kafka_mock_cluster_bootstraps(m.mc), props, 3, err, sizeof(err));
	CHECK(s != NULL);
	if (s == NULL) {
		fprintf(stderr, "kafka_sink_new: %s\n", err);
		mock_stop(&m);
		return;
	}
	client = sink_attach(s, on_report, NULL);

	/* Above message.max.bytes: refused at produce time, classified. */
	big = malloc(10000);
	memset(big, 'x', 10000);
	ev = event(0, "unit.refuse", big, 10000);
	CHECK(sink_produce(s, (unsigned) client, &ev, 0, &e) == SINK_REFUSED);
	CHECK(e.cls == SINK_CLASS_TOO_LARGE);
	CHECK(e.name != NULL && strcmp(e.name, "MSG_SIZE_TOO_LARGE") == 0);
	CHECK(s->clients[client].queued == 0);

	/* Accepted, then refused by the broker: the report says so, classified. */
	rd_kafka_mock_push_request_errors(m.mc, 0 /* Produce */, 1,
	                                  RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
	ev = event(1, "unit.refuse", "{\"a\":1}", 7);
	CHECK(sink_produce(s, (unsigned) client, &ev, 1, &e) == SINK_OK);
	serve_until(s, 1);
	CHECK(reports[1] == 1);
	CHECK(!last_bad.ok && last_bad.err.cls == SINK_CLASS_TOO_LARGE);
	CHECK(last_bad.err.name != NULL && strcmp(last_bad.err.name, "MSG_SIZE_TOO_LARGE") == 0);
	/* The refused message is described, for its dead-letter copy. */
	CHECK(last_bad.value_len == 7 && last_bad.nheaders == 1);

	rd_kafka_mock_push_request_errors(m.mc, 0, 1, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
	ev = event(2, "unit.refuse", "{\"a\":2}", 7);
	CHECK(sink_produce(s, (unsigned) client, &ev, 2, &e) == SINK_OK);
	serve_until(s, 2);
	CHECK(reports[2] == 1);
	CHECK(!last_bad.ok && last_bad.err.cls == SINK_CLASS_PERMANENT);

	/* librdkafka remembers the topic's authorization error: the next event
	 * for it is refused at produce time, in the same class. */
	ev = event(3, "unit.refuse", "{\"a\":3}", 7);
	CHECK(sink_produce(s, (unsigned) client, &ev, 3, &e) == SINK_REFUSED);
	CHECK(e.cls == SINK_CLASS_PERMANENT);
	CHECK(e.name != NULL && strcmp(e.name, "TOPIC_AUTHORIZATION_FAILED") == 0);

	/* Another topic is not affected. */
	rd_kafka_mock_topic_create(m.mc, "unit.other", 1, 1);
	ev = event(4, "unit.other", "{\"a\":4}", 7);
	CHECK(sink_produce(s, (unsigned) client, &ev, 4, &e) == SINK_OK);
	serve_until(s, 3);
	CHECK(reports[4] == 1 && not_ok == 2);
	CHECK(!sink_fatal(s, NULL, 0));
	sink_free(s);
	free(big);
	mock_stop(&m);
}

static void
test_queue_bound(void)
{
	static const kafka_property props[] = {
		{"message.max.bytes", "20000000"},
		{"queue.buffering.max.kbytes", "16384"},
	};
	char err[512];
	sink *s = kafka_sink_new("localhost:9", props, 2, err, sizeof(err));

	CHECK(s == NULL);
	CHECK(strstr(err, "message.max.bytes = 20000000") != NULL);
	CHECK(strstr(err, "queue.buffering.max.kbytes = 16384") != NULL);
	CHECK(!kafka_config_valid("localhost:9", props, 2, err, sizeof(err)));
	CHECK(kafka_config_valid("localhost:9", props + 1, 1, err, sizeof(err)));
	sink_free(s);
}

static void
test_fair_share(void)
{
	static const kafka_property props[] = {
		{"queue.buffering.max.messages", "100"},
		{"log_level", "0"},
	};
	char err[512];
	sink_error e;
	sink *s;
	mock m = {0};
	int a, b, na = 0, nb = 0;

	reset_reports();
	if (!mock_start(&m)) {
		failed++;
		mock_stop(&m);
		return;
	}
	rd_kafka_mock_topic_create(m.mc, "unit.share", 1, 1);
	rd_kafka_mock_broker_set_down(m.mc, 1);     /* nothing is acknowledged */
	s = kafka_sink_new(rd_kafka_mock_cluster_bootstraps(m.mc), props, 2, err, sizeof(err));
	CHECK(s != NULL);
	if (s == NULL) {
		mock_stop(&m);
		return;
	}
	a = sink_attach(s, on_report, NULL);
	b = sink_attach(s, on_report, NULL);
	for (int i = 0; i < 200; i++) {
		sink_event ev = event(i, "unit.share", "x", 1);
		if (sink_produce(s, (unsigned) a, &ev, (uint64_t) i, &e) != SINK_OK)
			break;
		na++;
	}
	for (int i = 200; i < 400; i++) {
		sink_event ev = event(i, "unit.share", "y", 1);
		if (sink_produce(s, (unsigned) b, &ev, (uint64_t) i, &e) != SINK_OK)
			break;
		nb++;
	}
	/* a stops at its share once the queue is half full; b gets the rest. */
	CHECK(na == 50);
	CHECK(nb == 50);
	fprintf(stderr, "fair share: client a %d, client b %d of 100\n", na, nb);
	sink_free(s);        /* purges without reports */
	CHECK(total_reports() == 0);
	mock_stop(&m);
}

int
main(void)
{
	test_topics();
	test_refusals();
	test_queue_bound();
	test_fair_share();
	printf("sink: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
