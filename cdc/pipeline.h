/*
 * pipeline.h — one replication slot end to end.
 *
 * A pipeline owns a source (the slot's stream and its catalog facts), the
 * decoder, the outbox mapping and the ledger, and everything that lives
 * between them: the open transaction, a message held while Kafka's queue is
 * full or while a relation is being identified, dead-letter copies waiting
 * for room.  It produces into a sink (sink.h) that it shares with other
 * pipelines, and acts on the sink's reports for its own events.  Data flows
 * one way, source → decoder → outbox → sink; confirmations flow back, sink
 * report → ledger → the flush position the source reports to PostgreSQL.
 *
 * What the pipeline promises: it confirms to PostgreSQL only
 *   - the end of the longest prefix of transactions whose every event Kafka
 *     acknowledged (or, with nothing in flight, the walsender's keepalive
 *     position: an idle outbox pins no WAL), and
 *   - no position past the last verification that the configured outbox is
 *     what PostgreSQL streams (every table exists and is published, the
 *     publication publishes inserts; checked on a side connection, at most
 *     about five times a second while there is something new to confirm), and
 *   - no position from another server or timeline than the one streaming
 *     now, nor past that server's WAL end: a new session starts from its
 *     slot's own confirmed position.
 * Every event either reaches its topic, reaches the dead-letter topic
 * (on_error = dlq), or stops the pipeline with an error naming it.
 *
 * With a backfill phase (pipeline_config.backfill) the pipeline first
 * publishes the rows of the outbox tables read in the snapshot of the slot
 * and waits until Kafka acknowledged all of them; only then does it start
 * streaming from the slot's consistent point (backfill.h says why).
 *
 * The main loop drives it: pipeline_pollfds() before poll(), then
 * pipeline_serve() with what poll() said, and pipeline_deadline() for the
 * poll timeout.  Nothing here blocks but pipeline_finish().
 */
#ifndef PGOUTBOX_PIPELINE_H
#define PGOUTBOX_PIPELINE_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "outbox.h"
#include "rows.h"
#include "sink.h"
#include "source.h"

typedef struct pipeline pipeline;

typedef struct pipeline_config {
	const char          *name;                 /* for logs ("" for the only one) */
	const char          *slot;                 /* for messages */
	const char          *publication;
	const outbox_config *outbox;
	bool                 on_error_dlq;         /* else stop */
	const char          *dlq_topic;
	int                  status_interval_ms;
	int                  replication_timeout_s;  /* 0: off */
	int                  kafka_stall_timeout_s;  /* 0: off */
	int                  shutdown_timeout_s;
	uint64_t             endpos;               /* 0: none */
	uint64_t             test_fatal_after;     /* test hook: a fatal producer error after N events */
	/*
	 * A backfill phase (backfill.h) before streaming: rows read from this
	 * reader (owned by the pipeline from now on) are published and
	 * acknowledged before the stream starts; NULL: none.  With replay the
	 * pipeline stops (exit 0) after the phase and never streams.
	 */
	rows_reader         *backfill;
	bool                 replay;
	size_t               resume_table;         /* the backfill resumes at table ... */
	const char          *resume_key;           /* ... from this key (NULL: its start) */
	/*
	 * cleanup = delete (cleanup.h): rows are deleted through this cleaner
	 * (owned from now on) once the slot is confirmed past them; NULL: keep.
	 */
	rows_cleaner        *cleaner;
	int                  cleanup_batch;
	int                  cleanup_interval_ms;
} pipeline_config;

/*
 * A pipeline reading src (which it owns from now on, also on failure) and
 * producing into snk (shared; attached here).  NULL with errbuf filled on a
 * bad mapping or when out of memory.
 */
pipeline *pipeline_new(const pipeline_config *cfg, source *src, sink *snk,
                       char *errbuf, size_t errlen);
void      pipeline_free(pipeline *p);

/* Add the sockets to watch to pfd (room for max); returns how many. */
int       pipeline_pollfds(pipeline *p, struct pollfd *pfd, int max);
/*
 * Do whatever is due: connect, read and produce, send status updates,
 * verify, time out.  pfd[0..n) are the entries pipeline_pollfds() added
 * before the last poll(), with their revents (n may be 0).
 */
void      pipeline_serve(pipeline *p, const struct pollfd *pfd, int n, int64_t now_ms);
/* When pipeline_serve() should run next (monotonic ms); <= now: do not sleep. */
int64_t   pipeline_deadline(pipeline *p, int64_t now_ms);
/*
 * A nap while catching up (microseconds, 0: none): its socket is left out of
 * the poll for that long, so that the walsender's sends coalesce; the loop
 * wakes for pipeline_serve() when it ends.
 */
int64_t   pipeline_nap_us(const pipeline *p);

/* Stop reading; what is in flight drains (up to shutdown_timeout).  code: exit status asked for. */
void      pipeline_stop(pipeline *p, int code, int64_t now_ms);
/* Stopped, and drained or out of time: ready for pipeline_finish(). */
bool      pipeline_done(pipeline *p, int64_t now_ms);
/*
 * Confirm what was acknowledged and end the stream cleanly (CopyDone; blocks
 * up to a few seconds), then log the pipeline's summary.
 */
void      pipeline_finish(pipeline *p);
int       pipeline_exit_code(const pipeline *p);

/*
 * The producer failed fatally and is being replaced: forget what is in
 * flight (the slot still has it), close the stream, and reconnect; attach
 * to snk, the new producer.
 */
void      pipeline_sink_lost(pipeline *p);
bool      pipeline_attach(pipeline *p, sink *snk);

/* What /metrics and /healthz show (updated by pipeline_serve()). */
const metrics_stats *pipeline_stats(const pipeline *p);
bool      pipeline_streaming(const pipeline *p);
/* The source's name ("" for the only one), slot, and database (of the last session; "" before). */
const char *pipeline_name(const pipeline *p);
const char *pipeline_slot(const pipeline *p);
const char *pipeline_database(const pipeline *p);
/* pipeline_finish() ran: the pipeline does nothing more. */
bool      pipeline_finished(const pipeline *p);
/* One stats line for the log. */
void      pipeline_log_stats(pipeline *p);

#endif /* PGOUTBOX_PIPELINE_H */
