/*
 * sink.h — the Kafka producer: the only module that touches librdkafka.
 *
 * The sink takes events, hands them to librdkafka, and reports each
 * message's fate exactly once through the delivery callback, carrying the
 * opaque the caller gave at produce time (pgoutbox passes the ledger's
 * transaction sequence number).  That callback is the seam between "Kafka
 * acknowledged this" and "this LSN may be confirmed"; a later exactly-once
 * mode replaces it by one call per message of a committed Kafka transaction.
 *
 * Nothing here blocks except sink_flush(), used only while draining at exit.
 * Delivery reports are served from sink_serve(), which the main loop calls
 * when sink_fd() becomes readable.
 */
#ifndef PGOUTBOX_SINK_H
#define PGOUTBOX_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "check.h"

typedef struct sink sink;

typedef struct sink_header {
	const char *name;          /* NUL-terminated */
	const void *value;
	size_t      len;
} sink_header;

/*
 * Headers one message may carry: the contract's id and type, the six of
 * CloudEvents binary mode, up to OUTBOX_MAX_EXTRA_HEADERS mapped ones and
 * the four a dead-letter copy adds.  A fixed bound keeps sink_event free of
 * allocations; the configuration is checked against it at load time.
 */
#define SINK_MAX_HEADERS 32

typedef struct sink_event {
	const char *topic;         /* NUL-terminated */
	const void *key;           /* may be NULL (no key) */
	size_t      key_len;
	const void *value;         /* NULL → null value (tombstone) */
	size_t      value_len;
	int64_t     timestamp_ms;  /* Unix epoch milliseconds */
	size_t      nheaders;
	sink_header headers[SINK_MAX_HEADERS];
} sink_event;

/*
 * What a delivery report says.  When !ok, the refused message itself is
 * described too (key, value, headers), so that the caller can produce a
 * dead-letter copy from inside the callback.  Every pointer is a view into
 * librdkafka's message, valid only until the callback returns.
 */
typedef struct sink_report {
	bool        ok;
	bool        permanent;     /* !ok: the broker refuses this message for good */
	const char *error;         /* !ok: librdkafka's error string */
	const char *topic;
	const void *id;            /* value of the "id" header, when present */
	size_t      id_len;
	const char *error_name;    /* !ok: librdkafka's error name, e.g. "MSG_SIZE_TOO_LARGE" */
	size_t      bytes;         /* key + value length */
	int64_t     timestamp_ms;  /* the message's timestamp (the commit time); -1 if none */
	const void *key;           /* !ok: the message's key (NULL: none) */
	size_t      key_len;
	const void *value;         /* !ok: its value (NULL: tombstone) */
	size_t      value_len;
	size_t      nheaders;      /* !ok: its headers, at most SINK_MAX_HEADERS */
	sink_header headers[SINK_MAX_HEADERS];
} sink_report;

typedef void (*sink_delivery_fn)(void *ctx, uint64_t opaque, const sink_report *rep);

typedef struct sink_property {
	const char *name;
	const char *value;
} sink_property;

typedef enum sink_rc {
	SINK_OK = 0,
	SINK_FULL,                 /* local queue full: back off, serve reports, retry */
	SINK_FAILED,               /* refused at once; errbuf says why */
	SINK_FATAL,                /* the producer failed fatally: see sink_fatal() */
} sink_rc;

/*
 * Create the producer.  Defaults (idempotence, acks=all, murmur2_random,
 * no local message timeout, bounded queue) are set first; props override
 * them in order.  Returns NULL with errbuf filled on a bad property.
 */
sink *sink_new(const char *brokers, const sink_property *props, size_t nprops,
               sink_delivery_fn cb, void *ctx, char *errbuf, size_t errlen);
void  sink_free(sink *s);

/* File descriptor that becomes readable when reports or errors wait. */
int   sink_fd(const sink *s);

/*
 * Hand one event to librdkafka (it copies everything).  May be called from
 * inside the delivery callback (to produce a dead-letter copy); it never
 * blocks and never serves callbacks itself.
 */
sink_rc sink_produce(sink *s, const sink_event *ev, uint64_t opaque,
                     char *errbuf, size_t errlen);

/*
 * A deep copy of ev in one allocation (topic, key, value, header names and
 * values), for an event that must outlive the views it was built from; free
 * it with free().  NULL when out of memory.
 */
sink_event *sink_event_dup(const sink_event *ev);

/* Serve delivery reports and errors that wait; never blocks. */
void  sink_serve(sink *s);

/*
 * Wait up to timeout_ms for every produced message to be reported.  Returns
 * the number of messages still unreported.
 */
int   sink_flush(sink *s, int timeout_ms);

/* Messages produced but not reported yet. */
int   sink_outstanding(const sink *s);

/* The last error librdkafka reported (e.g. a refused SASL login), or "". */
const char *sink_last_error(const sink *s);

/* True once the producer hit a fatal error; errbuf (may be NULL) gets the cause. */
bool  sink_fatal(sink *s, char *errbuf, size_t errlen);

/* Test hook: make the producer fail fatally, as an idempotence violation would. */
void  sink_test_fatal(sink *s);

/*
 * --check: with a short-lived client configured like the producer (so TLS
 * and SASL apply), ask the cluster for metadata within timeout_ms and report
 * the brokers; then whether events' topics can come into being: when
 * fixed_topic is set (a template without ${...}), whether it exists,
 * otherwise the brokers' auto.create.topics.enable if DescribeConfigs shows
 * it.  Whether the principal may write is only known when producing, and is
 * said so.  Blocks up to about twice timeout_ms.  Returns the failed items.
 */
int   sink_check(const char *brokers, const sink_property *props, size_t nprops,
                 const char *fixed_topic, int timeout_ms, check_report_fn report, void *ctx);

/* librdkafka's version string. */
const char *sink_library_version(void);

#endif /* PGOUTBOX_SINK_H */
