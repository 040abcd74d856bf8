/*
 * test_sink.c — the producer's topic handles, against librdkafka's mock
 * cluster (test.mock.num.brokers): messages for many topics, produced in
 * an order that keeps coming back to earlier ones, must each be reported
 * exactly once, acknowledged, for the topic they were produced to.  This
 * makes the handle table grow several times and probe past collisions.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
		fprintf(stderr, "message %llu refused: %s\n", (unsigned long long) opaque,
		        rep->error ? rep->error : "?");
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

int
main(void)
{
	static const sink_property props[] = {
		{"test.mock.num.brokers", "1"},
		{"linger.ms", "1"},
	};
	char err[512];
	sink *s;
	double deadline;
	int total = 0;

	s = sink_new("unused:9092", props, sizeof(props) / sizeof(props[0]), on_report, NULL,
	             err, sizeof(err));
	if (s == NULL) {
		fprintf(stderr, "sink_new: %s\n", err);
		return 1;
	}
	for (int i = 0; i < NMESSAGES; i++) {
		/* 7 is coprime with NTOPICS: every topic, in a scattered order. */
		int t = (i * 7) % NTOPICS;
		char key[16], value[64];
		sink_event ev;
		sink_rc rc;

		snprintf(expected_topic[i], sizeof(expected_topic[i]), "unit.sink.t%d", t);
		snprintf(key, sizeof(key), "k%d", i % 13);
		snprintf(value, sizeof(value), "{\"n\": %d}", i);
		memset(&ev, 0, sizeof(ev));
		ev.topic = expected_topic[i];
		ev.key = key;
		ev.key_len = strlen(key);
		ev.value = value;
		ev.value_len = strlen(value);
		ev.timestamp_ms = 1700000000000LL + i;
		ev.nheaders = 1;
		ev.headers[0] = (sink_header) {"id", key, strlen(key)};
		rc = sink_produce(s, &ev, (uint64_t) i, err, sizeof(err));
		if (rc != SINK_OK)
			fprintf(stderr, "sink_produce %d: rc %d %s\n", i, (int) rc, err);
		CHECK(rc == SINK_OK);
	}

	/* Serve reports as pgoutbox does (poll the sink's fd), until all came. */
	deadline = now_s() + DEADLINE_S;
	while (now_s() < deadline) {
		struct pollfd pfd = {.fd = sink_fd(s), .events = POLLIN};

		total = 0;
		for (int i = 0; i < NMESSAGES; i++)
			total += reports[i];
		if (total >= NMESSAGES && sink_outstanding(s) == 0)
			break;
		poll(&pfd, 1, 100);
		sink_serve(s);
	}
	CHECK(total == NMESSAGES);
	for (int i = 0; i < NMESSAGES; i++)
		if (reports[i] != 1) {
			fprintf(stderr, "message %d reported %d times\n", i, reports[i]);
			failed++;
		}
	CHECK(not_ok == 0);
	CHECK(wrong_topic == 0);
	CHECK(out_of_range == 0);
	CHECK(sink_outstanding(s) == 0);
	CHECK(!sink_fatal(s, NULL, 0));
	sink_free(s);

	printf("sink: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
