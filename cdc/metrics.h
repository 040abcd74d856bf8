/*
 * metrics.h — Prometheus metrics and a health endpoint over plain HTTP/1.0.
 *
 * A non-blocking listener that main's poll loop serves: metrics_pollfds()
 * adds the listener and client sockets to the loop's pollfd array,
 * metrics_serve() handles what poll() reported.  Requests are bounded
 * (METRICS_MAX_REQUEST bytes, METRICS_MAX_CLIENTS at once, an idle timeout),
 * each answered with one response and the connection closed.
 *
 *   GET /metrics  Prometheus text format 0.0.4 of a metrics_stats snapshot
 *   GET /healthz  200 "streaming" while streaming and Kafka acknowledges,
 *                 else 503 and the reason
 *
 * The counters live in metrics_stats, which main updates whether or not a
 * listener runs; this module only reads them.
 */
#ifndef PGOUTBOX_METRICS_H
#define PGOUTBOX_METRICS_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_CLIENTS   8
#define METRICS_MAX_REQUEST   4096
#define METRICS_NBUCKETS      13     /* commit-to-ack latency, 1 ms .. 10 s */
#define METRICS_MAX_ERROR_KINDS 16

typedef struct metrics_error_kind {
	char     name[48];               /* librdkafka error name, e.g. "MSG_SIZE_TOO_LARGE" */
	uint64_t count;
} metrics_error_kind;

typedef struct metrics_stats {
	uint64_t events, bytes, txns;    /* published: acknowledged by Kafka */
	uint64_t in_flight;              /* produced, not yet reported */
	uint64_t received_lsn, confirmed_lsn, server_wal_end;
	uint64_t latency_bucket[METRICS_NBUCKETS];   /* non-cumulative counts */
	uint64_t latency_count;
	double   latency_sum;            /* seconds */
	metrics_error_kind errors[METRICS_MAX_ERROR_KINDS];
	size_t   nerrors;
	uint64_t reconnects;
	double   backpressure_seconds;
	bool     streaming;
	bool     kafka_stalled;          /* events wait, Kafka acknowledged nothing for long */
	char     health[256];            /* why not streaming (no secrets) */
} metrics_stats;

/* Upper bounds (seconds) of the latency buckets. */
extern const double metrics_buckets[METRICS_NBUCKETS];

void metrics_observe_latency(metrics_stats *st, double seconds);
void metrics_count_error(metrics_stats *st, const char *kind);

typedef struct metrics metrics;

/*
 * Listen on "HOST:PORT", "[V6]:PORT" or "PORT" (127.0.0.1).  Returns NULL
 * with errbuf filled when the address is invalid or cannot be bound.
 */
metrics *metrics_new(const char *addr, const char *version, const metrics_stats *st,
                     char *errbuf, size_t errlen);
void     metrics_free(metrics *m);
/* Parse an address without binding (configuration check). */
bool     metrics_addr_valid(const char *addr, char *errbuf, size_t errlen);

/* Add this module's sockets to pfd (room for max); returns how many. */
int      metrics_pollfds(metrics *m, struct pollfd *pfd, int max);
/* Act on the revents of the n entries metrics_pollfds() added; never blocks. */
void     metrics_serve(metrics *m, const struct pollfd *pfd, int n, int64_t now_ms);
/* The earliest time (ms) a client times out, or -1 when none is connected. */
int64_t  metrics_next_deadline(const metrics *m);

/* Render the text exposition into a malloc'd buffer (tests, /metrics). */
char    *metrics_render(const metrics_stats *st, const char *version, size_t *len);

#endif /* PGOUTBOX_METRICS_H */
