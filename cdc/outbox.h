/*
 * outbox.h — turning a decoded insert or logical message into a Kafka event.
 *
 * Two kinds of source become events:
 *   - inserts into one of the configured outbox tables, each with its own
 *     mapping (which column is the id, key, type, payload, aggregate type,
 *     which columns become headers, topic template, value format);
 *   - transactional logical decoding messages with the configured prefix
 *     (pg_logical_emit_message(true, prefix, json)), whose content is a JSON
 *     object {"id","aggregatetype","aggregateid","type","payload","headers"}.
 *
 * A relation's column indexes are resolved once, when its Relation message
 * arrives (outbox_relation()), not per row.  The event the mapping functions
 * fill holds views into the decoded tuple or message and into buffers owned
 * by the outbox (topic, value, formatted times); everything stays valid until
 * the next mapping call on the same outbox.
 *
 * Pure: no I/O, no logging; jansson only for logical-message content.
 */
#ifndef PGOUTBOX_OUTBOX_H
#define PGOUTBOX_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgoutput.h"
#include "sink.h"

typedef struct outbox outbox;

/* Bounds checked when the configuration is loaded. */
#define OUTBOX_MAX_EXTRA_HEADERS 16   /* header.<name> = <column>, or a message's "headers" */
#define OUTBOX_MAX_TABLES        64
#define OUTBOX_MAX_TEMPLATE_REFS 16   /* ${...} references in one topic template */
#define OUTBOX_DLQ_HEADERS       6    /* pgoutbox.error, .source.topic, .lsn, .table/.message.prefix,
                                       * and for a trimmed copy .original.size, .original.sha256 */
#define OUTBOX_DLQ_TRIM_VALUE    65536  /* a trimmed dead-letter copy keeps this much of the value */
#define OUTBOX_DLQ_TRIM_OTHER    1024   /* ... and of the key and of each header value */

typedef enum outbox_format {
	OUTBOX_FORMAT_RAW = 0,     /* value = the payload column's text */
	OUTBOX_FORMAT_ENVELOPE,    /* value = {"id",...,"payload",...,"xid"} */
	OUTBOX_FORMAT_CLOUDEVENTS, /* CloudEvents 1.0 Kafka binary mode */
} outbox_format;

/* "raw", "envelope", "cloudevents" → format; false when unknown. */
bool        outbox_format_parse(const char *s, outbox_format *out);
const char *outbox_format_name(outbox_format f);

typedef struct outbox_header_map {
	const char *name;          /* Kafka header name */
	const char *column;        /* column whose text becomes its value */
} outbox_header_map;

/* How one source becomes events.  For logical messages only topic_template,
 * topic_prefix, format and ce_source are used. */
typedef struct outbox_mapping {
	const char *topic_template;   /* ${name}: a column, or a message's JSON field */
	const char *topic_prefix;     /* prepended; "" or NULL for none */
	const char *col_id;
	const char *col_key;
	const char *col_type;
	const char *col_payload;
	const char *col_aggregatetype;  /* only for the envelope's "aggregatetype" */
	outbox_format format;
	bool        key_json;         /* key_format = json-string: the key as a JSON string (JsonConverter) */
	const char *ce_source;        /* NULL: /pgoutbox/<database>/<schema.table> or .../message/<prefix> */
	const outbox_header_map *headers;
	size_t      nheaders;
} outbox_mapping;

typedef struct outbox_table {
	const char    *table;         /* "schema.table", "table" (→ public), quoted parts allowed */
	outbox_mapping map;
} outbox_table;

typedef struct outbox_config {
	const outbox_table *tables;
	size_t              ntables;          /* 1..OUTBOX_MAX_TABLES */
	const char         *messages_prefix;  /* NULL or "": logical messages are not events */
	outbox_mapping      messages;         /* mapping of logical-message events */
} outbox_config;

/* The transaction an event belongs to. */
typedef struct outbox_txn {
	pgo_lsn  commit_lsn;      /* Begin's final LSN */
	int64_t  commit_time;     /* PostgreSQL epoch, microseconds */
	uint32_t xid;
} outbox_txn;

typedef enum outbox_rc {
	OUTBOX_EVENT = 0,   /* *ev filled */
	OUTBOX_IGNORE,      /* not an outbox table / not our message */
	OUTBOX_UNMAPPABLE,  /* cannot become an event; errbuf says why, *ev holds
	                     * what could be read (see below) */
	OUTBOX_NOMEM,       /* out of memory: not the event's fault */
} outbox_rc;

/*
 * Returns NULL with errbuf filled on a bad table name, template or mapping.
 * Copies everything it keeps from cfg.
 */
outbox   *outbox_new(const outbox_config *cfg, char *errbuf, size_t errlen);
void      outbox_free(outbox *ob);

/* The database name, for default CloudEvents sources; false when out of memory. */
bool      outbox_set_database(outbox *ob, const char *dbname);

