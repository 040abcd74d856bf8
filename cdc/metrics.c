/*
 * metrics.c — Prometheus text exposition and /healthz on a non-blocking
 * HTTP/1.0 listener.  See metrics.h for what a client can and cannot do.
 *
 * A client slot goes FREE → READ (until the blank line ending the headers)
 * → WRITE (the whole response, prepared at once) → LINGER (our side shut
 * down; what the client still sends is read and dropped until it closes, so
 * that closing with unread input does not reset the connection before the
 * client has read the answer) → FREE.  Every state has a deadline; nothing
 * here waits for a socket, main's poll() does.
 */
#include "metrics.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * Connections accepted per metrics_serve() call: fewer than the slots, so
 * that a client accepted in one call is never evicted by the same call's
 * later accepts before its request could be read; the rest of a long accept
 * queue waits for the next turn of main's loop (the listener stays readable).
 */
#define ACCEPT_BATCH       (METRICS_MAX_CLIENTS / 2)
#define LINGER_TIMEOUT_MS  1000       /* after the response, for the client to close */
#define LINGER_MAX_BYTES   65536      /* dropped after the response before giving up */
#define PAUSE_MIN_MS       100        /* listener pause after a failed accept ... */
#define PAUSE_MAX_MS       1000       /* ... doubling to this while accepts keep failing */
#define WARN_INTERVAL_MS   60000      /* at most one accept warning per interval */
#define ECHO_MAX           64         /* bytes of a bad request quoted back */

const double metrics_buckets[METRICS_NBUCKETS] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
	5, 10,
};

typedef enum client_state {
	C_FREE = 0,
	C_READ,        /* waiting for the request line and headers */
	C_WRITE,       /* sending out[outoff..outlen) */
	C_LINGER,      /* response sent, write side shut down, waiting for EOF */
} client_state;

typedef struct client {
	int          fd;           /* -1 when FREE */
	client_state state;
	uint64_t     seq;          /* accept order: the lowest is the oldest */
	int64_t      deadline_ms;  /* of the current state */
	bool         head;         /* HEAD: headers only */
	char         in[METRICS_MAX_REQUEST];
	size_t       inlen;        /* READ: bytes in `in`; LINGER: bytes dropped */
	char        *out;          /* WRITE: the response, owned */
	size_t       outlen, outoff;
} client;

struct metrics {
	int                  fd;               /* the listener */
	char                *version;
	const metrics_source *src;
	size_t               nsrc;
	const metrics_txn_stats *txn;
	client               clients[METRICS_MAX_CLIENTS];
	uint64_t             next_seq;
	bool                 paused;           /* listener left out of the poll ... */
	int64_t              paused_until_ms;  /* ... until then */
	int                  pause_ms;         /* length of the next pause */
	uint64_t             failed_accepts;   /* since the last warning */
	bool                 warned;
	int64_t              next_warn_ms;     /* no accept warning before this */
};

void
metrics_observe(metrics_histogram *h, double seconds)
{
	if (seconds < 0)
		seconds = 0;
	for (int i = 0; i < METRICS_NBUCKETS; i++)
		if (seconds <= metrics_buckets[i]) {
			h->bucket[i]++;
			break;
		}
	h->count++;
	h->sum += seconds;
}

const double metrics_txn_event_buckets[METRICS_TXN_EVENT_NBUCKETS] = {
	1, 10, 100, 1000, 10000, 100000, 1000000,
};

void
metrics_observe_commit(metrics_txn_stats *t, double seconds, uint64_t events)
{
	metrics_observe(&t->commit, seconds);
	for (int i = 0; i < METRICS_TXN_EVENT_NBUCKETS; i++)
		if ((double) events <= metrics_txn_event_buckets[i]) {
			t->events_bucket[i]++;
			break;
		}
	t->events_count++;
	t->events_sum += (double) events;
	t->committed++;
}

void
metrics_count_error(metrics_stats *st, const char *kind)
{
	size_t i;

	for (i = 0; i < st->nerrors; i++)
		if (strcmp(st->errors[i].name, kind) == 0) {
			st->errors[i].count++;
			return;
		}
	/* Bounded: kinds beyond the table are counted together as OTHER. */
	if (st->nerrors < METRICS_MAX_ERROR_KINDS - 1) {
		i = st->nerrors++;
		snprintf(st->errors[i].name, sizeof(st->errors[i].name), "%s", kind);
	} else {
		i = METRICS_MAX_ERROR_KINDS - 1;
		if (st->nerrors < METRICS_MAX_ERROR_KINDS) {
			st->nerrors = METRICS_MAX_ERROR_KINDS;
			snprintf(st->errors[i].name, sizeof(st->errors[i].name), "OTHER");
		}
	}
	st->errors[i].count++;
}

