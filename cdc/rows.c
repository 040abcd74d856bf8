/*
 * rows.c — the outbox tables over SQL, on libpq.  See rows.h.
 *
 * Every query goes out with PQsendQuery and is collected as its bytes
 * arrive, as in source.c, so that the one loop keeps serving Kafka and the
 * stream meanwhile.  A query string may hold several statements; all their
 * results are collected before the next step.
 */
#include "rows.h"
#include "log.h"
#include "lsn.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CONNECT_TIMEOUT_MS   10000
#define QUERY_TIMEOUT_MS     600000   /* one FETCH, count or DELETE */
#define MAX_RESULTS          72       /* results kept of one query string (a count per table) */
#define HIDDEN_COLS          3        /* xmin, timestamp, order key after the table's own */
#define CURSOR               "pgoutbox_rows"
#define PG_EPOCH_SQL         "946684800000000"

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------
 * One non-blocking connection and its query in flight
 * ------------------------------------------------------------------------- */

typedef struct conn {
	PGconn   *pg;
	bool      connecting;
	PostgresPollingStatusType poll;
	bool      want_write;
	bool      busy;          /* a query is in flight */
	int64_t   deadline;      /* of the connect or the query; -1: none */
	PGresult *res[MAX_RESULTS];
	int       nres;
	char     *secret;        /* password, for redaction */
} conn;

static void
conn_clear(conn *c)
{
	for (int i = 0; i < c->nres; i++)
		PQclear(c->res[i]);
	c->nres = 0;
}

static void
conn_close(conn *c)
{
	conn_clear(c);
	if (c->pg != NULL)
		PQfinish(c->pg);
	c->pg = NULL;
	c->connecting = c->busy = c->want_write = false;
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
conn_error(const conn *c, char *errbuf, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
	redact_secret(errbuf, errlen, c->secret);
}

/* The password in conninfo, or "" (a copy; NULL when out of memory). */
static char *
conninfo_secret(const char *conninfo)
{
	PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
	char *s = NULL;

	for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
			s = strdup(o->val);
	PQconninfoFree(opts);
	return s ? s : strdup("");
}

/*
 * Start connecting: our defaults first (the user's string may override
 * them), then the user's string, then what this connection must be.
 */
static bool
conn_start(conn *c, const char *conninfo, const char *appname, const char *const *must,
           char *errbuf, size_t errlen)
{
	const char *keys[12] = {"connect_timeout", "keepalives", "keepalives_idle",
	                        "fallback_application_name", "dbname"};
	const char *vals[12] = {"10", "1", "10", appname, conninfo};
	int n = 5;

	for (; must != NULL && must[0] != NULL && n < 10; must += 2, n++) {
		keys[n] = must[0];
		vals[n] = must[1];
	}
	keys[n] = vals[n] = NULL;
	c->pg = PQconnectStartParams(keys, vals, 1);
	if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
		conn_error(c, errbuf, errlen, "could not connect to the server: %s",
		           c->pg ? PQerrorMessage(c->pg) : "out of memory");
		conn_close(c);
		return false;
	}
	c->connecting = true;
	c->poll = PGRES_POLLING_WRITING;
	c->deadline = mono_ms() + CONNECT_TIMEOUT_MS;
	return true;
}

/* ROWS_OK once connected, ROWS_AGAIN meanwhile. */
static rows_rc
conn_advance(conn *c, char *errbuf, size_t errlen)
{
	if (!c->connecting)
		return ROWS_OK;
	c->poll = PQconnectPoll(c->pg);
	if (c->poll == PGRES_POLLING_FAILED) {
		conn_error(c, errbuf, errlen, "could not connect to the server: %s", PQerrorMessage(c->pg));
		return ROWS_FAIL;
	}
	if (c->poll != PGRES_POLLING_OK) {
		if (mono_ms() >= c->deadline) {
			snprintf(errbuf, errlen, "could not connect to the server: no answer within %d s",
			         CONNECT_TIMEOUT_MS / 1000);
			return ROWS_FAIL;
		}
		return ROWS_AGAIN;
	}
	if (PQsetnonblocking(c->pg, 1) != 0) {
		conn_error(c, errbuf, errlen, "could not set non-blocking mode: %s", PQerrorMessage(c->pg));
		return ROWS_FAIL;
	}
	c->connecting = false;
	return ROWS_OK;
}

static bool
conn_send(conn *c, const char *sql, int timeout_ms, char *errbuf, size_t errlen)
{
	int r;

	conn_clear(c);
	if (!PQsendQuery(c->pg, sql) || (r = PQflush(c->pg)) < 0) {
		conn_error(c, errbuf, errlen, "could not send a query: %s", PQerrorMessage(c->pg));
		return false;
	}
	c->want_write = r == 1;
	c->busy = true;
	c->deadline = timeout_ms > 0 ? mono_ms() + timeout_ms : -1;
	return true;
}

/* Collect the query's results: ROWS_OK when all arrived (c->res), ROWS_AGAIN, ROWS_FAIL. */
static rows_rc
conn_collect(conn *c, char *errbuf, size_t errlen)
{
	int r;

	if (!c->busy)
		return ROWS_OK;
	r = PQflush(c->pg);
	if (r < 0 || !PQconsumeInput(c->pg)) {
		conn_error(c, errbuf, errlen, "lost the connection to the server: %s", PQerrorMessage(c->pg));
		return ROWS_FAIL;
	}
	c->want_write = r == 1;
	while (!PQisBusy(c->pg)) {
		PGresult *one = PQgetResult(c->pg);

		if (one == NULL) {
			c->busy = false;
			return ROWS_OK;
		}
		if (c->nres < MAX_RESULTS)
			c->res[c->nres++] = one;
		else
			PQclear(one);
	}
	if (c->deadline >= 0 && mono_ms() >= c->deadline) {
		snprintf(errbuf, errlen, "the server did not answer within %d s", QUERY_TIMEOUT_MS / 1000);
		return ROWS_FAIL;
	}
	return ROWS_AGAIN;
}

/* The first result that is not `want` (an error), or NULL when all are fine. */
static const PGresult *
conn_bad_result(const conn *c, int expect)
{
	if (c->nres < expect)
		return c->nres > 0 ? c->res[c->nres - 1] : NULL;
	for (int i = 0; i < c->nres; i++) {
		ExecStatusType st = PQresultStatus(c->res[i]);
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
			return c->res[i];
	}
	return NULL;
}

/* Whether the query's results are c->nres >= expect successes; else errbuf says why. */
static bool
conn_results_ok(const conn *c, int expect, const char *what, char *errbuf, size_t errlen)
{
	const PGresult *bad = conn_bad_result(c, expect);

	if (bad == NULL && c->nres >= expect)
		return true;
	conn_error(c, errbuf, errlen, "could not %s: %s", what,
	           bad ? PQresultErrorMessage(bad) : PQerrorMessage(c->pg));
	return false;
}

