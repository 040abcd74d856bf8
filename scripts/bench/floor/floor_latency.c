/*
 * floor_latency.c — the latency floor of logical replication: how long
 * after its commit a transaction reaches a bare libpq client on its own
 * slot, on the same stack and under the same load as pgoutbox.
 *
 * Usage: floor_latency -d CONNINFO -s SLOT -o FILE [-P PUBLICATION]
 *                      [-p PROTO] [-a]
 *
 * Reads eagerly (PQgetCopyData() non-blocking until libpq's buffer is
 * empty, then poll()): the lowest latency a client can have.  For each
 * pgoutput Begin it takes the wall clock at once and records
 *
 *     receive time - commit time
 *
 * with the commit time from the Begin itself (Int64 microseconds since
 * 2000-01-01, stamped by the committing backend with the machine's wall
 * clock; the receive time is CLOCK_REALTIME of the same machine, so both are
 * the same clock).  Since PostgreSQL 15 pgoutput sends a Begin only with the
 * first change the publication lets through, and a transaction is decoded
 * only once its commit is in the WAL, the Begin's arrival is the
 * transaction's.  Transactions committed before the client started (a slot
 * that still holds older ones) are skipped unless -a.
 *
 * Keepalives asking for a reply get one, a status update confirming the
 * last whole transaction goes out every 10 s, and at the end (SIGTERM or
 * SIGINT) the last position is confirmed before CopyDone.
 *
 * FILE gets one line per transaction, "commit_us latency_us" (commit time in
 * microseconds since the Unix epoch), written at the end.  stdout gets one
 * JSON object: transactions, events (Inserts), skipped, cpu_s, user_s,
 * sys_s, wall_s.  Exit 0, or 1 with a message on stderr.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "floor.h"

#define STATUS_INTERVAL_US INT64_C(10000000)

/* pgoutput Begin: 'B' + Int64 final LSN + Int64 commit time + Int32 xid */
#define BEGIN_LEN 21

static volatile sig_atomic_t stop_requested;

static void
on_signal(int signo)
{
	(void)signo;
	stop_requested = 1;
}

typedef struct sample {
	int64_t commit_us; /* since the Unix epoch */
	int64_t latency_us;
} sample;

static void
usage(FILE *f)
{
	fprintf(f, "usage: floor_latency -d CONNINFO -s SLOT -o FILE [-P PUBLICATION] [-p PROTO] [-a]\n");
}

static int
die(const char *what)
{
	fprintf(stderr, "floor_latency: error: %s\n", what);
	return 1;
}

