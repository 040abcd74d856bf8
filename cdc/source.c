/*
 * source.c — the replication source on libpq.  See source.h.
 *
 * The shape follows pg_recvlogical: a replication=database connection,
 * START_REPLICATION ... LOGICAL, non-blocking PQgetCopyData(), and standby
 * status updates whose flush position is only what the caller says is
 * durable (for pgoutbox: acknowledged by Kafka).  Unlike pg_recvlogical it
 * never blocks: connecting is PQconnectStartParams/PQconnectPoll, and every
 * query before START_REPLICATION goes out with PQsendQuery and is collected
 * as its bytes arrive, so that the one loop keeps serving Kafka reports,
 * metrics and the watchdog while a server is slow to answer.
 *
 * Before streaming, the session is checked: IDENTIFY_SYSTEM (system
 * identifier, timeline, WAL position), the slot (exists, pgoutput, this
 * database, not invalidated, not in use, its confirmed position), and the
 * catalog facts the pipeline judges (publication, outbox tables and their
 * partitions).  The same facts are read again, later, on a side connection
 * (an ordinary one, to the same host), without disturbing the stream.
 */
#define _GNU_SOURCE    /* POLLRDHUP */
#include "source.h"
#include "log.h"
#include "lsn.h"

#include <libpq-fe.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgoutput.h"

#define DEFAULT_CONNECT_TIMEOUT_S 10
#define QUERY_TIMEOUT_MS          30000   /* any query before streaming, and verification */

typedef enum phase {
	PH_IDLE = 0,
	PH_CONNECTING,      /* PQconnectPoll */
	PH_IDENTIFY,        /* IDENTIFY_SYSTEM sent */
	PH_SLOT,            /* the slot's row and settings asked for */
	PH_VERIFY,          /* the catalog facts asked for */
	PH_START,           /* START_REPLICATION sent, waiting for CopyBoth */
	PH_STREAMING,
} phase;

/* An ordinary connection to the stream's host, for verifications. */
typedef enum side_phase {
	SIDE_IDLE = 0,
	SIDE_CONNECTING,
	SIDE_READY,
	SIDE_QUERY,
} side_phase;

typedef struct source_libpq {
	source   base;          /* first: a source_libpq is a source */
	char    *conninfo;
	char    *slot;
	char    *publication;
	char    *secret;        /* password from the conninfo, for redaction */
	int      proto_version; /* asked for; 0: negotiate */
	char    *messages_prefix; /* NULL: logical messages are not events */
	size_t   ntables;
	char   **nsp, **rel;

	/* The parsed conninfo: every keyword the user set, hosts split. */
	char   **keys, **vals;  /* NULL-terminated; host/hostaddr/port slots replaced per attempt */
	size_t   nkeys;
	int      key_host, key_hostaddr, key_port;   /* their index in keys; -1: not set */
	char   **hosts, **hostaddrs, **ports;        /* one element per host (ports: or one for all) */
	size_t   nhosts, nhostnames, nhostaddrs, nports;
	size_t   next_host;     /* host of the next attempt */
	size_t   cur_host;      /* host of the current one */
	size_t   round_tried;   /* hosts tried since the last session or round began */
	int      connect_timeout_ms;

	PGconn  *conn;
	phase    ph;
	PostgresPollingStatusType poll;
	int64_t  deadline;      /* of the current connect attempt or query */
	bool     want_write;
	int      server_version;
	char     host[256];
	char     database[256];
	source_session sess;
	source_catalog cat;     /* verified before START_REPLICATION */

	PGconn  *side;
	side_phase side_ph;
	PostgresPollingStatusType side_poll;
	int64_t  side_deadline;
	bool     side_want_write;
	uint32_t side_asked;
	PGresult *side_res[2];
	int      side_nres;
	source_catalog side_cat;
	char     lost[512];     /* why events() closed the stream, for the next read() */
} source_libpq;

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copy a libpq message into errbuf with the password masked. */
static void
set_error(const source_libpq *s, char *errbuf, size_t errlen, const char *prefix, const char *msg)
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

static void free_strv(char **v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Split a comma-separated libpq list ("a,b,c"); an empty string is one empty element. */
static char **
split_list(const char *s, size_t *n)
{
	size_t count = 1, i = 0;
	char **v;

	for (const char *p = s; *p; p++)
		count += *p == ',';
	if ((v = calloc(count, sizeof(*v))) == NULL)
		return NULL;
	for (const char *p = s;; i++) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t) (end - p) : strlen(p);

		if ((v[i] = strndup(p, len)) == NULL) {
			free_strv(v, count);
			return NULL;
		}
		if (end == NULL)
			break;
		p = end + 1;
	}
	*n = count;
	return v;
}

/*
 * Keep the user's settings as keyword/value arrays, with defaults of ours
 * before them (the user's win) and replication=database after (ours wins),
 * and the host list split: each connection attempt goes to one host, so
 * that a host that does not answer costs one connect_timeout, after which
 * the next host is tried (libpq's non-blocking connect has no timeout of
 * its own and would wait for the kernel's TCP timeout on each).
 */
static bool
parse_conninfo(source_libpq *s, char *errbuf, size_t errlen)
{
	static const char *const ours_before[][2] = {
		{"keepalives", "1"}, {"keepalives_idle", "10"}, {"keepalives_interval", "5"},
		{"keepalives_count", "3"}, {"fallback_application_name", "pgoutbox"},
	};
	PQconninfoOption *opts;
	char *perr = NULL;
	size_t nopts = 0, k = 0;
	const char *host = NULL, *hostaddr = NULL, *port = NULL;
	size_t nh = 0, na = 0, np = 0;

	opts = PQconninfoParse(s->conninfo, &perr);
	if (opts == NULL) {
		s->secret = guess_password(s->conninfo);
		set_error(s, errbuf, errlen, "invalid connection string: ", perr ? perr : "out of memory");
		PQfreemem(perr);
		return false;
	}
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		nopts++;
	s->nkeys = nopts + sizeof(ours_before) / sizeof(ours_before[0]) + 4;
	s->keys = calloc(s->nkeys + 1, sizeof(char *));
	s->vals = calloc(s->nkeys + 1, sizeof(char *));
	if (s->keys == NULL || s->vals == NULL)
		goto nomem;
	for (size_t i = 0; i < sizeof(ours_before) / sizeof(ours_before[0]); i++) {
		s->keys[k] = strdup(ours_before[i][0]);
		s->vals[k] = strdup(ours_before[i][1]);
		if (!s->keys[k++] || !s->vals[k - 1])
			goto nomem;
	}
	s->key_host = s->key_hostaddr = s->key_port = -1;
	s->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_S * 1000;
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
		if (o->val == NULL || strcmp(o->keyword, "replication") == 0)
			continue;
		if (strcmp(o->keyword, "password") == 0 && s->secret == NULL &&
		    (s->secret = strdup(o->val)) == NULL)
			goto nomem;
		if (strcmp(o->keyword, "host") == 0) {
			host = o->val;
			s->key_host = (int) k;
		} else if (strcmp(o->keyword, "hostaddr") == 0) {
			hostaddr = o->val;
			s->key_hostaddr = (int) k;
		} else if (strcmp(o->keyword, "port") == 0) {
			port = o->val;
			s->key_port = (int) k;
		} else if (strcmp(o->keyword, "connect_timeout") == 0) {
			int t = atoi(o->val);
			/* libpq treats values below 2 s as 2 s; 0 means none: ours is 10 s */
			if (t > 0)
				s->connect_timeout_ms = (t < 2 ? 2 : t) * 1000;
		}
		s->keys[k] = strdup(o->keyword);
		s->vals[k] = strdup(o->val);
		if (!s->keys[k++] || !s->vals[k - 1])
			goto nomem;
	}
	s->keys[k] = strdup("replication");
	s->vals[k] = strdup("database");
	if (!s->keys[k++] || !s->vals[k - 1])
		goto nomem;
	s->nkeys = k;
	/* One attempt per host: host, hostaddr and port lists run in parallel. */
	if ((host && (s->hosts = split_list(host, &nh)) == NULL) ||
	    (hostaddr && (s->hostaddrs = split_list(hostaddr, &na)) == NULL) ||
	    (port && (s->ports = split_list(port, &np)) == NULL))
		goto nomem;
	s->nhostnames = nh;
	s->nhostaddrs = na;
	s->nports = np;
	s->nhosts = nh > na ? nh : na;
	if (s->nhosts == 0)
		s->nhosts = 1;
	if ((nh > 1 && na > 1 && nh != na) || (np > 1 && np != s->nhosts)) {
		snprintf(errbuf, errlen, "invalid connection string: %zu host names, %zu host addresses "
		         "and %zu ports do not match", nh, na, np);
		PQconninfoFree(opts);
		return false;
	}
	PQconninfoFree(opts);
	if (s->secret == NULL && (s->secret = strdup("")) == NULL)
		goto nomem_noopts;
	return true;

nomem:
	PQconninfoFree(opts);
nomem_noopts:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

static const source_ops libpq_ops;

