/*
 * rows.h — the outbox tables read and trimmed over SQL: what the replication
 * stream cannot do.
 *
 * The stream (source.h) only knows what was committed after the slot's
 * position.  Three jobs need the table itself:
 *
 *   - a backfill reads the rows in the snapshot of a slot it creates
 *     (CREATE_REPLICATION_SLOT ... (SNAPSHOT 'use') inside a transaction of
 *     a replication connection), so that the rows and the stream meet at
 *     the slot's consistent point: every transaction committed before it is
 *     in the snapshot, every one after it in the stream;
 *   - a replay (or a resumed backfill) reads them in a plain REPEATABLE READ
 *     snapshot, leaving every slot alone;
 *   - cleanup = delete deletes rows whose transactions the slot confirmed.
 *
 * This header is the interface, free of libpq: rows_reader and rows_cleaner
 * are tables of operations, so that cdc/backfill.c and cdc/cleanup.c can be
 * driven by a fake in their unit tests.  cdc/rows.c is the libpq
 * implementation; it and cdc/source.c are the only modules touching libpq
 * (source.c the replication stream, rows.c plain SQL on the tables).
 *
 * Nothing blocks except rows_check(), which --check uses.
 */
#ifndef PGOUTBOX_ROWS_H
#define PGOUTBOX_ROWS_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "check.h"

typedef enum rows_rc {
	ROWS_OK = 0,        /* a batch (reader) / a step (cleaner) is done */
	ROWS_AGAIN,         /* in progress: call again when the loop wakes */
	ROWS_INFO,          /* reader: the snapshot is taken, info() is valid */
	ROWS_DONE,          /* reader: every row was read, the snapshot released */
	ROWS_FAIL,          /* errbuf says why; the connection is closed */
} rows_rc;

/* "No timestamp" in rows_batch.times. */
#define ROWS_NO_TIME INT64_MIN

/* What a reader learnt when its snapshot was taken. */
typedef struct rows_info {
	uint64_t    position;        /* the new slot's consistent point; else the snapshot's WAL position */
	int64_t     snapshot_time;   /* now() of the snapshot, PostgreSQL epoch microseconds */
	uint64_t    total;           /* rows selected, all tables */
	uint64_t    unknown_commit;  /* of them: selected because their commit time is unknown */
	bool        commit_times;    /* track_commit_timestamp is on */
	bool        created_slot;
	const char *database;
} rows_info;

/*
 * One FETCH of one table.  Views into the reader's buffers, valid until the
 * next call of next().  Rows come in the backfill order: by the order
 * column, else physically (a sequential scan without synchronised scans).
 */
typedef struct rows_batch {
	size_t          table;     /* index of the configured table */
	size_t          nrows;
	size_t          ncols;     /* the table's columns */
	const char     *const *names;   /* [ncols] */
	const uint32_t *types;          /* [ncols] type OIDs */
	const char     *const *vals;    /* [nrows * ncols] text output; NULL: SQL NULL */
	const size_t   *lens;           /* [nrows * ncols] */
	const char     *const *keys;    /* [nrows] the order key as text; NULL: a NULL key, or
	                                 * none (physical order of a table with partitions) */
	const int64_t  *times;          /* [nrows] PostgreSQL epoch µs, ROWS_NO_TIME: none */
	const uint32_t *xmins;          /* [nrows] the inserting transaction */
} rows_batch;

typedef struct rows_reader rows_reader;

typedef struct rows_reader_ops {
	/*
	 * Go on: connect, take the snapshot (ROWS_INFO once), then hand out
	 * batches (ROWS_OK, *b filled) until ROWS_DONE.  Calling next() again
	 * releases the previous batch.  Never blocks.
	 */
	rows_rc         (*next)(rows_reader *r, rows_batch *b, char *errbuf, size_t errlen);
	const rows_info *(*info)(const rows_reader *r);
	int             (*pollfds)(rows_reader *r, struct pollfd *pfd, int max);
	int64_t         (*deadline)(const rows_reader *r);     /* monotonic ms, -1: none */
	void            (*destroy)(rows_reader *r);            /* closes; a snapshot is released */
} rows_reader_ops;

