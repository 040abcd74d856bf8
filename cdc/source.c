/*
 * source.c — the replication connection on libpq.  See source.h.
 *
 * The shape follows pg_recvlogical: a replication=database connection,
 * START_REPLICATION ... LOGICAL, non-blocking PQgetCopyData(), and standby
 * status updates whose flush position is only what the caller says is
 * durable (for pgoutbox: acknowledged by Kafka).
 */
#include "source.h"
#include "log.h"

#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgoutput.h"

struct source {
	PGconn *conn;
	char   *conninfo;
	char   *slot;
	char   *publication;
	char   *secret;           /* password from the conninfo, for redaction */
	int     proto_version;     /* asked for; 0: negotiate */
	int     proto_running;     /* in use by the current stream */
	bool    streaming;
	bool    want_write;       /* output queued that the socket did not take yet */
};

/* Copy a libpq message into errbuf with the password masked. */
static void
set_error(const source *s, char *errbuf, size_t errlen, const char *prefix, const char *msg)
{
	snprintf(errbuf, errlen, "%s%s", prefix, msg ? msg : "");
	redact_secret(errbuf, errlen, s ? s->secret : NULL);
}

/*
 * Best-effort password extraction when libpq cannot parse the string, so that
 * even its parse error is printed without the password: "password=VALUE" or
 * a URI's "scheme://user:VALUE@".
 */
static char *
guess_password(const char *conninfo)
{
	const char *p = strstr(conninfo, "password");
	const char *end;

	if (p != NULL) {
		p += strlen("password");
		while (*p == ' ' || *p == '=')
			p++;
		if (*p == '\'')
			p++;
		for (end = p; *end && *end != ' ' && *end != '\'' && *end != '&'; end++)
			;
		if (end > p)
			return strndup(p, (size_t) (end - p));
	}
	p = strstr(conninfo, "://");
	if (p != NULL) {
		const char *at = strchr(p + 3, '@');
		const char *colon = strchr(p + 3, ':');
		if (at != NULL && colon != NULL && colon < at && at > colon + 1)
			return strndup(colon + 1, (size_t) (at - colon - 1));
	}
	return strdup("");
}

source *
source_new(const source_config *cfg, char *errbuf, size_t errlen)
{
	source *s = calloc(1, sizeof(*s));
	PQconninfoOption *opts;
	char *perr = NULL;

	if (s == NULL)
		goto nomem;
	s->proto_version = cfg->proto_version;
	s->conninfo = strdup(cfg->conninfo);
	s->slot = strdup(cfg->slot);
	s->publication = strdup(cfg->publication);
	if (!s->conninfo || !s->slot || !s->publication)
		goto nomem;

	opts = PQconninfoParse(cfg->conninfo, &perr);
	if (opts == NULL) {
		s->secret = guess_password(cfg->conninfo);
		set_error(s, errbuf, errlen, "invalid connection string: ",
		          perr ? perr : "out of memory");
		PQfreemem(perr);
		source_free(s);
		return NULL;
	}
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
			s->secret = strdup(o->val);
	PQconninfoFree(opts);
	if (s->secret == NULL)
		s->secret = strdup("");
	if (s->secret == NULL)
		goto nomem;
	return s;

nomem:
	snprintf(errbuf, errlen, "out of memory");
	source_free(s);
	return NULL;
}

void
source_free(source *s)
{
	if (s == NULL)
		return;
	source_close(s);
	free(s->conninfo);
	free(s->slot);
	free(s->publication);
	if (s->secret) {
		memset(s->secret, 0, strlen(s->secret));
		free(s->secret);
	}
	free(s);
}

void
source_close(source *s)
{
	if (s->conn != NULL) {
		PQfinish(s->conn);
		s->conn = NULL;
	}
	s->streaming = false;
	s->want_write = false;
}

bool
source_connected(const source *s)
{
	return s->conn != NULL && s->streaming;
}

const char *
source_secret(const source *s)
{
	return s->secret;
}

/*
 * Classify a server error.  Missing objects and invalidated slots cannot be
 * fixed by retrying; everything else (slot busy, shutdown, network) can.
 */
static source_rc
classify(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	if (state == NULL)
		return SOURCE_LOST;
	if (strcmp(state, "42704") == 0)     /* undefined_object */
		return SOURCE_FATAL;
	if (strcmp(state, "55000") == 0)     /* object_not_in_prerequisite_state */
		return SOURCE_FATAL;
	if (strcmp(state, "42501") == 0)     /* insufficient_privilege */
		return SOURCE_FATAL;
	if (strcmp(state, "55006") == 0)     /* object_in_use: slot active elsewhere */
		return SOURCE_BUSY;
	return SOURCE_LOST;
}

