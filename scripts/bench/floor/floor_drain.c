/*
 * floor_drain.c — the throughput ceiling of a logical replication slot: a
 * bare libpq client that drains SLOT up to ENDPOS touching nothing past the
 * CopyData envelope, so that whatever pgoutbox does beyond this is its own
 * cost.
 *
 * Usage: floor_drain -d CONNINFO -s SLOT -e ENDPOS [-m eager|nap]
 *                    [-P PUBLICATION] [-p PROTO] [-n MIN_US] [-N MAX_US]
 *                    [-t TIMEOUT_S]
 *
 *   eager  PQgetCopyData() non-blocking until libpq's buffer is empty, then
 *          poll() on the socket: a reader that keeps up message by message,
 *          so the walsender sends every message with its own send().
 *   nap    the same, but when the buffer is empty first nanosleep() a random
 *          MIN_US..MAX_US (default 50..100) microseconds: meanwhile the
 *          walsender's sends coalesce in the socket, and one read takes many.
 *
 * Counted: CopyData messages, XLogData payload bytes, and pgoutput Begin
 * ('B') and Insert ('I') messages, from the first byte of each XLogData
 * payload (one byte peeked; nothing decoded).  Keepalives asking for a reply
 * get a status update at once; one goes out every 10 s anyway, and the last
 * one confirms the end position before CopyDone, as a real client does.
 *
 * The end: a Commit at or after ENDPOS, a Begin after it (not counted), or a
 * keepalive whose WAL end reached it (everything before it was sent) — the
 * rule of pg_recvlogical --endpos.
 *
 * Output, on stdout, one JSON object: mode, events (Inserts), begins,
 * copydata, bytes, wall_s (from the start of main, connection included),
 * stream_s (from START_REPLICATION to the end), cpu_s (user + system, of
 * the whole process), user_s, sys_s, naps, polls, end_lsn.  Exit 0, or 1
 * with a message on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "floor.h"

#define STATUS_INTERVAL_US INT64_C(10000000)

typedef struct drain_stats {
	uint64_t events, begins, copydata, bytes, naps, polls;
} drain_stats;

static void
usage(FILE *f)
{
	fprintf(f, "usage: floor_drain -d CONNINFO -s SLOT -e ENDPOS [-m eager|nap] [-P PUBLICATION]\n"
	           "                   [-p PROTO] [-n NAP_MIN_US] [-N NAP_MAX_US] [-t TIMEOUT_S]\n");
}

static int
die(const char *what)
{
	fprintf(stderr, "floor_drain: error: %s\n", what);
	return 1;
}

int
main(int argc, char **argv)
{
	const char  *conninfo = NULL, *slot = NULL, *endpos_text = NULL, *mode = "eager";
	const char  *publication = "pgoutbox";
	int          proto = 3, opt;
	long         nap_min_us = 50, nap_max_us = 100, timeout_s = 600;
	uint64_t     endpos;
	bool         nap, done = false;
	double       t_main = floor_mono_s(), t_stream, t_end, user, sys;
	floor_stream s;
	drain_stats  st = {0};
	char         err[512];
	unsigned int seed = 12345;

	while ((opt = getopt(argc, argv, "d:s:e:m:P:p:n:N:t:h")) != -1) {
		switch (opt) {
		case 'd': conninfo = optarg; break;
		case 's': slot = optarg; break;
		case 'e': endpos_text = optarg; break;
		case 'm': mode = optarg; break;
		case 'P': publication = optarg; break;
		case 'p': proto = atoi(optarg); break;
		case 'n': nap_min_us = atol(optarg); break;
		case 'N': nap_max_us = atol(optarg); break;
		case 't': timeout_s = atol(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (!conninfo || !slot || !endpos_text || optind != argc) {
		usage(stderr);
		return 1;
	}
	if (floor_parse_lsn(endpos_text, &endpos) != 0)
		return die("invalid end position (expected X/Y)");
	if (strcmp(mode, "eager") != 0 && strcmp(mode, "nap") != 0)
		return die("invalid mode (expected eager or nap)");
	nap = strcmp(mode, "nap") == 0;
	if (proto < 1 || proto > 4 || nap_min_us < 1 || nap_max_us < nap_min_us ||
	    nap_max_us > 1000000 || timeout_s < 1)
		return die("invalid protocol, nap range or timeout");

	if (floor_stream_start(&s, conninfo, slot, publication, proto, err, sizeof(err)) != 0)
		return die(err);
	t_stream = floor_mono_s();

	while (!done) {
		char *buf;
		int   n = PQgetCopyData(s.conn, &buf, 1);

		if (n > 0) {
			const unsigned char *m = (const unsigned char *)buf;

			st.copydata++;
			if (m[0] == 'w' && n >= FLOOR_XLOGDATA_HEADER) {
				uint64_t start = floor_be64(m + 1);
				char     type = n > FLOOR_XLOGDATA_HEADER ? (char)m[FLOOR_XLOGDATA_HEADER] : '\0';

				if (type == 'B' && start > endpos) {
					done = true; /* a transaction after the end: not ours */
				} else {
					st.bytes += (uint64_t)(n - FLOOR_XLOGDATA_HEADER);
					if (type == 'I')
						st.events++;
					else if (type == 'B')
						st.begins++;
					else if (type == 'C') {
						/* a Commit's XLogData start is the transaction's end LSN */
						if (start > s.confirm_lsn)
							s.confirm_lsn = start;
						if (start >= endpos)
							done = true;
					}
				}
			} else if (m[0] == 'k' && n >= FLOOR_KEEPALIVE_LEN) {
				uint64_t wal_end = floor_be64(m + 1);

				/* between transactions (they arrive whole), the WAL end
				 * is a position the slot may move to */
				if (wal_end > s.confirm_lsn)
					s.confirm_lsn = wal_end;
				if (wal_end >= endpos)
					done = true;
				else if (m[17] && floor_stream_status(&s, s.confirm_lsn, err, sizeof(err)) != 0) {
					PQfreemem(buf);
					floor_stream_close(&s);
					return die(err);
				}
			} else {
				PQfreemem(buf);
				floor_stream_close(&s);
				return die("unexpected CopyData message from the server");
			}
			PQfreemem(buf);
			continue;
		}
		if (n == -1) {
			floor_stream_close(&s);
			return die("the server ended the stream before the end position");
		}
		if (n == -2) {
			snprintf(err, sizeof(err), "could not read from the server: %s", PQerrorMessage(s.conn));
			floor_stream_close(&s);
			return die(err);
		}

		/* libpq's buffer is empty */
		if (floor_now_us() - s.last_status_us >= STATUS_INTERVAL_US &&
		    floor_stream_status(&s, s.confirm_lsn, err, sizeof(err)) != 0) {
			floor_stream_close(&s);
			return die(err);
		}
		if (floor_mono_s() - t_stream > (double)timeout_s) {
			floor_stream_close(&s);
			return die("timed out before the end position");
		}
		if (nap) {
			long            us = nap_min_us + (long)(rand_r(&seed) % (unsigned)(nap_max_us - nap_min_us + 1));
			struct timespec ts = {0, us * 1000};

			nanosleep(&ts, NULL);
			st.naps++;
		}
		{
			struct pollfd pfd = {.fd = s.fd, .events = POLLIN};

			if (PQflush(s.conn) > 0) /* a status update still on its way */
				pfd.events |= POLLOUT;
			st.polls++;
			if (poll(&pfd, 1, 1000) < 0 && errno != EINTR) {
				snprintf(err, sizeof(err), "could not poll: %s", strerror(errno));
				floor_stream_close(&s);
				return die(err);
			}
		}
		if (PQconsumeInput(s.conn) != 1) {
			snprintf(err, sizeof(err), "could not read from the server: %s", PQerrorMessage(s.conn));
			floor_stream_close(&s);
			return die(err);
		}
	}
	t_end = floor_mono_s();
	if (floor_stream_finish(&s, err, sizeof(err)) != 0)
		return die(err);
	floor_cpu_s(&user, &sys);
	printf("{\"mode\": \"%s\", \"events\": %" PRIu64 ", \"begins\": %" PRIu64
	       ", \"copydata\": %" PRIu64 ", \"bytes\": %" PRIu64
	       ", \"wall_s\": %.6f, \"stream_s\": %.6f, \"cpu_s\": %.3f, \"user_s\": %.3f"
	       ", \"sys_s\": %.3f, \"naps\": %" PRIu64 ", \"polls\": %" PRIu64
	       ", \"end_lsn\": \"%X/%X\"}\n",
	       mode, st.events, st.begins, st.copydata, st.bytes, floor_mono_s() - t_main,
	       t_end - t_stream, user + sys, user, sys, st.naps, st.polls,
	       (unsigned)(s.confirm_lsn >> 32), (unsigned)s.confirm_lsn);
	return 0;
}
