/*
 * metrics.c — Prometheus text exposition and /healthz on a non-blocking
 * HTTP/1.0 listener.  See metrics.h.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CLIENT_TIMEOUT_MS 5000

const double metrics_buckets[METRICS_NBUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

typedef struct client {
	int      fd;               /* -1: free slot */
	char     in[METRICS_MAX_REQUEST];
	size_t   inlen;
	char    *out;              /* response, owned; NULL while reading the request */
	size_t   outlen, outoff;
	int64_t  deadline_ms;
} client;

struct metrics {
	int                  fd;
	char                *version;
	const metrics_stats *st;
	client               clients[METRICS_MAX_CLIENTS];
};

void
metrics_observe_latency(metrics_stats *st, double seconds)
{
	if (seconds < 0)
		seconds = 0;
	for (int i = 0; i < METRICS_NBUCKETS; i++)
		if (seconds <= metrics_buckets[i]) {
			st->latency_bucket[i]++;
			break;
		}
	st->latency_count++;
	st->latency_sum += seconds;
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

char *
metrics_render(const metrics_stats *st, const char *version, size_t *len)
{
	strbuf b = {.ok = true};
	uint64_t cum = 0;
	uint64_t lag = st->server_wal_end > st->confirmed_lsn ? st->server_wal_end - st->confirmed_lsn : 0;

	metric_head(&b, "pgoutbox_build_info", "gauge", "Version of pgoutbox; always 1.");
	sb_printf(&b, "pgoutbox_build_info{version=\"%s\"} 1\n", version);
	metric_head(&b, "pgoutbox_events_published_total", "counter",
	            "Outbox events acknowledged by Kafka.");
	sb_printf(&b, "pgoutbox_events_published_total %" PRIu64 "\n", st->events);
	metric_head(&b, "pgoutbox_bytes_published_total", "counter",
	            "Key and value bytes of the events acknowledged by Kafka.");
	sb_printf(&b, "pgoutbox_bytes_published_total %" PRIu64 "\n", st->bytes);
	metric_head(&b, "pgoutbox_transactions_total", "counter",
	            "Committed transactions received from the replication stream.");
	sb_printf(&b, "pgoutbox_transactions_total %" PRIu64 "\n", st->txns);
	metric_head(&b, "pgoutbox_in_flight_messages", "gauge",
	            "Messages handed to Kafka and not acknowledged yet.");
	sb_printf(&b, "pgoutbox_in_flight_messages %" PRIu64 "\n", st->in_flight);
	metric_head(&b, "pgoutbox_received_lsn", "gauge", "Highest WAL position received.");
	sb_printf(&b, "pgoutbox_received_lsn %" PRIu64 "\n", st->received_lsn);
	metric_head(&b, "pgoutbox_confirmed_lsn", "gauge",
	            "WAL position confirmed to PostgreSQL (everything before it is in Kafka).");
	sb_printf(&b, "pgoutbox_confirmed_lsn %" PRIu64 "\n", st->confirmed_lsn);
	metric_head(&b, "pgoutbox_server_wal_end_lsn", "gauge",
	            "The server's WAL end as last reported by the walsender.");
	sb_printf(&b, "pgoutbox_server_wal_end_lsn %" PRIu64 "\n", st->server_wal_end);
	metric_head(&b, "pgoutbox_replication_lag_bytes", "gauge",
	            "Server WAL end minus the confirmed position.");
	sb_printf(&b, "pgoutbox_replication_lag_bytes %" PRIu64 "\n", lag);
	metric_head(&b, "pgoutbox_commit_to_ack_seconds", "histogram",
	            "Time from a transaction's commit in PostgreSQL to Kafka's acknowledgement of each of its events.");
	for (int i = 0; i < METRICS_NBUCKETS; i++) {
		cum += st->latency_bucket[i];
		sb_printf(&b, "pgoutbox_commit_to_ack_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
		          metrics_buckets[i], cum);
	}
	sb_printf(&b, "pgoutbox_commit_to_ack_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
	          st->latency_count);
	sb_printf(&b, "pgoutbox_commit_to_ack_seconds_sum %.6f\n", st->latency_sum);
	sb_printf(&b, "pgoutbox_commit_to_ack_seconds_count %" PRIu64 "\n", st->latency_count);
	metric_head(&b, "pgoutbox_kafka_delivery_errors_total", "counter",
	            "Messages Kafka did not accept, by librdkafka error name.");
	for (size_t i = 0; i < st->nerrors; i++)
		sb_printf(&b, "pgoutbox_kafka_delivery_errors_total{kind=\"%s\"} %" PRIu64 "\n",
		          st->errors[i].name, st->errors[i].count);
	metric_head(&b, "pgoutbox_reconnects_total", "counter",
	            "Times the replication connection was lost and retried.");
	sb_printf(&b, "pgoutbox_reconnects_total %" PRIu64 "\n", st->reconnects);
	metric_head(&b, "pgoutbox_backpressure_seconds_total", "counter",
	            "Time the replication stream was paused because Kafka's queue was full.");
	sb_printf(&b, "pgoutbox_backpressure_seconds_total %.3f\n", st->backpressure_seconds);
	metric_head(&b, "pgoutbox_up", "gauge", "1 while streaming from the slot.");
	sb_printf(&b, "pgoutbox_up %d\n", st->streaming ? 1 : 0);
	if (!b.ok) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}

/* Split "HOST:PORT", "[V6]:PORT" or "PORT" into host and port. */
static bool
split_addr(const char *addr, char *host, size_t hlen, char *port, size_t plen,
           char *errbuf, size_t errlen)
{
	const char *colon = strrchr(addr, ':');
	const char *p;
	size_t n;

	if (colon == NULL) {
		snprintf(host, hlen, "127.0.0.1");
		p = addr;
	} else {
		const char *h = addr;
		n = (size_t) (colon - addr);
		if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
			h++;
			n -= 2;
		}
		if (n == 0 || n >= hlen) {
			snprintf(errbuf, errlen, "invalid metrics address \"%s\": expected HOST:PORT or PORT", addr);
			return false;
		}
		memcpy(host, h, n);
		host[n] = '\0';
		p = colon + 1;
	}
	n = strlen(p);
	if (n == 0 || n >= plen || strspn(p, "0123456789") != n || atoi(p) > 65535) {
		snprintf(errbuf, errlen, "invalid metrics address \"%s\": expected HOST:PORT or PORT", addr);
		return false;
	}
	memcpy(port, p, n + 1);
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

metrics *
metrics_new(const char *addr, const char *version, const metrics_stats *st,
            char *errbuf, size_t errlen)
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
	m->st = st;
	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		m->clients[i].fd = -1;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(errbuf, errlen, "could not resolve metrics address \"%s\": %s", addr, gai_strerror(r));
		goto error;
	}
	m->fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
	if (m->fd < 0 || !set_nonblock(m->fd) ||
	    setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(m->fd, res->ai_addr, res->ai_addrlen) != 0 ||
	    listen(m->fd, METRICS_MAX_CLIENTS) != 0) {
		snprintf(errbuf, errlen, "could not listen on metrics address \"%s\": %s", addr, strerror(errno));
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
	c->out = NULL;
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
	int n = 0, busy = 0;

	for (int i = 0; i < METRICS_MAX_CLIENTS && n < max; i++) {
		client *c = &m->clients[i];
		if (c->fd < 0)
			continue;
		busy++;
		pfd[n++] = (struct pollfd) {.fd = c->fd, .events = c->out ? POLLOUT : POLLIN};
	}
	/* When every slot is taken, new connections wait in the backlog. */
	if (busy < METRICS_MAX_CLIENTS && n < max)
		pfd[n++] = (struct pollfd) {.fd = m->fd, .events = POLLIN};
	return n;
}