/* Run a catalog query on the replication connection; NULL on failure. */
static PGresult *
query(source *s, const char *sql, char *errbuf, size_t errlen)
{
	PGresult *res = PQexec(s->conn, sql);

	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		set_error(s, errbuf, errlen, "could not query the server: ", PQerrorMessage(s->conn));
		PQclear(res);
		return NULL;
	}
	return res;
}

/* Check the slot and the publication so that their absence is reported by
 * name, not as whatever START_REPLICATION would say later. */
static source_rc
check_objects(source *s, char *errbuf, size_t errlen)
{
	char sql[1024];
	char *lit;
	PGresult *res;
	source_rc rc = SOURCE_OK;

	lit = PQescapeLiteral(s->conn, s->slot, strlen(s->slot));
	if (lit == NULL)
		goto lost;
	snprintf(sql, sizeof(sql),
	         "SELECT plugin, slot_type, database = current_database(), "
	         "coalesce(wal_status, '') FROM pg_catalog.pg_replication_slots "
	         "WHERE slot_name = %s", lit);
	PQfreemem(lit);
	if ((res = query(s, sql, errbuf, errlen)) == NULL)
		return SOURCE_LOST;
	if (PQntuples(res) == 0) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" does not exist; create it with scripts/setup-slot.sh",
		         s->slot);
		rc = SOURCE_FATAL;
	} else if (strcmp(PQgetvalue(res, 0, 1), "logical") != 0 ||
	           strcmp(PQgetvalue(res, 0, 0), "pgoutput") != 0) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" is not a logical slot of plugin pgoutput (plugin \"%s\")",
		         s->slot, PQgetvalue(res, 0, 0));
		rc = SOURCE_FATAL;
	} else if (strcmp(PQgetvalue(res, 0, 2), "t") != 0) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" belongs to another database than the one in the connection string",
		         s->slot);
		rc = SOURCE_FATAL;
	} else if (strcmp(PQgetvalue(res, 0, 3), "lost") == 0) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" has been invalidated (wal_status = lost): the WAL it needed was removed; "
		         "drop and re-create the slot, then backfill events committed since it was lost",
		         s->slot);
		rc = SOURCE_FATAL;
	}
	PQclear(res);
	if (rc != SOURCE_OK)
		return rc;

	lit = PQescapeLiteral(s->conn, s->publication, strlen(s->publication));
	if (lit == NULL)
		goto lost;
	snprintf(sql, sizeof(sql),
	         "SELECT pubinsert FROM pg_catalog.pg_publication WHERE pubname = %s", lit);
	PQfreemem(lit);
	if ((res = query(s, sql, errbuf, errlen)) == NULL)
		return SOURCE_LOST;
	if (PQntuples(res) == 0) {
		snprintf(errbuf, errlen,
		         "publication \"%s\" does not exist; create it with scripts/setup-slot.sh",
		         s->publication);
		rc = SOURCE_FATAL;
	} else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		snprintf(errbuf, errlen, "publication \"%s\" does not publish inserts", s->publication);
		rc = SOURCE_FATAL;
	}
	PQclear(res);
	return rc;

lost:
	set_error(s, errbuf, errlen, "could not quote a name: ", PQerrorMessage(s->conn));
	return SOURCE_LOST;
}

/* The highest pgoutput protocol a server of this version speaks. */
static int
negotiate_proto(int server_version)
{
	if (server_version >= 160000)
		return PGO_PROTO_V4;
	if (server_version >= 150000)
		return PGO_PROTO_V3;
	if (server_version >= 140000)
		return PGO_PROTO_V2;
	return PGO_PROTO_V1;
}

int
source_proto_version(const source *s)
{
	return s->proto_running;
}

const char *
source_database(const source *s)
{
	const char *db = s->conn ? PQdb(s->conn) : NULL;

	return db ? db : "";
}

