/*
 * kafka_int.h — what the two sinks of librdkafka's module share: kafka.c
 * (at least once: acknowledged messages) and kafka_txn.c (exactly once:
 * committed Kafka transactions).  Private to those two files, the only ones
 * that include librdkafka; everything else sees kafka.h and sink.h.
 */
#ifndef PGOUTBOX_KAFKA_INT_H
#define PGOUTBOX_KAFKA_INT_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kafka.h"
#include "sink.h"

/* The one classifier of librdkafka's errors (see kafka.c). */
sink_class kafka_classify(rd_kafka_resp_err_t err);
/* e = err, classified, with librdkafka's words. */
void       kafka_set_error(sink_error *e, rd_kafka_resp_err_t err);

bool       kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                          char *errbuf, size_t errlen);
/* An integer property as conf holds it now; -1 when unreadable. */
long long  kafka_conf_int(rd_kafka_conf_t *conf, const char *name);
/*
 * The producer's configuration: pgoutbox's defaults, brokers, props (in
 * that order, later wins).  transactional: the transactional producer's,
 * whose messages time out (librdkafka ties message.timeout.ms to
 * transaction.timeout.ms).  NULL with errbuf filled.  *queue_messages (may
 * be NULL) gets queue.buffering.max.messages.
 */
rd_kafka_conf_t *kafka_make_conf(const char *brokers, const kafka_property *props, size_t nprops,
                                 bool transactional, uint64_t *queue_messages,
                                 char *errbuf, size_t errlen);

/* librdkafka's log lines in pgoutbox's format (served on the main thread). */
void       kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);

/*
 * Topic handles, one per topic name, kept for the life of the producer
 * (see kafka.c for why).
 */
typedef struct kafka_topic {
	char             *name;        /* NULL: free slot */
	uint32_t          hash;
	rd_kafka_topic_t *rkt;
} kafka_topic;

typedef struct kafka_topics {
	kafka_topic *tab;              /* open addressing, power-of-two size */
	size_t       n, cap;
	size_t       last;             /* index of the last topic used */
} kafka_topics;

/* The handle of name on rk, made on first use; NULL with err filled. */
rd_kafka_topic_t *kafka_topic_handle(kafka_topics *t, rd_kafka_t *rk, const char *name,
                                     sink_error *err);
void       kafka_topics_free(kafka_topics *t);

/* ev's headers as librdkafka's; NULL with e filled (PERMANENT). */
rd_kafka_headers_t *kafka_headers(const sink_event *ev, sink_error *e);

/*
 * The wakeup pipe: librdkafka writes a byte into pipefd[1] whenever rk's
 * main queue becomes non-empty (rd_kafka_queue_io_event_enable), so that
 * main's poll() sees it.  Log lines are routed to that queue too.
 */
bool       kafka_wakeup_open(rd_kafka_t *rk, int pipefd[2], rd_kafka_queue_t **mainq,
                             char *errbuf, size_t errlen);
void       kafka_wakeup_close(int pipefd[2], rd_kafka_queue_t *mainq);
/* Empty the pipe (before serving the queue: a byte written meanwhile stays). */
void       kafka_wakeup_drain(int fd);

#endif /* PGOUTBOX_KAFKA_INT_H */