struct rows_reader {
	const rows_reader_ops *ops;
};

/* Which rows, in which order, with which timestamp. */
typedef struct rows_selection {
	const char *since;           /* NULL/"": every row */
	const char *since_column;    /* NULL/"": compare since with the commit time */
	const char *order_column;    /* NULL/"": physical order */
	size_t      resume_table;    /* tables before this one are skipped (a resumed backfill) */
	const char *resume_from;     /* NULL/"": table resume_table from its first row; else from
	                              * this order key on (inclusive) */
	const char *timestamp_column;/* NULL/"": the commit time if known, else the snapshot time */
	int         batch;           /* rows per FETCH */
} rows_selection;

typedef struct rows_config {
	const char *conninfo;        /* never logged */
	const char *create_slot;     /* create this slot and read in its snapshot; NULL: plain snapshot */
	const char *need_slot;       /* plain snapshot: this slot must exist (a resumed backfill) */
	size_t      ntables;
	const char *const *nsp;
	const char *const *rel;
	rows_selection sel;
} rows_config;

/* The libpq reader.  NULL with errbuf filled (out of memory, bad conninfo). */
rows_reader *rows_reader_new(const rows_config *cfg, char *errbuf, size_t errlen);

/* ---------------------------------------------------------------------------
 * Cleanup: delete rows whose transactions are confirmed
 *
 * pick() runs one statement that reads pg_current_wal_insert_lsn() and the
 * primary key and xmin of up to max rows.  The function is evaluated after
 * the statement's snapshot was taken, and a transaction's commit record is
 * in the WAL before the transaction becomes visible, so every picked row's
 * transaction ends at or before the position returned.  remove() deletes
 * exactly those row versions (primary key and xmin), a batch at a time;
 * the caller calls it only once the slot is confirmed at or past that
 * position.
 * ------------------------------------------------------------------------- */

typedef struct rows_cleaner rows_cleaner;

typedef struct rows_cleaner_ops {
	/* Pick up to max rows of table t: ROWS_OK with *n and *upto (the bound) set. */
	rows_rc (*pick)(rows_cleaner *c, size_t t, size_t max, size_t *n, uint64_t *upto,
	                char *errbuf, size_t errlen);
	/* Delete the next (up to) max rows of the last pick: ROWS_OK with *deleted and *left set. */
	rows_rc (*remove)(rows_cleaner *c, size_t max, uint64_t *deleted, size_t *left,
	                  char *errbuf, size_t errlen);
	int     (*pollfds)(rows_cleaner *c, struct pollfd *pfd, int max);
	int64_t (*deadline)(const rows_cleaner *c);
	void    (*close)(rows_cleaner *c);                 /* drop the connection (and the pick) */
	void    (*destroy)(rows_cleaner *c);
} rows_cleaner_ops;

struct rows_cleaner {
	const rows_cleaner_ops *ops;
};

/* The libpq cleaner: an ordinary connection, target_session_attrs=read-write. */
rows_cleaner *rows_cleaner_new(const char *conninfo, size_t ntables, const char *const *nsp,
                               const char *const *rel, char *errbuf, size_t errlen);

/* ---------------------------------------------------------------------------
 * --check
 * ------------------------------------------------------------------------- */

typedef struct rows_check_spec {
	const char *table;           /* as configured, for messages */
	const char *nsp, *rel;
	const char *time_column;     /* NULL: the oldest row is not looked for */
} rows_check_spec;

/*
 * Report, one item each: the table's size and estimated rows, its oldest
 * row (by time_column), whether that retention covers the window in which
 * a slot can be lost (max_slot_wal_keep_size at the current WAL rate,
 * idle_replication_slot_timeout) and, with cleanup, that the role may
 * DELETE and the table has a primary key.  Blocking.  Returns the failures.
 */
int rows_check(const char *conninfo, const rows_check_spec *specs, size_t nspecs, bool cleanup,
               check_report_fn report, void *ctx);

#endif /* PGOUTBOX_ROWS_H */