source *
source_libpq_new(const source_config *cfg, char *errbuf, size_t errlen)
{
	source_libpq *s = calloc(1, sizeof(*s));

	if (s == NULL)
		goto nomem;
	s->base.ops = &libpq_ops;
	s->proto_version = cfg->proto_version;
	if (cfg->messages_prefix != NULL && cfg->messages_prefix[0] != '\0' &&
	    (s->messages_prefix = strdup(cfg->messages_prefix)) == NULL)
		goto nomem;
	s->conninfo = strdup(cfg->conninfo);
	s->slot = strdup(cfg->slot);
	s->publication = strdup(cfg->publication);
	if (!s->conninfo || !s->slot || !s->publication)
		goto nomem;
	if (cfg->ntables > SOURCE_MAX_TABLES) {
		snprintf(errbuf, errlen, "too many outbox tables (%zu, at most %d)", cfg->ntables,
		         SOURCE_MAX_TABLES);
		source_free(&s->base);
		return NULL;
	}
	s->ntables = cfg->ntables;
	s->nsp = calloc(cfg->ntables + 1, sizeof(char *));
	s->rel = calloc(cfg->ntables + 1, sizeof(char *));
	if (!s->nsp || !s->rel)
		goto nomem;
	for (size_t i = 0; i < cfg->ntables; i++)
		if ((s->nsp[i] = strdup(cfg->table_nsp[i])) == NULL ||
		    (s->rel[i] = strdup(cfg->table_rel[i])) == NULL)
			goto nomem;
	if (!parse_conninfo(s, errbuf, errlen)) {
		source_free(&s->base);
		return NULL;
	}
	return &s->base;

nomem:
	snprintf(errbuf, errlen, "out of memory");
	source_free(s ? &s->base : NULL);
	return NULL;
}

static void
side_close(source_libpq *s)
{
	for (int i = 0; i < s->side_nres; i++)
		PQclear(s->side_res[i]);
	s->side_nres = 0;
	if (s->side != NULL)
		PQfinish(s->side);
	s->side = NULL;
	s->side_ph = SIDE_IDLE;
	s->side_want_write = false;
}

static void
libpq_close(source *src)
{
	source_libpq *s = (source_libpq *) src;

	if (s->conn != NULL)
		PQfinish(s->conn);
	s->conn = NULL;
	s->ph = PH_IDLE;
	s->want_write = false;
	side_close(s);
}

static void
libpq_destroy(source *src)
{
	source_libpq *s = (source_libpq *) src;

	libpq_close(src);
	free(s->conninfo);
	free(s->slot);
	free(s->publication);
	free(s->messages_prefix);
	if (s->secret) {
		memset(s->secret, 0, strlen(s->secret));
		free(s->secret);
	}
	free_strv(s->nsp, s->ntables);
	free_strv(s->rel, s->ntables);
	if (s->keys != NULL) {
		for (size_t i = 0; i < s->nkeys; i++) {
			if (s->vals[i] != NULL && s->keys[i] != NULL && strcmp(s->keys[i], "password") == 0)
				memset(s->vals[i], 0, strlen(s->vals[i]));
			free(s->keys[i]);
			free(s->vals[i]);
		}
	}
	free(s->keys);
	free(s->vals);
	free_strv(s->hosts, s->nhostnames);
	free_strv(s->hostaddrs, s->nhostaddrs);
	free_strv(s->ports, s->nports);
	free(s->cat.parts);
	free(s->side_cat.parts);
	free(s);
}

const char *
source_libpq_secret(const source *src)
{
	return ((const source_libpq *) src)->secret;
}

/*
 * Classify a server error.  Missing objects, invalidated slots and missing
 * privileges cannot be fixed by retrying; a busy slot is retried soon;
 * everything else (recovery, startup, too many connections, shutdown,
 * network) is retried with back-off.
 */
static source_rc
classify(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

	if (state == NULL)
		return SOURCE_LOST;
	if (strcmp(state, "42704") == 0)     /* undefined_object */
		return SOURCE_FATAL;
	if (strcmp(state, "55000") == 0) {   /* object_not_in_prerequisite_state */
		/* "logical decoding cannot be used while in recovery", a synced
		 * slot on a standby: a switchover in progress, not the slot's fault */
		if (msg != NULL && (strstr(msg, "recovery") || strstr(msg, "synchroniz")))
			return SOURCE_LOST;
		return SOURCE_FATAL;
	}
	if (strcmp(state, "42501") == 0)     /* insufficient_privilege */
		return SOURCE_FATAL;
	if (strcmp(state, "55006") == 0)     /* object_in_use: slot active elsewhere */
		return SOURCE_BUSY;
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

/* wal_sender_timeout's text ("60s", "1min", "500ms", "0") in ms; 0: off or unknown. */
static int
parse_timeout_ms(const char *v)
{
	char *end;
	long n = strtol(v, &end, 10);

	if (end == v || n <= 0 || n >= INT32_MAX / 60000)
		return 0;
	if (strcmp(end, "ms") == 0 || *end == '\0')
		return (int) n;
	if (strcmp(end, "s") == 0)
		return (int) n * 1000;
	if (strcmp(end, "min") == 0)
		return (int) n * 60000;
	return 0;
}


/* Start connecting to the next host of the list. */
static source_rc
connect_start(source_libpq *s, char *errbuf, size_t errlen)
{
	size_t h = s->next_host % s->nhosts;

	s->cur_host = h;
	s->next_host = h + 1;
	s->round_tried++;
	if (s->key_host >= 0 && s->hosts != NULL) {
		free(s->vals[s->key_host]);
		s->vals[s->key_host] = strdup(s->hosts[s->nhostnames > 1 ? h : 0]);
	}
	if (s->key_hostaddr >= 0 && s->hostaddrs != NULL) {
		free(s->vals[s->key_hostaddr]);
		s->vals[s->key_hostaddr] = strdup(s->hostaddrs[s->nhostaddrs > 1 ? h : 0]);
	}
	if (s->key_port >= 0 && s->ports != NULL) {
		free(s->vals[s->key_port]);
		s->vals[s->key_port] = strdup(s->ports[s->nports > 1 ? h : 0]);
	}
	if ((s->key_host >= 0 && s->vals[s->key_host] == NULL) ||
	    (s->key_hostaddr >= 0 && s->vals[s->key_hostaddr] == NULL) ||
	    (s->key_port >= 0 && s->vals[s->key_port] == NULL)) {
		snprintf(errbuf, errlen, "could not connect to the server: out of memory");
		return SOURCE_LOST;
	}
	s->conn = PQconnectStartParams((const char *const *) s->keys, (const char *const *) s->vals, 0);
	if (s->conn == NULL) {
		snprintf(errbuf, errlen, "could not connect to the server: out of memory");
		return SOURCE_LOST;
	}
	if (PQstatus(s->conn) == CONNECTION_BAD) {
		set_error(s, errbuf, errlen, "could not connect to the server: ", PQerrorMessage(s->conn));
		libpq_close(&s->base);
		return SOURCE_LOST;
	}
	s->ph = PH_CONNECTING;
	s->poll = PGRES_POLLING_WRITING;
	s->deadline = mono_ms() + s->connect_timeout_ms;
	return SOURCE_AGAIN;
}

/* Send a query on the replication connection without blocking. */
static source_rc
send_query(source_libpq *s, const char *sql, phase next, char *errbuf, size_t errlen)
{
	int r;

	if (!PQsendQuery(s->conn, sql)) {
		set_error(s, errbuf, errlen, "could not send a query: ", PQerrorMessage(s->conn));
		return SOURCE_LOST;
	}
	r = PQflush(s->conn);
	if (r < 0) {
		set_error(s, errbuf, errlen, "could not send a query: ", PQerrorMessage(s->conn));
		return SOURCE_LOST;
	}
	s->want_write = r == 1;
	s->ph = next;
	s->deadline = mono_ms() + QUERY_TIMEOUT_MS;
	return SOURCE_AGAIN;
}

/*
 * Collect what has arrived of the query in flight on conn.  SOURCE_AGAIN
 * while results are still to come; SOURCE_OK when they are complete (or a
 * CopyBoth result arrived), with up to max results in res[] (the caller
 * clears them; later ones are dropped).
 */
static source_rc
collect(const source_libpq *s, PGconn *conn, bool *want_write, PGresult **res, int max, int *n,
        char *errbuf, size_t errlen)
{
	int r = PQflush(conn);

	if (r < 0 || !PQconsumeInput(conn)) {
		set_error(s, errbuf, errlen, "lost the connection to the server: ", PQerrorMessage(conn));
		return SOURCE_LOST;
	}
	*want_write = r == 1;
	while (!PQisBusy(conn)) {
		PGresult *one = PQgetResult(conn);

		if (one == NULL)
			return SOURCE_OK;
		if (*n < max)
			res[(*n)++] = one;
		else
			PQclear(one);
		if (PQresultStatus(one) == PGRES_COPY_BOTH)
			return SOURCE_OK;
	}
	return SOURCE_AGAIN;
}

/* The one result a query before streaming must give; NULL after filling errbuf. */
static PGresult *
one_result(source_libpq *s, PGresult **res, int n, ExecStatusType want, const char *what,
           source_rc *rc, char *errbuf, size_t errlen)
{
	for (int i = 1; i < n; i++)
		PQclear(res[i]);
	if (n == 0 || PQresultStatus(res[0]) != want) {
		*rc = n > 0 ? classify(res[0]) : SOURCE_LOST;
		snprintf(errbuf, errlen, "%s: ", what);
		set_error(s, errbuf + strlen(errbuf), errlen - strlen(errbuf), "",
		          n > 0 ? PQresultErrorMessage(res[0]) : PQerrorMessage(s->conn));
		if (n > 0)
			PQclear(res[0]);
		return NULL;
	}
	return res[0];
}

static bool
is_true(const PGresult *res, int row, int col)
{
	return strcmp(PQgetvalue(res, row, col), "t") == 0;
}

/* ---------------------------------------------------------------------------
 * The catalog facts (start and side verifications share the query)
 * ------------------------------------------------------------------------- */

/*
 * One statement, rows of four kinds: 'P' the publication, 'T' a configured
 * table, 'p' a partition of one, 'A' the relation asked about.  Columns:
 * kind, i (table index), oid, relkind, b1, b2, b3, name.
 * Returns a malloc'd string, NULL when out of memory or a name cannot be quoted.
 */
static char *
catalog_sql(const source_libpq *s, PGconn *conn, int server_version, uint32_t asked)
{
	size_t cap = 4096 + s->ntables * 600, len = 0;
	char *sql = malloc(cap), *pub = NULL;
	bool v15 = server_version >= 150000;
	int n;

#define ADD(...) do { \
	n = snprintf(sql + len, cap - len, __VA_ARGS__); \
	if (n < 0 || (size_t) n >= cap - len) goto fail; \
	len += (size_t) n; \
} while (0)

	if (sql == NULL)
		return NULL;
	if ((pub = PQescapeLiteral(conn, s->publication, strlen(s->publication))) == NULL)
		goto fail;
	ADD("WITH cfg(i, nsp, rel) AS (VALUES ");
	for (size_t i = 0; i < s->ntables; i++) {
		char *a = PQescapeLiteral(conn, s->nsp[i], strlen(s->nsp[i]));
		char *b = a ? PQescapeLiteral(conn, s->rel[i], strlen(s->rel[i])) : NULL;

		if (b != NULL) {
			n = snprintf(sql + len, cap - len, "%s(%zu, %s::text, %s::text)", i ? ", " : "", i, a, b);
			if (n < 0 || (size_t) n >= cap - len)
				b = NULL, PQfreemem(a), a = NULL;
			else
				len += (size_t) n;
		}
		PQfreemem(a);
		if (b == NULL)
			goto fail;
		PQfreemem(b);
	}
	ADD("), pub AS (SELECT oid, pubinsert, pubviaroot, puballtables FROM pg_catalog.pg_publication "
	    "WHERE pubname = %s), "
	    "tab AS (SELECT cfg.i, c.oid, c.relkind FROM cfg "
	    "LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = cfg.nsp "
	    "LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = cfg.rel), "
	    "anc AS (SELECT tab.i, tab.oid AS relid FROM tab WHERE tab.oid IS NOT NULL UNION "
	    "SELECT tab.i, a.relid FROM tab, pg_catalog.pg_partition_ancestors(tab.oid) a "
	    "WHERE tab.oid IS NOT NULL) ", pub);
	ADD("SELECT 'P'::text, NULL::int, NULL::oid, NULL::text, pub.pubinsert, pub.pubviaroot, "
	    "pub.puballtables, NULL::text FROM (SELECT 1) d LEFT JOIN pub ON true ");
	ADD("UNION ALL SELECT 'T', tab.i, tab.oid, tab.relkind::text, "
	    "coalesce((SELECT puballtables FROM pub), false) "
	    "OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r, pub, anc WHERE r.prpubid = pub.oid "
	    "AND anc.i = tab.i AND r.prrelid = anc.relid)");
	if (v15)
		ADD(" OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace pn, pub, anc, "
		    "pg_catalog.pg_class k WHERE pn.pnpubid = pub.oid AND anc.i = tab.i AND k.oid = anc.relid "
		    "AND pn.pnnspid = k.relnamespace), "
		    "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r, pub, anc WHERE r.prpubid = pub.oid "
		    "AND anc.i = tab.i AND r.prrelid = anc.relid AND r.prqual IS NOT NULL), "
		    "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r, pub, anc WHERE r.prpubid = pub.oid "
		    "AND anc.i = tab.i AND r.prrelid = anc.relid AND r.prattrs IS NOT NULL), ");
	else
		ADD(", false, false, ");
	ADD("NULL::text FROM tab ");
	ADD("UNION ALL SELECT 'p', tab.i, t.relid, k.relkind::text, NULL, NULL, NULL, "
	    "n.nspname || '.' || k.relname FROM tab, pg_catalog.pg_partition_tree(tab.oid) t, "
	    "pg_catalog.pg_class k, pg_catalog.pg_namespace n WHERE tab.relkind = 'p' AND t.level > 0 "
	    "AND k.oid = t.relid AND n.oid = k.relnamespace ");
	if (asked != 0)
		ADD("UNION ALL SELECT 'A', NULL, c.oid, c.relkind::text, NULL, NULL, NULL, "
		    "n.nspname || '.' || c.relname FROM pg_catalog.pg_class c, pg_catalog.pg_namespace n "
		    "WHERE c.oid = %u AND n.oid = c.relnamespace", asked);
#undef ADD
	PQfreemem(pub);
	return sql;

fail:
	PQfreemem(pub);
	free(sql);
	return NULL;
}

