/*
 * sink.h — the delivery seam: where "Kafka has this" becomes "this LSN may
 * be confirmed".
 *
 * A sink takes events and reports each one's fate exactly once, carrying
 * back the opaque the producer of the event gave.  Pipelines (cdc/pipeline.h)
 * are its clients: each attaches once and gets its own delivery callback, so
 * several pipelines can share one sink, and a report always reaches the
 * ledger of the pipeline whose event it is.  What "delivered" means is the
 * implementation's:
 *
 *   kafka_sink_new()   at least once: a message is delivered when Kafka
 *                      acknowledged it (its delivery report), cdc/kafka.h;
 *   a transactional    exactly once: messages are delivered when the Kafka
 *   sink               transaction holding them committed.
 *
 * The pipeline needs nothing else: it says where its stream comes from
 * (sink_session), produces, marks the end of each source transaction
 * (sink_txn_end) and the moments it has nothing more to hand over
 * (sink_idle), and acts on reports.  Everything here is non-blocking;
 * reports are served from sink_serve(), which the main loop calls when
 * sink_fd() becomes readable.
 */
#ifndef PGOUTBOX_SINK_H
#define PGOUTBOX_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sink sink;

typedef struct sink_header {
	const char *name;          /* NUL-terminated */
	const void *value;         /* NULL: a null header */
	size_t      len;
} sink_header;

/*
 * Headers one message may carry: the contract's id and type, the six of
 * CloudEvents binary mode, up to OUTBOX_MAX_EXTRA_HEADERS mapped ones and
 * the six a dead-letter copy adds.  A fixed bound keeps sink_event free of
 * allocations; the configuration is checked against it at load time.
 */
#define SINK_MAX_HEADERS 32

typedef struct sink_event {
	const char *topic;         /* NUL-terminated */
	const void *key;           /* may be NULL (no key) */
	size_t      key_len;
	const void *value;         /* NULL → null value (tombstone) */
	size_t      value_len;
	int64_t     timestamp_ms;  /* Unix epoch milliseconds */
	uint64_t    lsn;           /* commit LSN (Begin's final LSN) of its source transaction; 0: unknown */
	size_t      nheaders;
	sink_header headers[SINK_MAX_HEADERS];
} sink_event;

/*
 * What the sink says of a refused message, at produce time or in a report.
 * One classifier (the implementation's) sorts every error into these.
 */
typedef enum sink_class {
	SINK_CLASS_RETRIABLE = 0,  /* the sink retries by itself; not reported as a refusal */
	SINK_CLASS_PERMANENT,      /* refused for good: unknown or invalid topic, not authorized, ... */
	SINK_CLASS_TOO_LARGE,      /* refused for good because of its size */
	SINK_CLASS_FATAL,          /* the producer itself is broken: see sink_fatal() */
} sink_class;

typedef struct sink_error {
	sink_class  cls;
	const char *name;          /* static, e.g. "MSG_SIZE_TOO_LARGE" */
	char        text[256];     /* the library's words */
} sink_error;

/*
 * A delivery report.  When !ok the refused message itself is described too
 * (key, value, headers), so that the client can produce a dead-letter copy
 * from inside the callback.  Every pointer is a view valid only until the
 * callback returns.  A transactional sink reports ok messages without
 * their content (only ok, bytes and timestamp_ms are set).
 *
 * dropped (with !ok) is no verdict on the message: the sink gave up what it
 * had accepted (a Kafka transaction was aborted), so the message is not in
 * Kafka, and neither is anything the client produced after it.  The client
 * must read its stream again from its confirmed position; err says why.
 */
typedef struct sink_report {
	bool        ok;
	bool        dropped;       /* !ok: given up, not refused: read the stream again */
	sink_error  err;           /* !ok */
	const char *topic;
	const void *id;            /* value of the "id" header, when present */
	size_t      id_len;
	size_t      bytes;         /* key + value length */
	int64_t     timestamp_ms;  /* the message's timestamp (the commit time); -1 if none */
	int64_t     latency_us;    /* from produce to this report; -1 if unknown */
	const void *key;           /* !ok: the message's key (NULL: none) */
	size_t      key_len;
	const void *value;         /* !ok: its value (NULL: tombstone) */
	size_t      value_len;
	size_t      nheaders;      /* !ok: its headers, at most SINK_MAX_HEADERS */
	sink_header headers[SINK_MAX_HEADERS];
} sink_report;

/* A client's delivery callback: opaque is what the client passed to sink_produce(). */
typedef void (*sink_delivery_fn)(void *ctx, uint64_t opaque, const sink_report *rep);

typedef enum sink_rc {
	SINK_OK = 0,
	SINK_FULL,                 /* no room now: back off, serve reports, retry the same event */
	SINK_REFUSED,              /* this event is refused for good; *err says why (PERMANENT, TOO_LARGE) */
	SINK_FATAL,                /* the producer failed fatally: see sink_fatal() */
} sink_rc;

/*
 * Where a client's stream comes from, for a sink that keeps state per
 * source (the transactional sink names its Kafka transactions after it and
 * records, with every commit, how far the source is in Kafka).
 */
typedef struct sink_origin {
	uint64_t    system_id;     /* the database system identifier (IDENTIFY_SYSTEM) */
	uint32_t    timeline;
	const char *slot;
} sink_origin;