/* Write the samples to path.  Returns 0 or -1 with a message in errbuf. */
static int
write_samples(const char *path, const sample *v, size_t n, char *errbuf, size_t errlen)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		snprintf(errbuf, errlen, "could not open \"%s\": %s", path, strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%" PRId64 " %" PRId64 "\n", v[i].commit_us, v[i].latency_us);
	bool failed = ferror(f) != 0;

	/* fclose() always, and it reports a failed final write */
	if (fclose(f) != 0 || failed) {
		snprintf(errbuf, errlen, "could not write \"%s\": %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char      *conninfo = NULL, *slot = NULL, *out = NULL, *publication = "pgoutbox";
	int              proto = 3, opt;
	bool             all = false;
	int64_t          t_start_us = floor_now_us();
	double           t_main = floor_mono_s(), user, sys;
	uint64_t         events = 0, skipped = 0;
	sample          *v = NULL;
	size_t           nv = 0, cap = 0;
	floor_stream     s;
	struct sigaction sa;
	char             err[512];

	while ((opt = getopt(argc, argv, "d:s:o:P:p:ah")) != -1) {
		switch (opt) {
		case 'd': conninfo = optarg; break;
		case 's': slot = optarg; break;
		case 'o': out = optarg; break;
		case 'P': publication = optarg; break;
		case 'p': proto = atoi(optarg); break;
		case 'a': all = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (!conninfo || !slot || !out || optind != argc) {
		usage(stderr);
		return 1;
	}
	if (proto < 1 || proto > 4)
		return die("invalid protocol version");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns at once */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
		return die("could not install signal handlers");

	if (floor_stream_start(&s, conninfo, slot, publication, proto, err, sizeof(err)) != 0)
		return die(err);
	/* Ready: the walsender streams from here on. */
	printf("ready\n");
	fflush(stdout);

	while (!stop_requested) {
		char *buf;
		int   n = PQgetCopyData(s.conn, &buf, 1);

		if (n > 0) {
			const unsigned char *m = (const unsigned char *)buf;

			if (m[0] == 'w' && n >= FLOOR_XLOGDATA_HEADER + 1) {
				const unsigned char *p = m + FLOOR_XLOGDATA_HEADER;
				size_t               plen = (size_t)n - FLOOR_XLOGDATA_HEADER;

				if (p[0] == 'B' && plen >= BEGIN_LEN) {
					int64_t now = floor_now_us();
					int64_t commit = (int64_t)floor_be64(p + 9) + FLOOR_PG_EPOCH_US;

					if (!all && commit < t_start_us) {
						skipped++;
					} else {
						if (nv == cap) {
							size_t  ncap = cap ? cap * 2 : 65536;
							sample *nvp = realloc(v, ncap * sizeof(*v));

							if (!nvp) {
								PQfreemem(buf);
								floor_stream_close(&s);
								free(v);
								return die("out of memory");
							}
							v = nvp;
							cap = ncap;
						}
						v[nv].commit_us = commit;
						v[nv].latency_us = now - commit;
						nv++;
					}
				} else if (p[0] == 'I') {
					events++;
				} else if (p[0] == 'C') {
					uint64_t end = floor_be64(m + 1);

					if (end > s.confirm_lsn)
						s.confirm_lsn = end;
				}
			} else if (m[0] == 'k' && n >= FLOOR_KEEPALIVE_LEN) {
				uint64_t wal_end = floor_be64(m + 1);

				if (wal_end > s.confirm_lsn)
					s.confirm_lsn = wal_end;
				if (m[17] && floor_stream_status(&s, s.confirm_lsn, err, sizeof(err)) != 0) {
					PQfreemem(buf);
					floor_stream_close(&s);
					free(v);
					return die(err);
				}
			}
			PQfreemem(buf);
			continue;
		}
		if (n == -1 || n == -2) {
			snprintf(err, sizeof(err), "the stream ended: %s", PQerrorMessage(s.conn));
			floor_stream_close(&s);
			free(v);
			return die(err);
		}
		if (floor_now_us() - s.last_status_us >= STATUS_INTERVAL_US &&
		    floor_stream_status(&s, s.confirm_lsn, err, sizeof(err)) != 0) {
			floor_stream_close(&s);
			free(v);
			return die(err);
		}
		{
			struct pollfd pfd = {.fd = s.fd, .events = POLLIN};

			if (PQflush(s.conn) > 0)
				pfd.events |= POLLOUT;
			if (poll(&pfd, 1, 1000) < 0 && errno != EINTR) {
				snprintf(err, sizeof(err), "could not poll: %s", strerror(errno));
				floor_stream_close(&s);
				free(v);
				return die(err);
			}
		}
		if (PQconsumeInput(s.conn) != 1) {
			snprintf(err, sizeof(err), "could not read from the server: %s", PQerrorMessage(s.conn));
			floor_stream_close(&s);
			free(v);
			return die(err);
		}
	}
	if (floor_stream_finish(&s, err, sizeof(err)) != 0) {
		free(v);
		return die(err);
	}
	if (write_samples(out, v, nv, err, sizeof(err)) != 0) {
		free(v);
		return die(err);
	}
	free(v);
	floor_cpu_s(&user, &sys);
	printf("{\"transactions\": %zu, \"events\": %" PRIu64 ", \"skipped\": %" PRIu64
	       ", \"cpu_s\": %.3f, \"user_s\": %.3f, \"sys_s\": %.3f, \"wall_s\": %.3f}\n",
	       nv, events, skipped, user + sys, user, sys, floor_mono_s() - t_main);
	return 0;
}