/* A growable text buffer; on allocation failure it stays failed (ok = false). */
typedef struct strbuf {
	char  *p;
	size_t len, cap;
	bool   ok;
} strbuf;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
sb_printf(strbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!b->ok)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->ok = false;
			return;
		}
		if (b->p != NULL && (size_t) n < b->cap - b->len) {
			b->len += (size_t) n;
			return;
		}
		{
			size_t cap = b->cap ? b->cap * 2 : 4096;
			char *np;

			while (cap < b->len + (size_t) n + 1)
				cap *= 2;
			np = realloc(b->p, cap);
			if (np == NULL) {
				b->ok = false;
				return;
			}
			b->p = np;
			b->cap = cap;
		}
	}
}

static void
metric_head(strbuf *b, const char *name, const char *type, const char *help)
{
	sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values escaped as the text format wants (\\, \", \n). */
static void
label_value(char *out, size_t outlen, const char *v)
{
	size_t n = 0;

	for (; v != NULL && *v && n + 3 < outlen; v++) {
		if (*v == '\\' || *v == '"') {
			out[n++] = '\\';
			out[n++] = *v;
		} else if (*v == '\n') {
			out[n++] = '\\';
			out[n++] = 'n';
		} else {
			out[n++] = *v;
		}
	}
	out[n] = '\0';
}

/* source="..",slot="..",database=".." of one source. */
static void
labels_of(const metrics_source *src, char *out, size_t outlen)
{
	char name[160], slot[160], db[160];

	label_value(name, sizeof(name), src->name && src->name[0] ? src->name : "default");
	label_value(slot, sizeof(slot), src->slot);
	label_value(db, sizeof(db), src->database);
	snprintf(out, outlen, "source=\"%s\",slot=\"%s\",database=\"%s\"", name, slot, db);
}

/* One histogram family, a series per source; off: where it sits in metrics_stats. */
static void
histogram(strbuf *b, const char *name, const char *help, const metrics_source *src, size_t n,
          char (*lab)[520], size_t off)
{
	metric_head(b, name, "histogram", help);
	for (size_t k = 0; k < n; k++) {
		const metrics_histogram *h =
			(const metrics_histogram *) ((const char *) src[k].st + off);
		uint64_t cum = 0;

		for (int i = 0; i < METRICS_NBUCKETS; i++) {
			cum += h->bucket[i];
			sb_printf(b, "%s_bucket{%s,le=\"%g\"} %" PRIu64 "\n", name, lab[k],
			          metrics_buckets[i], cum);
		}
		sb_printf(b, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, lab[k], h->count);
		sb_printf(b, "%s_sum{%s} %.6f\n", name, lab[k], h->sum);
		sb_printf(b, "%s_count{%s} %" PRIu64 "\n", name, lab[k], h->count);
	}
}

/* The exactly-once families: the one producer's, without source labels. */
static void
render_txn(strbuf *b, const metrics_txn_stats *t)
{
	uint64_t cum = 0;

	metric_head(b, "pgoutbox_kafka_transactions_committed_total", "counter",
	            "Kafka transactions committed (exactly-once delivery).");
	sb_printf(b, "pgoutbox_kafka_transactions_committed_total %" PRIu64 "\n", t->committed);
	metric_head(b, "pgoutbox_kafka_transactions_aborted_total", "counter",
	            "Kafka transactions aborted; their events are read again from the slot.");
	sb_printf(b, "pgoutbox_kafka_transactions_aborted_total %" PRIu64 "\n", t->aborted);
	metric_head(b, "pgoutbox_kafka_transaction_commit_seconds", "histogram",
	            "Time from deciding to commit a Kafka transaction to the commit's success.");
	for (int i = 0; i < METRICS_NBUCKETS; i++) {
		cum += t->commit.bucket[i];
		sb_printf(b, "pgoutbox_kafka_transaction_commit_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
		          metrics_buckets[i], cum);
	}
	sb_printf(b, "pgoutbox_kafka_transaction_commit_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
	          t->commit.count);
	sb_printf(b, "pgoutbox_kafka_transaction_commit_seconds_sum %.6f\n", t->commit.sum);
	sb_printf(b, "pgoutbox_kafka_transaction_commit_seconds_count %" PRIu64 "\n", t->commit.count);
	metric_head(b, "pgoutbox_kafka_transaction_events", "histogram",
	            "Events (dead letters included) per committed Kafka transaction.");
	cum = 0;
	for (int i = 0; i < METRICS_TXN_EVENT_NBUCKETS; i++) {
		cum += t->events_bucket[i];
		sb_printf(b, "pgoutbox_kafka_transaction_events_bucket{le=\"%.0f\"} %" PRIu64 "\n",
		          metrics_txn_event_buckets[i], cum);
	}
	sb_printf(b, "pgoutbox_kafka_transaction_events_bucket{le=\"+Inf\"} %" PRIu64 "\n",
	          t->events_count);
	sb_printf(b, "pgoutbox_kafka_transaction_events_sum %.0f\n", t->events_sum);
	sb_printf(b, "pgoutbox_kafka_transaction_events_count %" PRIu64 "\n", t->events_count);
}

char *
metrics_render(const metrics_source *src, size_t n, const char *version, size_t *len)
{
	return metrics_render_txn(src, n, NULL, version, len);
}

char *
metrics_render_txn(const metrics_source *src, size_t n, const metrics_txn_stats *txn,
                   const char *version, size_t *len)
{
	strbuf b = {.ok = true};
	char (*lab)[520] = n ? calloc(n, sizeof(*lab)) : NULL;

	if (n > 0 && lab == NULL)
		return NULL;
	for (size_t k = 0; k < n; k++)
		labels_of(&src[k], lab[k], sizeof(lab[k]));
#define EACH(name, type, help, fmt, expr) do { \
	metric_head(&b, name, type, help); \
	for (size_t k = 0; k < n; k++) { \
		const metrics_stats *st = src[k].st; \
		sb_printf(&b, name "{%s} " fmt "\n", lab[k], expr); \
	} \
} while (0)

	metric_head(&b, "pgoutbox_build_info", "gauge", "Version of pgoutbox; always 1.");
	sb_printf(&b, "pgoutbox_build_info{version=\"%s\"} 1\n", version);
	EACH("pgoutbox_events_published_total", "counter", "Outbox events acknowledged by Kafka.",
	     "%" PRIu64, st->events);
	EACH("pgoutbox_bytes_published_total", "counter",
	     "Key and value bytes of the events acknowledged by Kafka.", "%" PRIu64, st->bytes);
	EACH("pgoutbox_transactions_total", "counter",
	     "Committed transactions received from the replication stream.", "%" PRIu64, st->txns);
	EACH("pgoutbox_in_flight_messages", "gauge",
	     "Messages handed to Kafka and not acknowledged yet.", "%" PRIu64, st->in_flight);
	EACH("pgoutbox_received_lsn", "gauge", "Highest WAL position received.", "%" PRIu64,
	     st->received_lsn);
	EACH("pgoutbox_confirmed_lsn", "gauge",
	     "WAL position confirmed to PostgreSQL (everything before it is in Kafka).", "%" PRIu64,
	     st->confirmed_lsn);
	EACH("pgoutbox_server_wal_end_lsn", "gauge",
	     "The server's WAL end as last reported by the walsender.", "%" PRIu64, st->server_wal_end);
	EACH("pgoutbox_replication_lag_bytes", "gauge", "Server WAL end minus the confirmed position.",
	     "%" PRIu64, st->server_wal_end > st->confirmed_lsn ? st->server_wal_end - st->confirmed_lsn : 0);
	histogram(&b, "pgoutbox_commit_to_ack_seconds",
	          "Time from a transaction's commit in PostgreSQL to Kafka's acknowledgement of each of its events.",
	          src, n, lab, offsetof(metrics_stats, commit_to_ack));
	histogram(&b, "pgoutbox_commit_to_receive_seconds",
	          "Time from a transaction's commit in PostgreSQL to pgoutbox receiving it (its Begin), per transaction with events.",
	          src, n, lab, offsetof(metrics_stats, commit_to_receive));
	histogram(&b, "pgoutbox_produce_to_ack_seconds",
	          "Time from handing an event to the producer to Kafka's acknowledgement of it.",
	          src, n, lab, offsetof(metrics_stats, produce_to_ack));
	metric_head(&b, "pgoutbox_kafka_delivery_errors_total", "counter",
	            "Messages Kafka did not accept, by librdkafka error name.");
	for (size_t k = 0; k < n; k++)
		for (size_t i = 0; i < src[k].st->nerrors; i++)
			sb_printf(&b, "pgoutbox_kafka_delivery_errors_total{%s,kind=\"%s\"} %" PRIu64 "\n",
			          lab[k], src[k].st->errors[i].name, src[k].st->errors[i].count);
	EACH("pgoutbox_reconnects_total", "counter",
	     "Times the replication connection was lost and retried.", "%" PRIu64, st->reconnects);
	EACH("pgoutbox_backpressure_seconds_total", "counter",
	     "Time the replication stream was paused because Kafka's queue was full.", "%.3f",
	     st->backpressure_seconds);
	EACH("pgoutbox_backfill_active", "gauge",
	     "1 while a backfill or replay publishes rows of the outbox table(s).", "%d",
	     st->backfill_active ? 1 : 0);
	metric_head(&b, "pgoutbox_backfill_rows", "gauge",
	            "Rows of the current or last backfill: selected, read from the table, acknowledged by Kafka.");
	for (size_t k = 0; k < n; k++) {
		const metrics_stats *st = src[k].st;
		sb_printf(&b, "pgoutbox_backfill_rows{%s,state=\"selected\"} %" PRIu64 "\n", lab[k],
		          st->backfill_expected);
		sb_printf(&b, "pgoutbox_backfill_rows{%s,state=\"read\"} %" PRIu64 "\n", lab[k],
		          st->backfill_read);
		sb_printf(&b, "pgoutbox_backfill_rows{%s,state=\"acknowledged\"} %" PRIu64 "\n", lab[k],
		          st->backfill_acked);
	}
	EACH("pgoutbox_cleanup_deleted_rows_total", "counter",
	     "Outbox rows deleted by cleanup = delete after their transactions were confirmed.",
	     "%" PRIu64, st->cleanup_deleted);
	EACH("pgoutbox_up", "gauge", "1 while streaming from the slot.", "%d", st->streaming ? 1 : 0);
#undef EACH
	if (txn != NULL && txn->on)
		render_txn(&b, txn);
	free(lab);
	if (!b.ok) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}

bool
metrics_health(const metrics_source *src, size_t n, char *buf, size_t buflen)
{
	size_t used = 0, bad = 0;

	buf[0] = '\0';
	for (size_t k = 0; k < n; k++) {
		const metrics_stats *st = src[k].st;
		const char *why = st->health[0] ? st->health : "not streaming";
		int w;

		if (st->streaming && !st->kafka_stalled)
			continue;
		bad++;
		/* One source: its reason alone, as before sources existed. */
		if (n == 1 && (src[k].name == NULL || src[k].name[0] == '\0'))
			w = snprintf(buf + used, buflen - used, "%s", why);
		else
			w = snprintf(buf + used, buflen - used, "%ssource %s: %s", used ? "\n" : "",
			             src[k].name && src[k].name[0] ? src[k].name : "default", why);
		if (w < 0 || (size_t) w >= buflen - used)
			break;
		used += (size_t) w;
	}
	if (bad == 0)
		snprintf(buf, buflen, n > 1 ? "streaming (%zu sources)" : "streaming", n);
	if (n == 0) {
		snprintf(buf, buflen, "no source");
		return false;
	}
	return bad == 0;
}

/* The message prefix every address error starts with. */
#define BAD_ADDR "invalid metrics address \"%s\": "

/*
 * Split "PORT", "HOST:PORT" or "[V6]:PORT" into host and port (a bare PORT
 * means 127.0.0.1).  Nothing is resolved.  On an address of none of these
 * forms errbuf says what is wrong with it.
 */
static bool
split_addr(const char *addr, char *host, size_t hlen, char *port, size_t plen,
           char *errbuf, size_t errlen)
{
	const char *h, *p, *colon;
	size_t n, plen_in;
	bool bracketed = false;
	unsigned long v;

	if (addr[0] == '\0') {
		snprintf(errbuf, errlen, BAD_ADDR "empty; expected PORT, HOST:PORT or [V6]:PORT", addr);
		return false;
	}
	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');

		if (close == NULL) {
			snprintf(errbuf, errlen, BAD_ADDR "\"[\" without a closing \"]\"; expected [V6]:PORT", addr);
			return false;
		}
		if (close[1] != ':') {
			if (close[1] == '\0')
				snprintf(errbuf, errlen, BAD_ADDR "missing \":PORT\" after \"]\"", addr);
			else
				snprintf(errbuf, errlen, BAD_ADDR "expected \":PORT\" after \"]\", not \"%s\"",
				         addr, close + 1);
			return false;
		}
		h = addr + 1;
		n = (size_t) (close - h);
		p = close + 2;
		bracketed = true;
		if (n == 0) {
			snprintf(errbuf, errlen, BAD_ADDR "empty IPv6 address in \"[]\"", addr);
			return false;
		}
	} else if ((colon = strrchr(addr, ':')) == NULL) {
		h = "127.0.0.1";
		n = strlen(h);
		p = addr;
	} else {
		h = addr;
		n = (size_t) (colon - addr);
		p = colon + 1;
		if (n == 0) {
			snprintf(errbuf, errlen, BAD_ADDR "empty host before \":\"; write 0.0.0.0:%s for every "
			         "IPv4 interface or a bare %s for 127.0.0.1", addr, p, p);
			return false;
		}
		if (memchr(h, ':', n) != NULL) {
			/* Suggest the split that makes sense: "::1:9187" is [::1]:9187,
			 * "::1" is an address without a port. */
			struct in6_addr a6;
			char h6[INET6_ADDRSTRLEN];
			bool host_ok = n < sizeof(h6) && strspn(p, "0123456789") == strlen(p) && *p != '\0';

			if (host_ok) {
				memcpy(h6, h, n);
				h6[n] = '\0';
				host_ok = inet_pton(AF_INET6, h6, &a6) == 1;
			}
			if (host_ok || inet_pton(AF_INET6, addr, &a6) != 1)
				snprintf(errbuf, errlen, BAD_ADDR "an IPv6 address goes in brackets: [%.*s]:%s",
				         addr, (int) n, h, p);
			else
				snprintf(errbuf, errlen, BAD_ADDR "an IPv6 address goes in brackets, followed "
				         "by the port: [%s]:PORT", addr, addr);
			return false;
		}
	}
	if (n >= hlen) {
		snprintf(errbuf, errlen, BAD_ADDR "host longer than %zu characters", addr, hlen - 1);
		return false;
	}
	memcpy(host, h, n);
	host[n] = '\0';

	plen_in = strlen(p);
	if (plen_in == 0) {
		snprintf(errbuf, errlen, BAD_ADDR "missing port after \":\"", addr);
		return false;
	}
	if (strspn(p, "0123456789") != plen_in) {
		if (p == addr)
			snprintf(errbuf, errlen, BAD_ADDR "not a port number; expected PORT, HOST:PORT or "
			         "[V6]:PORT", addr);
		else
			snprintf(errbuf, errlen, BAD_ADDR "port \"%s\" is not a number", addr, p);
		return false;
	}
	v = plen_in > 5 ? 0 : strtoul(p, NULL, 10);
	if (v < 1 || v > 65535) {
		snprintf(errbuf, errlen, BAD_ADDR "port %s is out of range (1-65535)", addr, p);
		return false;
	}
	snprintf(port, plen, "%lu", v);
	if (bracketed) {
		/* Numeric only (no lookup): also takes a scope, [fe80::1%eth0]. */
		struct addrinfo hints = {.ai_family = AF_INET6, .ai_flags = AI_NUMERICHOST}, *res = NULL;

		if (getaddrinfo(host, NULL, &hints, &res) != 0) {
			snprintf(errbuf, errlen, BAD_ADDR "\"%s\" is not an IPv6 address (only those go in "
			         "brackets)", addr, host);
			return false;
		}
		freeaddrinfo(res);
	}
	return true;
}

