/*
 * source.h — the replication connection: the only module that touches libpq.
 *
 * Connects with replication=database, checks that the slot and publication
 * exist, runs START_REPLICATION from the slot's confirmed position, then
 * reads CopyData without blocking and sends standby status updates.
 */
#ifndef PGOUTBOX_SOURCE_H
#define PGOUTBOX_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "check.h"

typedef struct source source;

typedef enum source_rc {
	SOURCE_OK = 0,
	SOURCE_AGAIN,       /* nothing to read now / output not fully sent yet */
	SOURCE_LOST,        /* connection failed or broke: retry later */
	SOURCE_BUSY,        /* the slot is in use by another process: retry soon */
	SOURCE_FATAL,       /* cannot continue (slot missing or invalidated, ...) */
} source_rc;

typedef struct source_config {
	const char *conninfo;      /* user's conninfo or URI; never logged */
	const char *slot;
	const char *publication;
	int         proto_version;     /* 0: the highest the server speaks */
} source_config;

/* Returns NULL when out of memory or when conninfo cannot be parsed (errbuf). */
source *source_new(const source_config *cfg, char *errbuf, size_t errlen);
void    source_free(source *s);

/*
 * Connect and start streaming from the slot's confirmed LSN.  Blocks for at
 * most the connect_timeout of the connection string (10 s if unset).
 */
source_rc source_start(source *s, char *errbuf, size_t errlen);
/* The server's wal_sender_timeout in ms, 0 when off or unknown (valid after start). */
int       source_sender_timeout_ms(const source *s);
/* The pgoutput protocol version of the running stream (valid after start). */
int       source_proto_version(const source *s);
/* The database of the running stream (valid after start), e.g. for CloudEvents sources. */
const char *source_database(const source *s);
void      source_close(source *s);
bool      source_connected(const source *s);

int       source_fd(const source *s);
/* True when buffered output waits for the socket to become writable. */
bool      source_wants_write(const source *s);

/*
 * Next CopyData message, or SOURCE_AGAIN when none is buffered.  On
 * SOURCE_OK *buf is owned by the caller and must be released with
 * source_release().
 */
source_rc source_read(source *s, uint8_t **buf, size_t *len, char *errbuf, size_t errlen);
void      source_release(uint8_t *buf);

/* Queue a standby status update: write/flush/apply positions. */
source_rc source_send_status(source *s, uint64_t written, uint64_t flushed,
                             bool reply, char *errbuf, size_t errlen);
/* Push queued output; SOURCE_AGAIN while some remains. */
source_rc source_flush(source *s, char *errbuf, size_t errlen);

/*
 * End streaming: send CopyDone and wait up to timeout_ms for the server's,
 * which it sends after processing everything we sent before (the final
 * status update included).  Closes the connection.
 */
source_rc source_finish(source *s, int timeout_ms, char *errbuf, size_t errlen);

/* What --check compares the outbox table with. */
typedef struct source_check_spec {
	const char        *table;      /* "schema.table", or "table" for public.table */
	const char *const *columns;    /* columns the mapping reads; NULL-terminated */
	const char *const *notnull;    /* those that should be NOT NULL (warn); NULL-terminated */
} source_check_spec;

/*
 * --check: connect as source_start() does and report, one item each, the
 * connection, wal_level, the role's replication right, the slot (exists,
 * pgoutput, this database, not in use, wal_status), the publication (exists,
 * publishes inserts, contains the table), and each of the nspecs tables
 * (exists, readable, in the publication, has the mapped columns).  Blocks (connect_timeout).  Returns the number of
 * failed items; the connection is closed again.
 */
int source_check(source *s, const source_check_spec *specs, size_t nspecs,
                 check_report_fn report, void *ctx);

/* The password in the conninfo (or ""), for redacting error messages. */
const char *source_secret(const source *s);

#endif /* PGOUTBOX_SOURCE_H */
