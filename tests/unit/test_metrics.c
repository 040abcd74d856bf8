/*
 * test_metrics.c — the metrics listener driven in-process on loopback, with
 * a fake clock: address errors, request deadlines, eviction of the oldest
 * idle client when every slot is taken, and the accept back-off when the
 * process is out of file descriptors (one warning per minute, not one per
 * wake-up).  The same process is client and server: each step polls the
 * module's sockets without waiting long and hands it the fake time.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_STR(got, want) do { \
	const char *g_ = (got), *w_ = (want); \
	if (g_ != NULL && strcmp(g_, w_) == 0) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: got \"%s\", expected \"%s\"\n", __FILE__, __LINE__, \
	                         g_ ? g_ : "(null)", w_); } \
} while (0)

static void
test_addresses(void)
{
	static const struct { const char *addr, *err; } cases[] = {
		{"9187", NULL},
		{"127.0.0.1:9187", NULL},
		{"0.0.0.0:1", NULL},
		{"localhost:65535", NULL},         /* resolved only when listening */
		{"[::1]:9187", NULL},
		{"[::]:9187", NULL},
		{"", "invalid metrics address \"\": empty; expected PORT, HOST:PORT or [V6]:PORT"},
		{"nonsense", "invalid metrics address \"nonsense\": not a port number; expected PORT, "
		             "HOST:PORT or [V6]:PORT"},
		{"65536", "invalid metrics address \"65536\": port 65536 is out of range (1-65535)"},
		{"0", "invalid metrics address \"0\": port 0 is out of range (1-65535)"},
		{"00080", NULL},
		{"000080", "invalid metrics address \"000080\": port 000080 is out of range (1-65535)"},
		{"h:", "invalid metrics address \"h:\": missing port after \":\""},
		{"h:8o", "invalid metrics address \"h:8o\": port \"8o\" is not a number"},
		{":1", "invalid metrics address \":1\": empty host before \":\"; write 0.0.0.0:1 for "
		       "every IPv4 interface or a bare 1 for 127.0.0.1"},
		{"fe80::1:80", "invalid metrics address \"fe80::1:80\": an IPv6 address goes in "
		               "brackets: [fe80::1]:80"},
		{"::", "invalid metrics address \"::\": an IPv6 address goes in brackets, followed by "
		       "the port: [::]:PORT"},
		{"[::1]x", "invalid metrics address \"[::1]x\": expected \":PORT\" after \"]\", not \"x\""},
		{"[1.2.3.4]:80", "invalid metrics address \"[1.2.3.4]:80\": \"1.2.3.4\" is not an IPv6 "
		                 "address (only those go in brackets)"},
	};
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool ok;

		err[0] = '\0';
		ok = metrics_addr_valid(cases[i].addr, err, sizeof(err));
		if (cases[i].err == NULL) {
			CHECK(ok);
			if (!ok)
				fprintf(stderr, "  %s: %s\n", cases[i].addr, err);
		} else {
			CHECK(!ok);
			CHECK_STR(err, cases[i].err);
		}
	}
}

/* A port on 127.0.0.1 that nothing listens on (bound, then released). */
static int
free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd >= 0 && bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *) &sa, &len) == 0)
		port = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* One source, unnamed, for the tests that are about the listener. */
static metrics_source one_source;

static metrics *
listen_loopback(const metrics_stats *st, int *port)
{
	char addr[32], err[512];
	metrics *m = NULL;

	for (int attempt = 0; attempt < 5 && m == NULL; attempt++) {
		*port = free_port();
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", *port);
		m = metrics_new(addr, "9.9.9", err, sizeof(err));
	}
	one_source = (metrics_source) {.name = "", .slot = "s", .database = "d", .st = st};
	if (m != NULL)
		metrics_set_sources(m, &one_source, 1);
	if (m == NULL) {
		fprintf(stderr, "could not listen: %s\n", err);
		exit(1);
	}
	return m;
}

/* A connected, non-blocking client; the kernel completes the handshake
 * whether or not the server has accepted yet. */
static int
connect_client(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0 ||
	    fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
		perror("connect");
		exit(1);
	}
	return fd;
}

static void
send_str(int fd, const char *s)
{
	if (send(fd, s, strlen(s), 0) != (ssize_t) strlen(s)) {
		perror("send");
		exit(1);
	}
}