static uint32_t
oid_of(const char *s)
{
	return (uint32_t) strtoul(s, NULL, 10);
}

/* Fill *cat from the catalog query's result; false when out of memory or malformed. */
static bool
catalog_parse(const PGresult *res, size_t ntables, uint32_t asked, source_catalog *cat)
{
	size_t nparts = 0;

	free(cat->parts);
	memset(cat, 0, sizeof(*cat));
	cat->ntables = ntables;
	cat->asked_oid = asked;
	if (PQnfields(res) != 8)
		return false;
	for (int r = 0; r < PQntuples(res); r++)
		nparts += PQgetvalue(res, r, 0)[0] == 'p';
	if (nparts > 0 && (cat->parts = calloc(nparts, sizeof(*cat->parts))) == NULL)
		return false;
	for (int r = 0; r < PQntuples(res); r++) {
		const char *kind = PQgetvalue(res, r, 0);
		long i = PQgetisnull(res, r, 1) ? -1 : strtol(PQgetvalue(res, r, 1), NULL, 10);

		switch (kind[0]) {
		case 'P':
			cat->pub_exists = !PQgetisnull(res, r, 4);
			cat->pub_insert = is_true(res, r, 4);
			cat->pub_via_root = is_true(res, r, 5);
			cat->pub_all_tables = is_true(res, r, 6);
			break;
		case 'T':
			if (i < 0 || (size_t) i >= ntables)
				return false;
			cat->tables[i].exists = !PQgetisnull(res, r, 2);
			cat->tables[i].oid = oid_of(PQgetvalue(res, r, 2));
			cat->tables[i].relkind = PQgetvalue(res, r, 3)[0];
			cat->tables[i].in_pub = is_true(res, r, 4);
			cat->tables[i].row_filter = is_true(res, r, 5);
			cat->tables[i].column_list = is_true(res, r, 6);
			break;
		case 'p':
			if (i < 0 || (size_t) i >= ntables || cat->nparts >= nparts)
				return false;
			cat->parts[cat->nparts].oid = oid_of(PQgetvalue(res, r, 2));
			cat->parts[cat->nparts].table = (int) i;
			snprintf(cat->parts[cat->nparts].name, sizeof(cat->parts[0].name), "%s",
			         PQgetvalue(res, r, 7));
			cat->nparts++;
			break;
		case 'A':
			cat->asked_exists = true;
			snprintf(cat->asked_name, sizeof(cat->asked_name), "%s", PQgetvalue(res, r, 7));
			break;
		default:
			return false;
		}
	}
	return true;
}

/* ---------------------------------------------------------------------------
 * Starting a stream
 * ------------------------------------------------------------------------- */

static source_rc
ask_slot(source_libpq *s, char *errbuf, size_t errlen)
{
	char sql[1024];
	char *lit = PQescapeLiteral(s->conn, s->slot, strlen(s->slot));
	source_rc rc;

	if (lit == NULL) {
		set_error(s, errbuf, errlen, "could not quote the slot name: ", PQerrorMessage(s->conn));
		return SOURCE_LOST;
	}
	/* 16+ says when a standby's slot conflicted, 17+ why a slot was invalidated. */
	/* One row also without the slot: a standby that cannot decode is told apart. */
	snprintf(sql, sizeof(sql),
	         "SELECT plugin, slot_type, database = current_database(), coalesce(wal_status, ''), "
	         "coalesce(confirmed_flush_lsn::text, ''), active, coalesce(active_pid::text, ''), "
	         "pg_catalog.current_setting('wal_sender_timeout'), pg_catalog.pg_is_in_recovery(), %s, "
	         "slot_name IS NOT NULL FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_replication_slots "
	         "ON slot_name = %s",
	         s->server_version >= 170000 ? "coalesce(invalidation_reason, '')" :
	         s->server_version >= 160000 ? "CASE WHEN conflicting THEN 'conflict' ELSE '' END" : "''",
	         lit);
	PQfreemem(lit);
	rc = send_query(s, sql, PH_SLOT, errbuf, errlen);
	return rc;
}