bool
metrics_addr_valid(const char *addr, char *errbuf, size_t errlen)
{
	char host[256], port[8];

	return split_addr(addr, host, sizeof(host), port, sizeof(port), errbuf, errlen);
}

static bool
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 &&
	       fcntl(fd, F_SETFD, FD_CLOEXEC) == 0;
}

void
metrics_set_sources(metrics *m, const metrics_source *src, size_t n)
{
	m->src = src;
	m->nsrc = n;
}

void
metrics_set_txn(metrics *m, const metrics_txn_stats *txn)
{
	m->txn = txn;
}

metrics *
metrics_new(const char *addr, const char *version, char *errbuf, size_t errlen)
{
	char host[256], port[8];
	struct addrinfo hints, *res = NULL;
	metrics *m;
	int one = 1, r;

	if (!split_addr(addr, host, sizeof(host), port, sizeof(port), errbuf, errlen))
		return NULL;
	m = calloc(1, sizeof(*m));
	if (m == NULL || (m->version = strdup(version)) == NULL) {
		free(m);
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	m->fd = -1;
	m->pause_ms = PAUSE_MIN_MS;
	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		m->clients[i].fd = -1;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(errbuf, errlen, "could not resolve host \"%s\" of metrics address \"%s\": %s",
		         host, addr, r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
		goto error;
	}
	m->fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
	if (m->fd < 0) {
		snprintf(errbuf, errlen, "could not create a socket for metrics address \"%s\": %s",
		         addr, strerror(errno));
		goto error;
	}
	if (!set_nonblock(m->fd) ||
	    setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
		snprintf(errbuf, errlen, "could not set up the socket for metrics address \"%s\": %s",
		         addr, strerror(errno));
		goto error;
	}
	if (bind(m->fd, res->ai_addr, res->ai_addrlen) != 0) {
		int e = errno;
		const char *why = e == EADDRINUSE ? "another socket is bound to that port" :
		                  e == EADDRNOTAVAIL ? "not an address of this machine" :
		                  e == EACCES && atoi(port) < 1024 ? "ports below 1024 need privileges" :
		                  NULL;

		snprintf(errbuf, errlen, "could not bind metrics address \"%s\": %s%s%s%s", addr,
		         strerror(e), why ? " (" : "", why ? why : "", why ? ")" : "");
		goto error;
	}
	/* A long queue: connections wait there while every slot is busy or
	 * accepting is paused, rather than having their SYNs dropped. */
	if (listen(m->fd, SOMAXCONN) != 0) {
		snprintf(errbuf, errlen, "could not listen on metrics address \"%s\": %s", addr,
		         strerror(errno));
		goto error;
	}
	freeaddrinfo(res);
	return m;
error:
	if (res)
		freeaddrinfo(res);
	metrics_free(m);
	return NULL;
}

static void
client_close(client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->out);
	c->fd = -1;
	c->state = C_FREE;
	c->out = NULL;
	c->head = false;
	c->inlen = c->outlen = c->outoff = 0;
}

