/*
 * outbox.h — turning a decoded insert into a Kafka event.
 *
 * Knows which relation is the outbox table, which column plays which part
 * (id, key, type, payload, routing) and how the topic name is built from the
 * template (`outbox.event.${aggregatetype}` by default).  The event it fills
 * holds views into the decoded tuple plus a topic string owned by the
 * outbox; both stay valid until the next call.
 */
#ifndef PGOUTBOX_OUTBOX_H
#define PGOUTBOX_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>

#include "pgoutput.h"
#include "sink.h"

typedef struct outbox outbox;

typedef struct outbox_config {
	const char *table;           /* "schema.table", "table" (→ public) or quoted parts */
	const char *topic_template;  /* text with ${column} placeholders */
	const char *col_id;
	const char *col_key;
	const char *col_type;
	const char *col_payload;
} outbox_config;

typedef enum outbox_rc {
	OUTBOX_EVENT = 0,   /* *ev filled */
	OUTBOX_IGNORE,      /* not the outbox table */
	OUTBOX_UNMAPPABLE,  /* outbox row that cannot become an event; errbuf says why */
} outbox_rc;

/* Returns NULL with errbuf filled on a bad table name or template. */
outbox   *outbox_new(const outbox_config *cfg, char *errbuf, size_t errlen);
void      outbox_free(outbox *ob);

bool      outbox_is_table(const outbox *ob, const pgo_relation *rel);

/*
 * Map one inserted row.  commit_time is the transaction's (PostgreSQL epoch,
 * microseconds).  On OUTBOX_UNMAPPABLE, ev->headers[0] holds the event id
 * when it could be read (ev->nheaders == 1), so the error can name it.
 */
outbox_rc outbox_map_insert(outbox *ob, const pgo_relation *rel, const pgo_tuple *tup,
                            int64_t commit_time, sink_event *ev,
                            char *errbuf, size_t errlen);

/* A valid Kafka topic name: 1..249 of [A-Za-z0-9._-], not "." or "..". */
bool      outbox_topic_valid(const char *name, size_t len);

#endif /* PGOUTBOX_OUTBOX_H */