static int
conn_pollfds(const conn *c, struct pollfd *pfd, int max)
{
	short ev;

	if (c->pg == NULL || max < 1 || PQsocket(c->pg) < 0)
		return 0;
	if (c->connecting)
		ev = c->poll == PGRES_POLLING_WRITING ? POLLOUT : POLLIN;
	else if (c->busy)
		ev = (short) (POLLIN | (c->want_write ? POLLOUT : 0));
	else
		return 0;
	pfd[0] = (struct pollfd) {.fd = PQsocket(c->pg), .events = ev};
	return 1;
}

/* ---------------------------------------------------------------------------
 * Growable SQL text
 * ------------------------------------------------------------------------- */

typedef struct sqlbuf {
	char  *p;
	size_t len, cap;
	bool   failed;
} sqlbuf;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
sql_add(sqlbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = true;
			return;
		}
		if (b->p != NULL && (size_t) n < b->cap - b->len) {
			b->len += (size_t) n;
			return;
		}
		{
			size_t cap = (b->cap ? b->cap : 256) * 2 + (size_t) n;
			char *np = realloc(b->p, cap);
			if (np == NULL) {
				b->failed = true;
				return;
			}
			b->p = np;
			b->cap = cap;
		}
	}
}

/* Quoted identifier / literal, appended (PQescape* needs the connection). */
static void
sql_ident(sqlbuf *b, PGconn *pg, const char *s)
{
	char *q = PQescapeIdentifier(pg, s, strlen(s));

	if (q == NULL)
		b->failed = true;
	else
		sql_add(b, "%s", q);
	PQfreemem(q);
}

static void
sql_literal(sqlbuf *b, PGconn *pg, const char *s)
{
	char *q = PQescapeLiteral(pg, s, strlen(s));

	if (q == NULL)
		b->failed = true;
	else
		sql_add(b, "%s", q);
	PQfreemem(q);
}

static bool
set(const char *s)
{
	return s != NULL && s[0] != '\0';
}

/* ---------------------------------------------------------------------------
 * The reader
 * ------------------------------------------------------------------------- */

typedef enum rstep {
	R_CONNECT = 0,
	R_BEGIN,        /* BEGIN sent */
	R_SLOT,         /* CREATE_REPLICATION_SLOT sent */
	R_SETUP,        /* settings and facts of the snapshot asked for */
	R_COUNT,        /* the selected rows counted */
	R_INFO,         /* ROWS_INFO is to be returned */
	R_FETCH,        /* a FETCH (maybe after CLOSE/DECLARE) in flight */
	R_COMMIT,       /* COMMIT sent */
	R_DONE,
	R_FAILED,
} rstep;

typedef struct libpq_reader {
	rows_reader base;
	char      *conninfo, *create_slot, *need_slot;
	size_t     ntables;
	char     **nsp, **rel;
	char      *since, *since_column, *order_column, *resume_from, *timestamp_column;
	size_t     resume_table;
	int        batch;
	bool      *children;       /* [ntables] the table has partitions (or inheritance children) */

	conn       c;
	rstep      step;
	rows_info  info;
	char       database[256];
	int        server_version;
	size_t     table;          /* table being read */
	PGresult  *ready;          /* a FETCH result not handed out yet */
	size_t     ready_table;
	PGresult  *out;            /* the batch handed out */
	bool       table_ended;    /* the last FETCH of this table came back short */
	int64_t    slot_wait_ms;   /* since when CREATE_REPLICATION_SLOT waits */

	/* the batch's arrays */
	const char **names;
	uint32_t    *types;
	const char **vals;
	size_t      *lens;
	const char **keys;
	int64_t     *times;
	uint32_t    *xmins;
	size_t       cap_names, cap_types, cap_vals, cap_lens, cap_keys, cap_times, cap_xmins;
} libpq_reader;

static const rows_reader_ops reader_ops;

static char *
dup_or_null(const char *s, bool *ok)
{
	char *d;

	if (!set(s))
		return NULL;
	if ((d = strdup(s)) == NULL)
		*ok = false;
	return d;
}

rows_reader *
rows_reader_new(const rows_config *cfg, char *errbuf, size_t errlen)
{
	libpq_reader *r = calloc(1, sizeof(*r));
	bool ok = true;

	if (r == NULL)
		goto nomem;
	r->base.ops = &reader_ops;
	r->conninfo = strdup(cfg->conninfo);
	r->create_slot = dup_or_null(cfg->create_slot, &ok);
	r->need_slot = dup_or_null(cfg->need_slot, &ok);
	r->since = dup_or_null(cfg->sel.since, &ok);
	r->since_column = dup_or_null(cfg->sel.since_column, &ok);
	r->order_column = dup_or_null(cfg->sel.order_column, &ok);
	r->resume_from = dup_or_null(cfg->sel.resume_from, &ok);
	r->timestamp_column = dup_or_null(cfg->sel.timestamp_column, &ok);
	r->batch = cfg->sel.batch > 0 ? cfg->sel.batch : 1000;
	r->resume_table = cfg->sel.resume_table;
	r->table = r->resume_table;
	r->ntables = cfg->ntables;
	r->nsp = calloc(cfg->ntables + 1, sizeof(char *));
	r->rel = calloc(cfg->ntables + 1, sizeof(char *));
	r->children = calloc(cfg->ntables + 1, sizeof(bool));
	if (!ok || r->children == NULL || r->conninfo == NULL || r->nsp == NULL || r->rel == NULL ||
	    (r->c.secret = conninfo_secret(cfg->conninfo)) == NULL)
		goto nomem;
	for (size_t i = 0; i < cfg->ntables; i++)
		if ((r->nsp[i] = strdup(cfg->nsp[i])) == NULL || (r->rel[i] = strdup(cfg->rel[i])) == NULL)
			goto nomem;
	r->info.created_slot = r->create_slot != NULL;
	return &r->base;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	if (r != NULL)
		r->base.ops->destroy(&r->base);
	return NULL;
}

static void
reader_release_out(libpq_reader *r)
{
	PQclear(r->out);
	r->out = NULL;
}

static void
reader_destroy(rows_reader *base)
{
	libpq_reader *r = (libpq_reader *) base;

	reader_release_out(r);
	PQclear(r->ready);
	conn_close(&r->c);
	if (r->c.secret != NULL) {
		memset(r->c.secret, 0, strlen(r->c.secret));
		free(r->c.secret);
	}
	if (r->conninfo != NULL) {
		memset(r->conninfo, 0, strlen(r->conninfo));
		free(r->conninfo);
	}
	free(r->create_slot);
	free(r->need_slot);
	free(r->since);
	free(r->since_column);
	free(r->order_column);
	free(r->resume_from);
	free(r->timestamp_column);
	for (size_t i = 0; i < r->ntables; i++) {
		if (r->nsp)
			free(r->nsp[i]);
		if (r->rel)
			free(r->rel[i]);
	}
	free(r->nsp);
	free(r->rel);
	free(r->children);
	free(r->names);
	free(r->types);
	free(r->vals);
	free(r->lens);
	free(r->keys);
	free(r->times);
	free(r->xmins);
	free(r);
}

/* t (the table alias) as the row source: "nsp"."rel" t */
static void
sql_table(sqlbuf *b, libpq_reader *r, size_t i)
{
	sql_ident(b, r->c.pg, r->nsp[i]);
	sql_add(b, ".");
	sql_ident(b, r->c.pg, r->rel[i]);
	sql_add(b, " t");
}

