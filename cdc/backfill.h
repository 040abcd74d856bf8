/*
 * backfill.h — publish the rows of the outbox tables as the stream would.
 *
 * A backfill reads rows from a rows_reader (rows.h: the snapshot of a slot
 * it creates, or a plain snapshot for a replay), turns each into a pgoutput
 * relation and tuple built from the query's text output so that the outbox
 * mapping (outbox_map_insert) gives exactly the event the stream would give
 * — same topic, key, value and headers — and produces it into the sink.
 *
 * It is a phase of a pipeline (pipeline.h), run before the pipeline streams:
 * the pipeline starts streaming from the slot only once every backfilled
 * event was acknowledged by Kafka.  So the slot is confirmed for the first
 * time after the backfill is wholly in Kafka, and since every backfilled
 * event is produced before the first streamed one, per-key order holds
 * across the boundary.  The ledger is not involved: nothing of the slot can
 * be confirmed while the phase runs.
 *
 * What differs from a streamed event: the timestamp is the backfill_timestamp
 * column's value, else the row's commit time when track_commit_timestamp
 * knows it, else the time of the snapshot; the envelope's lsn is the slot's
 * consistent point (a replay: the snapshot's WAL position) and its xid the
 * row's xmin.
 *
 * Progress: a log line every BACKFILL_PROGRESS_MS (rows read and
 * acknowledged of the total, the rate, the resume point) and metrics.  The
 * resume point is "N:KEY": table N (1-based, in `table` order) from order
 * key KEY on (inclusive); every row before it in the backfill order was
 * acknowledged.  "N:" resumes table N from its first row.
 *
 * Pure of libraries but jansson (through outbox): unit-tested with a fake
 * reader and a fake sink.
 */
#ifndef PGOUTBOX_BACKFILL_H
#define PGOUTBOX_BACKFILL_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "outbox.h"
#include "rows.h"
#include "sink.h"

#define BACKFILL_PROGRESS_MS 10000

typedef struct backfill backfill;

typedef enum backfill_state {
	BACKFILL_RUNNING = 0,
	BACKFILL_DONE,         /* every row read and acknowledged */
	BACKFILL_STOPPED,      /* interrupted (backfill_stop); drained or out of time */
	BACKFILL_FAILED,       /* an error was logged with the resume point */
} backfill_state;

typedef struct backfill_config {
	const char          *name;          /* log prefix: "" or "NAME: " */
	const outbox_config *outbox;
	bool                 on_error_dlq;
	const char          *dlq_topic;
	bool                 replay;        /* no slot was made for it (wording only) */
	size_t               resume_table;  /* the run resumes at this table (0-based) ... */
	const char          *resume_key;    /* ... from this order key on (NULL: its first row) */
} backfill_config;

/*
 * A backfill reading from r (owned from now on, also on failure) into snk
 * (attached here as a client of its own), counting into st.  NULL with
 * errbuf filled.
 */
backfill *backfill_new(const backfill_config *cfg, rows_reader *r, sink *snk, metrics_stats *st,
                       char *errbuf, size_t errlen);
void      backfill_free(backfill *b);

int       backfill_pollfds(backfill *b, struct pollfd *pfd, int max);
/* Read, map and produce what is due; never blocks. */
void      backfill_serve(backfill *b, int64_t now_ms);
int64_t   backfill_deadline(backfill *b, int64_t now_ms);

/* Read no more (SIGTERM): what is in flight drains; the snapshot is released. */
void      backfill_stop(backfill *b);
/* The producer was lost: the backfill cannot go on (its events are not in the slot). */
void      backfill_sink_lost(backfill *b);
backfill_state backfill_state_of(const backfill *b);
uint64_t  backfill_pending(const backfill *b);
/* The resume point "N:KEY" as it stands (everything before it is acknowledged). */
void      backfill_resume_point(backfill *b, char *buf, size_t len);
/* The slot's consistent point, once known (0 before). */
uint64_t  backfill_position(const backfill *b);
/*
 * The last words: a summary, and for an unfinished backfill the resume
 * point and what to run.  Call once, at the end of the phase.
 */
void      backfill_finish(backfill *b);

/*
 * Parse a resume point "N:KEY" (see above): *table 0-based, *key after the
 * colon ("" for none).  False when malformed.
 */
bool      backfill_parse_resume(const char *s, size_t ntables, size_t *table, const char **key);

#endif /* PGOUTBOX_BACKFILL_H */