void
metrics_free(metrics *m)
{
	if (m == NULL)
		return;
	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		client_close(&m->clients[i]);
	if (m->fd >= 0)
		close(m->fd);
	free(m->version);
	free(m);
}

int
metrics_pollfds(metrics *m, struct pollfd *pfd, int max)
{
	int n = 0;

	if (max < 1)
		return 0;
	/* While paused, no events: poll() does not wake for the queue, but the
	 * entry keeps metrics_serve() called, which ends the pause. */
	pfd[n++] = (struct pollfd) {.fd = m->fd, .events = m->paused ? 0 : POLLIN};
	for (int i = 0; i < METRICS_MAX_CLIENTS && n < max; i++) {
		client *c = &m->clients[i];

		if (c->state != C_FREE)
			pfd[n++] = (struct pollfd) {.fd = c->fd,
			                            .events = c->state == C_WRITE ? POLLOUT : POLLIN};
	}
	return n;
}

int64_t
metrics_next_deadline(const metrics *m)
{
	int64_t d = m->paused ? m->paused_until_ms : -1;

	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		if (m->clients[i].state != C_FREE && (d < 0 || m->clients[i].deadline_ms < d))
			d = m->clients[i].deadline_ms;
	return d;
}

/* Read and drop what the client still sends, until it closes. */
static void
client_linger(client *c)
{
	for (;;) {
		ssize_t r = recv(c->fd, c->in, sizeof(c->in), 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (r <= 0 || (c->inlen += (size_t) r) > LINGER_MAX_BYTES) {
			client_close(c);
			return;
		}
	}
}

/* Send what the socket takes now; once all is sent, shut down and linger. */
static void
client_write(client *c, int64_t now_ms)
{
	while (c->outoff < c->outlen) {
		ssize_t r = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (r <= 0) {
			client_close(c);
			return;
		}
		c->outoff += (size_t) r;
	}
	free(c->out);
	c->out = NULL;
	c->outlen = c->outoff = 0;
	if (shutdown(c->fd, SHUT_WR) != 0) {
		client_close(c);
		return;
	}
	c->state = C_LINGER;
	c->inlen = 0;
	c->deadline_ms = now_ms + LINGER_TIMEOUT_MS;
	client_linger(c);
}

static const char *
reason_phrase(int code)
{
	switch (code) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 431: return "Request Header Fields Too Large";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default:  return "Internal Server Error";
	}
}

