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
#include <stdarg.h>
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
	int     sender_timeout_ms; /* the server's wal_sender_timeout; 0: off or unknown */
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
		         "replication slot \"%s\" does not exist; create it with scripts/setup-slot.sh "
		         "(if it existed before, it was dropped: events committed since its last confirmed "
		         "position are not in a new slot and must be backfilled)",
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

/*
 * The server's wal_sender_timeout in ms (0: off or unknown).  While Kafka's
 * queue is full pgoutbox reads nothing, so only its own status updates keep
 * the walsender from timing it out: they must come more often than this.
 */
static int
query_sender_timeout(source *s)
{
	PGresult *res = PQexec(s->conn, "SELECT pg_catalog.current_setting('wal_sender_timeout')");
	int ms = 0;

	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		const char *v = PQgetvalue(res, 0, 0);
		char *end;
		long n = strtol(v, &end, 10);

		if (end != v && n > 0 && n < INT32_MAX / 1000) {
			if (strcmp(end, "ms") == 0 || *end == '\0')
				ms = (int) n;
			else if (strcmp(end, "s") == 0)
				ms = (int) n * 1000;
			else if (strcmp(end, "min") == 0 && n < INT32_MAX / 60000)
				ms = (int) n * 60000;
		}
	}
	PQclear(res);
	return ms;
}

int
source_sender_timeout_ms(const source *s)
{
	return s->sender_timeout_ms;
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

/* Open the replication=database connection (blocking, connect_timeout bound). */
static source_rc
connect_replication(source *s, char *errbuf, size_t errlen)
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
	return SOURCE_OK;
}