/* One turn of a main loop: poll (at most wait_ms), then serve at fake time now. */
static int
step(metrics *m, int64_t now, int wait_ms, struct pollfd *pfd)
{
	int n = metrics_pollfds(m, pfd, METRICS_MAX_CLIENTS + 1);

	if (poll(pfd, (nfds_t) n, wait_ms) < 0 && errno != EINTR) {
		perror("poll");
		exit(1);
	}
	metrics_serve(m, pfd, n, now);
	return n;
}

/* What the server sent fd so far: 1 = it closed (EOF or reset), 0 = still open. */
static int
drain(int fd, char *buf, size_t cap, size_t *len)
{
	for (;;) {
		ssize_t r = recv(fd, buf + *len, cap - 1 - *len, 0);

		if (r > 0) {
			*len += (size_t) r;
			buf[*len] = '\0';
			continue;
		}
		if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
			return 1;
		return 0;
	}
}

/* Step at fake time now until the server closes fd (within ~2 s of real
 * time); the response in buf.  Returns whether it closed. */
static bool
until_closed(metrics *m, int64_t now, int fd, char *buf, size_t cap)
{
	struct pollfd pfd[METRICS_MAX_CLIENTS + 1];
	size_t len = 0;

	buf[0] = '\0';
	for (int i = 0; i < 200; i++) {
		step(m, now, 10, pfd);
		if (drain(fd, buf, cap, &len))
			return true;
	}
	return false;
}

