/*
 * floor.c — the replication connection of the floor clients (floor.h).
 */
#include "floor.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void
set_error(char *errbuf, size_t errlen, const char *what, const char *detail)
{
	size_t n;

	snprintf(errbuf, errlen, "%s%s", what, detail ? detail : "");
	/* libpq's messages end with a newline */
	n = strlen(errbuf);
	while (n > 0 && errbuf[n - 1] == '\n')
		errbuf[--n] = '\0';
}

uint64_t
floor_be64(const unsigned char *p)
{
	return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
	       ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
	       ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

uint32_t
floor_be32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void
put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

int
floor_parse_lsn(const char *text, uint64_t *lsn)
{
	unsigned int hi, lo;
	int          used = 0;

	if (sscanf(text, "%X/%X%n", &hi, &lo, &used) != 2 || text[used] != '\0')
		return -1;
	*lsn = ((uint64_t)hi << 32) | lo;
	return 0;
}

int64_t
floor_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double
floor_mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void
floor_cpu_s(double *user, double *sys)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	*user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
	*sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

void
floor_stream_close(floor_stream *s)
{
	if (s->conn)
		PQfinish(s->conn);
	s->conn = NULL;
	s->fd = -1;
}

int
floor_stream_start(floor_stream *s, const char *conninfo, const char *slot,
                   const char *publication, int proto, char *errbuf, size_t errlen)
{
	const char *keys[] = {"dbname", "replication", "application_name", NULL};
	const char *vals[] = {conninfo, "database", "pgoutbox-bench-floor", NULL};
	char       *ident = NULL, *pubident = NULL, *publit = NULL;
	char        cmd[1024];
	PGresult   *res;
	int         rc = -1;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->conn = PQconnectdbParams(keys, vals, 1);
	if (!s->conn) {
		set_error(errbuf, errlen, "could not connect: out of memory", NULL);
		return -1;
	}
	if (PQstatus(s->conn) != CONNECTION_OK) {
		set_error(errbuf, errlen, "could not connect: ", PQerrorMessage(s->conn));
		goto out;
	}
	ident = PQescapeIdentifier(s->conn, slot, strlen(slot));
	pubident = PQescapeIdentifier(s->conn, publication, strlen(publication));
	if (ident && pubident)
		publit = PQescapeLiteral(s->conn, pubident, strlen(pubident));
	if (!ident || !pubident || !publit) {
		set_error(errbuf, errlen, "could not quote a name: ", PQerrorMessage(s->conn));
		goto out;
	}
	if (snprintf(cmd, sizeof(cmd),
	             "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '%d', publication_names %s%s)",
	             ident, proto, publit, proto >= 2 ? ", messages 'true'" : "") >= (int)sizeof(cmd)) {
		set_error(errbuf, errlen, "could not start replication: slot or publication name too long",
		          NULL);
		goto out;
	}
	res = PQexec(s->conn, cmd);
	if (PQresultStatus(res) != PGRES_COPY_BOTH) {
		set_error(errbuf, errlen, "could not start replication: ", PQerrorMessage(s->conn));
		PQclear(res);
		goto out;
	}
	PQclear(res);
	if (PQsetnonblocking(s->conn, 1) != 0) {
		set_error(errbuf, errlen, "could not set non-blocking mode: ", PQerrorMessage(s->conn));
		goto out;
	}
	s->fd = PQsocket(s->conn);
	s->last_status_us = floor_now_us();
	rc = 0;

out:
	PQfreemem(ident);
	PQfreemem(pubident);
	PQfreemem(publit);
	if (rc != 0)
		floor_stream_close(s);
	return rc;
}

int
floor_stream_status(floor_stream *s, uint64_t lsn, char *errbuf, size_t errlen)
{
	unsigned char msg[34];
	int64_t       now = floor_now_us();

	msg[0] = 'r';
	put_be64(msg + 1, lsn);  /* written */
	put_be64(msg + 9, lsn);  /* flushed */
	put_be64(msg + 17, lsn); /* applied */
	put_be64(msg + 25, (uint64_t)(now - FLOOR_PG_EPOCH_US));
	msg[33] = 0; /* no reply requested */
	if (PQputCopyData(s->conn, (const char *)msg, (int)sizeof(msg)) != 1) {
		set_error(errbuf, errlen, "could not send a status update: ", PQerrorMessage(s->conn));
		return -1;
	}
	/* Non-blocking: what does not leave now leaves with the next flush. */
	if (PQflush(s->conn) < 0) {
		set_error(errbuf, errlen, "could not send a status update: ", PQerrorMessage(s->conn));
		return -1;
	}
	s->last_status_us = now;
	return 0;
}

int
floor_stream_finish(floor_stream *s, char *errbuf, size_t errlen)
{
	PGresult *res;
	char     *buf;
	int       n, rc = 0;

	if (floor_stream_status(s, s->confirm_lsn, errbuf, errlen) != 0) {
		floor_stream_close(s);
		return -1;
	}
	/* Blocking from here: CopyDone, then what the walsender still sends
	 * before its own CopyDone is read and dropped. */
	if (PQsetnonblocking(s->conn, 0) != 0 || PQputCopyEnd(s->conn, NULL) != 1 ||
	    PQflush(s->conn) != 0) {
		set_error(errbuf, errlen, "could not end the copy: ", PQerrorMessage(s->conn));
		floor_stream_close(s);
		return -1;
	}
	while ((n = PQgetCopyData(s->conn, &buf, 0)) > 0)
		PQfreemem(buf);
	if (n == -2) {
		set_error(errbuf, errlen, "could not end the copy: ", PQerrorMessage(s->conn));
		rc = -1;
	}
	while ((res = PQgetResult(s->conn)) != NULL) {
		if (rc == 0 && PQresultStatus(res) != PGRES_COMMAND_OK &&
		    PQresultStatus(res) != PGRES_COPY_OUT && PQresultStatus(res) != PGRES_TUPLES_OK) {
			set_error(errbuf, errlen, "could not end the copy: ", PQresultErrorMessage(res));
			rc = -1;
		}
		PQclear(res);
	}
	floor_stream_close(s);
	return rc;
}