/* The WHERE clause of the selection (with resume), or nothing. */
static void
sql_where(sqlbuf *b, libpq_reader *r, size_t table)
{
	const char *and = " WHERE ";

	if (set(r->since)) {
		sql_add(b, "%s", and);
		if (set(r->since_column)) {
			sql_add(b, "t.");
			sql_ident(b, r->c.pg, r->since_column);
			sql_add(b, " >= ");
			sql_literal(b, r->c.pg, r->since);
		} else {
			/* Rows whose commit time is unknown (committed before
			 * track_commit_timestamp was on, or too long ago) are kept:
			 * a duplicate rather than a gap. */
			sql_add(b, "(pg_catalog.pg_xact_commit_timestamp(t.xmin) IS NULL OR "
			        "pg_catalog.pg_xact_commit_timestamp(t.xmin) >= ");
			sql_literal(b, r->c.pg, r->since);
			sql_add(b, "::timestamptz)");
		}
		and = " AND ";
	}
	if (set(r->resume_from) && table == r->resume_table) {
		sql_add(b, "%s", and);
		if (set(r->order_column)) {
			sql_add(b, "(t.");
			sql_ident(b, r->c.pg, r->order_column);
			sql_add(b, " >= ");
			sql_literal(b, r->c.pg, r->resume_from);
			sql_add(b, " OR t.");
			sql_ident(b, r->c.pg, r->order_column);
			sql_add(b, " IS NULL)");
		} else {
			sql_add(b, "t.ctid >= ");
			sql_literal(b, r->c.pg, r->resume_from);
			sql_add(b, "::tid");
		}
	}
}

/* BEGIN, and for a new slot its creation (which must come first in the transaction). */
static bool
send_begin(libpq_reader *r, char *errbuf, size_t errlen)
{
	return conn_send(&r->c, "BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ", QUERY_TIMEOUT_MS,
	                 errbuf, errlen);
}

