/*
 * metrics.h — Prometheus metrics and a health endpoint over plain HTTP/1.0.
 *
 * A non-blocking listener that main's poll loop serves: metrics_pollfds()
 * adds the listener and client sockets to the loop's pollfd array,
 * metrics_serve() handles what poll() reported.  Each connection carries one
 * request, answered with one response, then the connection is closed.
 *
 *   GET|HEAD /metrics  Prometheus text format 0.0.4 of a metrics_stats snapshot
 *   GET|HEAD /healthz  200 "streaming" while streaming and Kafka acknowledges,
 *                      else 503 and the reason
 *
 * The health endpoint is what an orchestrator restarts the daemon by, so no
 * client may keep it from answering:
 *   - a request must arrive whole (up to the blank line) within
 *     METRICS_REQUEST_TIMEOUT_MS of the connection being accepted — a total,
 *     not per byte, so a client sending a byte a second gains nothing;
 *   - the response must be taken within METRICS_RESPONSE_TIMEOUT_MS; sends
 *     never block, a client that does not read only holds its own slot;
 *   - when all METRICS_MAX_CLIENTS slots are taken, a new connection closes
 *     the oldest client already answered, else the oldest that has not sent
 *     a whole request (one still being answered only when all are), so a new
 *     connection is always served;
 *   - when accept() fails for want of resources (EMFILE, ENFILE, ENOBUFS,
 *     ENOMEM) the listener is left out of the poll for 100 ms, doubling up to
 *     1 s while it keeps failing, and one warning is logged per 60 s with the
 *     number of failed accepts — instead of poll() waking at once, forever.
 * Error responses say what was wrong with the request (400 malformed request
 * line, 404 unknown path, 405 method other than GET/HEAD, 408 request not
 * complete in time, 431 request larger than METRICS_MAX_REQUEST, 505 HTTP
 * version other than 1.x).
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

#define METRICS_MAX_CLIENTS   64     /* connections served at once */
#define METRICS_MAX_REQUEST   4096   /* request line and headers, bytes */
#define METRICS_REQUEST_TIMEOUT_MS  2000   /* accept to the end of the headers */
#define METRICS_RESPONSE_TIMEOUT_MS 5000   /* to send the whole response */
#define METRICS_NBUCKETS      16     /* latency histograms, 100 us .. 10 s */
#define METRICS_MAX_ERROR_KINDS 16

typedef struct metrics_error_kind {
	char     name[48];               /* librdkafka error name, e.g. "MSG_SIZE_TOO_LARGE" */
	uint64_t count;
} metrics_error_kind;

/* A histogram over metrics_buckets (seconds). */
typedef struct metrics_histogram {
	uint64_t bucket[METRICS_NBUCKETS];   /* non-cumulative counts */
	uint64_t count;
	double   sum;                        /* seconds */
} metrics_histogram;

/* Bounds of the events-per-transaction histogram. */
#define METRICS_TXN_EVENT_NBUCKETS 7

/*
 * The transactional sink's Kafka transactions (delivery = exactly-once):
 * one producer's, so not per source.  They live with main, not with the
 * producer, so that a rebuilt producer keeps counting.
 */
typedef struct metrics_txn_stats {
	bool              on;            /* exactly-once: rendered */
	uint64_t          committed, aborted;
	metrics_histogram commit;        /* from deciding to commit to the commit's success */
	uint64_t          events_bucket[METRICS_TXN_EVENT_NBUCKETS];   /* events per committed transaction */
	uint64_t          events_count;
	double            events_sum;
} metrics_txn_stats;

extern const double metrics_txn_event_buckets[METRICS_TXN_EVENT_NBUCKETS];

/* One committed Kafka transaction: how long its commit took, how many events it held. */
void metrics_observe_commit(metrics_txn_stats *t, double seconds, uint64_t events);