/* Prepare the whole response (status line, headers, body) and start sending. */
static void
respond(client *c, int64_t now_ms, int code, const char *ctype, const char *body, size_t blen)
{
	strbuf b = {.ok = true};

	sb_printf(&b, "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
	          "Connection: close\r\n\r\n", code, reason_phrase(code), ctype, blen,
	          code == 405 ? "Allow: GET, HEAD\r\n" : "");
	if (b.ok && blen > 0 && !c->head) {
		char *np = realloc(b.p, b.len + blen);

		if (np == NULL) {
			b.ok = false;
		} else {
			b.p = np;
			memcpy(b.p + b.len, body, blen);
			b.len += blen;
		}
	}
	if (!b.ok) {
		free(b.p);
		client_close(c);
		return;
	}
	c->out = b.p;
	c->outlen = b.len;
	c->outoff = 0;
	c->state = C_WRITE;
	c->deadline_ms = now_ms + METRICS_RESPONSE_TIMEOUT_MS;
	client_write(c, now_ms);
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
respond_text(client *c, int64_t now_ms, int code, const char *fmt, ...)
{
	char body[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(body, sizeof(body) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t) n > sizeof(body) - 2)
		n = (int) sizeof(body) - 2;
	body[n++] = '\n';
	body[n] = '\0';
	respond(c, now_ms, code, "text/plain; charset=utf-8", body, (size_t) n);
}

/* Quote up to ECHO_MAX bytes of client input printably into dst. */
static const char *
echo(char *dst, size_t dlen, const char *src, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n && i < ECHO_MAX && k + 1 < dlen; i++) {
		unsigned char ch = (unsigned char) src[i];

		dst[k++] = ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\' ? (char) ch : '?';
	}
	if (n > ECHO_MAX && k + 3 < dlen) {
		memcpy(dst + k, "...", 3);
		k += 3;
	}
	dst[k] = '\0';
	return dst;
}