source_rc
source_start(source *s, char *errbuf, size_t errlen)
{
	char cmd[2048];
	char *ident = NULL, *pubident = NULL, *publit = NULL;
	PGresult *res;
	source_rc rc;

	if ((rc = connect_replication(s, errbuf, errlen)) != SOURCE_OK)
		return rc;

	rc = check_objects(s, errbuf, errlen);
	if (rc != SOURCE_OK) {
		source_close(s);
		return rc;
	}
	s->sender_timeout_ms = query_sender_timeout(s);

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

/* --check ---------------------------------------------------------------- */

typedef struct checker {
	source         *s;
	check_report_fn report;
	void           *ctx;
	int             fails;
} checker;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
check_line(checker *c, check_status st, const char *name, const char *fmt, ...)
{
	char detail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	redact_secret(detail, sizeof(detail), c->s->secret);
	if (st == CHECK_FAIL)
		c->fails++;
	c->report(c->ctx, st, name, detail);
}

/* Run sql (formatted); NULL after reporting a failure under name. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static PGresult *
check_query(checker *c, const char *name, const char *fmt, ...)
{
	char sql[4096], err[1024];
	va_list ap;
	int n;
	PGresult *res;

	va_start(ap, fmt);
	n = vsnprintf(sql, sizeof(sql), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t) n >= sizeof(sql)) {
		check_line(c, CHECK_FAIL, name, "names too long to check");
		return NULL;
	}
	if ((res = query(c->s, sql, err, sizeof(err))) == NULL)
		check_line(c, CHECK_FAIL, name, "%s", err);
	return res;
}

static bool
is_true(const PGresult *res, int row, int col)
{
	return strcmp(PQgetvalue(res, row, col), "t") == 0;
}

static void
check_slot(checker *c, const char *slotlit)
{
	const char *slot = c->s->slot;
	PGresult *res = check_query(c, "slot",
		"SELECT coalesce(plugin, ''), slot_type, database = current_database(), "
		"coalesce(database::text, ''), active, coalesce(active_pid::text, ''), "
		"coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, '') "
		"FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", slotlit);
	const char *wal;

	if (res == NULL)
		return;
	if (PQntuples(res) == 0) {
		check_line(c, CHECK_FAIL, "slot", "replication slot \"%s\" does not exist; "
		           "create it with scripts/setup-slot.sh", slot);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "logical") != 0 ||
	    strcmp(PQgetvalue(res, 0, 0), "pgoutput") != 0) {
		check_line(c, CHECK_FAIL, "slot", "replication slot \"%s\" is a %s slot of plugin \"%s\", "
		           "not a logical slot of plugin pgoutput", slot, PQgetvalue(res, 0, 1),
		           PQgetvalue(res, 0, 0));
		goto out;
	}
	if (!is_true(res, 0, 2)) {
		check_line(c, CHECK_FAIL, "slot", "replication slot \"%s\" belongs to database \"%s\", "
		           "not to the one in the connection string", slot, PQgetvalue(res, 0, 3));
		goto out;
	}
	check_line(c, CHECK_OK, "slot", "replication slot \"%s\" (pgoutput) confirmed up to %s",
	           slot, PQgetvalue(res, 0, 7));
	if (is_true(res, 0, 4))
		check_line(c, CHECK_FAIL, "slot in use", "replication slot \"%s\" is active for the "
		           "process with PID %s: another pgoutbox or consumer streams from it", slot,
		           PQgetvalue(res, 0, 5));
	else
		check_line(c, CHECK_OK, "slot in use", "no other process streams from it");
	wal = PQgetvalue(res, 0, 6);
	if (strcmp(wal, "lost") == 0)
		check_line(c, CHECK_FAIL, "slot wal_status", "lost: the WAL the slot needs was removed; "
		           "drop and re-create the slot, then backfill events committed since");
	else if (strcmp(wal, "unreserved") == 0)
		check_line(c, CHECK_WARN, "slot wal_status", "unreserved: the slot holds more WAL than "
		           "max_slot_wal_keep_size and will be invalidated at the next checkpoint");
	else
		check_line(c, CHECK_OK, "slot wal_status", "%s", wal[0] ? wal : "not reported");
out:
	PQclear(res);
}

/* Returns whether the publication exists. */
static bool
check_publication(checker *c, const char *publit)
{
	const char *pub = c->s->publication;
	PGresult *res = check_query(c, "publication",
		"SELECT pubinsert, puballtables FROM pg_catalog.pg_publication WHERE pubname = %s",
		publit);
	bool exists = false;

	if (res == NULL)
		return false;
	if (PQntuples(res) == 0) {
		check_line(c, CHECK_FAIL, "publication", "publication \"%s\" does not exist; "
		           "create it with scripts/setup-slot.sh", pub);
	} else if (!is_true(res, 0, 0)) {
		exists = true;
		check_line(c, CHECK_FAIL, "publication", "publication \"%s\" does not publish inserts: "
		           "ALTER PUBLICATION ... SET (publish = 'insert')", pub);
	} else {
		exists = true;
		check_line(c, CHECK_OK, "publication", "publication \"%s\" publishes inserts%s", pub,
		           is_true(res, 0, 1) ? " of all tables" : "");
	}
	PQclear(res);
	return exists;
}

static bool
in_list(const char *const *list, const char *name)
{
	for (; list != NULL && *list != NULL; list++)
		if (strcmp(*list, name) == 0)
			return true;
	return false;
}

static void
check_table(checker *c, const source_check_spec *spec, const char *publit, bool pub_exists)
{
	char qualified[1024], missing[1024] = "", found[1024] = "";
	char *tablit;
	const char *oid;
	PGresult *res, *cols = NULL;
	size_t mlen = 0, flen = 0;

	/* "outbox" means public.outbox, as in the mapping. */
	snprintf(qualified, sizeof(qualified), "%s%s",
	         strchr(spec->table, '.') ? "" : "public.", spec->table);
	tablit = PQescapeLiteral(c->s->conn, qualified, strlen(qualified));
	if (tablit == NULL) {
		check_line(c, CHECK_FAIL, "table", "could not quote the table name");
		return;
	}
	res = check_query(c, "table",
		"SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), c.relkind::text "
		"FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)", tablit);
	PQfreemem(tablit);
	if (res == NULL)
		return;
	if (PQntuples(res) == 0) {
		check_line(c, CHECK_FAIL, "table", "table \"%s\" does not exist; create it (see "
		           "scripts/setup-slot.sh --create-table) or set table", spec->table);
		goto out;
	}
	oid = PQgetvalue(res, 0, 0);
	check_line(c, CHECK_OK, "table", "table \"%s\" exists", spec->table);

	if (is_true(res, 0, 1))
		check_line(c, CHECK_OK, "table privilege", "the role may SELECT from \"%s\"", spec->table);
	else
		check_line(c, CHECK_FAIL, "table privilege", "the role may not SELECT from \"%s\" "
		           "(the walsender needs it for the initial relation data): GRANT SELECT ON %s "
		           "TO the role", spec->table, spec->table);

	if (pub_exists) {
		/*
		 * From the catalogs rather than pg_publication_tables, which a role
		 * without rights on every published schema cannot read.  Schema
		 * publications (FOR TABLES IN SCHEMA) exist since PostgreSQL 15.
		 */
		PGresult *pt = check_query(c, "publication table",
			"SELECT p.puballtables OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r "
			"WHERE r.prpubid = p.oid AND r.prrelid = %s::oid)%s%s%s "
			"FROM pg_catalog.pg_publication p WHERE p.pubname = %s", oid,
			PQserverVersion(c->s->conn) >= 150000 ?
			" OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace n, pg_catalog.pg_class k "
			"WHERE n.pnpubid = p.oid AND k.oid = " : "",
			PQserverVersion(c->s->conn) >= 150000 ? oid : "",
			PQserverVersion(c->s->conn) >= 150000 ? "::oid AND n.pnnspid = k.relnamespace)" : "",
			publit);
		if (pt != NULL) {
			if (PQntuples(pt) != 1 || !is_true(pt, 0, 0))
				check_line(c, CHECK_FAIL, "publication table", "publication \"%s\" does not "
				           "contain table \"%s\": ALTER PUBLICATION %s ADD TABLE %s",
				           c->s->publication, spec->table, c->s->publication, spec->table);
			else
				check_line(c, CHECK_OK, "publication table", "publication \"%s\" contains \"%s\"",
				           c->s->publication, spec->table);
			PQclear(pt);
		}
	}

	cols = check_query(c, "columns",
		"SELECT attname, attnotnull, pg_catalog.format_type(atttypid, atttypmod) "
		"FROM pg_catalog.pg_attribute WHERE attrelid = %s::oid AND attnum > 0 "
		"AND NOT attisdropped ORDER BY attnum", oid);
	if (cols == NULL)
		goto out;
	for (const char *const *want = spec->columns; want != NULL && *want != NULL; want++) {
		int row = -1;
		int n;

		for (int i = 0; i < PQntuples(cols) && row < 0; i++)
			if (strcmp(PQgetvalue(cols, i, 0), *want) == 0)
				row = i;
		if (row < 0) {
			n = snprintf(missing + mlen, sizeof(missing) - mlen, "%s\"%s\"", mlen ? ", " : "", *want);
			if (n > 0 && (size_t) n < sizeof(missing) - mlen)
				mlen += (size_t) n;
			continue;
		}
		n = snprintf(found + flen, sizeof(found) - flen, "%s%s %s", flen ? ", " : "", *want,
		             PQgetvalue(cols, row, 2));
		if (n > 0 && (size_t) n < sizeof(found) - flen)
			flen += (size_t) n;
		if (in_list(spec->notnull, *want) && !is_true(cols, row, 1))
			check_line(c, CHECK_WARN, "column nullability", "column \"%s\" allows NULL; "
			           "a row with NULL there cannot become an event: declare it NOT NULL", *want);
	}
	if (mlen > 0)
		check_line(c, CHECK_FAIL, "columns", "table \"%s\" lacks column(s) %s that the mapping "
		           "reads", spec->table, missing);
	else
		check_line(c, CHECK_OK, "columns", "%s", found);
out:
	PQclear(cols);
	PQclear(res);
}

int
source_check(source *s, const source_check_spec *specs, size_t nspecs,
             check_report_fn report, void *ctx)
{
	checker c = {.s = s, .report = report, .ctx = ctx, .fails = 0};
	char err[1024];
	char *slotlit = NULL, *publit = NULL;
	PGresult *res;
	bool pub_exists;
	int v;

	if (connect_replication(s, err, sizeof(err)) != SOURCE_OK) {
		check_line(&c, CHECK_FAIL, "connection", "%s", err);
		return c.fails;
	}
	v = PQserverVersion(s->conn);
	check_line(&c, CHECK_OK, "connection", "connected to %s:%s, database \"%s\" as \"%s\" "
	           "(PostgreSQL %d.%d), replication=database", PQhost(s->conn), PQport(s->conn),
	           PQdb(s->conn), PQuser(s->conn), v / 10000, v % 100);

	if ((res = check_query(&c, "wal_level", "SELECT pg_catalog.current_setting('wal_level')")) != NULL) {
		if (strcmp(PQgetvalue(res, 0, 0), "logical") == 0)
			check_line(&c, CHECK_OK, "wal_level", "logical");
		else
			check_line(&c, CHECK_FAIL, "wal_level", "wal_level is \"%s\": set wal_level = logical "
			           "and restart PostgreSQL", PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	if ((res = check_query(&c, "role", "SELECT rolname, rolsuper, rolreplication FROM "
	                       "pg_catalog.pg_roles WHERE rolname = current_user")) != NULL) {
		if (PQntuples(res) == 1 && is_true(res, 0, 1))
			check_line(&c, CHECK_OK, "role", "role \"%s\" is a superuser (a role with only "
			           "REPLICATION and SELECT on the table is enough)", PQgetvalue(res, 0, 0));
		else if (PQntuples(res) == 1 && is_true(res, 0, 2))
			check_line(&c, CHECK_OK, "role", "role \"%s\" has REPLICATION", PQgetvalue(res, 0, 0));
		else
			check_line(&c, CHECK_FAIL, "role", "role \"%s\" has neither REPLICATION nor SUPERUSER: "
			           "ALTER ROLE %s REPLICATION", PQuser(s->conn), PQuser(s->conn));
		PQclear(res);
	}

	slotlit = PQescapeLiteral(s->conn, s->slot, strlen(s->slot));
	publit = PQescapeLiteral(s->conn, s->publication, strlen(s->publication));
	if (slotlit == NULL || publit == NULL) {
		check_line(&c, CHECK_FAIL, "slot", "could not quote a name: out of memory");
		goto out;
	}
	check_slot(&c, slotlit);
	pub_exists = check_publication(&c, publit);
	for (size_t i = 0; i < nspecs; i++)
		check_table(&c, &specs[i], publit, pub_exists);
out:
	PQfreemem(slotlit);
	PQfreemem(publit);
	source_close(s);
	return c.fails;
}
