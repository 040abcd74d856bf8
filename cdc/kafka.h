/*
 * kafka.h — the Kafka producer: the only module that touches librdkafka.
 *
 * kafka_sink_new() makes the at-least-once sink of sink.h: an idempotent
 * producer whose delivery reports are the acknowledgements.  One classifier
 * (kafka.c: classify()) sorts every librdkafka error, at produce time and in
 * delivery reports alike, into the classes of sink_class.
 *
 * Nothing here blocks except kafka_check(), used only by --check.
 */
#ifndef PGOUTBOX_KAFKA_H
#define PGOUTBOX_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "metrics.h"
#include "sink.h"

typedef struct kafka_property {
	const char *name;
	const char *value;
} kafka_property;

/*
 * Create the producer.  Defaults (idempotence, acks=all, murmur2_random, no
 * local message timeout, bounded queue) are set first; props override them
 * in order.  A configuration in which an event could be accepted by the
 * producer but never fit its queue (message.max.bytes above
 * queue.buffering.max.kbytes) is refused.  Returns NULL with errbuf filled.
 */
sink *kafka_sink_new(const char *brokers, const kafka_property *props, size_t nprops,
                     char *errbuf, size_t errlen);

/*
 * Validate brokers and props as kafka_sink_new() would, without creating a
 * producer (configuration load, SIGHUP).  False with errbuf filled.
 */
bool  kafka_config_valid(const char *brokers, const kafka_property *props, size_t nprops,
                         char *errbuf, size_t errlen);

/*
 * --check: with a short-lived client configured like the producer (so TLS
 * and SASL apply), ask the cluster for metadata within timeout_ms and report
 * the brokers; then whether events' topics can come into being: when
 * fixed_topic is set (a template without ${...}), whether it exists,
 * otherwise the brokers' auto.create.topics.enable if DescribeConfigs shows
 * it.  Whether the principal may write is only known when producing, and is
 * said so.  Blocks up to about twice timeout_ms.  Returns the failed items,
 * -1 for a configuration error.
 */
int   kafka_check(const char *brokers, const kafka_property *props, size_t nprops,
                  const char *fixed_topic, int timeout_ms, check_report_fn report, void *ctx);

/*
 * The transactional sink (delivery = exactly-once): "delivered" means "in a
 * committed Kafka transaction".  kafka_txn.c explains how.  The strings and
 * props must outlive the sink (the producer is made at the first session).
 */
typedef struct kafka_txn_config {
	const char           *brokers;
	const kafka_property *props;
	size_t                nprops;
	const char           *transactional_id;  /* NULL: pgoutbox-<system identifier>-<slot> */
	const char           *state_topic;
	int                   max_ms;            /* commit at a transaction end once this old ... */
	int                   max_events;        /* ... or holding this many events */
	metrics_txn_stats    *stats;             /* where its counters go (the caller's; may be NULL) */
	uint64_t              test_abort_every;  /* test hook: fail every Nth Kafka transaction at its commit */
} kafka_txn_config;

/*
 * Create the transactional sink.  Its producer is made, and its
 * transactions initialized (fencing an older producer with the same
 * transactional id), at the first sink_session(): only then are the
 * system identifier and slot known, and only a pipeline that holds the slot
 * may fence.  The configuration is checked here (a producer is made and
 * destroyed at once).  NULL with errbuf filled: a configuration error.
 */
sink *kafka_txn_sink_new(const kafka_txn_config *cfg, char *errbuf, size_t errlen);

/*
 * --check for exactly-once: whether the cluster can run transactions (the
 * transaction state log exists or can be created with its replication
 * factor; transaction.max.timeout.ms allows the producer's
 * transaction.timeout.ms), whether the state topic exists and is compacted,
 * and what can be seen of ACLs.  Blocks up to a few times timeout_ms.
 * Returns the failed items, -1 for a configuration error.
 */
int   kafka_txn_check(const kafka_txn_config *cfg, int timeout_ms, check_report_fn report,
                      void *ctx);

/* librdkafka's version string. */
const char *kafka_library_version(void);

#endif /* PGOUTBOX_KAFKA_H */