static void
serve_healthz(metrics *m, client *c, int64_t now_ms)
{
	char body[4096];
	bool ok = metrics_health(m->src, m->nsrc, body, sizeof(body));

	respond_text(c, now_ms, ok ? 200 : 503, "%s", body);
}

static void
serve_metrics(metrics *m, client *c, int64_t now_ms)
{
	size_t len = 0;
	char *body = metrics_render_txn(m->src, m->nsrc, m->txn, m->version, &len);

	if (body == NULL) {
		respond_text(c, now_ms, 500, "out of memory");
		return;
	}
	respond(c, now_ms, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
	free(body);
}

/*
 * Answer the request in c->in[0..end): the request line is all that counts,
 * "METHOD SP PATH SP HTTP/1.x"; headers are read past and ignored.
 */
static void
handle_request(metrics *m, client *c, size_t end, int64_t now_ms)
{
	const char *line = c->in, *sp1, *sp2, *nl, *meth, *target, *ver;
	size_t llen, mlen, tlen, vlen, plen;
	char q[ECHO_MAX + 4];

	if (memchr(c->in, '\0', end) != NULL) {
		respond_text(c, now_ms, 400, "bad request: the request contains a NUL byte");
		return;
	}
	nl = memchr(line, '\n', end);
	llen = (size_t) (nl - line);
	if (llen > 0 && line[llen - 1] == '\r')
		llen--;
	for (size_t i = 0; i < llen; i++)
		if ((unsigned char) line[i] < 0x20 || line[i] == 0x7f) {
			respond_text(c, now_ms, 400, "bad request: the request line contains a control "
			             "character (byte %zu)", i + 1);
			return;
		}
	if (llen == 0) {
		respond_text(c, now_ms, 400, "bad request: empty request line; expected "
		             "METHOD PATH HTTP/1.x");
		return;
	}
	sp1 = memchr(line, ' ', llen);
	sp2 = sp1 ? memchr(sp1 + 1, ' ', llen - (size_t) (sp1 + 1 - line)) : NULL;
	if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1 ||
	    sp2 + 1 == line + llen || memchr(sp2 + 1, ' ', llen - (size_t) (sp2 + 1 - line)) != NULL) {
		respond_text(c, now_ms, 400, "bad request: malformed request line \"%s\"; expected "
		             "METHOD PATH HTTP/1.x", echo(q, sizeof(q), line, llen));
		return;
	}
	meth = line;
	mlen = (size_t) (sp1 - line);
	target = sp1 + 1;
	tlen = (size_t) (sp2 - target);
	ver = sp2 + 1;
	vlen = (size_t) (line + llen - ver);
	if (vlen != 8 || memcmp(ver, "HTTP/", 5) != 0 || ver[5] < '0' || ver[5] > '9' ||
	    ver[6] != '.' || ver[7] < '0' || ver[7] > '9') {
		respond_text(c, now_ms, 400, "bad request: malformed HTTP version \"%s\"; expected "
		             "HTTP/1.0 or HTTP/1.1", echo(q, sizeof(q), ver, vlen));
		return;
	}
	if (ver[5] != '1') {
		respond_text(c, now_ms, 505, "HTTP version \"%s\" is not supported: use HTTP/1.0 or "
		             "HTTP/1.1", echo(q, sizeof(q), ver, vlen));
		return;
	}
	c->head = mlen == 4 && memcmp(meth, "HEAD", 4) == 0;
	if (!c->head && !(mlen == 3 && memcmp(meth, "GET", 3) == 0)) {
		respond_text(c, now_ms, 405, "method \"%s\" is not allowed: use GET or HEAD",
		             echo(q, sizeof(q), meth, mlen));
		return;
	}
	if (target[0] != '/') {
		respond_text(c, now_ms, 400, "bad request: request target \"%s\" is not a path; "
		             "try /metrics or /healthz", echo(q, sizeof(q), target, tlen));
		return;
	}
	for (plen = 0; plen < tlen && target[plen] != '?' && target[plen] != '#'; plen++)
		;
	if (plen == 8 && memcmp(target, "/metrics", 8) == 0)
		serve_metrics(m, c, now_ms);
	else if (plen == 8 && memcmp(target, "/healthz", 8) == 0)
		serve_healthz(m, c, now_ms);
	else
		respond_text(c, now_ms, 404, "not found: \"%s\"; try /metrics or /healthz",
		             echo(q, sizeof(q), target, plen));
}

