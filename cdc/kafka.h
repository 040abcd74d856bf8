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

/* librdkafka's version string. */
const char *kafka_library_version(void);

#endif /* PGOUTBOX_KAFKA_H */