source_rc
source_start(source *s, char *errbuf, size_t errlen)
{
	/*
	 * Keywords before "dbname" are defaults the user's string may override;
	 * "replication" comes after it so that ours always wins.
	 */
	const char *keys[] = {
		"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
		"keepalives_count", "fallback_application_name", "dbname", "replication", NULL,
	};
	const char *vals[] = {
		"10", "1", "10", "5", "3", "pgoutbox", s->conninfo, "database", NULL,
	};
	char cmd[2048];
	char *ident = NULL, *pubident = NULL, *publit = NULL;
	PGresult *res;
	source_rc rc;

	source_close(s);
	s->conn = PQconnectdbParams(keys, vals, 1);
	if (s->conn == NULL) {
		snprintf(errbuf, errlen, "could not connect to the server: out of memory");
		return SOURCE_LOST;
	}
	if (PQstatus(s->conn) != CONNECTION_OK) {
		set_error(s, errbuf, errlen, "could not connect to the server: ", PQerrorMessage(s->conn));
		source_close(s);
		return SOURCE_LOST;
	}

	rc = check_objects(s, errbuf, errlen);
	if (rc != SOURCE_OK) {
		source_close(s);
		return rc;
	}

	ident = PQescapeIdentifier(s->conn, s->slot, strlen(s->slot));
	pubident = PQescapeIdentifier(s->conn, s->publication, strlen(s->publication));
	if (ident && pubident)
		publit = PQescapeLiteral(s->conn, pubident, strlen(pubident));
	if (!ident || !pubident || !publit) {
		set_error(s, errbuf, errlen, "could not quote a name: ", PQerrorMessage(s->conn));
		rc = SOURCE_LOST;
		goto out;
	}
	s->proto_running = s->proto_version ? s->proto_version
	                                    : negotiate_proto(PQserverVersion(s->conn));
	/*
	 * 0/0: the walsender starts at the slot's confirmed_flush_lsn.
	 * Streaming of in-progress transactions and two-phase decoding are never
	 * asked for: both would send changes before they are committed.
	 * Logical decoding messages (PostgreSQL 14+) are asked for so that the
	 * stream shows them; they are ignored unless configured.
	 */
	snprintf(cmd, sizeof(cmd),
	         "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '%d', publication_names %s%s)",
	         ident, s->proto_running, publit,
	         s->proto_running >= PGO_PROTO_V2 ? ", messages 'true'" : "");
	res = PQexec(s->conn, cmd);
	if (PQresultStatus(res) != PGRES_COPY_BOTH) {
		rc = classify(res);
		set_error(s, errbuf, errlen, "could not start replication: ", PQerrorMessage(s->conn));
		PQclear(res);
		goto out;
	}
	PQclear(res);
	if (PQsetnonblocking(s->conn, 1) != 0) {
		set_error(s, errbuf, errlen, "could not set non-blocking mode: ", PQerrorMessage(s->conn));
		rc = SOURCE_LOST;
		goto out;
	}
	s->streaming = true;
	rc = SOURCE_OK;

out:
	PQfreemem(ident);
	PQfreemem(pubident);
	PQfreemem(publit);
	if (rc != SOURCE_OK)
		source_close(s);
	return rc;
}

int
source_fd(const source *s)
{
	return s->conn ? PQsocket(s->conn) : -1;
}

bool
source_wants_write(const source *s)
{
	return s->conn != NULL && s->want_write;
}

/* The COPY stream ended: fetch the server's reason. */
static source_rc
stream_ended(source *s, char *errbuf, size_t errlen)
{
	PGresult *res = PQgetResult(s->conn);
	source_rc rc = SOURCE_LOST;

	if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
		snprintf(errbuf, errlen, "replication stream ended by the server");
	} else {
		rc = classify(res);
		set_error(s, errbuf, errlen, "replication stream broke: ",
		          res ? PQresultErrorMessage(res) : PQerrorMessage(s->conn));
	}
	PQclear(res);
	source_close(s);
	return rc;
}

source_rc
source_read(source *s, uint8_t **buf, size_t *len, char *errbuf, size_t errlen)
{
	char *data = NULL;
	int r;

	if (s->conn == NULL)
		return SOURCE_LOST;
	r = PQgetCopyData(s->conn, &data, 1);
	if (r == 0) {
		if (PQconsumeInput(s->conn) == 0) {
			set_error(s, errbuf, errlen, "could not receive data: ", PQerrorMessage(s->conn));
			source_close(s);
			return SOURCE_LOST;
		}
		r = PQgetCopyData(s->conn, &data, 1);
	}
	if (r > 0) {
		*buf = (uint8_t *) data;
		*len = (size_t) r;
		return SOURCE_OK;
	}
	if (r == 0)
		return SOURCE_AGAIN;
	if (r == -1)
		return stream_ended(s, errbuf, errlen);
	set_error(s, errbuf, errlen, "could not read COPY data: ", PQerrorMessage(s->conn));
	source_close(s);
	return SOURCE_LOST;
}