static source_rc
check_slot_row(source_libpq *s, const PGresult *res, char *errbuf, size_t errlen)
{
	const char *wal, *why;

	if (PQntuples(res) != 1 || PQnfields(res) != 11) {
		snprintf(errbuf, errlen, "could not read the replication slot: unexpected result");
		return SOURCE_LOST;
	}
	s->sess.in_recovery = is_true(res, 0, 8);
	if (s->sess.in_recovery && s->server_version < 160000) {
		snprintf(errbuf, errlen, "%s is a standby in recovery and PostgreSQL %d cannot decode "
		         "there (16+ can); waiting for a primary (set target_session_attrs=read-write to "
		         "skip standbys)", s->host, s->server_version / 10000);
		return SOURCE_LOST;
	}
	if (!is_true(res, 0, 10)) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" does not exist on %s; create it with scripts/setup-slot.sh "
		         "(if it existed before, it was dropped, or this server was promoted from a standby "
		         "that did not have it: events committed since its last confirmed position are not "
		         "in a new slot and must be backfilled)", s->slot, s->host);
		return SOURCE_FATAL;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "logical") != 0 ||
	    strcmp(PQgetvalue(res, 0, 0), "pgoutput") != 0) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" is not a logical slot of plugin pgoutput (plugin \"%s\")",
		         s->slot, PQgetvalue(res, 0, 0));
		return SOURCE_FATAL;
	}
	if (!is_true(res, 0, 2)) {
		snprintf(errbuf, errlen,
		         "replication slot \"%s\" belongs to another database than the one in the connection string",
		         s->slot);
		return SOURCE_FATAL;
	}
	wal = PQgetvalue(res, 0, 3);
	why = PQgetvalue(res, 0, 9);
	if (strcmp(wal, "lost") == 0 || why[0] != '\0') {
		snprintf(errbuf, errlen, "replication slot \"%s\" has been invalidated (%s%swal_status = %s); "
		         "it was confirmed up to %s", s->slot, why, why[0] ? ", " : "", wal[0] ? wal : "?",
		         PQgetvalue(res, 0, 4)[0] ? PQgetvalue(res, 0, 4) : "an unknown position");
		return SOURCE_FATAL;
	}
	if (is_true(res, 0, 5)) {
		snprintf(errbuf, errlen, "replication slot \"%s\" is active for the process with PID %s",
		         s->slot, PQgetvalue(res, 0, 6));
		return SOURCE_BUSY;
	}
	if (!lsn_parse(PQgetvalue(res, 0, 4), &s->sess.slot_confirmed))
		s->sess.slot_confirmed = 0;
	s->sess.sender_timeout_ms = parse_timeout_ms(PQgetvalue(res, 0, 7));
	return SOURCE_OK;
}

static source_rc
ask_start(source_libpq *s, char *errbuf, size_t errlen)
{
	char cmd[2048];
	char *ident, *pubident = NULL, *publit = NULL;
	source_rc rc;

	if (s->messages_prefix != NULL && s->server_version < 140000) {
		snprintf(errbuf, errlen, "messages_prefix = \"%s\" needs PostgreSQL 14 or later: "
		         "PostgreSQL %d does not send logical decoding messages to pgoutput, so none "
		         "would ever become an event", s->messages_prefix, s->server_version / 10000);
		return SOURCE_FATAL;
	}
	ident = PQescapeIdentifier(s->conn, s->slot, strlen(s->slot));
	if (ident)
		pubident = PQescapeIdentifier(s->conn, s->publication, strlen(s->publication));
	if (pubident)
		publit = PQescapeLiteral(s->conn, pubident, strlen(pubident));
	if (!ident || !pubident || !publit) {
		set_error(s, errbuf, errlen, "could not quote a name: ", PQerrorMessage(s->conn));
		PQfreemem(ident);
		PQfreemem(pubident);
		return SOURCE_LOST;
	}
	s->sess.proto_version = s->proto_version ? s->proto_version : negotiate_proto(s->server_version);
	/*
	 * 0/0: the walsender starts at the slot's confirmed_flush_lsn.
	 * Streaming of in-progress transactions and two-phase decoding are never
	 * asked for: both would send changes before they are committed.
	 * Logical decoding messages (PostgreSQL 14+) are asked for so that the
	 * stream shows them; they are ignored unless configured.
	 */
	snprintf(cmd, sizeof(cmd),
	         "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '%d', publication_names %s%s)",
	         ident, s->sess.proto_version, publit,
	         s->sess.proto_version >= PGO_PROTO_V2 ? ", messages 'true'" : "");
	PQfreemem(ident);
	PQfreemem(pubident);
	PQfreemem(publit);
	rc = send_query(s, cmd, PH_START, errbuf, errlen);
	return rc;
}

/* Advance the current phase by what has arrived. */
static source_rc
advance(source_libpq *s, char *errbuf, size_t errlen)
{
	PGresult *res[2] = {NULL, NULL}, *r;
	int n = 0;
	source_rc rc = SOURCE_LOST;
	char *sql;

	if (s->ph == PH_CONNECTING) {
		s->poll = PQconnectPoll(s->conn);
		if (s->poll == PGRES_POLLING_FAILED) {
			set_error(s, errbuf, errlen, "could not connect to the server: ", PQerrorMessage(s->conn));
			return SOURCE_LOST;
		}
		if (s->poll != PGRES_POLLING_OK)
			return SOURCE_AGAIN;
		if (PQsetnonblocking(s->conn, 1) != 0) {
			set_error(s, errbuf, errlen, "could not set non-blocking mode: ", PQerrorMessage(s->conn));
			return SOURCE_LOST;
		}
		s->server_version = PQserverVersion(s->conn);
		snprintf(s->host, sizeof(s->host), "%s:%s", PQhost(s->conn) ? PQhost(s->conn) : "",
		         PQport(s->conn) ? PQport(s->conn) : "");
		snprintf(s->database, sizeof(s->database), "%s", PQdb(s->conn) ? PQdb(s->conn) : "");
		return send_query(s, "IDENTIFY_SYSTEM", PH_IDENTIFY, errbuf, errlen);
	}
	if (collect(s, s->conn, &s->want_write, res, 2, &n, errbuf, errlen) == SOURCE_AGAIN)
		return SOURCE_AGAIN;
	if (n == 0 && PQstatus(s->conn) == CONNECTION_BAD) {
		set_error(s, errbuf, errlen, "lost the connection to the server: ", PQerrorMessage(s->conn));
		return SOURCE_LOST;
	}
	switch (s->ph) {
	case PH_IDENTIFY:
		if ((r = one_result(s, res, n, PGRES_TUPLES_OK, "IDENTIFY_SYSTEM failed", &rc, errbuf,
		                    errlen)) == NULL)
			return rc;
		if (PQntuples(r) != 1 || PQnfields(r) < 3 ||
		    !lsn_parse(PQgetvalue(r, 0, 2), &s->sess.wal_end)) {
			snprintf(errbuf, errlen, "IDENTIFY_SYSTEM returned an unexpected result");
			PQclear(r);
			return SOURCE_LOST;
		}
		s->sess.system_id = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
		s->sess.timeline = (uint32_t) strtoul(PQgetvalue(r, 0, 1), NULL, 10);
		PQclear(r);
		return ask_slot(s, errbuf, errlen);
	case PH_SLOT:
		if ((r = one_result(s, res, n, PGRES_TUPLES_OK, "could not read the replication slot",
		                    &rc, errbuf, errlen)) == NULL)
			return rc;
		rc = check_slot_row(s, r, errbuf, errlen);
		PQclear(r);
		if (rc != SOURCE_OK)
			return rc;
		if ((sql = catalog_sql(s, s->conn, s->server_version, 0)) == NULL) {
			set_error(s, errbuf, errlen, "could not build the catalog query: ",
			          PQerrorMessage(s->conn));
			return SOURCE_LOST;
		}
		rc = send_query(s, sql, PH_VERIFY, errbuf, errlen);
		free(sql);
		return rc;
	case PH_VERIFY:
		if ((r = one_result(s, res, n, PGRES_TUPLES_OK, "could not read the catalog", &rc, errbuf,
		                    errlen)) == NULL)
			return rc;
		if (!catalog_parse(r, s->ntables, 0, &s->cat)) {
			snprintf(errbuf, errlen, "could not read the catalog: unexpected result or out of memory");
			PQclear(r);
			return SOURCE_LOST;
		}
		PQclear(r);
		/* IDENTIFY_SYSTEM's position was read before these facts. */
		s->cat.valid_from = s->sess.wal_end;
		return ask_start(s, errbuf, errlen);
	case PH_START:
		if ((r = one_result(s, res, n, PGRES_COPY_BOTH, "could not start replication", &rc, errbuf,
		                    errlen)) == NULL)
			return rc;
		PQclear(r);
		s->ph = PH_STREAMING;
		s->sess.server_version = s->server_version;
		s->sess.database = s->database;
		s->sess.host = s->host;
		s->sess.catalog = &s->cat;
		return SOURCE_OK;
	default:
		for (int i = 0; i < n; i++)
			PQclear(res[i]);
		snprintf(errbuf, errlen, "internal error: source in phase %d", (int) s->ph);
		return SOURCE_LOST;
	}
}