static bool
send_create_slot(libpq_reader *r, char *errbuf, size_t errlen)
{
	sqlbuf b = {0};
	bool ok;

	sql_add(&b, "CREATE_REPLICATION_SLOT ");
	sql_ident(&b, r->c.pg, r->create_slot);
	/* 15 took the option list; 13 and 14 know only the keyword. */
	sql_add(&b, r->server_version >= 150000 ? " LOGICAL pgoutput (SNAPSHOT 'use')"
	                                        : " LOGICAL pgoutput USE_SNAPSHOT");
	if (b.failed) {
		free(b.p);
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	/* It waits for every transaction running now to end: no timeout. */
	ok = conn_send(&r->c, b.p, 0, errbuf, errlen);
	r->slot_wait_ms = mono_ms();
	free(b.p);
	return ok;
}

static bool
send_setup(libpq_reader *r, char *errbuf, size_t errlen)
{
	sqlbuf b = {0};
	bool ok;

	/* A sequential scan without synchronised scans returns the heap in
	 * physical order (pg_dump does the same); cursors never run parallel. */
	sql_add(&b, "SET LOCAL synchronize_seqscans = off; "
	        "SELECT pg_catalog.current_setting('track_commit_timestamp'), "
	        "((extract(epoch FROM now()) * 1000000)::int8 - " PG_EPOCH_SQL ")::text, "
	        "coalesce(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
	        "ELSE pg_catalog.pg_current_wal_lsn() END, '0/0')::text, pg_catalog.current_database(), ");
	if (r->need_slot != NULL) {
		sql_add(&b, "(SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = ");
		sql_literal(&b, r->c.pg, r->need_slot);
		sql_add(&b, " AND database = pg_catalog.current_database())");
	} else {
		sql_add(&b, "1");
	}
	if (b.failed) {
		free(b.p);
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	ok = conn_send(&r->c, b.p, QUERY_TIMEOUT_MS, errbuf, errlen);
	free(b.p);
	return ok;
}

static bool
send_count(libpq_reader *r, char *errbuf, size_t errlen)
{
	sqlbuf b = {0};
	bool ok;

	for (size_t i = r->resume_table; i < r->ntables; i++) {
		sql_add(&b, "SELECT count(*), count(*) FILTER (WHERE %s), EXISTS (SELECT 1 FROM "
		        "pg_catalog.pg_inherits WHERE inhparent = ",
		        set(r->since) && !set(r->since_column)
		        ? "pg_catalog.pg_xact_commit_timestamp(t.xmin) IS NULL" : "false");
		/* the regclass literal: "nsp"."rel" inside quotes */
		{
			sqlbuf q = {0};
			char *lit;
			sql_ident(&q, r->c.pg, r->nsp[i]);
			sql_add(&q, ".");
			sql_ident(&q, r->c.pg, r->rel[i]);
			if (q.failed || (lit = PQescapeLiteral(r->c.pg, q.p, q.len)) == NULL) {
				b.failed = true;
			} else {
				sql_add(&b, "%s::regclass) FROM ", lit);
				PQfreemem(lit);
			}
			free(q.p);
		}
		sql_table(&b, r, i);
		sql_where(&b, r, i);
		sql_add(&b, "; ");
	}
	if (b.failed) {
		free(b.p);
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	ok = conn_send(&r->c, b.p, QUERY_TIMEOUT_MS, errbuf, errlen);
	free(b.p);
	return ok;
}

/* [CLOSE the cursor;] DECLARE it for table i; FETCH; or, past the last table, COMMIT. */
static bool
send_next_table(libpq_reader *r, bool close, char *errbuf, size_t errlen)
{
	sqlbuf b = {0};
	bool ok;

	if (close)
		sql_add(&b, "CLOSE " CURSOR "; ");
	if (r->table >= r->ntables) {
		sql_add(&b, "COMMIT");
		r->step = R_COMMIT;
	} else {
		sql_add(&b, "DECLARE " CURSOR " NO SCROLL CURSOR FOR SELECT t.*, t.xmin::text, ");
		if (set(r->timestamp_column)) {
			sql_add(&b, "((extract(epoch FROM t.");
			sql_ident(&b, r->c.pg, r->timestamp_column);
			sql_add(&b, ") * 1000000)::int8 - " PG_EPOCH_SQL ")::text, ");
		} else if (r->info.commit_times) {
			sql_add(&b, "((extract(epoch FROM pg_catalog.pg_xact_commit_timestamp(t.xmin)) * 1000000)"
			        "::int8 - " PG_EPOCH_SQL ")::text, ");
		} else {
			sql_add(&b, "NULL::text, ");
		}
		if (set(r->order_column)) {
			sql_add(&b, "t.");
			sql_ident(&b, r->c.pg, r->order_column);
			sql_add(&b, "::text FROM ");
		} else if (!r->children[r->table]) {
			sql_add(&b, "t.ctid::text FROM ");
		} else {
			/* Partitions repeat each other's ctids: no key to resume at. */
			sql_add(&b, "NULL::text FROM ");
		}
		sql_table(&b, r, r->table);
		sql_where(&b, r, r->table);
		if (set(r->order_column)) {
			sql_add(&b, " ORDER BY t.");
			sql_ident(&b, r->c.pg, r->order_column);
		}
		sql_add(&b, "; FETCH FORWARD %d FROM " CURSOR, r->batch);
		r->step = R_FETCH;
		r->table_ended = false;
	}
	if (b.failed) {
		free(b.p);
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	ok = conn_send(&r->c, b.p, QUERY_TIMEOUT_MS, errbuf, errlen);
	free(b.p);
	return ok;
}

/* Make room for n elements of size bytes in *p (capacity *cap); false when out of memory. */
static bool
grow(void *pp, size_t *cap, size_t n, size_t size)
{
	void **p = pp;
	void *np;

	if (n <= *cap)
		return true;
	if (n > SIZE_MAX / size || (np = realloc(*p, n * size)) == NULL)
		return false;
	*p = np;
	*cap = n;
	return true;
}

/* Turn r->out into *b; false when out of memory or the result has no hidden columns. */
static bool
make_batch(libpq_reader *r, rows_batch *b)
{
	PGresult *res = r->out;
	size_t nrows = (size_t) PQntuples(res), nf = (size_t) PQnfields(res), ncols, ncells;

	if (nf < HIDDEN_COLS)
		return false;
	ncols = nf - HIDDEN_COLS;
	if (ncols > 0 && nrows > SIZE_MAX / ncols)
		return false;
	ncells = nrows * ncols;
	if (!grow(&r->names, &r->cap_names, ncols, sizeof(*r->names)) ||
	    !grow(&r->types, &r->cap_types, ncols, sizeof(*r->types)) ||
	    !grow(&r->keys, &r->cap_keys, nrows, sizeof(*r->keys)) ||
	    !grow(&r->times, &r->cap_times, nrows, sizeof(*r->times)) ||
	    !grow(&r->xmins, &r->cap_xmins, nrows, sizeof(*r->xmins)) ||
	    !grow(&r->vals, &r->cap_vals, ncells, sizeof(*r->vals)) ||
	    !grow(&r->lens, &r->cap_lens, ncells, sizeof(*r->lens)))
		return false;
	for (size_t c = 0; c < ncols; c++) {
		r->names[c] = PQfname(res, (int) c);
		r->types[c] = (uint32_t) PQftype(res, (int) c);
	}
	for (size_t i = 0; i < nrows; i++) {
		for (size_t c = 0; c < ncols; c++) {
			size_t k = i * ncols + c;
			if (PQgetisnull(res, (int) i, (int) c)) {
				r->vals[k] = NULL;
				r->lens[k] = 0;
			} else {
				r->vals[k] = PQgetvalue(res, (int) i, (int) c);
				r->lens[k] = (size_t) PQgetlength(res, (int) i, (int) c);
			}
		}
		r->xmins[i] = (uint32_t) strtoul(PQgetvalue(res, (int) i, (int) ncols), NULL, 10);
		r->times[i] = PQgetisnull(res, (int) i, (int) ncols + 1) ? ROWS_NO_TIME :
		              strtoll(PQgetvalue(res, (int) i, (int) ncols + 1), NULL, 10);
		r->keys[i] = PQgetisnull(res, (int) i, (int) ncols + 2) ? NULL :
		             PQgetvalue(res, (int) i, (int) ncols + 2);
	}
	*b = (rows_batch) {
		.table = r->ready_table, .nrows = nrows, .ncols = ncols, .names = r->names,
		.types = r->types, .vals = r->vals, .lens = r->lens, .keys = r->keys,
		.times = r->times, .xmins = r->xmins,
	};
	return true;
}


/* A query completed: check it and send the next one. */
static rows_rc
reader_step(libpq_reader *r, char *errbuf, size_t errlen)
{
	const PGresult *res;

	switch (r->step) {
	case R_BEGIN:
		if (!conn_results_ok(&r->c, 1, "begin the snapshot's transaction", errbuf, errlen))
			return ROWS_FAIL;
		if (r->create_slot != NULL) {
			r->step = R_SLOT;
			return send_create_slot(r, errbuf, errlen) ? ROWS_AGAIN : ROWS_FAIL;
		}
		r->step = R_SETUP;
		return send_setup(r, errbuf, errlen) ? ROWS_AGAIN : ROWS_FAIL;
	case R_SLOT:
		if (!conn_results_ok(&r->c, 1, "create the replication slot", errbuf, errlen))
			return ROWS_FAIL;
		res = r->c.res[0];
		if (PQntuples(res) != 1 || PQnfields(res) < 2 ||
		    !lsn_parse(PQgetvalue(res, 0, 1), &r->info.position)) {
			snprintf(errbuf, errlen, "CREATE_REPLICATION_SLOT returned an unexpected result");
			return ROWS_FAIL;
		}
		r->step = R_SETUP;
		return send_setup(r, errbuf, errlen) ? ROWS_AGAIN : ROWS_FAIL;
	case R_SETUP:
		if (!conn_results_ok(&r->c, 2, "read the snapshot's settings", errbuf, errlen))
			return ROWS_FAIL;
		res = r->c.res[1];
		if (PQntuples(res) != 1 || PQnfields(res) != 5) {
			snprintf(errbuf, errlen, "the snapshot's settings came back in an unexpected shape");
			return ROWS_FAIL;
		}
		r->info.commit_times = strcmp(PQgetvalue(res, 0, 0), "on") == 0;
		r->info.snapshot_time = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
		if (r->create_slot == NULL && !lsn_parse(PQgetvalue(res, 0, 2), &r->info.position))
			r->info.position = 0;
		snprintf(r->database, sizeof(r->database), "%s", PQgetvalue(res, 0, 3));
		r->info.database = r->database;
		if (strcmp(PQgetvalue(res, 0, 4), "0") == 0) {
			snprintf(errbuf, errlen, "replication slot \"%s\" does not exist in this database: a "
			         "resumed backfill streams from the slot the interrupted one created", r->need_slot);
			return ROWS_FAIL;
		}
		if (set(r->since) && !set(r->since_column) && !r->info.commit_times) {
			snprintf(errbuf, errlen, "--since without backfill_since_column selects rows by their "
			         "transactions' commit times, which needs track_commit_timestamp = on (it is off): "
			         "set backfill_since_column to a column holding the rows' creation time");
			return ROWS_FAIL;
		}
		r->step = R_COUNT;
		return send_count(r, errbuf, errlen) ? ROWS_AGAIN : ROWS_FAIL;
	case R_COUNT:
		if (!conn_results_ok(&r->c, (int) (r->ntables - r->resume_table), "count the rows to read",
		                     errbuf, errlen))
			return ROWS_FAIL;
		for (int i = 0; i < r->c.nres && r->resume_table + (size_t) i < r->ntables; i++) {
			r->info.total += strtoull(PQgetvalue(r->c.res[i], 0, 0), NULL, 10);
			r->info.unknown_commit += strtoull(PQgetvalue(r->c.res[i], 0, 1), NULL, 10);
			r->children[r->resume_table + (size_t) i] = strcmp(PQgetvalue(r->c.res[i], 0, 2), "t") == 0;
		}
		r->step = R_INFO;
		return ROWS_INFO;
	case R_FETCH:
		if (!conn_results_ok(&r->c, 1, "read the outbox table", errbuf, errlen))
			return ROWS_FAIL;
		res = r->c.res[r->c.nres - 1];
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			snprintf(errbuf, errlen, "FETCH returned no rows result");
			return ROWS_FAIL;
		}
		r->ready = r->c.res[r->c.nres - 1];
		r->c.res[--r->c.nres] = NULL;
		r->ready_table = r->table;
		return ROWS_AGAIN;
	case R_COMMIT:
		if (!conn_results_ok(&r->c, 1, "end the snapshot's transaction", errbuf, errlen))
			return ROWS_FAIL;
		conn_close(&r->c);
		r->step = R_DONE;
		return ROWS_DONE;
	default:
		snprintf(errbuf, errlen, "internal error: reader in step %d", (int) r->step);
		return ROWS_FAIL;
	}
}

/* Hand out the ready FETCH result, asking for the next one right away. */
static rows_rc
hand_out(libpq_reader *r, rows_batch *b, char *errbuf, size_t errlen)
{
	bool full = PQntuples(r->ready) >= r->batch;

	r->out = r->ready;
	r->ready = NULL;
	if (full) {
		char sql[80];
		snprintf(sql, sizeof(sql), "FETCH FORWARD %d FROM " CURSOR, r->batch);
		if (!conn_send(&r->c, sql, QUERY_TIMEOUT_MS, errbuf, errlen))
			return ROWS_FAIL;
	} else {
		r->table++;
		if (!send_next_table(r, true, errbuf, errlen))
			return ROWS_FAIL;
	}
	if (PQntuples(r->out) == 0) {
		reader_release_out(r);
		return ROWS_AGAIN;
	}
	if (!make_batch(r, b)) {
		snprintf(errbuf, errlen, "out of memory (or an unexpected result) reading a batch of rows");
		return ROWS_FAIL;
	}
	return ROWS_OK;
}

static rows_rc
reader_next(rows_reader *base, rows_batch *b, char *errbuf, size_t errlen)
{
	libpq_reader *r = (libpq_reader *) base;
	rows_rc rc;
	const char *must[] = {"replication", "database", NULL, NULL};

	reader_release_out(r);
	for (;;) {
		switch (r->step) {
		case R_DONE:
			return ROWS_DONE;
		case R_FAILED:
			snprintf(errbuf, errlen, "the reader failed before");
			return ROWS_FAIL;
		case R_CONNECT:
			if (r->c.pg == NULL &&
			    !conn_start(&r->c, r->conninfo, r->create_slot ? "pgoutbox backfill" : "pgoutbox replay",
			                r->create_slot ? must : NULL, errbuf, errlen))
				goto fail;
			if ((rc = conn_advance(&r->c, errbuf, errlen)) == ROWS_FAIL)
				goto fail;
			if (rc == ROWS_AGAIN)
				return ROWS_AGAIN;
			r->server_version = PQserverVersion(r->c.pg);
			r->step = R_BEGIN;
			if (!send_begin(r, errbuf, errlen))
				goto fail;
			continue;
		case R_INFO:
			if (!send_next_table(r, false, errbuf, errlen))
				goto fail;
			continue;
		default:
			break;
		}
		if (r->ready != NULL && !r->c.busy) {
			rc = hand_out(r, b, errbuf, errlen);
			if (rc == ROWS_FAIL)
				goto fail;
			if (rc == ROWS_OK)
				return ROWS_OK;
			continue;
		}
		if ((rc = conn_collect(&r->c, errbuf, errlen)) == ROWS_FAIL)
			goto fail;
		if (rc == ROWS_AGAIN)
			return ROWS_AGAIN;
		rc = reader_step(r, errbuf, errlen);
		if (rc == ROWS_FAIL)
			goto fail;
		if (rc == ROWS_INFO || rc == ROWS_DONE)
			return rc;
	}
fail:
	r->step = R_FAILED;
	PQclear(r->ready);
	r->ready = NULL;
	conn_close(&r->c);
	return ROWS_FAIL;
}

static const rows_info *
reader_info(const rows_reader *base)
{
	return &((const libpq_reader *) base)->info;
}

static int
reader_pollfds(rows_reader *base, struct pollfd *pfd, int max)
{
	libpq_reader *r = (libpq_reader *) base;

	/* A result waiting to be handed out needs no socket: the caller comes back. */
	return conn_pollfds(&r->c, pfd, max);
}

static int64_t
reader_deadline(const rows_reader *base)
{
	const libpq_reader *r = (const libpq_reader *) base;

	if (r->ready != NULL && !r->c.busy)
		return 0;
	return r->c.pg != NULL && (r->c.busy || r->c.connecting) ? r->c.deadline : -1;
}

static const rows_reader_ops reader_ops = {
	.next = reader_next,
	.info = reader_info,
	.pollfds = reader_pollfds,
	.deadline = reader_deadline,
	.destroy = reader_destroy,
};

/* ---------------------------------------------------------------------------
 * The cleaner
 * ------------------------------------------------------------------------- */

typedef enum cstep {
	K_IDLE = 0,     /* no connection */
	K_CONNECT,
	K_KEYS,         /* the tables' primary keys asked for */
	K_READY,
	K_PICK,         /* a pick in flight */
	K_PICKED,       /* the pick's rows are held */
	K_DELETE,       /* the delete in flight */
} cstep;

typedef struct pkey {
	size_t  ncols;
	char  **cols;      /* quoted identifiers */
	char  **types;     /* format_type() of each */
} pkey;

typedef struct libpq_cleaner {
	rows_cleaner base;
	char      *conninfo;
	size_t     ntables;
	char     **nsp, **rel;
	pkey      *keys;
	conn       c;
	cstep      step;
	size_t     table;        /* of the pick */
	PGresult  *picked;
	int        next;         /* first row of the pick not deleted yet */
	int        sent;         /* rows in the delete in flight */
} libpq_cleaner;

static const rows_cleaner_ops cleaner_ops;

rows_cleaner *
rows_cleaner_new(const char *conninfo, size_t ntables, const char *const *nsp,
                 const char *const *rel, char *errbuf, size_t errlen)
{
	libpq_cleaner *k = calloc(1, sizeof(*k));

	if (k == NULL)
		goto nomem;
	k->base.ops = &cleaner_ops;
	k->ntables = ntables;
	if ((k->conninfo = strdup(conninfo)) == NULL || (k->c.secret = conninfo_secret(conninfo)) == NULL ||
	    (k->nsp = calloc(ntables + 1, sizeof(char *))) == NULL ||
	    (k->rel = calloc(ntables + 1, sizeof(char *))) == NULL ||
	    (k->keys = calloc(ntables + 1, sizeof(pkey))) == NULL)
		goto nomem;
	for (size_t i = 0; i < ntables; i++)
		if ((k->nsp[i] = strdup(nsp[i])) == NULL || (k->rel[i] = strdup(rel[i])) == NULL)
			goto nomem;
	return &k->base;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	if (k != NULL)
		k->base.ops->destroy(&k->base);
	return NULL;
}

static void
free_keys(libpq_cleaner *k)
{
	for (size_t i = 0; k->keys != NULL && i < k->ntables; i++) {
		for (size_t j = 0; j < k->keys[i].ncols; j++) {
			free(k->keys[i].cols[j]);
			free(k->keys[i].types[j]);
		}
		free(k->keys[i].cols);
		free(k->keys[i].types);
		k->keys[i] = (pkey) {0};
	}
}

static void
cleaner_close(rows_cleaner *base)
{
	libpq_cleaner *k = (libpq_cleaner *) base;

	PQclear(k->picked);
	k->picked = NULL;
	conn_close(&k->c);
	free_keys(k);
	k->step = K_IDLE;
}

static void
cleaner_destroy(rows_cleaner *base)
{
	libpq_cleaner *k = (libpq_cleaner *) base;

	cleaner_close(base);
	if (k->c.secret != NULL) {
		memset(k->c.secret, 0, strlen(k->c.secret));
		free(k->c.secret);
	}
	if (k->conninfo != NULL) {
		memset(k->conninfo, 0, strlen(k->conninfo));
		free(k->conninfo);
	}
	for (size_t i = 0; i < k->ntables; i++) {
		if (k->nsp)
			free(k->nsp[i]);
		if (k->rel)
			free(k->rel[i]);
	}
	free(k->nsp);
	free(k->rel);
	free(k->keys);
	free(k);
}

static void
sql_qualified(sqlbuf *b, PGconn *pg, const char *nsp, const char *rel)
{
	sql_ident(b, pg, nsp);
	sql_add(b, ".");
	sql_ident(b, pg, rel);
}

/* Ask for every table's primary key columns: one result per table. */
static bool
send_keys(libpq_cleaner *k, char *errbuf, size_t errlen)
{
	sqlbuf b = {0};
	bool ok;

	for (size_t i = 0; i < k->ntables; i++) {
		sqlbuf q = {0};
		char *lit = NULL;

		sql_qualified(&q, k->c.pg, k->nsp[i], k->rel[i]);
		if (!q.failed)
			lit = PQescapeLiteral(k->c.pg, q.p, q.len);
		free(q.p);
		if (lit == NULL) {
			free(b.p);
			snprintf(errbuf, errlen, "out of memory");
			return false;
		}
		sql_add(&b, "SELECT pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, "
		        "a.atttypmod) FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON "
		        "a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indrelid = %s::regclass "
		        "AND i.indisprimary ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum); ",
		        lit);
		PQfreemem(lit);
	}
	if (b.failed) {
		free(b.p);
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	ok = conn_send(&k->c, b.p, QUERY_TIMEOUT_MS, errbuf, errlen);
	free(b.p);
	return ok;
}

static bool
take_keys(libpq_cleaner *k, char *errbuf, size_t errlen)
{
	for (size_t i = 0; i < k->ntables; i++) {
		PGresult *res = k->c.res[i];
		size_t n = (size_t) PQntuples(res);

		if (n == 0) {
			snprintf(errbuf, errlen, "table %s.%s has no primary key: cleanup = delete deletes rows "
			         "by primary key", k->nsp[i], k->rel[i]);
			return false;
		}
		k->keys[i].cols = calloc(n, sizeof(char *));
		k->keys[i].types = calloc(n, sizeof(char *));
		if (k->keys[i].cols == NULL || k->keys[i].types == NULL)
			goto nomem;
		for (size_t j = 0; j < n; j++) {
			k->keys[i].cols[j] = strdup(PQgetvalue(res, (int) j, 0));
			k->keys[i].types[j] = strdup(PQgetvalue(res, (int) j, 1));
			k->keys[i].ncols = j + 1;
			if (k->keys[i].cols[j] == NULL || k->keys[i].types[j] == NULL)
				goto nomem;
		}
	}
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

/*
 * Connect and learn the primary keys: ROWS_OK when ready.  The connection
 * must reach a primary: a delete is not possible elsewhere.
 */
static rows_rc
cleaner_ready(libpq_cleaner *k, char *errbuf, size_t errlen)
{
	static const char *const must[] = {"target_session_attrs", "read-write", NULL, NULL};
	rows_rc rc;

	if (k->step == K_IDLE) {
		if (!conn_start(&k->c, k->conninfo, "pgoutbox cleanup", must, errbuf, errlen))
			return ROWS_FAIL;
		k->step = K_CONNECT;
	}
	if (k->step == K_CONNECT) {
		if ((rc = conn_advance(&k->c, errbuf, errlen)) != ROWS_OK)
			return rc;
		if (!send_keys(k, errbuf, errlen))
			return ROWS_FAIL;
		k->step = K_KEYS;
	}
	if (k->step == K_KEYS) {
		if ((rc = conn_collect(&k->c, errbuf, errlen)) != ROWS_OK)
			return rc;
		if (!conn_results_ok(&k->c, (int) k->ntables, "read the tables' primary keys", errbuf, errlen) ||
		    !take_keys(k, errbuf, errlen))
			return ROWS_FAIL;
		conn_clear(&k->c);
		k->step = K_READY;
	}
	return ROWS_OK;
}

static rows_rc
cleaner_pick(rows_cleaner *base, size_t t, size_t max, size_t *n, uint64_t *upto,
             char *errbuf, size_t errlen)
{
	libpq_cleaner *k = (libpq_cleaner *) base;
	rows_rc rc;

	if (t >= k->ntables) {
		snprintf(errbuf, errlen, "internal error: table %zu of %zu", t, k->ntables);
		return ROWS_FAIL;
	}
	if ((rc = cleaner_ready(k, errbuf, errlen)) != ROWS_OK)
		return rc;
	if (k->step == K_PICKED) {        /* an earlier pick is replaced */
		PQclear(k->picked);
		k->picked = NULL;
		k->step = K_READY;
	}
	if (k->step == K_READY) {
		sqlbuf b = {0};
		bool ok;

		/* One statement: the function runs after its snapshot was taken. */
		sql_add(&b, "SELECT pg_catalog.pg_current_wal_insert_lsn()::text, t.xmin::text");
		for (size_t j = 0; j < k->keys[t].ncols; j++)
			sql_add(&b, ", t.%s::text", k->keys[t].cols[j]);
		sql_add(&b, " FROM ");
		sql_qualified(&b, k->c.pg, k->nsp[t], k->rel[t]);
		sql_add(&b, " t LIMIT %zu", max);
		if (b.failed) {
			free(b.p);
			snprintf(errbuf, errlen, "out of memory");
			return ROWS_FAIL;
		}
		ok = conn_send(&k->c, b.p, QUERY_TIMEOUT_MS, errbuf, errlen);
		free(b.p);
		if (!ok)
			return ROWS_FAIL;
		k->table = t;
		k->step = K_PICK;
	}
	if ((rc = conn_collect(&k->c, errbuf, errlen)) != ROWS_OK)
		return rc;
	if (!conn_results_ok(&k->c, 1, "pick rows to delete", errbuf, errlen))
		return ROWS_FAIL;
	k->picked = k->c.res[0];
	k->c.res[0] = NULL;
	k->next = 0;
	conn_clear(&k->c);
	*n = (size_t) PQntuples(k->picked);
	*upto = 0;
	for (size_t i = 0; i < *n; i++) {
		uint64_t pos;
		if (!lsn_parse(PQgetvalue(k->picked, (int) i, 0), &pos)) {
			snprintf(errbuf, errlen, "pg_current_wal_insert_lsn() gave no LSN");
			return ROWS_FAIL;
		}
		if (pos > *upto)
			*upto = pos;
	}
	k->step = K_PICKED;
	return ROWS_OK;
}

static rows_rc
cleaner_remove(rows_cleaner *base, size_t max, uint64_t *deleted, size_t *left,
               char *errbuf, size_t errlen)
{
	libpq_cleaner *k = (libpq_cleaner *) base;
	rows_rc rc;

	if (k->step == K_PICKED) {
		const pkey *pk = &k->keys[k->table];
		int total = PQntuples(k->picked);
		int n = total - k->next < (int) max ? total - k->next : (int) max;
		sqlbuf b = {0};
		bool ok;

		/* Each row version by its primary key and its xmin. */
		sql_add(&b, "DELETE FROM ");
		sql_qualified(&b, k->c.pg, k->nsp[k->table], k->rel[k->table]);
		sql_add(&b, " t USING (VALUES ");
		for (int i = k->next; i < k->next + n; i++) {
			sql_add(&b, "%s(", i > k->next ? ", " : "");
			sql_literal(&b, k->c.pg, PQgetvalue(k->picked, i, 1));
			for (size_t j = 0; j < pk->ncols; j++) {
				sql_add(&b, ", ");
				sql_literal(&b, k->c.pg, PQgetvalue(k->picked, i, (int) j + 2));
			}
			sql_add(&b, ")");
		}
		sql_add(&b, ") AS v(x");
		for (size_t j = 0; j < pk->ncols; j++)
			sql_add(&b, ", k%zu", j);
		sql_add(&b, ") WHERE t.xmin = v.x::xid");
		for (size_t j = 0; j < pk->ncols; j++)
			sql_add(&b, " AND t.%s = v.k%zu::%s", pk->cols[j], j, pk->types[j]);
		k->sent = n;
		if (n == 0)
			sql_add(&b, " AND false");
		if (b.failed) {
			free(b.p);
			snprintf(errbuf, errlen, "out of memory");
			return ROWS_FAIL;
		}
		ok = conn_send(&k->c, b.p, QUERY_TIMEOUT_MS, errbuf, errlen);
		free(b.p);
		if (!ok)
			return ROWS_FAIL;
		k->step = K_DELETE;
	}
	if (k->step != K_DELETE) {
		snprintf(errbuf, errlen, "internal error: delete without a pick");
		return ROWS_FAIL;
	}
	if ((rc = conn_collect(&k->c, errbuf, errlen)) != ROWS_OK)
		return rc;
	if (!conn_results_ok(&k->c, 1, "delete confirmed rows", errbuf, errlen))
		return ROWS_FAIL;
	*deleted = strtoull(PQcmdTuples(k->c.res[0]), NULL, 10);
	conn_clear(&k->c);
	k->next += k->sent;
	k->sent = 0;
	*left = k->picked ? (size_t) (PQntuples(k->picked) - k->next) : 0;
	if (*left == 0) {
		PQclear(k->picked);
		k->picked = NULL;
		k->step = K_READY;
	} else {
		k->step = K_PICKED;
	}
	return ROWS_OK;
}

static int
cleaner_pollfds(rows_cleaner *base, struct pollfd *pfd, int max)
{
	return conn_pollfds(&((libpq_cleaner *) base)->c, pfd, max);
}

static int64_t
cleaner_deadline(const rows_cleaner *base)
{
	const libpq_cleaner *k = (const libpq_cleaner *) base;

	return k->c.pg != NULL && (k->c.busy || k->c.connecting) ? k->c.deadline : -1;
}

static const rows_cleaner_ops cleaner_ops = {
	.pick = cleaner_pick,
	.remove = cleaner_remove,
	.pollfds = cleaner_pollfds,
	.deadline = cleaner_deadline,
	.close = cleaner_close,
	.destroy = cleaner_destroy,
};

/* ---------------------------------------------------------------------------
 * --check
 * ------------------------------------------------------------------------- */

typedef struct rchecker {
	PGconn         *pg;
	const char     *secret;
	check_report_fn report;
	void           *ctx;
	int             fails;
} rchecker;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
rline(rchecker *c, check_status st, const char *name, const char *fmt, ...)
{
	char detail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	redact_secret(detail, sizeof(detail), c->secret);
	if (st == CHECK_FAIL)
		c->fails++;
	c->report(c->ctx, st, name, detail);
}

/* One row of text results, or NULL after reporting the failure under name. */
static PGresult *
rquery(rchecker *c, const char *name, const sqlbuf *b)
{
	PGresult *res;

	if (b->failed) {
		rline(c, CHECK_FAIL, name, "could not build the query: out of memory");
		return NULL;
	}
	res = PQexec(c->pg, b->p);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
		rline(c, CHECK_FAIL, name, "could not query the server: %s", PQresultErrorMessage(res));
		PQclear(res);
		return NULL;
	}
	return res;
}

/* Seconds as "3 d 4 h", "5 h 2 min", "12 min", "40 s". */
static void
span(double s, char *buf, size_t len)
{
	int64_t t = s > 0 ? (int64_t) s : 0;

	if (t >= 86400)
		snprintf(buf, len, "%" PRId64 " d %" PRId64 " h", t / 86400, t % 86400 / 3600);
	else if (t >= 3600)
		snprintf(buf, len, "%" PRId64 " h %" PRId64 " min", t / 3600, t % 3600 / 60);
	else if (t >= 60)
		snprintf(buf, len, "%" PRId64 " min", t / 60);
	else
		snprintf(buf, len, "%" PRId64 " s", t);
}

/*
 * The window in which a slot can be lost, in seconds (-1: unbounded or
 * unknown), and what limits it (for the message).
 */
static double
loss_window(rchecker *c, char *what, size_t len)
{
	sqlbuf b = {0};
	PGresult *res;
	double keep_mb, rate = -1, idle_s = 0, window = -1;
	int v = PQserverVersion(c->pg);

	sql_add(&b, "SELECT pg_catalog.current_setting('max_slot_wal_keep_size'), "
	        "(SELECT setting FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'), %s, %s",
	        v >= 140000 ? "(SELECT (wal_bytes / greatest(extract(epoch FROM now() - stats_reset), 1))::float8 "
	                      "FROM pg_catalog.pg_stat_wal)" : "NULL::float8",
	        v >= 180000 ? "(SELECT setting::float8 FROM pg_catalog.pg_settings WHERE name = "
	                      "'idle_replication_slot_timeout')" : "0::float8");
	res = rquery(c, "retention", &b);
	free(b.p);
	if (res == NULL)
		return -2;
	keep_mb = strtod(PQgetvalue(res, 0, 1), NULL);
	if (!PQgetisnull(res, 0, 2))
		rate = strtod(PQgetvalue(res, 0, 2), NULL);
	idle_s = strtod(PQgetvalue(res, 0, 3), NULL);      /* 18: seconds (the setting's unit is s) */
	what[0] = '\0';
	if (keep_mb >= 0 && rate > 0) {
		char sp[32];
		window = keep_mb * 1024 * 1024 / rate;
		span(window, sp, sizeof(sp));
		snprintf(what, len, "max_slot_wal_keep_size = %s lasts about %s at the average WAL rate "
		         "since the statistics were reset (%.1f MB/min)", PQgetvalue(res, 0, 0), sp,
		         rate * 60 / (1024 * 1024));
	} else if (keep_mb >= 0) {
		snprintf(what, len, "max_slot_wal_keep_size = %s (the WAL rate is not known on this "
		         "version: compare it with your WAL per day)", PQgetvalue(res, 0, 0));
	}
	if (idle_s > 0 && (window < 0 || idle_s < window)) {
		char sp[32];
		span(idle_s, sp, sizeof(sp));
		window = idle_s;
		snprintf(what, len, "idle_replication_slot_timeout = %s", sp);
	}
	if (what[0] == '\0')
		snprintf(what, len, "max_slot_wal_keep_size = -1: the slot is never invalidated for its "
		         "WAL (the disk fills instead); a failover on PostgreSQL 16 or older still loses it");
	PQclear(res);
	return window;
}

static void
check_one(rchecker *c, const rows_check_spec *sp, bool cleanup, double window, const char *limit)
{
	sqlbuf b = {0};
	PGresult *res;
	char *lit = NULL;
	sqlbuf q = {0};

	sql_qualified(&q, c->pg, sp->nsp, sp->rel);
	if (!q.failed)
		lit = PQescapeLiteral(c->pg, q.p, q.len);
	if (lit == NULL) {
		free(q.p);
		rline(c, CHECK_FAIL, "table size", "could not quote the table name");
		return;
	}
	res = PQexecParams(c->pg, "SELECT pg_catalog.to_regclass($1) IS NOT NULL", 1, NULL,
	                   (const char *const[]) {q.p}, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		PQclear(res);
		goto out;
	}
	PQclear(res);
	sql_add(&b, "SELECT pg_catalog.pg_size_pretty(sum(pg_catalog.pg_total_relation_size(pt.relid))), "
	        "sum(greatest(k.reltuples, 0))::int8, bool_and(k.reltuples < 0 AND k.relkind <> 'p'), "
	        "pg_catalog.has_table_privilege(%s::regclass, 'DELETE'), EXISTS (SELECT 1 FROM "
	        "pg_catalog.pg_index i WHERE i.indrelid = %s::regclass AND i.indisprimary) "
	        "FROM (SELECT %s::regclass AS relid UNION SELECT relid FROM pg_catalog.pg_partition_tree(%s::regclass)) pt "
	        "JOIN pg_catalog.pg_class k ON k.oid = pt.relid", lit, lit, lit, lit);
	if ((res = rquery(c, "table size", &b)) != NULL) {
		rline(c, CHECK_OK, "table size", "%s: %s, %s rows%s", q.p,
		      PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
		      strcmp(PQgetvalue(res, 0, 2), "t") == 0 ? " (not analyzed yet: an estimate of 0)" :
		      " (estimated)");
		if (cleanup) {
			if (strcmp(PQgetvalue(res, 0, 4), "t") != 0)
				rline(c, CHECK_FAIL, "cleanup", "table %s has no primary key: cleanup = delete "
				      "deletes rows by primary key", q.p);
			else if (strcmp(PQgetvalue(res, 0, 3), "t") != 0)
				rline(c, CHECK_FAIL, "cleanup", "the role may not DELETE from %s: GRANT DELETE ON "
				      "%s TO the role (cleanup = delete)", q.p, q.p);
			else
				rline(c, CHECK_OK, "cleanup", "cleanup = delete may delete from %s by its primary "
				      "key", q.p);
		}
		PQclear(res);
	}
	free(b.p);
	b = (sqlbuf) {0};
	if (sp->time_column == NULL || sp->time_column[0] == '\0') {
		rline(c, CHECK_OK, "retention", "%s%s; set backfill_since_column to a creation-time "
		      "column to compare the oldest row of %s with it",
		      cleanup ? "cleanup = delete keeps every row until its event is in Kafka, so a lost "
		                "slot's events are still in the table; " : "", limit, q.p);
		goto out;
	}
	sql_add(&b, "SELECT min(t.");
	sql_ident(&b, c->pg, sp->time_column);
	sql_add(&b, ")::text, extract(epoch FROM now() - min(t.");
	sql_ident(&b, c->pg, sp->time_column);
	sql_add(&b, "))::float8 FROM %s t", q.p);
	if ((res = rquery(c, "oldest row", &b)) != NULL) {
		char age[32];
		double a = PQgetisnull(res, 0, 1) ? 0 : strtod(PQgetvalue(res, 0, 1), NULL);

		span(a, age, sizeof(age));
		if (PQgetisnull(res, 0, 0))
			rline(c, CHECK_OK, "oldest row", "table %s is empty", q.p);
		else
			rline(c, CHECK_OK, "oldest row", "%s = %s (%s ago)", sp->time_column,
			      PQgetvalue(res, 0, 0), age);
		if (cleanup)
			rline(c, CHECK_OK, "retention", "cleanup = delete keeps every row until its event is in "
			      "Kafka: a lost slot's events are still in the table (%s)", limit);
		else if (PQgetisnull(res, 0, 0))
			rline(c, CHECK_WARN, "retention", "no rows kept: a lost slot's events could not be "
			      "backfilled (%s)", limit);
		else if (window >= 0 && a < window)
			rline(c, CHECK_WARN, "retention", "rows are kept about %s, less than the window in which "
			      "a slot can fall behind and be lost: %s; keep rows longer to backfill after a lost "
			      "slot", age, limit);
		else
			rline(c, CHECK_OK, "retention", "rows are kept at least %s; %s", age, limit);
		PQclear(res);
	}
out:
	free(b.p);
	free(q.p);
	PQfreemem(lit);
}

int
rows_check(const char *conninfo, const rows_check_spec *specs, size_t nspecs, bool cleanup,
           check_report_fn report, void *ctx)
{
	const char *keys[] = {"connect_timeout", "fallback_application_name", "dbname", NULL};
	const char *vals[] = {"10", "pgoutbox check", conninfo, NULL};
	char *secret = conninfo_secret(conninfo);
	rchecker c = {.secret = secret, .report = report, .ctx = ctx};
	char limit[512];
	double window;

	/* What the connection or a missing table fails is failed already by
	 * source_check(): nothing more is said of it here. */
	c.pg = PQconnectdbParams(keys, vals, 1);
	if (c.pg == NULL || PQstatus(c.pg) != CONNECTION_OK)
		goto out;
	window = loss_window(&c, limit, sizeof(limit));
	if (window < -1)
		goto out;
	for (size_t i = 0; i < nspecs; i++)
		check_one(&c, &specs[i], cleanup, window, limit);
out:
	PQfinish(c.pg);
	if (secret != NULL) {
		memset(secret, 0, strlen(secret));
		free(secret);
	}
	return c.fails;
}