/* Still open: nothing received and no EOF. */
static bool
is_open(int fd)
{
	char b[64];
	ssize_t r = recv(fd, b, sizeof(b), 0);

	return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static bool
starts(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool
ends(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void
test_answers(void)
{
	metrics_stats st = {.streaming = true};
	char buf[65536];
	int port, fd;
	metrics *m = listen_loopback(&st, &port);

	fd = connect_client(port);
	send_str(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
	CHECK(until_closed(m, 1000, fd, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 200 OK\r\n") && ends(buf, "\r\n\r\nstreaming\n"));
	close(fd);

	snprintf(st.health, sizeof(st.health), "not streaming: could not connect");
	st.streaming = false;
	fd = connect_client(port);
	send_str(fd, "HEAD /healthz HTTP/1.0\r\n\r\n");
	CHECK(until_closed(m, 1000, fd, buf, sizeof(buf)));
	CHECK_STR(buf, "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8"
	               "\r\nContent-Length: 33\r\nConnection: close\r\n\r\n");
	close(fd);

	fd = connect_client(port);
	send_str(fd, "DELETE /metrics HTTP/1.0\r\n\r\n");
	CHECK(until_closed(m, 1000, fd, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 405 Method Not Allowed\r\n") && strstr(buf, "\r\nAllow: GET, HEAD\r\n") &&
	      ends(buf, "method \"DELETE\" is not allowed: use GET or HEAD\n"));
	close(fd);

	/* At most 64 bytes of the request are quoted back, unprintable ones as '?'. */
	{
		char req[256], want[256];

		snprintf(req, sizeof(req), "GET /\xff%s HTTP/1.0\r\n\r\n", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
		snprintf(want, sizeof(want), "not found: \"/?%.62s...\"; try /metrics or /healthz\n",
		         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
		fd = connect_client(port);
		send_str(fd, req);
		CHECK(until_closed(m, 1000, fd, buf, sizeof(buf)));
		CHECK(starts(buf, "HTTP/1.0 404 Not Found\r\n") && ends(buf, want));
		close(fd);
	}

	/* A request that arrives in pieces is put together, whatever the split. */
	{
		static const char *const pieces[] = {"GET /metr", "ics HTTP/1.0\r", "\n\r", "\n"};
		struct pollfd pfd[METRICS_MAX_CLIENTS + 1];

		fd = connect_client(port);
		for (size_t i = 0; i < 4; i++) {
			if (i > 0)
				CHECK(is_open(fd));
			send_str(fd, pieces[i]);
			for (int k = 0; k < 3; k++)
				step(m, 1000, 5, pfd);
		}
		CHECK(until_closed(m, 1000, fd, buf, sizeof(buf)));
		CHECK(starts(buf, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4") &&
		      strstr(buf, "pgoutbox_build_info{version=\"9.9.9\"} 1\n") &&
		      ends(buf, "pgoutbox_up{source=\"default\",slot=\"s\",database=\"d\"} 0\n"));
		close(fd);
	}
	metrics_free(m);
}

static void
test_deadlines(void)
{
	metrics_stats st = {.streaming = true};
	struct pollfd pfd[METRICS_MAX_CLIENTS + 1];
	const int64_t t0 = 50000;
	char buf[4096];
	int port, idle, slow;
	metrics *m = listen_loopback(&st, &port);

	CHECK(metrics_next_deadline(m) == -1);
	idle = connect_client(port);
	slow = connect_client(port);
	for (int i = 0; i < 50 && metrics_next_deadline(m) < 0; i++)
		step(m, t0, 10, pfd);
	CHECK(metrics_next_deadline(m) == t0 + METRICS_REQUEST_TIMEOUT_MS);
	/* A byte every 400 ms does not move the deadline: it is for the whole request. */
	for (int64_t t = t0; t < t0 + METRICS_REQUEST_TIMEOUT_MS; t += 400) {
		send_str(slow, "G");
		step(m, t, 10, pfd);
		CHECK(is_open(idle) && is_open(slow));
	}
	step(m, t0 + METRICS_REQUEST_TIMEOUT_MS - 1, 0, pfd);
	CHECK(is_open(idle) && is_open(slow));
	/* Due: the idle one is closed, the incomplete one gets 408. */
	CHECK(until_closed(m, t0 + METRICS_REQUEST_TIMEOUT_MS, idle, buf, sizeof(buf)));
	CHECK_STR(buf, "");
	CHECK(until_closed(m, t0 + METRICS_REQUEST_TIMEOUT_MS, slow, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 408 Request Timeout\r\n"));
	close(idle);
	close(slow);
	metrics_free(m);
}

static void
test_eviction(void)
{
	metrics_stats st = {.streaming = true};
	struct pollfd pfd[METRICS_MAX_CLIENTS + 1];
	int fds[METRICS_MAX_CLIENTS], port, probe, done;
	char buf[4096];
	metrics *m = listen_loopback(&st, &port);
	int n = 0;

	/* One client that got its answer but keeps the connection (lingering),
	 * then idle ones until every slot is taken. */
	done = connect_client(port);
	send_str(done, "GET /healthz HTTP/1.0\r\n\r\n");
	for (int i = 0; i < 50; i++) {
		size_t len = 0;
		step(m, 1000, 10, pfd);
		if (drain(done, buf, sizeof(buf), &len) || len > 0)
			break;
	}
	for (int i = 0; i < METRICS_MAX_CLIENTS - 1; i++)
		fds[i] = connect_client(port);
	for (int i = 0; i < 100 && n < METRICS_MAX_CLIENTS + 1; i++)
		n = step(m, 1000 + i, 10, pfd);
	CHECK(n == METRICS_MAX_CLIENTS + 1);     /* the listener and every slot */

	/* A new connection takes the lingering client's slot, not an idle one
	 * (at 1500: before the lingering one's own deadline). */
	probe = connect_client(port);
	send_str(probe, "GET /healthz HTTP/1.0\r\n\r\n");
	CHECK(until_closed(m, 1500, probe, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 200 OK\r\n"));
	close(probe);
	for (int i = 0; i < METRICS_MAX_CLIENTS - 1; i++)
		CHECK(is_open(fds[i]));
	close(done);

	/* Full of idle clients again (the probe's slot is free after it closed;
	 * fill it): the next connection closes the oldest idle one. */
	fds[METRICS_MAX_CLIENTS - 1] = connect_client(port);
	for (int i = 0; i < 20; i++)
		step(m, 2000, 10, pfd);
	probe = connect_client(port);
	send_str(probe, "GET /healthz HTTP/1.0\r\n\r\n");
	CHECK(until_closed(m, 2000, probe, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 200 OK\r\n"));
	close(probe);
	{
		size_t len = 0;
		CHECK(drain(fds[0], buf, sizeof(buf), &len) == 1 && len == 0);
	}
	for (int i = 1; i < METRICS_MAX_CLIENTS; i++)
		CHECK(is_open(fds[i]));
	for (int i = 0; i < METRICS_MAX_CLIENTS; i++)
		close(fds[i]);
	metrics_free(m);
}

/* Clients the server is sending to (polled for POLLOUT). */
static int
writing(metrics *m)
{
	struct pollfd pfd[METRICS_MAX_CLIENTS + 1];
	int n = metrics_pollfds(m, pfd, METRICS_MAX_CLIENTS + 1), w = 0;

	for (int k = 1; k < n; k++)
		w += pfd[k].events == POLLOUT;
	return w;
}

/*
 * A client that asks for a response larger than the socket buffers and never
 * reads it: sends stop at EAGAIN (the slot waits for POLLOUT), others are
 * answered meanwhile, and METRICS_RESPONSE_TIMEOUT_MS after the request the
 * slow reader is closed with its response cut short.
 */
static void
test_slow_reader(void)
{
	enum { VERSION_LEN = 4 << 20 };     /* /metrics quotes the version: a 4 MiB response */
	metrics_stats st = {.streaming = true};
	struct pollfd pfd[METRICS_MAX_CLIENTS + 1];
	char *version = malloc(VERSION_LEN + 1), buf[4096], addr[32], err[512];
	int port = -1, slow, other, small = 4096;
	const int64_t t0 = 7000;
	metrics *m = NULL;
	size_t got = 0;

	if (version == NULL)
		exit(1);
	memset(version, 'v', VERSION_LEN);
	version[VERSION_LEN] = '\0';
	for (int attempt = 0; attempt < 5 && m == NULL; attempt++) {
		port = free_port();
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
		m = metrics_new(addr, version, err, sizeof(err));
	}
	CHECK(m != NULL);
	if (m == NULL) {
		free(version);
		return;
	}
	one_source = (metrics_source) {.name = "", .slot = "s", .database = "d", .st = &st};
	metrics_set_sources(m, &one_source, 1);
	{
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port),
		                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

		slow = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
		if (connect(slow, (struct sockaddr *) &sa, sizeof(sa)) != 0 ||
		    fcntl(slow, F_SETFL, O_NONBLOCK) != 0) {
			perror("connect");
			exit(1);
		}
	}
	send_str(slow, "GET /metrics HTTP/1.0\r\n\r\n");
	for (int i = 0; i < 20; i++)
		step(m, t0, 10, pfd);
	CHECK(writing(m) == 1);                       /* stuck at EAGAIN, not blocked in send */
	CHECK(metrics_next_deadline(m) == t0 + METRICS_RESPONSE_TIMEOUT_MS);

	other = connect_client(port);
	send_str(other, "GET /healthz HTTP/1.0\r\n\r\n");
	CHECK(until_closed(m, t0 + 100, other, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 200 OK\r\n"));
	close(other);

	step(m, t0 + METRICS_RESPONSE_TIMEOUT_MS - 1, 0, pfd);
	CHECK(writing(m) == 1);
	step(m, t0 + METRICS_RESPONSE_TIMEOUT_MS, 0, pfd);
	CHECK(writing(m) == 0);
	/* Closed by the server: reading now ends (EOF or reset) short of 4 MiB. */
	for (;;) {
		ssize_t r = recv(slow, buf, sizeof(buf), 0);

		if (r > 0) {
			got += (size_t) r;
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd one = {.fd = slow, .events = POLLIN};

			if (poll(&one, 1, 2000) == 1)
				continue;
			CHECK(!"the server did not close the slow reader");
		}
		break;
	}
	CHECK(got > 0 && got < VERSION_LEN);
	close(slow);
	metrics_free(m);
	free(version);
}

static int
count(const char *s, const char *needle)
{
	int n = 0;

	for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

/*
 * Out of descriptors: accept() fails with EMFILE while the connection waits
 * in the queue.  The listener leaves the poll for 100 ms, 200, ... 1 s; over
 * 130 s of failures there are three warnings (0, 60, 120 s), the later ones
 * with the count; once descriptors are back, the waiting request is answered.
 */
static void
test_out_of_fds(void)
{
	metrics_stats st = {.streaming = true};
	struct pollfd pfd[METRICS_MAX_CLIENTS + 1];
	struct rlimit old, low;
	char path[] = "/tmp/test_metrics_log_XXXXXX";
	char buf[16384];
	int port, client, logfd, saved_err, lowest, n, attempts = 0;
	int64_t now = 100000;
	bool paused_seen = false, backoff_ok = true;
	ssize_t got;
	metrics *m = listen_loopback(&st, &port);

	client = connect_client(port);
	send_str(client, "GET /healthz HTTP/1.0\r\n\r\n");
	logfd = mkstemp(path);
	saved_err = dup(2);
	CHECK(logfd >= 0 && saved_err >= 0);
	unlink(path);
	fflush(stderr);
	dup2(logfd, 2);
	lowest = dup(0);            /* the next descriptor number */
	close(lowest);
	getrlimit(RLIMIT_NOFILE, &old);
	low = old;
	low.rlim_cur = (rlim_t) lowest;
	CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);

	n = step(m, now, 100, pfd);          /* listener readable, accept fails */
	CHECK(n == 1 && metrics_next_deadline(m) == now + 100);
	while (now < 100000 + 130000 && attempts < 1000) {
		int64_t due = metrics_next_deadline(m);

		if (due <= now) {           /* no pause: accept would be retried at once */
			CHECK(due > now);
			break;
		}
		n = metrics_pollfds(m, pfd, METRICS_MAX_CLIENTS + 1);
		if (n == 1 && pfd[0].events == 0)
			paused_seen = true;
		if (due - now > 1000)       /* no pause longer than 1 s */
			backoff_ok = false;
		now = due;
		step(m, now, 0, pfd);
		attempts++;
	}
	CHECK(paused_seen);
	CHECK(backoff_ok);
	CHECK(attempts >= 130 && attempts < 200);   /* 100+200+400+800 ms, then 1 s each */

	CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
	fflush(stderr);
	dup2(saved_err, 2);
	close(saved_err);
	got = pread(logfd, buf, sizeof(buf) - 1, 0);
	close(logfd);
	buf[got > 0 ? got : 0] = '\0';
	CHECK(count(buf, "WARNING:  could not accept a metrics connection: Too many open files\n") == 3);
	CHECK(count(buf, "accepts failed since the previous warning") == 2);
	CHECK(strstr(buf, "DETAIL:  new connections wait in the listen queue; accepting resumes in "
	                  "100 ms, backing off to 1000 ms while it fails; this warning repeats at most "
	                  "every 60 s\n") != NULL);
	if (failed)
		fprintf(stderr, "log was:\n%s", buf);

	/* Descriptors are back: the waiting request is answered. */
	now = metrics_next_deadline(m);
	CHECK(until_closed(m, now, client, buf, sizeof(buf)));
	CHECK(starts(buf, "HTTP/1.0 200 OK\r\n"));
	close(client);
	CHECK(metrics_next_deadline(m) == -1 || metrics_next_deadline(m) > now);
	metrics_free(m);
}

/*
 * Under valgrind the descriptor limit is valgrind's own: the kernel accepts
 * the connection and valgrind closes the new descriptor, so no connection
 * stays queued and there is nothing to back off from.  The ASan run covers
 * test_out_of_fds.
 */
static bool
under_valgrind(void)
{
	const char *p = getenv("LD_PRELOAD");

	return p != NULL && strstr(p, "vgpreload") != NULL;
}

/* Several sources: every sample labelled, /healthz names the unhealthy ones. */
static void
test_sources(void)
{
	metrics_stats a, b;
	metrics_source src[2] = {
		{.name = "billing", .slot = "s_b", .database = "bill\"ing", .st = &a},
		{.name = "shop", .slot = "s_s", .database = "shop", .st = &b},
	};
	char health[512], *text;
	size_t len = 0;

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.events = 7;
	b.events = 11;
	a.streaming = b.streaming = true;
	metrics_observe(&b.commit_to_ack, 0.002);
	metrics_count_error(&a, "MSG_SIZE_TOO_LARGE");
	text = metrics_render(src, 2, "1.0", &len);
	CHECK(text != NULL);
	if (text == NULL)
		return;
	CHECK(strstr(text, "pgoutbox_events_published_total{source=\"billing\",slot=\"s_b\","
	                   "database=\"bill\\\"ing\"} 7\n") != NULL);
	CHECK(strstr(text, "pgoutbox_events_published_total{source=\"shop\",slot=\"s_s\","
	                   "database=\"shop\"} 11\n") != NULL);
	CHECK(strstr(text, "pgoutbox_commit_to_ack_seconds_bucket{source=\"shop\",slot=\"s_s\","
	                   "database=\"shop\",le=\"0.005\"} 1\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_delivery_errors_total{source=\"billing\",slot=\"s_b\","
	                   "database=\"bill\\\"ing\",kind=\"MSG_SIZE_TOO_LARGE\"} 1\n") != NULL);
	/* one HELP per family, not one per source */
	{
		int helps = 0;
		for (const char *q = text; (q = strstr(q, "# HELP pgoutbox_up ")) != NULL; q++)
			helps++;
		CHECK(helps == 1);
	}
	free(text);
	CHECK(metrics_health(src, 2, health, sizeof(health)));
	CHECK(strcmp(health, "streaming (2 sources)") == 0);
	b.streaming = false;
	snprintf(b.health, sizeof(b.health), "stopping: replication slot \"s_s\" does not exist");
	CHECK(!metrics_health(src, 2, health, sizeof(health)));
	CHECK(strcmp(health, "source shop: stopping: replication slot \"s_s\" does not exist") == 0);
	a.kafka_stalled = true;
	snprintf(a.health, sizeof(a.health), "Kafka has acknowledged nothing for 60 s");
	CHECK(!metrics_health(src, 2, health, sizeof(health)));
	CHECK(strcmp(health, "source billing: Kafka has acknowledged nothing for 60 s\n"
	                     "source shop: stopping: replication slot \"s_s\" does not exist") == 0);
	/* The one source of a configuration without sections: the reason alone. */
	src[1].name = "";
	CHECK(!metrics_health(src + 1, 1, health, sizeof(health)));
	CHECK(strcmp(health, "stopping: replication slot \"s_s\" does not exist") == 0);
	text = metrics_render(src + 1, 1, "1.0", &len);
	CHECK(text != NULL && strstr(text, "pgoutbox_up{source=\"default\",slot=\"s_s\",database=\"shop\"} 0\n"));
	free(text);
}

/* Exactly-once: the one producer's Kafka transactions, without source labels, only when on. */
static void
test_txn(void)
{
	metrics_stats a;
	metrics_source src = {.name = "", .slot = "s", .database = "db", .st = &a};
	metrics_txn_stats t;
	char *text;
	size_t len = 0;

	memset(&a, 0, sizeof(a));
	memset(&t, 0, sizeof(t));
	text = metrics_render_txn(&src, 1, &t, "1.0", &len);
	CHECK(text != NULL && strstr(text, "pgoutbox_kafka_transactions") == NULL);
	free(text);
	t.on = true;
	metrics_observe_commit(&t, 0.003, 1);
	metrics_observe_commit(&t, 0.2, 250);
	t.aborted = 2;
	text = metrics_render_txn(&src, 1, &t, "1.0", &len);
	CHECK(text != NULL);
	if (text == NULL)
		return;
	CHECK(strstr(text, "pgoutbox_kafka_transactions_committed_total 2\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transactions_aborted_total 2\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_commit_seconds_bucket{le=\"0.005\"} 1\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_commit_seconds_bucket{le=\"+Inf\"} 2\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_commit_seconds_count 2\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_events_bucket{le=\"1\"} 1\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_events_bucket{le=\"100\"} 1\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_events_bucket{le=\"1000\"} 2\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_events_sum 251\n") != NULL);
	CHECK(strstr(text, "pgoutbox_kafka_transaction_events_count 2\n") != NULL);
	/* metrics_render() is the same without them */
	free(text);
	text = metrics_render(&src, 1, "1.0", &len);
	CHECK(text != NULL && strstr(text, "pgoutbox_kafka_transactions") == NULL);
	free(text);
}

int
main(void)
{
	test_addresses();
	test_answers();
	test_deadlines();
	test_eviction();
	test_slow_reader();
	if (under_valgrind())
		printf("under valgrind: skipping the out-of-descriptors test (run by the ASan build)\n");
	else
		test_out_of_fds();
	test_sources();
	test_txn();
	printf("%d checks passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