static source_rc
libpq_start(source *src, source_session *session, char *errbuf, size_t errlen)
{
	source_libpq *s = (source_libpq *) src;
	source_rc rc;

	if (s->ph == PH_STREAMING) {
		*session = s->sess;
		return SOURCE_OK;
	}
	if (s->ph == PH_IDLE) {
		memset(&s->sess, 0, sizeof(s->sess));
		if ((rc = connect_start(s, errbuf, errlen)) != SOURCE_AGAIN)
			return rc;
	}
	rc = advance(s, errbuf, errlen);
	if (rc == SOURCE_AGAIN && mono_ms() >= s->deadline) {
		if (s->ph == PH_CONNECTING)
			snprintf(errbuf, errlen, "could not connect to the server%s%s: no answer within %d s",
			         s->nhosts > 1 ? " " : "", s->nhosts > 1 ? "(one host of the list)" : "",
			         s->connect_timeout_ms / 1000);
		else
			snprintf(errbuf, errlen, "the server at %s did not answer within %d s while starting "
			         "replication", s->host, QUERY_TIMEOUT_MS / 1000);
		rc = SOURCE_LOST;
	}
	if (rc == SOURCE_OK) {
		*session = s->sess;
		/* Reconnect to the host that worked first. */
		s->next_host = s->cur_host;
		s->round_tried = 0;
	} else if (rc != SOURCE_AGAIN) {
		libpq_close(src);
	}
	return rc;
}

/* ---------------------------------------------------------------------------
 * Streaming
 * ------------------------------------------------------------------------- */

/* The COPY stream ended: fetch the server's reason. */
static source_rc
stream_ended(source_libpq *s, char *errbuf, size_t errlen)
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
	libpq_close(&s->base);
	return rc;
}