/* Bits of an opaque that are the client's: the top ones name the client. */
#define SINK_OPAQUE_BITS   56
#define SINK_MAX_CLIENTS   64

/* What an implementation provides; see the wrappers below for the contract. */
typedef struct sink_ops {
	sink_rc     (*produce)(sink *s, const sink_event *ev, uint64_t opaque, sink_error *err);
	void        (*txn_end)(sink *s, unsigned client, uint64_t end_lsn);   /* may be NULL */
	void        (*session)(sink *s, unsigned client, const sink_origin *o);  /* may be NULL */
	void        (*idle)(sink *s, unsigned client, bool ended);          /* may be NULL */
	void        (*serve)(sink *s);
	int         (*fd)(const sink *s);
	int         (*outstanding)(const sink *s);
	const char *(*last_error)(const sink *s);
	bool        (*fatal)(sink *s, char *errbuf, size_t errlen);
	void        (*test_fatal)(sink *s);
	void        (*destroy)(sink *s);
} sink_ops;

typedef struct sink_client {
	sink_delivery_fn fn;
	void            *ctx;
	uint64_t         queued;   /* produced, not yet reported */
} sink_client;

/* The part every implementation shares; implementations embed it first. */
struct sink {
	const sink_ops *ops;
	uint64_t        queue_messages;   /* room of the sink's queue, for fair shares; 0: no limit */
	sink_client     clients[SINK_MAX_CLIENTS];
	unsigned        nclients;
	bool            discard;          /* reports are dropped (the sink is being freed) */
	bool            misconfigured;    /* its fatal error is a configuration error: see sink_fatal() */
};

/* For implementations: set up the shared part. */
void     sink_init(sink *s, const sink_ops *ops, uint64_t queue_messages);
/* For implementations: hand a report to the client named in the packed opaque. */
void     sink_dispatch(sink *s, uint64_t packed, const sink_report *rep);

/*
 * A client (pipeline) attaches once; the number returned names it in
 * sink_produce().  -1 when SINK_MAX_CLIENTS are attached.  Clients are never
 * detached: a stopped pipeline simply produces nothing more.
 */
int      sink_attach(sink *s, sink_delivery_fn fn, void *ctx);

/*
 * Hand one event to the sink (it copies everything), for client; opaque
 * must fit in SINK_OPAQUE_BITS.  May be called from inside a delivery
 * callback (for a dead-letter copy); never blocks, never serves callbacks.
 * With several clients, one that holds more than its fair share of a
 * nearly full queue gets SINK_FULL first, so that a busy pipeline cannot
 * starve the others.
 */
sink_rc  sink_produce(sink *s, unsigned client, const sink_event *ev, uint64_t opaque,
                      sink_error *err);

/*
 * Client's source transaction whose Commit ends at end_lsn is whole: every
 * event of it was produced.  A transactional sink commits Kafka transactions
 * only at such points; an at-least-once sink ignores it.
 */
void     sink_txn_end(sink *s, unsigned client, uint64_t end_lsn);

/*
 * Client's stream (re)started, from *o (valid during the call only).  Called
 * before the stream's first event.  A transactional sink sets itself up for
 * that source on the first call (it may fence an older pgoutbox now: the
 * client holds the slot) and answers SINK_FULL until it is ready.
 */
void     sink_session(sink *s, unsigned client, const sink_origin *o);

/*
 * Client has handed over everything its stream holds for now (a read found
 * nothing more): a transactional sink may commit what it holds.  ended: the
 * stream is over (lost, or the client stops), so events produced since the
 * client's last sink_txn_end() belong to a transaction that will not be
 * completed in it; a transactional sink then gives them up (dropped
 * reports) instead of waiting for a Commit that never comes.
 */
void     sink_idle(sink *s, unsigned client, bool ended);

/* Serve delivery reports and errors that wait; never blocks. */
static inline void sink_serve(sink *s) { s->ops->serve(s); }
/* File descriptor that becomes readable when reports or errors wait. */
static inline int  sink_fd(const sink *s) { return s->ops->fd(s); }
/* Messages produced but not reported yet, of all clients. */
static inline int  sink_outstanding(const sink *s) { return s->ops->outstanding(s); }
/* The last error the library reported (e.g. a refused SASL login), or "". */
static inline const char *sink_last_error(const sink *s) { return s->ops->last_error(s); }
/*
 * True once the producer hit a fatal error; errbuf (may be NULL) gets the
 * cause.  The caller rebuilds the sink, unless sink_misconfigured(): then
 * no new sink can do better (e.g. the transactional state belongs to another
 * database) and the process exits 1.
 */
static inline bool sink_fatal(sink *s, char *errbuf, size_t errlen)
{
	return s->ops->fatal(s, errbuf, errlen);
}
static inline bool sink_misconfigured(const sink *s) { return s->misconfigured; }
/* Test hook: make the producer fail fatally, as an idempotence violation would. */
static inline void sink_test_fatal(sink *s) { s->ops->test_fatal(s); }

/*
 * Free the sink.  Whatever was not reported is dropped without a report:
 * the clients confirmed nothing past it, so their slots still hold it.
 */
void     sink_free(sink *s);

/*
 * A deep copy of ev in one allocation (topic, key, value, header names and
 * values), for an event that must outlive the views it was built from; free
 * it with free().  NULL when out of memory.
 */
sink_event *sink_event_dup(const sink_event *ev);

#endif /* PGOUTBOX_SINK_H */