/*
 * A Relation message arrived (first use of a relation in a session, or after
 * ALTER TABLE): resolve (again) whether it is an outbox table and its column
 * indexes.  A relation is an outbox table's when the stream names it so
 * (schema and name), or when its OID is a partition of one (a publication
 * without publish_via_partition_root streams partitions under their own
 * names).  *table (may be NULL) gets the table's index, -1 for none.
 * Returns false when out of memory.
 */
bool      outbox_relation(outbox *ob, const pgo_relation *rel, int *table);

/*
 * The partitions of the outbox tables, from the catalog: oids[i] belongs to
 * table tables[i].  Replaces the previous list; false when out of memory
 * (the previous list stays).
 */
bool      outbox_set_partitions(outbox *ob, const uint32_t *oids, const int *tables, size_t n);

/* The outbox tables: how many, and table i's schema and name (owned by ob). */
size_t    outbox_tables(const outbox *ob);
void      outbox_table_ident(const outbox *ob, size_t i, const char **nsp, const char **rel);
/* A new replication session: forget every resolved relation. */
void      outbox_forget_relations(outbox *ob);

/* Whether rel is one of the outbox tables (resolving it if needed). */
bool      outbox_is_table(outbox *ob, const pgo_relation *rel);

/*
 * Number of sources: the tables, then the logical-message prefix.  Each
 * event's *source is in 0..outbox_sources()-1; outbox_source_name() says
 * what it is ("schema.table", or the prefix with *is_message set).
 */
unsigned    outbox_sources(const outbox *ob);
const char *outbox_source_name(const outbox *ob, unsigned source, bool *is_message);

/*
 * Map one inserted row.  On OUTBOX_UNMAPPABLE, *ev holds what could be read,
 * for the error message and the dead-letter copy: the "id" header (first)
 * and "type" header when readable, the key when readable, the payload text as
 * value, and ev->topic the resolved (perhaps invalid) topic or NULL.
 */
outbox_rc outbox_map_insert(outbox *ob, const pgo_relation *rel, const pgo_tuple *tup,
                            const outbox_txn *txn, sink_event *ev, unsigned *source,
                            char *errbuf, size_t errlen);

/*
 * Map one logical decoding message.  OUTBOX_IGNORE unless it is
 * transactional and its prefix is exactly the configured one.  On
 * OUTBOX_UNMAPPABLE, *ev is as for inserts, with the raw content as value.
 */
outbox_rc outbox_map_message(outbox *ob, uint8_t flags, pgo_bytes prefix, pgo_bytes content,
                             const outbox_txn *txn, sink_event *ev, unsigned *source,
                             char *errbuf, size_t errlen);

/* Storage for the strings a dead-letter copy adds; lives as long as the event. */
typedef struct outbox_dlq_buf {
	char lsn[24];
	char size[24];
	char sha256[65];
} outbox_dlq_buf;

/*
 * Turn *ev (a partial event from an OUTBOX_UNMAPPABLE mapping, or the
 * description of a message Kafka refused) into its dead-letter copy, in
 * place: topic = dlq_topic; key, value and headers kept; added headers
 * pgoutbox.error, pgoutbox.source.topic (source_topic or ""), pgoutbox.lsn
 * (commit LSN as X/Y) and pgoutbox.table or pgoutbox.message.prefix.
 * error and source_name must outlive ev.  Headers of the original beyond
 * what fits are dropped, the "id" header is always kept.  With trim (the
 * original was refused for its size) the copy always fits: headers
 * pgoutbox.original.size (the value's length in bytes) and
 * pgoutbox.original.sha256 (hex SHA-256 of the whole value, as PostgreSQL's
 * sha256() computes it) are added, and the value is cut to
 * OUTBOX_DLQ_TRIM_VALUE bytes, the key and header values to
 * OUTBOX_DLQ_TRIM_OTHER.
 */
void      outbox_dead_letter(sink_event *ev, const char *dlq_topic, const char *error,
                             const char *source_topic, pgo_lsn commit_lsn, bool is_message,
                             const char *source_name, bool trim, outbox_dlq_buf *buf);

/* A valid Kafka topic name: 1..249 of [A-Za-z0-9._-], not "." or "..". */
bool      outbox_topic_valid(const char *name, size_t len);

/* A header name pgoutbox sets itself (id, type, ce_*, content-type, pgoutbox.*). */
bool      outbox_header_reserved(const char *name, size_t len);

/*
 * Parse a table name at *p: [schema.]table, each part bare (folded to lower
 * case) or "quoted" ("" escapes a quote).  Stops before the first character
 * that cannot continue the name ('.' after the table part, ',', '=',
 * whitespace or the end), advancing *p.  When need_schema, a bare "table"
 * is an error; otherwise its schema is "public".  On success *nsp and *rel
 * are malloc'ed (caller frees).
 */
bool      outbox_parse_table(const char **p, bool need_schema, char **nsp, char **rel,
                             char *errbuf, size_t errlen);

/* RFC 3339 UTC with microseconds ("2024-05-01T12:00:00.123456Z") of a
 * PostgreSQL timestamp; buf needs 32 bytes.  Returns the length. */
size_t    outbox_format_time(int64_t pg_usec, char *buf, size_t buflen);

#endif /* PGOUTBOX_OUTBOX_H */