static source_rc
libpq_read(source *src, uint8_t **buf, size_t *len, char *errbuf, size_t errlen)
{
	source_libpq *s = (source_libpq *) src;
	char *data = NULL;
	int r;

	if (s->ph != PH_STREAMING) {
		snprintf(errbuf, errlen, "%s", s->lost[0] ? s->lost : "not streaming");
		s->lost[0] = '\0';
		return SOURCE_LOST;
	}
	r = PQgetCopyData(s->conn, &data, 1);
	if (r == 0) {
		if (PQconsumeInput(s->conn) == 0) {
			set_error(s, errbuf, errlen, "could not receive data: ", PQerrorMessage(s->conn));
			libpq_close(src);
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
	libpq_close(src);
	return SOURCE_LOST;
}

static void
libpq_release(source *src, uint8_t *buf)
{
	(void) src;
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

static source_rc
flush_output(source_libpq *s, char *errbuf, size_t errlen)
{
	int r = PQflush(s->conn);

	s->want_write = r == 1;
	if (r == 0)
		return SOURCE_OK;
	if (r == 1)
		return SOURCE_AGAIN;
	set_error(s, errbuf, errlen, "could not send data: ", PQerrorMessage(s->conn));
	libpq_close(&s->base);
	return SOURCE_LOST;
}

static source_rc
libpq_send_status(source *src, uint64_t written, uint64_t flushed, bool reply,
                  char *errbuf, size_t errlen)
{
	source_libpq *s = (source_libpq *) src;
	uint8_t msg[1 + 8 * 4 + 1];
	struct timespec now;
	int64_t pgnow;
	int r;

	if (s->ph != PH_STREAMING)
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
		libpq_close(src);
		return SOURCE_LOST;
	}
	return flush_output(s, errbuf, errlen);
}

/* Wait until the socket is ready or the deadline passes; false on timeout. */
static bool
wait_socket(source_libpq *s, int64_t deadline)
{
	struct pollfd p = {.fd = PQsocket(s->conn), .events = POLLIN};
	int64_t left = deadline - mono_ms();

	if (left <= 0)
		return false;
	if (s->want_write)
		p.events |= POLLOUT;
	return poll(&p, 1, (int) left) > 0 || left > 0;
}

static source_rc
libpq_finish(source *src, int timeout_ms, char *errbuf, size_t errlen)
{
	source_libpq *s = (source_libpq *) src;
	int64_t deadline = mono_ms() + timeout_ms;
	source_rc rc = SOURCE_OK;
	char *buf;
	int r;

	if (s->ph != PH_STREAMING) {
		libpq_close(src);
		return SOURCE_LOST;
	}
	if (PQputCopyEnd(s->conn, NULL) < 0) {
		set_error(s, errbuf, errlen, "could not end COPY: ", PQerrorMessage(s->conn));
		rc = SOURCE_LOST;
		goto out;
	}
	/* Data still in flight from the server is read and dropped until its
	 * CopyDone arrives (PQgetCopyData returns -1). */
	for (;;) {
		if (flush_output(s, errbuf, errlen) == SOURCE_LOST)
			return SOURCE_LOST;   /* closed by flush_output */
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
	libpq_close(src);
	return rc;
}

/* ---------------------------------------------------------------------------
 * Verification on the side connection
 * ------------------------------------------------------------------------- */

/*
 * Open the side connection to the host the stream comes from: the user's
 * settings with that one host, without replication (an ordinary backend,
 * so the queries never wait behind the stream).
 */
static source_rc
side_start(source_libpq *s, char *errbuf, size_t errlen)
{
	const char *host = PQhost(s->conn), *port = PQport(s->conn);
	const char **keys, **vals;
	size_t n = 0;
	bool have_host = false, have_port = false;

	keys = calloc(s->nkeys + 3, sizeof(*keys));
	vals = calloc(s->nkeys + 3, sizeof(*vals));
	if (keys == NULL || vals == NULL) {
		free(keys);
		free(vals);
		snprintf(errbuf, errlen, "out of memory");
		return SOURCE_LOST;
	}
	for (size_t i = 0; i < s->nkeys; i++) {
		const char *v = s->vals[i];

		if (strcmp(s->keys[i], "replication") == 0 || strcmp(s->keys[i], "hostaddr") == 0 ||
		    strcmp(s->keys[i], "target_session_attrs") == 0 ||
		    strcmp(s->keys[i], "load_balance_hosts") == 0)
			continue;
		if (strcmp(s->keys[i], "host") == 0) {
			v = host;
			have_host = true;
		} else if (strcmp(s->keys[i], "port") == 0) {
			v = port;
			have_port = true;
		} else if (strcmp(s->keys[i], "fallback_application_name") == 0) {
			v = "pgoutbox verify";
		}
		keys[n] = s->keys[i];
		vals[n++] = v;
	}
	if (!have_host && host != NULL) {
		keys[n] = "host";
		vals[n++] = host;
	}
	if (!have_port && port != NULL) {
		keys[n] = "port";
		vals[n++] = port;
	}
	s->side = PQconnectStartParams(keys, vals, 0);
	free(keys);
	free(vals);
	if (s->side == NULL || PQstatus(s->side) == CONNECTION_BAD) {
		set_error(s, errbuf, errlen, "could not open a connection for verification: ",
		          s->side ? PQerrorMessage(s->side) : "out of memory");
		side_close(s);
		return SOURCE_LOST;
	}
	s->side_ph = SIDE_CONNECTING;
	s->side_poll = PGRES_POLLING_WRITING;
	s->side_deadline = mono_ms() + s->connect_timeout_ms;
	return SOURCE_AGAIN;
}

static source_rc
side_send(source_libpq *s, uint32_t asked, char *errbuf, size_t errlen)
{
	/* The WAL position first, in a statement of its own, so that the
	 * catalog snapshot of the second is taken after it. */
	static const char lsn_sql[] =
		"SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
		"ELSE pg_catalog.pg_current_wal_lsn() END::text; ";
	char *cat = catalog_sql(s, s->side, PQserverVersion(s->side), asked);
	char *sql = cat ? malloc(strlen(lsn_sql) + strlen(cat) + 1) : NULL;
	int r;

	if (sql == NULL) {
		free(cat);
		snprintf(errbuf, errlen, "could not build the verification query: out of memory");
		return SOURCE_LOST;
	}
	strcpy(sql, lsn_sql);
	strcat(sql, cat);
	free(cat);
	r = PQsendQuery(s->side, sql);
	free(sql);
	if (!r || (r = PQflush(s->side)) < 0) {
		set_error(s, errbuf, errlen, "could not send the verification query: ",
		          PQerrorMessage(s->side));
		side_close(s);
		return SOURCE_LOST;
	}
	s->side_want_write = r == 1;
	s->side_ph = SIDE_QUERY;
	s->side_asked = asked;
	s->side_deadline = mono_ms() + QUERY_TIMEOUT_MS;
	return SOURCE_AGAIN;
}

static source_rc
libpq_verify(source *src, uint32_t asked, source_catalog *out, char *errbuf, size_t errlen)
{
	source_libpq *s = (source_libpq *) src;
	source_rc rc;

	if (s->ph != PH_STREAMING) {
		snprintf(errbuf, errlen, "not streaming");
		return SOURCE_LOST;
	}
	if (s->side_ph == SIDE_IDLE && (rc = side_start(s, errbuf, errlen)) != SOURCE_AGAIN)
		return rc;
	if (s->side_ph == SIDE_CONNECTING) {
		s->side_poll = PQconnectPoll(s->side);
		if (s->side_poll == PGRES_POLLING_FAILED) {
			set_error(s, errbuf, errlen, "could not open a connection for verification: ",
			          PQerrorMessage(s->side));
			side_close(s);
			return SOURCE_LOST;
		}
		if (s->side_poll != PGRES_POLLING_OK)
			goto again;
		if (PQsetnonblocking(s->side, 1) != 0) {
			set_error(s, errbuf, errlen, "could not set non-blocking mode: ", PQerrorMessage(s->side));
			side_close(s);
			return SOURCE_LOST;
		}
		s->side_ph = SIDE_READY;
	}
	if (s->side_ph == SIDE_READY)
		return side_send(s, asked, errbuf, errlen);
	/* SIDE_QUERY */
	rc = collect(s, s->side, &s->side_want_write, s->side_res, 2, &s->side_nres, errbuf, errlen);
	if (rc == SOURCE_LOST) {
		side_close(s);
		return SOURCE_LOST;
	}
	if (rc == SOURCE_AGAIN)
		goto again;
	rc = SOURCE_OK;
	if (s->side_nres != 2 || PQresultStatus(s->side_res[0]) != PGRES_TUPLES_OK ||
	    PQresultStatus(s->side_res[1]) != PGRES_TUPLES_OK) {
		PGresult *bad = NULL;
		for (int i = 0; i < s->side_nres && bad == NULL; i++)
			if (PQresultStatus(s->side_res[i]) != PGRES_TUPLES_OK)
				bad = s->side_res[i];
		set_error(s, errbuf, errlen, "verification query failed: ",
		          bad ? PQresultErrorMessage(bad) : "unexpected results");
		rc = SOURCE_LOST;
	} else if (PQntuples(s->side_res[0]) != 1 ||
	           !catalog_parse(s->side_res[1], s->ntables, s->side_asked, &s->side_cat) ||
	           !lsn_parse(PQgetvalue(s->side_res[0], 0, 0), &s->side_cat.valid_from)) {
		snprintf(errbuf, errlen, "verification query gave an unexpected result (or out of memory)");
		rc = SOURCE_LOST;
	}
	if (rc == SOURCE_OK)
		*out = s->side_cat;
	for (int i = 0; i < s->side_nres; i++)
		PQclear(s->side_res[i]);
	s->side_nres = 0;
	if (rc == SOURCE_OK)
		s->side_ph = SIDE_READY;
	else
		side_close(s);
	return rc;

again:
	if (mono_ms() >= s->side_deadline) {
		snprintf(errbuf, errlen, "the verification connection to %s did not answer within %d s",
		         s->host, (s->side_ph == SIDE_CONNECTING ? s->connect_timeout_ms : QUERY_TIMEOUT_MS) / 1000);
		side_close(s);
		return SOURCE_LOST;
	}
	return SOURCE_AGAIN;
}

/* ---------------------------------------------------------------------------
 * Polling
 * ------------------------------------------------------------------------- */

static short
conn_events(PostgresPollingStatusType poll_st, bool connecting, bool want_write)
{
	if (connecting)
		return poll_st == PGRES_POLLING_WRITING ? POLLOUT : POLLIN;
	return (short) (POLLIN | (want_write ? POLLOUT : 0));
}

static int
libpq_pollfds(source *src, struct pollfd *pfd, int max)
{
	source_libpq *s = (source_libpq *) src;
	int n = 0;

	if (s->conn != NULL && n < max && PQsocket(s->conn) >= 0)
		pfd[n++] = (struct pollfd) {.fd = PQsocket(s->conn),
		                            .events = conn_events(s->poll, s->ph == PH_CONNECTING, s->want_write)};
	if (s->side != NULL && s->side_ph != SIDE_READY && n < max && PQsocket(s->side) >= 0)
		pfd[n++] = (struct pollfd) {.fd = PQsocket(s->side),
		                            .events = conn_events(s->side_poll, s->side_ph == SIDE_CONNECTING,
		                                                  s->side_want_write)};
	return n;
}

static void
libpq_events(source *src, const struct pollfd *pfd, int n)
{
	source_libpq *s = (source_libpq *) src;
	char err[512];

	for (int i = 0; i < n; i++) {
		if (s->ph != PH_STREAMING || pfd[i].fd != PQsocket(s->conn))
			continue;
		if (pfd[i].revents & POLLOUT && flush_output(s, err, sizeof(err)) == SOURCE_LOST) {
			snprintf(s->lost, sizeof(s->lost), "%s", err);
			return;
		}
		/*
		 * An error or hang-up while the pipeline does not read (Kafka's
		 * queue is full): find out now whether the connection is still
		 * alive, or the loop would wake for it again and again.  What the
		 * server sent before closing lands in libpq's buffer, bounded by
		 * the socket's; it is sent again after the reconnect.
		 */
#ifdef POLLRDHUP
		if ((pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL | POLLRDHUP)) && !(pfd[i].events & POLLIN)) {
#else
		if ((pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL)) && !(pfd[i].events & POLLIN)) {
#endif
			if (PQconsumeInput(s->conn) == 0 || PQstatus(s->conn) == CONNECTION_BAD) {
				set_error(s, s->lost, sizeof(s->lost), "lost the replication connection: ",
				          PQerrorMessage(s->conn));
				libpq_close(src);
			}
		}
	}
}

static int64_t
libpq_deadline(const source *src)
{
	const source_libpq *s = (const source_libpq *) src;
	int64_t d = -1;

	if (s->conn != NULL && s->ph != PH_STREAMING)
		d = s->deadline;
	if (s->side != NULL && (s->side_ph == SIDE_CONNECTING || s->side_ph == SIDE_QUERY) &&
	    (d < 0 || s->side_deadline < d))
		d = s->side_deadline;
	return d;
}

static bool
libpq_streaming(const source *src)
{
	return ((const source_libpq *) src)->ph == PH_STREAMING;
}

static bool
libpq_next_host(source *src)
{
	source_libpq *s = (source_libpq *) src;

	if (s->round_tried < s->nhosts)
		return true;
	s->round_tried = 0;
	return false;
}

static const source_ops libpq_ops = {
	.start = libpq_start,
	.read = libpq_read,
	.release = libpq_release,
	.send_status = libpq_send_status,
	.finish = libpq_finish,
	.close = libpq_close,
	.verify = libpq_verify,
	.pollfds = libpq_pollfds,
	.events = libpq_events,
	.deadline = libpq_deadline,
	.streaming = libpq_streaming,
	.next_host = libpq_next_host,
	.destroy = libpq_destroy,
};
/* --check ---------------------------------------------------------------- */

/* Run a catalog query on the (blocking) connection; NULL on failure. */
static PGresult *
query(source_libpq *s, const char *sql, char *errbuf, size_t errlen)
{
	PGresult *res = PQexec(s->conn, sql);

	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		set_error(s, errbuf, errlen, "could not query the server: ", PQerrorMessage(s->conn));
		PQclear(res);
		return NULL;
	}
	return res;
}

/* Open a replication=database connection, blocking up to connect_timeout per host. */
static source_rc
connect_blocking(source_libpq *s, char *errbuf, size_t errlen)
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

	libpq_close(&s->base);
	s->conn = PQconnectdbParams(keys, vals, 1);
	if (s->conn == NULL) {
		snprintf(errbuf, errlen, "could not connect to the server: out of memory");
		return SOURCE_LOST;
	}
	if (PQstatus(s->conn) != CONNECTION_OK) {
		set_error(s, errbuf, errlen, "could not connect to the server: ", PQerrorMessage(s->conn));
		libpq_close(&s->base);
		return SOURCE_LOST;
	}
	return SOURCE_OK;
}