typedef struct metrics_stats {
	uint64_t events, bytes, txns;    /* published: acknowledged by Kafka */
	uint64_t in_flight;              /* produced, not yet reported */
	uint64_t received_lsn, confirmed_lsn, server_wal_end;
	/* Where an event's time goes: its transaction's commit to pgoutbox
	 * receiving the Begin, produce to Kafka's acknowledgement, and the whole
	 * commit to acknowledgement. */
	metrics_histogram commit_to_receive;
	metrics_histogram produce_to_ack;
	metrics_histogram commit_to_ack;
	metrics_error_kind errors[METRICS_MAX_ERROR_KINDS];
	size_t   nerrors;
	uint64_t reconnects;
	double   backpressure_seconds;
	bool     streaming;
	bool     backfill_active;        /* a backfill or replay phase runs */
	uint64_t backfill_expected;      /* rows it selected */
	uint64_t backfill_read, backfill_acked;   /* rows read from the table, acknowledged by Kafka */
	uint64_t cleanup_deleted;        /* rows deleted by cleanup = delete */
	bool     kafka_stalled;          /* events wait, Kafka acknowledged nothing for long */
	char     health[256];            /* why not streaming (no secrets) */
} metrics_stats;

/*
 * One source's metrics and what labels them: every sample of /metrics
 * carries source, slot and database labels (the one source of a
 * configuration without sections is called "default").
 */
typedef struct metrics_source {
	const char          *name;       /* "" → "default" */
	const char          *slot;
	const char          *database;   /* "" until known */
	const metrics_stats *st;
} metrics_source;

/* Upper bounds (seconds) of the latency buckets. */
extern const double metrics_buckets[METRICS_NBUCKETS];

void metrics_observe(metrics_histogram *h, double seconds);
void metrics_count_error(metrics_stats *st, const char *kind);

typedef struct metrics metrics;

/*
 * Listen on "HOST:PORT", "[V6]:PORT" or "PORT" (127.0.0.1).  Returns NULL
 * with errbuf filled when the address is invalid, does not resolve or cannot
 * be bound; the message names the address and what is wrong with it.
 * Resolving a host name may block (getaddrinfo); a numeric address does not.
 */
metrics *metrics_new(const char *addr, const char *version, char *errbuf, size_t errlen);
/*
 * What /metrics and /healthz report: src[0..n), owned by the caller, valid
 * until the next call (or metrics_free).  /healthz answers 200 when every
 * source streams and Kafka acknowledges, else 503 naming each that does not.
 */
void     metrics_set_sources(metrics *m, const metrics_source *src, size_t n);
/* The Kafka transactions /metrics shows too (NULL: none); owned by the caller. */
void     metrics_set_txn(metrics *m, const metrics_txn_stats *txn);
void     metrics_free(metrics *m);
/* Parse an address without resolving or binding (configuration check). */
bool     metrics_addr_valid(const char *addr, char *errbuf, size_t errlen);

/*
 * Add this module's sockets to pfd (room for max, METRICS_MAX_CLIENTS + 1
 * suffice); returns how many, always at least 1 when max >= 1: the listener
 * comes first and stays in the array (with no events while accepting is
 * paused), so that the caller keeps calling metrics_serve().
 */
int      metrics_pollfds(metrics *m, struct pollfd *pfd, int max);
/*
 * Act on the revents of the n entries metrics_pollfds() added, and on the
 * deadlines due at now_ms (a monotonic clock, the same for every call);
 * call it after every poll(), whatever the revents.  Never blocks.
 */
void     metrics_serve(metrics *m, const struct pollfd *pfd, int n, int64_t now_ms);
/*
 * The earliest time (ms, the clock of metrics_serve) at which metrics_serve()
 * has something to do without any revents — a client's deadline or the end
 * of an accept pause — or -1 when there is none.
 */
int64_t  metrics_next_deadline(const metrics *m);

/* Render the text exposition of src[0..n) into a malloc'd buffer (tests, /metrics). */
char    *metrics_render(const metrics_source *src, size_t n, const char *version, size_t *len);
/* The same, and the Kafka transactions of txn (may be NULL). */
char    *metrics_render_txn(const metrics_source *src, size_t n, const metrics_txn_stats *txn,
                            const char *version, size_t *len);
/* The /healthz verdict and text of src[0..n) into buf; true when healthy. */
bool     metrics_health(const metrics_source *src, size_t n, char *buf, size_t buflen);

#endif /* PGOUTBOX_METRICS_H */
