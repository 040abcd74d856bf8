/*
 * source.h — where a pipeline's bytes come from: a logical replication
 * stream, and the catalog facts that say whether it is the right one.
 *
 * The interface is a small table of operations so that the pipeline can be
 * driven by the real thing (source_libpq_new(), the only code that touches
 * libpq) or, in its unit test, by a replay of captured pgoutput bytes.
 *
 * Nothing blocks except finish(), which runs only at exit: connecting is a
 * state machine advanced by start() whenever the loop wakes, and the
 * catalog verification runs on a side connection, also without blocking.
 */
#ifndef PGOUTBOX_SOURCE_H
#define PGOUTBOX_SOURCE_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "check.h"

typedef struct source source;

typedef enum source_rc {
	SOURCE_OK = 0,
	SOURCE_AGAIN,       /* in progress: nothing to read now, not connected yet, output pending */
	SOURCE_LOST,        /* connection failed or broke, or the server is not ready: retry later */
	SOURCE_BUSY,        /* the slot is in use by another process: retry soon */
	SOURCE_FATAL,       /* cannot continue (slot missing or invalidated, no privilege, ...) */
} source_rc;

/* Limits of what the catalog verification reports. */
#define SOURCE_MAX_TABLES      64     /* = OUTBOX_MAX_TABLES */
#define SOURCE_NAME_MAX        160    /* "schema.relation", truncated */

/* One configured outbox table as the catalog has it now. */
typedef struct source_table_state {
	bool     exists;
	uint32_t oid;
	char     relkind;      /* 'r' table, 'p' partitioned table, ... */
	bool     in_pub;       /* published: directly, by schema, all tables, or via an ancestor */
	bool     row_filter;   /* the publication filters its rows (WHERE, 15+) */
	bool     column_list;  /* the publication publishes only some columns (15+) */
} source_table_state;

/* A partition (at any depth) of a configured table. */
typedef struct source_partition {
	uint32_t oid;
	int      table;        /* index of the configured table it belongs to */
	char     name[SOURCE_NAME_MAX];
} source_partition;

/*
 * The facts a verification found.  valid_from is a WAL position read before
 * the catalog was: whatever changed the catalog and committed at or below
 * it is visible in these facts.
 */
typedef struct source_catalog {
	uint64_t           valid_from;
	bool               pub_exists;
	bool               pub_insert;
	bool               pub_via_root;
	bool               pub_all_tables;
	size_t             ntables;
	source_table_state tables[SOURCE_MAX_TABLES];
	source_partition  *parts;        /* owned by the source; valid until the next verification */
	size_t             nparts;
	/* the relation asked about (0: none) */
	uint32_t           asked_oid;
	bool               asked_exists;
	char               asked_name[SOURCE_NAME_MAX];
} source_catalog;

/* What the server says when a stream starts. */
typedef struct source_session {
	uint64_t    system_id;         /* IDENTIFY_SYSTEM */
	uint32_t    timeline;
	uint64_t    wal_end;           /* the server's WAL position when the session began */
	uint64_t    slot_confirmed;    /* the slot's confirmed_flush_lsn: where the stream starts */
	int         proto_version;     /* pgoutput protocol of this stream */
	int         server_version;    /* e.g. 150008 */
	int         sender_timeout_ms; /* wal_sender_timeout, 0: off or unknown */
	bool        in_recovery;       /* decoding on a standby (16+) */
	const char *database;
	const char *host;              /* where the stream comes from (for the log) */
	const source_catalog *catalog; /* verified before START_REPLICATION */
} source_session;

