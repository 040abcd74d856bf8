/*
 * cleanup.h — cleanup = delete: delete outbox rows whose events are in Kafka.
 *
 * The rule, and why it never deletes a row whose event Kafka has not
 * acknowledged: a pick (rows.h) returns up to cleanup_batch rows together
 * with a WAL position read after the pick's snapshot was taken.  Every
 * picked row was visible in that snapshot, so its transaction had committed,
 * and a transaction's commit record is in the WAL before the transaction
 * becomes visible: the commit ends at or before the position.  The rows are
 * deleted only once the pipeline has confirmed the slot at or past that
 * position, and the pipeline confirms a position only when Kafka has
 * acknowledged every event of every transaction ending at or before it
 * (pipeline.h).  The delete names each row by its primary key *and* its
 * xmin, so a row deleted and inserted again with the same key by a later
 * transaction is not touched.
 *
 * Rows that predate the slot count as confirmed too (they are behind it):
 * create the slot with --backfill when the table already holds rows that
 * were never published.
 *
 * Rate: at most one delete of cleanup_batch rows per cleanup_interval; a
 * pick that finds nothing waits CLEANUP_IDLE_MS.  One pick of up to
 * CLEANUP_PICK_BATCHES deletes is held at a time (its keys only: no
 * snapshot, no lock), so memory is bounded by the batch; the pick is large
 * because confirmations move in steps (a verification, about a second).
 * A failure is logged and retried after CLEANUP_RETRY_MS.
 *
 * Pure: driven by the pipeline (its confirmations and its loop), over the
 * rows_cleaner operations; unit-tested with a fake.
 */
#ifndef PGOUTBOX_CLEANUP_H
#define PGOUTBOX_CLEANUP_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "rows.h"

#define CLEANUP_IDLE_MS  2000
#define CLEANUP_PICK_BATCHES 10   /* a pick holds the keys of this many deletes */
#define CLEANUP_RETRY_MS 10000

typedef struct cleanup cleanup;

typedef struct cleanup_config {
	const char *name;         /* log prefix */
	size_t      ntables;
	int         batch;        /* rows per delete */
	int         interval_ms;  /* between two deletes */
} cleanup_config;

/* Owns c from now on (also on failure).  NULL when out of memory. */
cleanup *cleanup_new(const cleanup_config *cfg, rows_cleaner *c, metrics_stats *st);
void     cleanup_free(cleanup *cl);

/* The slot is confirmed up to pos: Kafka has every event of every transaction ending there. */
void     cleanup_confirmed(cleanup *cl, uint64_t pos);
/* Another server: its WAL positions are not comparable; forget the pick and the position. */
void     cleanup_reset(cleanup *cl);

int      cleanup_pollfds(cleanup *cl, struct pollfd *pfd, int max);
void     cleanup_serve(cleanup *cl, int64_t now_ms);
int64_t  cleanup_deadline(const cleanup *cl, int64_t now_ms);

#endif /* PGOUTBOX_CLEANUP_H */