typedef struct checker {
	source_libpq   *s;
	const source_check_spec *specs;
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


static void
check_slot(checker *c, const char *slotlit)
{
	const char *slot = c->s->slot;
	PGresult *res = check_query(c, "slot",
		"SELECT coalesce(plugin, ''), slot_type, database = current_database(), "
		"coalesce(database::text, ''), active, coalesce(active_pid::text, ''), "
		"coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, ''), %s "
		"FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
		PQserverVersion(c->s->conn) >= 170000 ? "synced AND pg_catalog.pg_is_in_recovery()" : "false",
		slotlit);
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
	if (is_true(res, 0, 8))
		check_line(c, CHECK_OK, "slot in use", "a synced copy: only this standby's slot sync "
		           "worker uses it%s", is_true(res, 0, 4) ? " (now)" : "");
	else if (is_true(res, 0, 4))
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

/*
 * The longest outage of pgoutbox (or of Kafka) that is still plausible: a
 * night or a weekend day without anyone to fix it.  A setting that would
 * invalidate the slot sooner is a warning.
 */
#define PLAUSIBLE_OUTAGE_S (24 * 3600)
#define WAL_SAMPLE_MS      1000    /* how long --check watches the WAL position */
#define MB                 1048576.0  /* PostgreSQL's MB (max_slot_wal_keep_size's unit) */

/* "45 seconds", "12 minutes", "3.5 hours", "2.0 days" */
static void
format_duration(char *buf, size_t len, double s)
{
	if (s < 90)
		snprintf(buf, len, "%.0f seconds", s);
	else if (s < 90 * 60)
		snprintf(buf, len, "%.0f minutes", s / 60);
	else if (s < 36 * 3600)
		snprintf(buf, len, "%.1f hours", s / 3600);
	else
		snprintf(buf, len, "%.1f days", s / 86400);
}

/* One text value of a single-row query (owned by res); NULL after a failure reported as name. */
static PGresult *
check_row(checker *c, const char *name, const char *sql)
{
	PGresult *res = check_query(c, name, "%s", sql);

	if (res != NULL && PQntuples(res) != 1) {
		check_line(c, CHECK_FAIL, name, "unexpected answer to a catalog query");
		PQclear(res);
		return NULL;
	}
	return res;
}

/*
 * A server in recovery: PostgreSQL 16+ decodes there (from a slot made on
 * the standby), if the primary keeps the rows the slot needs
 * (hot_standby_feedback through a physical slot).
 */
static void
check_standby(checker *c, int v)
{
	PGresult *res;

	if (v < 160000) {
		check_line(c, CHECK_FAIL, "standby", "the server is a standby in recovery and PostgreSQL %d "
		           "cannot decode there (16+ can): point the connection at the primary (with a host "
		           "list, add target_session_attrs=read-write)", v / 10000);
		return;
	}
	res = check_row(c, "standby", "SELECT pg_catalog.current_setting('hot_standby_feedback'), "
	                "pg_catalog.current_setting('primary_slot_name')");
	if (res == NULL)
		return;
	if (strcmp(PQgetvalue(res, 0, 0), "on") != 0)
		check_line(c, CHECK_WARN, "standby", "the server is a standby and hot_standby_feedback is "
		           "off: the primary may remove catalog rows the slot still needs, and the standby "
		           "then invalidates the slot (a conflict); set hot_standby_feedback = on");
	else if (PQgetvalue(res, 0, 1)[0] == '\0')
		check_line(c, CHECK_WARN, "standby", "the server is a standby with hot_standby_feedback = "
		           "on but no primary_slot_name: while it is disconnected the primary forgets its "
		           "feedback and may remove rows the slot needs; give it a physical slot");
	else
		check_line(c, CHECK_OK, "standby", "the server is a standby (decoding there needs "
		           "PostgreSQL 16+); hot_standby_feedback = on through the primary's slot \"%s\"",
		           PQgetvalue(res, 0, 1));
	PQclear(res);
}

/*
 * Failover (17+).  On the primary: is the slot a failover slot, does
 * synchronized_standby_slots hold logical walsenders back for the standbys,
 * are those standbys connected.  Whether a standby has the slot synced is
 * visible only there: on a standby, its copy's state.
 */
static void
check_failover(checker *c, const char *slotlit, bool in_recovery)
{
	const char *slot = c->s->slot;
	PGresult *res, *sb;
	int nphys;

	res = check_query(c, "slot failover",
		"SELECT failover, synced, temporary, coalesce(confirmed_flush_lsn::text, ''), "
		"pg_catalog.current_setting('synchronized_standby_slots'), "
		"(SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' "
		"AND active) FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", slotlit);
	if (res == NULL)
		return;
	if (PQntuples(res) != 1)
		goto out;    /* check_slot said so */
	if (in_recovery) {
		if (is_true(res, 0, 1) && !is_true(res, 0, 2))
			check_line(c, CHECK_OK, "slot sync", "this standby has a synced copy of the primary's "
			           "failover slot \"%s\", confirmed up to %s: after a promotion pgoutbox goes on "
			           "from there", slot, PQgetvalue(res, 0, 3));
		else if (is_true(res, 0, 1))
			check_line(c, CHECK_WARN, "slot sync", "this standby's copy of slot \"%s\" is still "
			           "temporary: a promotion now would drop it; it becomes usable once the "
			           "primary's slot was confirmed after the copy was made (pgoutbox streaming "
			           "from the primary does that)", slot);
		goto out;
	}
	nphys = atoi(PQgetvalue(res, 0, 5));
	if (!is_true(res, 0, 0)) {
		if (nphys > 0)
			check_line(c, CHECK_WARN, "slot failover", "replication slot \"%s\" is not a failover "
			           "slot, but %d standby(s) stream from this server: a promoted standby would "
			           "not have it; make it one (scripts/setup-slot.sh --failover)", slot, nphys);
		else
			check_line(c, CHECK_OK, "slot failover", "replication slot \"%s\" is not a failover "
			           "slot (no standby streams from this server)", slot);
		goto out;
	}
	if (PQgetvalue(res, 0, 4)[0] == '\0') {
		check_line(c, CHECK_WARN, "slot failover", "replication slot \"%s\" is a failover slot, but "
		           "synchronized_standby_slots is empty: pgoutbox may publish transactions a standby "
		           "does not have yet, which a failover to it then loses (ghost events); name the "
		           "standbys' physical slots there", slot);
		goto out;
	}
	check_line(c, CHECK_OK, "slot failover", "replication slot \"%s\" is a failover slot; "
	           "synchronized_standby_slots = '%s' holds pgoutbox back until those standbys have "
	           "the WAL", slot, PQgetvalue(res, 0, 4));
	sb = check_query(c, "slot sync",
		"SELECT btrim(n.name), coalesce(s.slot_type, ''), coalesce(s.active, false) FROM "
		"unnest(string_to_array(pg_catalog.current_setting('synchronized_standby_slots'), ',')) "
		"WITH ORDINALITY n(name, i) LEFT JOIN pg_catalog.pg_replication_slots s "
		"ON s.slot_name = btrim(n.name) ORDER BY n.i");
	if (sb == NULL)
		goto out;
	for (int i = 0; i < PQntuples(sb); i++) {
		const char *name = PQgetvalue(sb, i, 0), *type = PQgetvalue(sb, i, 1);

		if (type[0] == '\0')
			check_line(c, CHECK_WARN, "slot sync", "synchronized_standby_slots names slot \"%s\", "
			           "which does not exist: pgoutbox's walsender waits for it and streams "
			           "nothing", name);
		else if (strcmp(type, "physical") != 0)
			check_line(c, CHECK_WARN, "slot sync", "synchronized_standby_slots names slot \"%s\", "
			           "a %s slot, not a standby's", name, type);
		else if (!is_true(sb, i, 2))
			check_line(c, CHECK_WARN, "slot sync", "no standby is connected to slot \"%s\": "
			           "pgoutbox's walsender waits until one is and streams nothing meanwhile",
			           name);
		else
			check_line(c, CHECK_OK, "slot sync", "a standby is connected to slot \"%s\" (whether "
			           "it has synced \"%s\" shows only there: --check against the standby)",
			           name, slot);
	}
	PQclear(sb);
out:
	PQclear(res);
}

/*
 * Settings that invalidate the slot while pgoutbox is away:
 * max_slot_wal_keep_size (13+) once the slot holds that much WAL (pgoutbox
 * down or Kafka not acknowledging), idle_replication_slot_timeout (18+)
 * once nobody streamed from it that long.  Each is judged against a
 * plausible outage.
 */
static void
check_retention(checker *c, const char *slotlit, int v, bool in_recovery)
{
	char dur[64], sql[512];
	PGresult *res, *a = NULL, *b = NULL, *avg = NULL;
	int64_t t0, t1;

	res = check_query(c, "slot wal keep size",
		"SELECT pg_catalog.current_setting('max_slot_wal_keep_size'), "
		"(SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'), "
		"coalesce(safe_wal_size::text, ''), %s, %s, "
		"(SELECT setting FROM pg_catalog.pg_settings WHERE name = 'checkpoint_timeout')::bigint, %s "
		"FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
		v >= 180000 ? "pg_catalog.current_setting('idle_replication_slot_timeout')" : "''",
		v >= 180000 ? "(SELECT setting::bigint FROM pg_catalog.pg_settings "
		              "WHERE name = 'idle_replication_slot_timeout')" : "0",
		v >= 170000 ? "synced" : "false", slotlit);
	if (res == NULL)
		return;
	if (PQntuples(res) != 1)
		goto out;    /* check_slot said so */

	if (v >= 180000 && !is_true(res, 0, 6)) {
		long long idle = atoll(PQgetvalue(res, 0, 4));
		char cp[64];

		format_duration(dur, sizeof(dur), (double) idle);
		format_duration(cp, sizeof(cp), (double) atoll(PQgetvalue(res, 0, 5)));
		if (idle <= 0)
			check_line(c, CHECK_OK, "slot idle timeout", "idle_replication_slot_timeout = 0: "
			           "the slot is never invalidated for being idle");
		else
			check_line(c, idle < PLAUSIBLE_OUTAGE_S ? CHECK_WARN : CHECK_OK, "slot idle timeout",
			           "idle_replication_slot_timeout = %s: once pgoutbox has not been connected "
			           "for %s, the next checkpoint (at most checkpoint_timeout = %s later) "
			           "invalidates the slot%s", PQgetvalue(res, 0, 3), dur, cp,
			           idle < PLAUSIBLE_OUTAGE_S ? " and the events since must be backfilled" : "");
	}

	if (atoll(PQgetvalue(res, 0, 1)) >= 0 && PQgetvalue(res, 0, 2)[0] != '\0') {
		/* The WAL rate, over a short sample of the server's WAL position. */
		double left = (double) atoll(PQgetvalue(res, 0, 2)), mb_min, avg_mb_min = 0;
		const char *rate_what = "the current WAL rate";

		snprintf(sql, sizeof(sql), "SELECT %s::text",
		         in_recovery ? "coalesce(pg_catalog.pg_last_wal_receive_lsn(), "
		                       "pg_catalog.pg_last_wal_replay_lsn())"
		                     : "pg_catalog.pg_current_wal_lsn()");
		t0 = mono_ms();
		a = check_row(c, "slot wal keep size", sql);
		if (a == NULL)
			goto out;
		PQclear(check_query(c, "slot wal keep size", "SELECT pg_catalog.pg_sleep(%d / 1000.0)",
		                    WAL_SAMPLE_MS));
		b = check_row(c, "slot wal keep size", sql);
		t1 = mono_ms();
		if (b == NULL)
			goto out;
		{
			uint64_t l0 = 0, l1 = 0;
			double secs = (double) (t1 - t0) / 1000.0;

			(void) lsn_parse(PQgetvalue(a, 0, 0), &l0);
			(void) lsn_parse(PQgetvalue(b, 0, 0), &l1);
			mb_min = l1 > l0 && secs > 0 ? (double) (l1 - l0) / secs * 60.0 / MB : 0.0;
		}
		/* A quiet second says little: the long-term average (pg_stat_wal,
		 * 14+), when higher, is the rate to plan with. */
		if (v >= 140000 && !in_recovery) {
			PQclear(avg);
			avg = check_row(c, "slot wal keep size", "SELECT coalesce((SELECT wal_bytes / "
			                "greatest(extract(epoch FROM now() - stats_reset), 1) FROM "
			                "pg_catalog.pg_stat_wal)::float8, 0)");
			if (avg == NULL)
				goto out;
			avg_mb_min = strtod(PQgetvalue(avg, 0, 0), NULL) * 60.0 / MB;
		}
		if (avg_mb_min > mb_min) {
			mb_min = avg_mb_min;
			rate_what = "the average WAL rate since the statistics were reset";
		}
		if (left <= 0)
			check_line(c, CHECK_WARN, "slot wal keep size", "max_slot_wal_keep_size = %s: the slot "
			           "already holds that much WAL; the next checkpoint invalidates it unless "
			           "pgoutbox catches up first", PQgetvalue(res, 0, 0));
		else if (mb_min < 0.001)
			check_line(c, CHECK_OK, "slot wal keep size", "max_slot_wal_keep_size = %s: %.0f MB of "
			           "WAL left before a checkpoint invalidates the slot; no WAL was written during "
			           "the %d s sample, so how long that lasts depends on the load",
			           PQgetvalue(res, 0, 0), left / MB, WAL_SAMPLE_MS / 1000);
		else {
			double secs = left / MB / mb_min * 60.0;

			format_duration(dur, sizeof(dur), secs);
			check_line(c, secs < PLAUSIBLE_OUTAGE_S ? CHECK_WARN : CHECK_OK, "slot wal keep size",
			           "max_slot_wal_keep_size = %s: at %s of %.1f MB/min the slot survives about "
			           "%s of pgoutbox being down or Kafka not acknowledging (%.0f MB left)%s",
			           PQgetvalue(res, 0, 0), rate_what, mb_min, dur, left / MB,
			           secs < PLAUSIBLE_OUTAGE_S ? ", then a checkpoint invalidates it and the "
			           "events since must be backfilled" : "");
		}
	}
out:
	PQclear(a);
	PQclear(b);
	PQclear(avg);
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
check_table(checker *c, const source_check_spec *spec, const source_table_state *ts,
            const source_catalog *cat)
{
	char oid[16], missing[1024] = "", found[1024] = "";
	PGresult *res, *cols = NULL;
	size_t mlen = 0, flen = 0;

	if (!ts->exists) {
		check_line(c, CHECK_FAIL, "table", "table \"%s\" does not exist; create it (see "
		           "scripts/setup-slot.sh --create-table) or set table", spec->table);
		return;
	}
	snprintf(oid, sizeof(oid), "%u", ts->oid);
	check_line(c, CHECK_OK, "table", "table \"%s\" exists%s", spec->table,
	           ts->relkind == 'p' ? " (partitioned)" : "");
	res = check_query(c, "table privilege",
		"SELECT has_table_privilege(%s::oid, 'SELECT')", oid);
	if (res == NULL)
		return;
	if (is_true(res, 0, 0))
		check_line(c, CHECK_OK, "table privilege", "the role may SELECT from \"%s\"", spec->table);
	else
		check_line(c, CHECK_FAIL, "table privilege", "the role may not SELECT from \"%s\" "
		           "(the walsender needs it for the initial relation data): GRANT SELECT ON %s "
		           "TO the role", spec->table, spec->table);

	if (cat->pub_exists) {
		/* The daemon's own facts (source.c: catalog_sql), read from the
		 * catalogs rather than pg_publication_tables, which a role without
		 * rights on every published schema cannot read. */
		if (!ts->in_pub)
			check_line(c, CHECK_FAIL, "publication table", "publication \"%s\" does not "
			           "contain table \"%s\": ALTER PUBLICATION %s ADD TABLE %s",
			           c->s->publication, spec->table, c->s->publication, spec->table);
		else
			check_line(c, CHECK_OK, "publication table", "publication \"%s\" contains \"%s\"",
			           c->s->publication, spec->table);
		if (ts->row_filter)
			check_line(c, CHECK_WARN, "publication row filter", "publication \"%s\" publishes "
			           "only some rows of \"%s\" (WHERE): rows it filters out never become events",
			           c->s->publication, spec->table);
		if (ts->relkind == 'p') {
			size_t nparts = 0;
			for (size_t i = 0; i < cat->nparts; i++)
				nparts += cat->parts[i].table == (int) (spec - c->specs);
			if (cat->pub_via_root)
				check_line(c, CHECK_OK, "partitions", "%zu partition(s); publication \"%s\" "
				           "publishes them as \"%s\" (publish_via_partition_root)", nparts,
				           c->s->publication, spec->table);
			else
				check_line(c, CHECK_WARN, "partitions", "%zu partition(s) stream under their own "
				           "names (publication \"%s\" has publish_via_partition_root = false); "
				           "pgoutbox maps them to \"%s\" by OID, but ALTER PUBLICATION %s SET "
				           "(publish_via_partition_root = true) is simpler for every consumer",
				           nparts, c->s->publication, spec->table, c->s->publication);
		}
	}
	PQclear(res);
	res = NULL;

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
source_check(source *src, const source_check_spec *specs, size_t nspecs,
             check_report_fn report, void *ctx)
{
	source_libpq *s = (source_libpq *) src;
	checker c = {.s = s, .specs = specs, .report = report, .ctx = ctx, .fails = 0};
	char err[1024];
	char *slotlit = NULL, *publit = NULL, *sql;
	PGresult *res;
	source_catalog cat;
	int v;

	memset(&cat, 0, sizeof(cat));

	if (connect_blocking(s, err, sizeof(err)) != SOURCE_OK) {
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
	if ((res = check_row(&c, "standby", "SELECT pg_catalog.pg_is_in_recovery()")) != NULL) {
		bool in_recovery = is_true(res, 0, 0);

		PQclear(res);
		if (in_recovery)
			check_standby(&c, v);
		if (v >= 170000)
			check_failover(&c, slotlit, in_recovery);
		check_retention(&c, slotlit, v, in_recovery);
	}
	(void) check_publication(&c, publit);
	if (s->messages_prefix != NULL && v < 140000)
		check_line(&c, CHECK_FAIL, "messages", "messages_prefix = \"%s\" needs PostgreSQL 14 or "
		           "later: PostgreSQL %d does not send logical decoding messages to pgoutput",
		           s->messages_prefix, v / 10000);
	else if (s->messages_prefix != NULL)
		check_line(&c, CHECK_OK, "messages", "transactional logical decoding messages with "
		           "prefix \"%s\" become events", s->messages_prefix);
	if (nspecs != s->ntables) {
		check_line(&c, CHECK_FAIL, "table", "internal error: %zu tables to check, %zu configured",
		           nspecs, s->ntables);
		goto out;
	}
	if ((sql = catalog_sql(s, s->conn, v, 0)) == NULL) {
		check_line(&c, CHECK_FAIL, "table", "could not build the catalog query: out of memory");
		goto out;
	}
	res = query(s, sql, err, sizeof(err));
	free(sql);
	if (res == NULL) {
		check_line(&c, CHECK_FAIL, "table", "%s", err);
		goto out;
	}
	if (!catalog_parse(res, s->ntables, 0, &cat)) {
		check_line(&c, CHECK_FAIL, "table", "the catalog query gave an unexpected result");
		PQclear(res);
		goto out;
	}
	PQclear(res);
	for (size_t i = 0; i < nspecs; i++)
		check_table(&c, &specs[i], &cat.tables[i], &cat);
out:
	free(cat.parts);
	PQfreemem(slotlit);
	PQfreemem(publit);
	libpq_close(&s->base);
	return c.fails;
}