int64_t
metrics_next_deadline(const metrics *m)
{
	int64_t d = -1;

	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		if (m->clients[i].fd >= 0 && (d < 0 || m->clients[i].deadline_ms < d))
			d = m->clients[i].deadline_ms;
	return d;
}

/* Build the whole response in c->out (status line, headers, body). */
static void
respond(metrics *m, client *c, int code, const char *ctype, const char *body, size_t blen)
{
	const char *reason = code == 200 ? "OK" : code == 400 ? "Bad Request" :
	                     code == 404 ? "Not Found" : code == 405 ? "Method Not Allowed" :
	                     code == 431 ? "Request Header Fields Too Large" :
	                     code == 503 ? "Service Unavailable" : "Internal Server Error";
	strbuf b = {.ok = true};

	(void) m;
	sb_printf(&b, "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	          "Connection: close\r\n\r\n", code, reason, ctype, blen);
	if (b.ok && blen > 0) {
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
}

static void
handle_request(metrics *m, client *c)
{
	static const char text[] = "text/plain; charset=utf-8";
	char method[8], path[256];
	char *q;

	c->in[c->inlen] = '\0';
	if (sscanf(c->in, "%7s %255s HTTP/%*d.%*d", method, path) != 2) {
		respond(m, c, 400, text, "bad request\n", 12);
		return;
	}
	if ((q = strchr(path, '?')) != NULL)
		*q = '\0';
	if (strcmp(method, "GET") != 0) {
		respond(m, c, 405, text, "only GET\n", 9);
		return;
	}
	if (strcmp(path, "/metrics") == 0) {
		size_t len = 0;
		char *body = metrics_render(m->st, m->version, &len);
		if (body == NULL) {
			respond(m, c, 500, text, "out of memory\n", 14);
			return;
		}
		respond(m, c, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
		free(body);
	} else if (strcmp(path, "/healthz") == 0) {
		char body[300];
		int n;

		bool ok = m->st->streaming && !m->st->kafka_stalled;

		if (ok)
			n = snprintf(body, sizeof(body), "streaming\n");
		else
			n = snprintf(body, sizeof(body), "%s\n", m->st->health[0] ? m->st->health : "not streaming");
		if (n < 0)
			n = 0;
		if ((size_t) n >= sizeof(body))
			n = (int) sizeof(body) - 1;
		respond(m, c, ok ? 200 : 503, text, body, (size_t) n);
	} else {
		respond(m, c, 404, text, "not found: try /metrics or /healthz\n", 36);
	}
}

static void
accept_clients(metrics *m, int64_t now_ms)
{
	for (int i = 0; i < METRICS_MAX_CLIENTS; i++) {
		client *c = &m->clients[i];
		int fd;

		if (c->fd >= 0)
			continue;
		fd = accept(m->fd, NULL, NULL);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_msg(LOG_WARNING, "could not accept a metrics connection: %s", strerror(errno));
			return;
		}
		if (!set_nonblock(fd)) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->inlen = 0;
		c->deadline_ms = now_ms + CLIENT_TIMEOUT_MS;
	}
}

static void
client_io(metrics *m, client *c)
{
	ssize_t r;

	if (c->out == NULL) {
		r = read(c->fd, c->in + c->inlen, sizeof(c->in) - 1 - c->inlen);
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		if (r <= 0) {
			client_close(c);
			return;
		}
		c->inlen += (size_t) r;
		c->in[c->inlen] = '\0';
		if (strstr(c->in, "\r\n\r\n") != NULL || strstr(c->in, "\n\n") != NULL)
			handle_request(m, c);
		else if (c->inlen == sizeof(c->in) - 1)
			respond(m, c, 431, "text/plain; charset=utf-8", "request too large\n", 18);
		return;
	}
	r = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (r <= 0) {
		client_close(c);
		return;
	}
	c->outoff += (size_t) r;
	if (c->outoff == c->outlen)
		client_close(c);
}

void
metrics_serve(metrics *m, const struct pollfd *pfd, int n, int64_t now_ms)
{
	for (int i = 0; i < n; i++) {
		if (pfd[i].revents == 0)
			continue;
		if (pfd[i].fd == m->fd) {
			accept_clients(m, now_ms);
			continue;
		}
		for (int k = 0; k < METRICS_MAX_CLIENTS; k++)
			if (m->clients[k].fd == pfd[i].fd) {
				client_io(m, &m->clients[k]);
				break;
			}
	}
	for (int k = 0; k < METRICS_MAX_CLIENTS; k++)
		if (m->clients[k].fd >= 0 && now_ms >= m->clients[k].deadline_ms)
			client_close(&m->clients[k]);
}