/*
 * The end of the headers (just past "\n\n" or "\n\r\n") in buf[0..len),
 * looking at the line breaks from `from` on; 0 when not there yet.
 */
static size_t
header_end(const char *buf, size_t from, size_t len)
{
	for (size_t i = from; i + 1 < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (buf[i + 1] == '\n')
			return i + 2;
		if (buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

/* Read what has arrived; answer once the headers are complete. */
static void
client_read(metrics *m, client *c, int64_t now_ms)
{
	for (;;) {
		size_t from = c->inlen > 2 ? c->inlen - 2 : 0, end;
		ssize_t r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (r < 0 || (r == 0 && c->inlen == 0)) {
			client_close(c);
			return;
		}
		if (r == 0) {
			respond_text(c, now_ms, 400, "bad request: the connection was shut down before "
			             "the blank line that ends the headers");
			return;
		}
		c->inlen += (size_t) r;
		if ((end = header_end(c->in, from, c->inlen)) > 0) {
			handle_request(m, c, end, now_ms);
			return;
		}
		if (c->inlen == sizeof(c->in)) {
			respond_text(c, now_ms, 431, "request too large: the request line and headers "
			             "exceed %d bytes", METRICS_MAX_REQUEST);
			return;
		}
	}
}

static void
client_io(metrics *m, client *c, int64_t now_ms)
{
	switch (c->state) {
	case C_READ:   client_read(m, c, now_ms); break;
	case C_WRITE:  client_write(c, now_ms); break;
	case C_LINGER: client_linger(c); break;
	case C_FREE:   break;
	}
}

/* A client's deadline passed: an incomplete request gets 408, the rest close. */
static void
client_expire(client *c, int64_t now_ms)
{
	if (c->state == C_READ && c->inlen > 0)
		respond_text(c, now_ms, 408, "request timeout: the request line and headers did not "
		             "arrive within %d ms", METRICS_REQUEST_TIMEOUT_MS);
	else
		client_close(c);
}

/*
 * A slot for a new connection: a free one, else the oldest client that is
 * lingering, else the oldest still reading its request, else the oldest
 * writing — which is closed.  A new connection is always served; what it
 * displaces is the least likely to be a probe waiting for its answer.
 */
static client *
client_slot(metrics *m)
{
	static const client_state order[] = {C_LINGER, C_READ, C_WRITE};
	client *victim = NULL;

	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		if (m->clients[i].state == C_FREE)
			return &m->clients[i];
	for (size_t k = 0; k < sizeof(order) / sizeof(order[0]) && victim == NULL; k++)
		for (int i = 0; i < METRICS_MAX_CLIENTS; i++) {
			client *c = &m->clients[i];

			if (c->state == order[k] && (victim == NULL || c->seq < victim->seq))
				victim = c;
		}
	client_close(victim);
	return victim;
}

/* accept() errors that concern one queued connection only: try the next. */
static bool
accept_error_transient(int e)
{
	return e == EINTR || e == ECONNABORTED || e == EPROTO || e == EPERM || e == ENETDOWN ||
	       e == ENOPROTOOPT || e == EHOSTDOWN || e == EHOSTUNREACH || e == EOPNOTSUPP ||
	       e == ENETUNREACH
#ifdef ENONET
	       || e == ENONET
#endif
	       ;
}

/*
 * accept() failed for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) or
 * for a reason that would repeat at once: leave the listener out of the poll
 * for a while — the connection stays queued, and poll() would report it
 * again at once, forever — and warn at most once per WARN_INTERVAL_MS.
 */
static void
accept_failed(metrics *m, int e, int64_t now_ms)
{
	m->failed_accepts++;
	m->paused = true;
	m->paused_until_ms = now_ms + m->pause_ms;
	if (!m->warned || now_ms >= m->next_warn_ms) {
		char count[80] = "";
		char detail[300];

		if (m->warned)
			snprintf(count, sizeof(count), "%" PRIu64 " accepts failed since the previous "
			         "warning; ", m->failed_accepts);
		snprintf(detail, sizeof(detail), "%snew connections wait in the listen queue; accepting "
		         "resumes in %d ms, backing off to %d ms while it fails; this warning repeats at "
		         "most every %d s", count, m->pause_ms, PAUSE_MAX_MS, WARN_INTERVAL_MS / 1000);
		log_detail(LOG_WARNING, detail, "could not accept a metrics connection: %s", strerror(e));
		m->warned = true;
		m->failed_accepts = 0;
		m->next_warn_ms = now_ms + WARN_INTERVAL_MS;
	}
	m->pause_ms = m->pause_ms * 2 > PAUSE_MAX_MS ? PAUSE_MAX_MS : m->pause_ms * 2;
}

static void
accept_clients(metrics *m, int64_t now_ms)
{
	for (int k = 0; k < ACCEPT_BATCH; k++) {
		int fd = accept(m->fd, NULL, NULL);
		client *c;

		if (fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (accept_error_transient(errno))
				continue;
			accept_failed(m, errno, now_ms);
			return;
		}
		m->pause_ms = PAUSE_MIN_MS;
		if (!set_nonblock(fd)) {
			close(fd);
			continue;
		}
		c = client_slot(m);
		c->fd = fd;
		c->state = C_READ;
		c->seq = m->next_seq++;
		c->inlen = 0;
		c->head = false;
		c->deadline_ms = now_ms + METRICS_REQUEST_TIMEOUT_MS;
		/* The request is often there already: answering now keeps it from
		 * being displaced before the next poll. */
		client_read(m, c, now_ms);
	}
}

void
metrics_serve(metrics *m, const struct pollfd *pfd, int n, int64_t now_ms)
{
	bool listener_ready = false;

	/* Clients first, so that requests that arrived are answered before new
	 * connections may displace their senders. */
	for (int i = 0; i < n; i++) {
		if (pfd[i].revents == 0)
			continue;
		if (pfd[i].fd == m->fd) {
			listener_ready = true;
			continue;
		}
		for (int k = 0; k < METRICS_MAX_CLIENTS; k++)
			if (m->clients[k].state != C_FREE && m->clients[k].fd == pfd[i].fd) {
				client_io(m, &m->clients[k], now_ms);
				break;
			}
	}
	for (int k = 0; k < METRICS_MAX_CLIENTS; k++)
		if (m->clients[k].state != C_FREE && now_ms >= m->clients[k].deadline_ms)
			client_expire(&m->clients[k], now_ms);
	if (m->paused && now_ms >= m->paused_until_ms) {
		m->paused = false;
		listener_ready = true;      /* it was not polled: try it now */
	}
	if (listener_ready && !m->paused)
		accept_clients(m, now_ms);
}