typedef struct source_ops {
	/*
	 * Connect (or go on connecting) and start streaming from the slot's
	 * confirmed position.  SOURCE_AGAIN while in progress; SOURCE_OK once
	 * streaming, with *session filled (valid until close).
	 */
	source_rc (*start)(source *s, source_session *session, char *errbuf, size_t errlen);
	/* Next CopyData message, or SOURCE_AGAIN; on SOURCE_OK release *buf with release(). */
	source_rc (*read)(source *s, uint8_t **buf, size_t *len, char *errbuf, size_t errlen);
	void      (*release)(source *s, uint8_t *buf);
	/* Queue a standby status update: write/flush positions. */
	source_rc (*send_status)(source *s, uint64_t written, uint64_t flushed, bool reply,
	                         char *errbuf, size_t errlen);
	/*
	 * End streaming cleanly (CopyDone, wait up to timeout_ms for the
	 * server's, which comes after our last status update was processed),
	 * then close.  Blocks: only at exit.
	 */
	source_rc (*finish)(source *s, int timeout_ms, char *errbuf, size_t errlen);
	void      (*close)(source *s);
	/*
	 * Begin or continue a catalog verification on the side (asked_oid: a
	 * relation seen in the stream that is not known yet, 0: none).
	 * SOURCE_AGAIN while it runs; SOURCE_OK with *cat filled; SOURCE_LOST
	 * when it could not run (errbuf says why; try again later).
	 */
	source_rc (*verify)(source *s, uint32_t asked_oid, source_catalog *cat,
	                    char *errbuf, size_t errlen);
	/* Add the sockets to watch (and the events wanted) to pfd; returns how many. */
	int       (*pollfds)(source *s, struct pollfd *pfd, int max);
	/* What poll() said of them; never blocks.  May close a broken connection. */
	void      (*events)(source *s, const struct pollfd *pfd, int n);
	/* The earliest time (ms, monotonic) a timer of the source runs out; -1: none. */
	int64_t   (*deadline)(const source *s);
	bool      (*streaming)(const source *s);
	/*
	 * After start() failed (SOURCE_LOST): true when the conninfo lists a
	 * host this round of attempts has not tried yet, which the caller may
	 * try at once (one host being down, or a standby refusing
	 * target_session_attrs=read-write, is no reason to wait before asking
	 * the next); false once every host was tried, which begins a new round
	 * (back off, then start over).  NULL: one host.
	 */
	bool      (*next_host)(source *s);
	void      (*destroy)(source *s);
} source_ops;

struct source {
	const source_ops *ops;
};

typedef struct source_config {
	const char *conninfo;      /* user's conninfo or URI; never logged */
	const char *slot;
	const char *publication;
	int         proto_version; /* 0: the highest the server speaks */
	const char *messages_prefix; /* logical messages become events (NULL or "": no); needs 14+ */
	size_t      ntables;       /* the configured outbox tables, for verification */
	const char *const *table_nsp;
	const char *const *table_rel;
} source_config;

/* The libpq source.  NULL when out of memory or conninfo cannot be parsed (errbuf). */
source *source_libpq_new(const source_config *cfg, char *errbuf, size_t errlen);
/* The password in the libpq source's conninfo (or ""), for redacting messages. */
const char *source_libpq_secret(const source *s);

static inline void source_free(source *s) { if (s != NULL) s->ops->destroy(s); }

/* What --check compares an outbox table with. */
typedef struct source_check_spec {
	const char        *table;      /* as configured, for messages */
	const char        *nsp, *rel;  /* parsed */
	const char *const *columns;    /* columns the mapping reads; NULL-terminated */
	const char *const *notnull;    /* those that should be NOT NULL (warn); NULL-terminated */
} source_check_spec;

/*
 * --check on the libpq source: connect (blocking, connect_timeout) and report,
 * one item each, the connection, wal_level, the role's replication right,
 * the slot (exists, pgoutput, this database, not in use, wal_status), the
 * publication (exists, publishes inserts, via the partition root), and each
 * table (exists, readable, in the publication, has the mapped columns).
 * Returns the number of failed items; the connection is closed again.
 */
int source_check(source *s, const source_check_spec *specs, size_t nspecs,
                 check_report_fn report, void *ctx);

#endif /* PGOUTBOX_SOURCE_H */