void
source_release(uint8_t *buf)
{
	PQfreemem(buf);
}

static void
put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t) (v & 0xff);
		v >>= 8;
	}
}

source_rc
source_send_status(source *s, uint64_t written, uint64_t flushed, bool reply,
                   char *errbuf, size_t errlen)
{
	uint8_t msg[1 + 8 * 4 + 1];
	struct timespec now;
	int64_t pgnow;
	int r;

	if (!source_connected(s))
		return SOURCE_LOST;
	clock_gettime(CLOCK_REALTIME, &now);
	pgnow = (int64_t) now.tv_sec * 1000000 + now.tv_nsec / 1000 - PGO_EPOCH_OFFSET_USEC;
	msg[0] = 'r';
	put_u64(msg + 1, written);
	put_u64(msg + 9, flushed);
	put_u64(msg + 17, flushed);          /* applied == flushed for us */
	put_u64(msg + 25, (uint64_t) pgnow);
	msg[33] = reply ? 1 : 0;
	r = PQputCopyData(s->conn, (const char *) msg, (int) sizeof(msg));
	if (r == 0)
		return SOURCE_AGAIN;   /* output buffer full: the next update carries the news */
	if (r < 0) {
		set_error(s, errbuf, errlen, "could not send status update: ", PQerrorMessage(s->conn));
		source_close(s);
		return SOURCE_LOST;
	}
	return source_flush(s, errbuf, errlen);
}

source_rc
source_flush(source *s, char *errbuf, size_t errlen)
{
	int r;

	if (s->conn == NULL)
		return SOURCE_LOST;
	r = PQflush(s->conn);
	s->want_write = r == 1;
	if (r == 0)
		return SOURCE_OK;
	if (r == 1)
		return SOURCE_AGAIN;
	set_error(s, errbuf, errlen, "could not send data: ", PQerrorMessage(s->conn));
	source_close(s);
	return SOURCE_LOST;
}

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until the socket is ready or the deadline passes; false on timeout. */
static bool
wait_socket(source *s, int64_t deadline)
{
	struct pollfd p = {.fd = PQsocket(s->conn), .events = POLLIN};
	int64_t left = deadline - mono_ms();

	if (left <= 0)
		return false;
	if (s->want_write)
		p.events |= POLLOUT;
	return poll(&p, 1, (int) left) > 0 || left > 0;
}

source_rc
source_finish(source *s, int timeout_ms, char *errbuf, size_t errlen)
{
	int64_t deadline = mono_ms() + timeout_ms;
	source_rc rc = SOURCE_OK;
	char *buf;
	int r;

	if (!source_connected(s))
		return SOURCE_LOST;
	if (PQputCopyEnd(s->conn, NULL) < 0) {
		set_error(s, errbuf, errlen, "could not end COPY: ", PQerrorMessage(s->conn));
		rc = SOURCE_LOST;
		goto out;
	}
	/* Data still in flight from the server is read and dropped until its
	 * CopyDone arrives (PQgetCopyData returns -1). */
	for (;;) {
		if (source_flush(s, errbuf, errlen) == SOURCE_LOST)
			return SOURCE_LOST;   /* closed by source_flush */
		r = PQgetCopyData(s->conn, &buf, 1);
		if (r > 0) {
			PQfreemem(buf);
			continue;
		}
		if (r == -1)
			break;
		if (r == -2) {
			set_error(s, errbuf, errlen, "could not end COPY: ", PQerrorMessage(s->conn));
			rc = SOURCE_LOST;
			goto out;
		}
		if (mono_ms() >= deadline || !wait_socket(s, deadline)) {
			snprintf(errbuf, errlen, "the server did not end replication within %d ms", timeout_ms);
			rc = SOURCE_AGAIN;
			goto out;
		}
		if (PQconsumeInput(s->conn) == 0) {
			set_error(s, errbuf, errlen, "could not end COPY: ", PQerrorMessage(s->conn));
			rc = SOURCE_LOST;
			goto out;
		}
	}
	/* Collect the command's results without blocking past the deadline. */
	for (;;) {
		PGresult *res;

		while (PQisBusy(s->conn)) {
			if (!wait_socket(s, deadline) || PQconsumeInput(s->conn) == 0)
				goto out;
		}
		res = PQgetResult(s->conn);
		if (res == NULL)
			break;
		PQclear(res);
	}
out:
	source_close(s);
	return rc;
}
