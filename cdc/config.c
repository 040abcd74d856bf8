/*
 * config.c — the settings table, the -c file parser and the command line.
 * See config.h.
 */
#include "config.h"
#include "log.h"
#include "lsn.h"
#include "metrics.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* One row per setting; the order is the order of --help. */
typedef struct setting {
	const char *name;       /* key in the -c file */
	const char *longopt;    /* command-line spelling */
	int         shortopt;   /* 0: none */
	const char *meta;       /* argument placeholder for --help */
	const char *def;        /* default, or NULL when required / unset */
	const char *doc;
	bool        per_table;  /* may be set per table: table.<schema>.<table>.<name> */
} setting;

enum {
	S_CONNINFO, S_BROKERS, S_SLOT, S_PUBLICATION, S_TABLE, S_TOPIC_TEMPLATE, S_TOPIC_PREFIX,
	S_ID_COLUMN, S_KEY_COLUMN, S_TYPE_COLUMN, S_PAYLOAD_COLUMN, S_AGGTYPE_COLUMN,
	S_VALUE_FORMAT, S_KEY_FORMAT, S_CE_SOURCE, S_MESSAGES_PREFIX, S_ON_ERROR, S_DLQ_TOPIC,
	S_DELIVERY, S_TRANSACTIONAL_ID, S_STATE_TOPIC, S_TXN_MAX_MS, S_TXN_MAX_EVENTS,
	S_LOG_LEVEL, S_SHUTDOWN_TIMEOUT, S_STATUS_INTERVAL, S_REPLICATION_TIMEOUT, S_KAFKA_STALL_TIMEOUT,
	S_ENDPOS,
	S_METRICS, S_LOG_FORMAT, S_STATS_INTERVAL, S_ON_SOURCE_FAILURE,
	S_BACKFILL_SINCE, S_BACKFILL_SINCE_COLUMN, S_BACKFILL_ORDER_COLUMN, S_BACKFILL_TIMESTAMP_COLUMN,
	S_BACKFILL_RESUME, S_BACKFILL_BATCH, S_CLEANUP, S_CLEANUP_BATCH, S_CLEANUP_INTERVAL,
	S_COUNT
};

static const setting settings[S_COUNT] = {
	[S_CONNINFO] = {"conninfo", "dbname", 'd', "CONNINFO", NULL,
		"PostgreSQL connection string or URI (required; replication=database is added)", false},
	[S_BROKERS] = {"brokers", "brokers", 'b', "BROKERS", NULL,
		"Kafka bootstrap servers, host:port[,host:port...] (required)", false},
	[S_SLOT] = {"slot", "slot", 0, "NAME", "pgoutbox",
		"logical replication slot (plugin pgoutput)", false},
	[S_PUBLICATION] = {"publication", "publication", 0, "NAME", "pgoutbox",
		"publication that contains the outbox table(s)", false},
	[S_TABLE] = {"table", "table", 0, "TABLE[,TABLE...]", "public.outbox",
		"the outbox table(s): [schema.]table, quoted identifiers allowed", false},
	[S_TOPIC_TEMPLATE] = {"topic_template", "topic-template", 0, "TEMPLATE",
		"outbox.event.${aggregatetype}",
		"Kafka topic; ${column} is replaced by the row's value (a message's JSON field); "
		"no ${...}: one fixed topic", true},
	[S_TOPIC_PREFIX] = {"topic_prefix", "topic-prefix", 0, "PREFIX", "",
		"prepended to every topic name", true},
	[S_ID_COLUMN] = {"id_column", "id-column", 0, "COLUMN", "id",
		"column holding the event id (the id header)", true},
	[S_KEY_COLUMN] = {"key_column", "key-column", 0, "COLUMN", "aggregateid",
		"column holding the Kafka message key", true},
	[S_TYPE_COLUMN] = {"type_column", "type-column", 0, "COLUMN", "type",
		"column holding the event type (the type header)", true},
	[S_PAYLOAD_COLUMN] = {"payload_column", "payload-column", 0, "COLUMN", "payload",
		"column holding the payload (the value)", true},
	[S_AGGTYPE_COLUMN] = {"aggregatetype_column", "aggregatetype-column", 0, "COLUMN",
		"aggregatetype", "column holding the aggregate type (the envelope's aggregatetype)", true},
	[S_VALUE_FORMAT] = {"value_format", "value-format", 0, "FORMAT", "raw",
		"raw (the payload text), envelope (JSON with id, type, aggregate, payload, commit time, "
		"LSN, xid) or cloudevents (CloudEvents 1.0 Kafka binary mode)", true},
	[S_KEY_FORMAT] = {"key_format", "key-format", 0, "FORMAT", "raw",
		"raw (the key column's text) or json-string (that text as a JSON string, as Kafka "
		"Connect's JsonConverter writes a string key: same bytes, same partition as Debezium "
		"with that converter)", true},
	[S_CE_SOURCE] = {"cloudevents_source", "cloudevents-source", 0, "URI", NULL,
		"ce_source header (default /pgoutbox/<database>/<schema.table>, "
		"for messages /pgoutbox/<database>/message/<prefix>)", true},
	[S_MESSAGES_PREFIX] = {"messages_prefix", "messages-prefix", 0, "PREFIX", "",
		"publish transactional logical messages with this prefix as events (empty: off)", false},
	[S_ON_ERROR] = {"on_error", "on-error", 0, "POLICY", "stop",
		"an event that cannot be mapped or that Kafka refuses: stop (exit 2, confirm nothing "
		"past it) or dlq (send it to dlq_topic and go on)", false},
	[S_DLQ_TOPIC] = {"dlq_topic", "dlq-topic", 0, "TOPIC", "pgoutbox.dlq",
		"dead-letter topic for on_error = dlq", false},
	[S_DELIVERY] = {"delivery", "delivery", 0, "MODE", "at-least-once",
		"at-least-once (confirm what Kafka acknowledged; a restart may repeat events) or "
		"exactly-once (Kafka transactions: a read_committed consumer sees every event once)", false},
	[S_TRANSACTIONAL_ID] = {"transactional_id", "transactional-id", 0, "ID", NULL,
		"Kafka transactional.id of exactly-once delivery (default "
		"pgoutbox-<database system identifier>-<slot>)", false},
	[S_STATE_TOPIC] = {"state_topic", "state-topic", 0, "TOPIC", "pgoutbox.state",
		"compacted topic in which every Kafka transaction records how far the slot is in Kafka "
		"(exactly-once; created if missing)", false},
	[S_TXN_MAX_MS] = {"transaction_max_ms", "transaction-max-ms", 0, "MS", "100",
		"exactly-once: commit a Kafka transaction at the first source transaction end once it "
		"is this old, even while more input waits", false},
	[S_TXN_MAX_EVENTS] = {"transaction_max_events", "transaction-max-events", 0, "N", "10000",
		"exactly-once: commit a Kafka transaction at the first source transaction end once it "
		"holds this many events", false},
	[S_LOG_LEVEL] = {"log_level", "log-level", 0, "LEVEL", "log",
		"debug, log, warning or error (-v is debug)", false},
	[S_SHUTDOWN_TIMEOUT] = {"shutdown_timeout", "shutdown-timeout", 0, "SECONDS", "30",
		"on SIGTERM, how long to wait for Kafka to acknowledge what is in flight", false},
	[S_STATUS_INTERVAL] = {"status_interval", "status-interval", 0, "MS", "10000",
		"longest time between two status updates to PostgreSQL", false},
	[S_REPLICATION_TIMEOUT] = {"replication_timeout", "replication-timeout", 0, "SECONDS", "30",
		"reconnect when the server sent nothing for this long (0: never)", false},
	[S_KAFKA_STALL_TIMEOUT] = {"kafka_stall_timeout", "kafka-stall-timeout", 0, "SECONDS", "60",
		"report unhealthy (/healthz 503, a warning) while events wait and Kafka has acknowledged "
		"nothing for this long (0: never)", false},
	[S_ENDPOS] = {"endpos", "endpos", 0, "LSN", NULL,
		"exit 0 once everything up to this LSN is confirmed (like pg_recvlogical --endpos)", false},
	[S_METRICS] = {"metrics", "metrics", 0, "[HOST:]PORT", NULL,
		"serve Prometheus /metrics and /healthz over HTTP (a bare port binds 127.0.0.1; default off)", false},
	[S_LOG_FORMAT] = {"log_format", "log-format", 0, "FORMAT", "text",
		"text (PostgreSQL style) or json (one object per line: ts, level, pid, msg, detail)", false},
	[S_STATS_INTERVAL] = {"stats_interval", "stats-interval", 0, "SECONDS", "60",
		"seconds between one-line stats summaries in the log (0: none)", false},
	[S_ON_SOURCE_FAILURE] = {"on_source_failure", "on-source-failure", 0, "POLICY", "continue",
		"with several sources, when one stops for good: continue (the others stream on; exit 2 "
		"once none runs) or stop-all (all stop, exit 2)", false},
	[S_BACKFILL_SINCE] = {"backfill_since", "since", 0, "VALUE", "",
		"--backfill/--replay: only rows with backfill_since_column >= VALUE, or when that is empty "
		"rows whose transactions committed at or after the time VALUE (needs "
		"track_commit_timestamp; rows of unknown commit time are included); empty: every row", false},
	[S_BACKFILL_SINCE_COLUMN] = {"backfill_since_column", "since-column", 0, "COLUMN", "",
		"column that --since compares with (e.g. created_at); empty: the commit time", false},
	[S_BACKFILL_ORDER_COLUMN] = {"backfill_order_column", "order-column", 0, "COLUMN", "",
		"column that orders a backfill (per-key order and the resume point); empty: physical order", false},
	[S_BACKFILL_TIMESTAMP_COLUMN] = {"backfill_timestamp_column", "timestamp-column", 0, "COLUMN", "",
		"column whose time becomes a backfilled event's timestamp; empty: the commit time when "
		"track_commit_timestamp knows it, else the time of the backfill's snapshot", false},
	[S_BACKFILL_RESUME] = {"backfill_resume", "backfill-resume", 0, "N:KEY", "",
		"resume an interrupted backfill or replay at the point it printed (table N from order key "
		"KEY on); a backfill then reuses the slot it created", false},
	[S_BACKFILL_BATCH] = {"backfill_batch", "backfill-batch", 0, "ROWS", "1000",
		"rows a backfill fetches at a time (its memory is bounded by this and Kafka's queue)", false},
	[S_CLEANUP] = {"cleanup", "cleanup", 0, "POLICY", "keep",
		"keep (delete nothing; see the retention recipes) or delete (delete rows whose transactions "
		"the slot confirmed; needs DELETE on the table and a primary key)", false},
	[S_CLEANUP_BATCH] = {"cleanup_batch", "cleanup-batch", 0, "ROWS", "1000",
		"cleanup = delete: rows deleted by one statement", false},
	[S_CLEANUP_INTERVAL] = {"cleanup_interval", "cleanup-interval", 0, "MS", "100",
		"cleanup = delete: pause between two deletes (the rate limit: at most cleanup_batch rows "
		"per interval)", false},
};

/*
 * Settings a [source NAME] section of the -c file (or --source
 * NAME.SETTING=VALUE) may set for one source; every per-table setting may be
 * set per source too.  The others (brokers, kafka.*, logging, metrics,
 * shutdown) belong to the process.
 */
static const bool per_source_only[S_COUNT] = {
	[S_CONNINFO] = true,
	[S_SLOT] = true,
	[S_PUBLICATION] = true,
	[S_TABLE] = true,
	[S_MESSAGES_PREFIX] = true,
	[S_ON_ERROR] = true,
	[S_DLQ_TOPIC] = true,
	[S_STATUS_INTERVAL] = true,
	[S_REPLICATION_TIMEOUT] = true,
	[S_ENDPOS] = true,
};

static bool
per_source(int idx)
{
	return per_source_only[idx] || settings[idx].per_table;
}

/*
 * Settings that SIGHUP changes in a running daemon; every other setting keeps
 * the value it started with (a reload that changes one says so in the log).
 * Kept apart from the rows above so that a row added elsewhere needs no new
 * field: a setting is restart-only unless listed here.
 */
static const bool reloadable[S_COUNT] = {
	[S_LOG_LEVEL] = true,
	[S_METRICS] = true,
	[S_LOG_FORMAT] = true,
	[S_STATS_INTERVAL] = true,
};

/* Print text wrapped at 79 columns, starting at column col; continuation
 * lines are indented by indent. */
static void
print_wrapped(FILE *out, const char *text, int col, int indent)
{
	const char *p = text;
	bool space = false;

	while (*p) {
		int w = (int) strcspn(p, " ");

		if (space && col + 1 + w > 79) {
			fprintf(out, "\n%*s", indent, "");
			col = indent;
			space = false;
		}
		if (space) {
			fputc(' ', out);
			col++;
		}
		fprintf(out, "%.*s", w, p);
		col += w;
		p += w;
		while (*p == ' ')
			p++;
		space = true;
	}
	fputc('\n', out);
}

void
config_usage(FILE *out)
{
	static const char *const extra[][2] = {
		{"    --header=NAME=COLUMN", "add header NAME with the column's value to each event "
		 "(repeatable; file key header.NAME = COLUMN)"},
		{"    --table-option=SCHEMA.TABLE.SETTING=VALUE", "a setting for one outbox table only "
		 "(repeatable; file key table.SCHEMA.TABLE.SETTING = VALUE); SETTING is one of "
		 "topic_template, topic_prefix, *_column, value_format, cloudevents_source or header.NAME"},
		{"    --source=NAME.SETTING=VALUE", "a setting of source NAME (repeatable; file section "
		 "[source NAME]); with sources, pgoutbox streams every one's slot, sharing one producer"},
		{"-c, --config=FILE", "read settings from a key = value file (command line wins)"},
		{"-X, --kafka=PROPERTY=VALUE", "set a librdkafka property (repeatable; file key "
		 "kafka.PROPERTY = VALUE)"},
		{"-v, --verbose", "log debug messages"},
		{"-V, --version", "print the version and exit"},
		{"-h, --help", "print this help and exit"},
	};

	fprintf(out,
	        "pgoutbox delivers transactional-outbox events from a PostgreSQL logical\n"
	        "replication slot to Kafka, confirming the slot only after Kafka acknowledged.\n\n"
	        "Usage:\n"
	        "  pgoutbox -d CONNINFO -b BROKERS [OPTION]...\n\nOptions:\n");
	for (int i = 0; i < S_COUNT; i++) {
		char opt[96], doc[600];
		const setting *s = &settings[i];

		if (s->shortopt)
			snprintf(opt, sizeof(opt), "-%c, --%s=%s", s->shortopt, s->longopt, s->meta);
		else
			snprintf(opt, sizeof(opt), "    --%s=%s", s->longopt, s->meta);
		snprintf(doc, sizeof(doc), "%s%s%s%s", s->doc, s->def ? " (default: " : "",
		         s->def ? (*s->def ? s->def : "empty") : "", s->def ? ")" : "");
		if (strlen(opt) > 34) {
			fprintf(out, "  %s\n%37s", opt, "");
		} else {
			fprintf(out, "  %-34s ", opt);
		}
		print_wrapped(out, doc, 37, 37);
	}
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
		if (strlen(extra[i][0]) > 34)
			fprintf(out, "  %s\n%37s", extra[i][0], "");
		else
			fprintf(out, "  %-34s ", extra[i][0]);
		print_wrapped(out, extra[i][1], 37, 37);
	}
	fprintf(out, "  %-34s ", "--check");
	print_wrapped(out, "verify PostgreSQL and Kafka, print each result, exit (0: all passed)", 37, 37);
	fprintf(out, "  %-34s ", "--backfill");
	print_wrapped(out, "create the slot, publish the outbox rows read in its snapshot (see --since), "
	              "then stream from the slot's consistent point", 37, 37);
	fprintf(out, "  %-34s ", "--replay");
	print_wrapped(out, "publish the outbox rows (see --since, --topic-prefix) and exit; no slot is "
	              "created or read", 37, 37);
	fputc('\n', out);
	print_wrapped(out,
	              "SIGHUP re-reads the -c file and applies the settings marked reloadable in the "
	              "documentation (log_level, log_format, stats_interval, metrics); a file with "
	              "errors is logged and ignored.", 0, 0);
	fputc('\n', out);
	print_wrapped(out,
	              "In the -c file the keys are the setting names (conninfo, brokers, slot, "
	              "publication, table, topic_template, topic_prefix, id_column, key_column, "
	              "type_column, payload_column, aggregatetype_column, value_format, "
	              "cloudevents_source, messages_prefix, on_error, dlq_topic, delivery, "
	              "transactional_id, state_topic, transaction_max_ms, transaction_max_events, log_level, "
	              "shutdown_timeout, status_interval, replication_timeout, kafka_stall_timeout, endpos, "
	              "metrics, log_format, "
	              "stats_interval, backfill_since, backfill_since_column, backfill_order_column, "
	              "backfill_timestamp_column, backfill_resume, backfill_batch, cleanup, cleanup_batch, "
	              "cleanup_interval), header.<name> for extra headers, "
	              "table.<schema>.<table>.<setting> for per-table settings and kafka.<property> "
	              "for librdkafka; a [source NAME] line starts the settings of one source "
	              "(several databases or slots from one process).", 0, 0);
	fputc('\n', out);
	print_wrapped(out,
	              "Exit status: 0 clean stop, 1 bad configuration or usage, 2 unrecoverable "
	              "runtime failure (slot or publication missing, Kafka refused an event or an "
	              "event cannot be mapped and on_error = stop).", 0, 0);
}

bool
parse_lsn(const char *s, uint64_t *out)
{
	return lsn_parse(s, out);
}

/* ---------------------------------------------------------------------------
 * Checking a value where it is written
 *
 * Every value is checked as it is read, from a -c file line or an option, so
 * that the message can say where it was written ("FILE:LINE: ...") and what
 * is accepted; a bad value in the file is an error even when the command
 * line overrides it.  After merging only checks that need several settings
 * are left (required settings, per-table settings naming a listed table,
 * the header count, and outbox_new(), the authority on mappings).
 * ------------------------------------------------------------------------- */

typedef enum value_kind {
	V_TEXT = 0,     /* anything (also: may hold a secret, never echoed) */
	V_INT,          /* an integer from min to max (zero_off: or 0, off) */
	V_ENUM,         /* one of accepted (enum_parse) */
	V_LSN,          /* X/Y */
	V_COLUMN,       /* a column name: not empty */
	V_TOPIC,        /* a Kafka topic name */
	V_TOPIC_PART,   /* characters of a topic name, or nothing */
	V_TEMPLATE,     /* a topic template, as outbox.c reads it */
	V_TABLES,       /* the table list */
	V_METRICS,      /* [HOST:]PORT, or empty: off */
	V_TXN_ID,       /* a Kafka transactional.id: not empty, at most 249 bytes */
} value_kind;

typedef struct value_rule {
	value_kind  kind;
	int         min, max;
	bool        zero_off;
	const char *accepted;   /* V_INT: the unit; V_ENUM: the values */
} value_rule;

/* Kept apart from the rows, as reloadable[] is: a setting is V_TEXT unless listed. */
static const value_rule rules[S_COUNT] = {
	[S_TABLE] = {.kind = V_TABLES},
	[S_TOPIC_TEMPLATE] = {.kind = V_TEMPLATE},
	[S_TOPIC_PREFIX] = {.kind = V_TOPIC_PART},
	[S_ID_COLUMN] = {.kind = V_COLUMN},
	[S_KEY_COLUMN] = {.kind = V_COLUMN},
	[S_TYPE_COLUMN] = {.kind = V_COLUMN},
	[S_PAYLOAD_COLUMN] = {.kind = V_COLUMN},
	[S_AGGTYPE_COLUMN] = {.kind = V_COLUMN},
	[S_VALUE_FORMAT] = {.kind = V_ENUM, .accepted = "raw, envelope or cloudevents"},
	[S_KEY_FORMAT] = {.kind = V_ENUM, .accepted = "raw or json-string"},
	[S_ON_ERROR] = {.kind = V_ENUM, .accepted = "stop or dlq"},
	[S_DLQ_TOPIC] = {.kind = V_TOPIC},
	[S_DELIVERY] = {.kind = V_ENUM, .accepted = "at-least-once or exactly-once"},
	[S_TRANSACTIONAL_ID] = {.kind = V_TXN_ID},
	[S_STATE_TOPIC] = {.kind = V_TOPIC},
	[S_TXN_MAX_MS] = {.kind = V_INT, .min = 1, .max = 600000, .accepted = "milliseconds"},
	[S_TXN_MAX_EVENTS] = {.kind = V_INT, .min = 1, .max = 10000000, .accepted = "events"},
	[S_LOG_LEVEL] = {.kind = V_ENUM, .accepted = "debug, log, warning or error"},
	[S_SHUTDOWN_TIMEOUT] = {.kind = V_INT, .min = 0, .max = 86400, .accepted = "seconds"},
	[S_STATUS_INTERVAL] = {.kind = V_INT, .min = 100, .max = 3600000, .accepted = "milliseconds"},
	[S_REPLICATION_TIMEOUT] = {.kind = V_INT, .min = 2, .max = 86400, .zero_off = true,
	                           .accepted = "seconds"},
	[S_KAFKA_STALL_TIMEOUT] = {.kind = V_INT, .min = 0, .max = 86400, .accepted = "seconds"},
	[S_ENDPOS] = {.kind = V_LSN},
	[S_METRICS] = {.kind = V_METRICS},
	[S_LOG_FORMAT] = {.kind = V_ENUM, .accepted = "text or json"},
	[S_STATS_INTERVAL] = {.kind = V_INT, .min = 0, .max = 86400, .accepted = "seconds"},
	[S_ON_SOURCE_FAILURE] = {.kind = V_ENUM, .accepted = "continue or stop-all"},
	[S_BACKFILL_BATCH] = {.kind = V_INT, .min = 1, .max = 100000, .accepted = "rows"},
	[S_CLEANUP] = {.kind = V_ENUM, .accepted = "keep or delete"},
	[S_CLEANUP_BATCH] = {.kind = V_INT, .min = 1, .max = 100000, .accepted = "rows"},
	[S_CLEANUP_INTERVAL] = {.kind = V_INT, .min = 0, .max = 3600000, .accepted = "milliseconds"},
};

#define RESERVED_HEADERS "pgoutbox sets id, type, content-type, ce_* and pgoutbox.* itself"

/* Where a text was written: a line of the -c file, or the command line (path NULL). */
typedef struct origin {
	const char *path;
	int         line;
} origin;

static const origin on_cli = {NULL, 0};

/* errbuf = "FILE:LINE: " when at is a file line, then the message. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
say(char *errbuf, size_t errlen, const origin *at, const char *fmt, ...)
{
	va_list ap;
	int n = 0;

	if (at->path != NULL)
		n = snprintf(errbuf, errlen, "%s:%d: ", at->path, at->line);
	if (n < 0 || (size_t) n >= errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf + n, errlen - (size_t) n, fmt, ap);
	va_end(ap);
}

/* The value of enum setting idx spelled s, or -1. */
static int
enum_parse(int idx, const char *s)
{
	outbox_format f;

	switch (idx) {
	case S_LOG_LEVEL:
		return log_level_parse(s);
	case S_LOG_FORMAT:
		return log_format_parse(s);
	case S_VALUE_FORMAT:
		return outbox_format_parse(s, &f) ? (int) f : -1;
	case S_ON_ERROR:
		return strcmp(s, "stop") == 0 ? 0 : strcmp(s, "dlq") == 0 ? 1 : -1;
	case S_ON_SOURCE_FAILURE:
		return strcmp(s, "continue") == 0 ? 0 : strcmp(s, "stop-all") == 0 ? 1 : -1;
	case S_KEY_FORMAT:
		return strcmp(s, "raw") == 0 ? 0 : strcmp(s, "json-string") == 0 ? 1 : -1;
	case S_CLEANUP:
		return strcmp(s, "keep") == 0 ? 0 : strcmp(s, "delete") == 0 ? 1 : -1;
	case S_DELIVERY:
		return strcmp(s, "at-least-once") == 0 ? 0 : strcmp(s, "exactly-once") == 0 ? 1 : -1;
	default:
		return -1;
	}
}

/* An identifier as SQL needs it written: bare when it folds to itself, else quoted. */
static size_t
ident_show(const char *id, char *out, size_t outlen)
{
	bool bare = (*id >= 'a' && *id <= 'z') || *id == '_';
	size_t n = 0;

	for (const char *s = id; *s && bare; s++)
		bare = (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '$';
	if (outlen == 0)
		return 0;
	if (!bare && n + 1 < outlen)
		out[n++] = '"';
	for (const char *s = id; *s && n + 2 < outlen; s++) {
		if (!bare && *s == '"')
			out[n++] = '"';
		out[n++] = *s;
	}
	if (!bare && n + 1 < outlen)
		out[n++] = '"';
	out[n] = '\0';
	return n;
}

/* "nsp.rel" for messages, quoted where SQL would need it. */
static void
table_show(const char *nsp, const char *rel, char *out, size_t outlen)
{
	size_t n = ident_show(nsp, out, outlen);

	if (n + 1 < outlen) {
		out[n++] = '.';
		ident_show(rel, out + n, outlen - n);
	}
}

/*
 * Parse the table list "[schema.]table[, ...]" into nsp[]/rel[]
 * (malloc'ed, *n of them, at most OUTBOX_MAX_TABLES; the caller frees them,
 * also on failure).  false: why says what is wrong.
 */
static bool
table_list_parse(const char *s, char **nsp, char **rel, size_t *n, char *why, size_t whylen)
{
	const char *p = s + strspn(s, " \t");
	char shown[300];

	*n = 0;
	if (*p == '\0') {
		snprintf(why, whylen, "no table given; use [schema.]table[, ...]");
		return false;
	}
	for (;;) {
		bool spaced;

		while (*p == ' ' || *p == '\t')
			p++;
		if (*n == OUTBOX_MAX_TABLES) {
			snprintf(why, whylen, "more than %d tables", OUTBOX_MAX_TABLES);
			return false;
		}
		if (!outbox_parse_table(&p, false, &nsp[*n], &rel[*n], why, whylen))
			return false;
		(*n)++;
		table_show(nsp[*n - 1], rel[*n - 1], shown, sizeof(shown));
		for (size_t j = 0; j + 1 < *n; j++)
			if (strcmp(nsp[j], nsp[*n - 1]) == 0 && strcmp(rel[j], rel[*n - 1]) == 0) {
				snprintf(why, whylen, "table %s is listed twice", shown);
				return false;
			}
		spaced = *p == ' ' || *p == '\t';
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			return true;
		if (*p != ',') {
			if (spaced)
				snprintf(why, whylen, "unexpected \"%c\" after table %s; separate tables with "
				         "\",\" and quote a name that contains spaces", *p, shown);
			else if (*p == '.' || *p == '=')
				snprintf(why, whylen, "unexpected \"%c\" after table %s; quote a name that "
				         "contains \"%c\"", *p, shown, *p);
			else
				snprintf(why, whylen, "unexpected \"%c\" after table %s; use "
				         "[schema.]table[, ...]", *p, shown);
			return false;
		}
		p++;
	}
}

static void
free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
}

/*
 * Whether outbox.c accepts template s; why says what is wrong.  outbox_new()
 * is the authority, asked with a mapping that holds only this template.
 */
static bool
template_valid(const char *s, char *why, size_t whylen)
{
	outbox_table t = {.table = "t", .map = {.topic_template = s}};
	outbox_config oc = {.tables = &t, .ntables = 1};
	outbox *ob = outbox_new(&oc, why, whylen);
	char echo[600];
	size_t n;

	if (ob != NULL) {
		outbox_free(ob);
		return true;
	}
	/* The caller names the value already: drop outbox.c's own echo of it. */
	for (int i = 0; i < 2; i++) {
		snprintf(echo, sizeof(echo), i ? "topic template \"%s\": " : "invalid topic template \"%s\": ", s);
		n = strlen(echo);
		if (strncmp(why, echo, n) == 0 && why[n] != '\0') {
			memmove(why, why + n, strlen(why + n) + 1);
			break;
		}
	}
	return false;
}

/*
 * Whether s is a valid value of setting idx; if not, errbuf says so:
 * [FILE:LINE: ]invalid value "s" for NAME: why.  NAME is the setting, or
 * the per-table key.  Echoes s: never used for V_TEXT settings such as
 * conninfo, which may hold a password.
 */
static bool
check_value(int idx, const char *s, const origin *at, const char *name,
            char *errbuf, size_t errlen)
{
	const value_rule *r = &rules[idx];
	char why[512], *end;
	char *nsp[OUTBOX_MAX_TABLES], *rel[OUTBOX_MAX_TABLES];
	uint64_t lsn;
	size_t n;
	long v;
	bool ok = false;

	switch (r->kind) {
	case V_TEXT:
		return true;
	case V_INT:
		errno = 0;
		v = strtol(s, &end, 10);
		if ((*s >= '0' && *s <= '9') || *s == '-' || *s == '+') {
			if (end != s && *end == '\0' && errno == 0 &&
			    ((v >= r->min && v <= r->max) || (r->zero_off && v == 0)))
				return true;
		} else {
			end = (char *) s;
		}
		snprintf(why, sizeof(why), "%s; use %s%s from %d to %d",
		         end == s || *end != '\0' ? "not an integer" : "out of range",
		         r->zero_off ? "0 (off) or " : "", r->accepted, r->min, r->max);
		break;
	case V_ENUM:
		if (enum_parse(idx, s) >= 0)
			return true;
		snprintf(why, sizeof(why), "use %s", r->accepted);
		break;
	case V_LSN:
		if (parse_lsn(s, &lsn))
			return true;
		snprintf(why, sizeof(why), "not an LSN; use two hexadecimal numbers X/Y, such as 0/16B3748");
		break;
	case V_COLUMN:
		if (*s != '\0')
			return true;
		snprintf(why, sizeof(why), "the column name is empty");
		break;
	case V_TOPIC:
		if (outbox_topic_valid(s, strlen(s)))
			return true;
		snprintf(why, sizeof(why), "not a valid Kafka topic name; use 1 to 249 letters, digits, "
		         "'.', '_' or '-' (not \".\" or \"..\")");
		break;
	case V_TOPIC_PART:
		for (end = (char *) s; *end && (*end == '.' || outbox_topic_valid(end, 1)); end++)
			;
		if (*end == '\0')
			return true;
		if (*end >= ' ' && *end < 127)
			snprintf(why, sizeof(why), "'%c' is not allowed in a Kafka topic name; use letters, "
			         "digits, '.', '_' or '-'", *end);
		else
			snprintf(why, sizeof(why), "byte 0x%02x is not allowed in a Kafka topic name; use "
			         "letters, digits, '.', '_' or '-'", (unsigned char) *end);
		break;
	case V_TEMPLATE:
		if (template_valid(s, why, sizeof(why)))
			return true;
		break;
	case V_TABLES:
		ok = table_list_parse(s, nsp, rel, &n, why, sizeof(why));
		free_names(nsp, n);
		free_names(rel, n);
		if (ok)
			return true;
		break;
	case V_METRICS:
		if (*s == '\0' || metrics_addr_valid(s, why, sizeof(why)))
			return true;
		/* metrics.c says what is wrong with the address; the value is named here. */
		{
			const char *colon = strstr(why, "\": ");
			if (strncmp(why, "invalid metrics address \"", strlen("invalid metrics address \"")) == 0 && colon != NULL)
				memmove(why, colon + 3, strlen(colon + 3) + 1);
		}
		break;
	case V_TXN_ID:
		if (*s != '\0' && strlen(s) <= 249)
			return true;
		snprintf(why, sizeof(why), *s ? "longer than 249 bytes" : "empty; leave it unset for the "
		         "default pgoutbox-<database system identifier>-<slot>");
		break;
	}
	say(errbuf, errlen, at, "invalid value \"%s\" for %s: %s", s, name, why);
	return false;
}

/* Whether name (nlen bytes) may name an extra header; why says why not. */
static bool
header_name_ok(const char *name, size_t nlen, char *why, size_t whylen)
{
	if (nlen == 0)
		snprintf(why, whylen, "the header name is empty");
	else if (outbox_header_reserved(name, nlen))
		snprintf(why, whylen, "header name \"%.*s\" is reserved: " RESERVED_HEADERS,
		         (int) nlen, name);
	else
		return true;
	return false;
}

/* The per-table settings, "a, b, ... or header.NAME", for messages. */
static void
per_table_list(char *out, size_t outlen)
{
	size_t n = 0;

	out[0] = '\0';
	for (int i = 0; i < S_COUNT; i++)
		if (settings[i].per_table && n < outlen)
			n += (size_t) snprintf(out + n, outlen - n, "%s, ", settings[i].name);
	if (n < outlen)
		snprintf(out + (n >= 2 ? n - 2 : n), outlen - (n >= 2 ? n - 2 : n), " or header.NAME");
}

/* Whether a -X property name may name a secret (as librdkafka's *password*, *secret*). */
static bool
may_hold_secret(const char *s)
{
	return strstr(s, "password") != NULL || strstr(s, "secret") != NULL;
}

/* A per-table setting: table.<schema>.<table>.<setting> = value. */
typedef struct override {
	char *nsp, *rel;
	char *key;           /* SCHEMA.TABLE.SETTING as written, for errors */
	int   idx;           /* setting; -1: a header */
	char *header;        /* idx == -1: header name */
	char *value;         /* idx == -1: column ("" drops the header for this table) */
	int   line;          /* where in the layer's file (0: command line) */
} override;

/* A header mapping: header.<name> = <column>. */
typedef struct hdr {
	char *name;
	char *column;
} hdr;

/* Sources of values while loading; vals[i] owned strings or NULL. */
typedef struct layer {
	const char    *path;     /* the -c file, NULL: the command line */
	char          *vals[S_COUNT];
	kafka_property *kafka;
	size_t         nkafka;
	hdr           *hdrs;
	size_t         nhdrs;
	override      *ovr;
	size_t         novr;
} layer;

static void
layer_free(layer *l)
{
	for (int i = 0; i < S_COUNT; i++)
		free(l->vals[i]);
	for (size_t i = 0; i < l->nkafka; i++) {
		free((char *) l->kafka[i].name);
		free((char *) l->kafka[i].value);
	}
	free(l->kafka);
	for (size_t i = 0; i < l->nhdrs; i++) {
		free(l->hdrs[i].name);
		free(l->hdrs[i].column);
	}
	free(l->hdrs);
	for (size_t i = 0; i < l->novr; i++) {
		free(l->ovr[i].nsp);
		free(l->ovr[i].rel);
		free(l->ovr[i].key);
		free(l->ovr[i].header);
		free(l->ovr[i].value);
	}
	free(l->ovr);
	memset(l, 0, sizeof(*l));
}

static bool
layer_set(layer *l, int idx, const char *val)
{
	char *v = strdup(val);

	if (v == NULL)
		return false;
	free(l->vals[idx]);
	l->vals[idx] = v;
	return true;
}

static bool
layer_add_kafka(layer *l, const char *name, size_t nlen, const char *value)
{
	kafka_property *np = realloc(l->kafka, (l->nkafka + 1) * sizeof(*np));

	if (np == NULL)
		return false;
	l->kafka = np;
	np[l->nkafka].name = strndup(name, nlen);
	np[l->nkafka].value = strdup(value);
	if (np[l->nkafka].name == NULL || np[l->nkafka].value == NULL) {
		free((char *) np[l->nkafka].name);
		free((char *) np[l->nkafka].value);
		return false;
	}
	l->nkafka++;
	return true;
}

/*
 * header.<name> = <column> (file), or --header spec = NAME=COLUMN; a later
 * one for the same name replaces it.  The name may not be reserved, the
 * column not empty (only a per-table header may be empty: it drops one).
 */
static bool
layer_add_header(layer *l, const char *name, size_t nlen, const char *column,
                 const origin *at, const char *spec, char *errbuf, size_t errlen)
{
	char why[300];
	hdr *nh;
	char *n, *c;

	if (!header_name_ok(name, nlen, why, sizeof(why))) {
		if (at->path == NULL)
			say(errbuf, errlen, at, "invalid value \"%s\" for --header: %s", spec, why);
		else
			say(errbuf, errlen, at, "invalid key \"header.%.*s\": %s", (int) nlen, name, why);
		return false;
	}
	if (*column == '\0') {
		if (at->path == NULL)
			say(errbuf, errlen, at, "invalid value \"%s\" for --header: the column name is "
			    "empty", spec);
		else
			say(errbuf, errlen, at, "invalid value \"\" for header.%.*s: the column name is "
			    "empty", (int) nlen, name);
		return false;
	}
	n = strndup(name, nlen);
	c = strdup(column);
	if (n == NULL || c == NULL)
		goto nomem;
	for (size_t i = 0; i < l->nhdrs; i++)
		if (strcmp(l->hdrs[i].name, n) == 0) {
			free(n);
			free(l->hdrs[i].column);
			l->hdrs[i].column = c;
			return true;
		}
	if ((nh = realloc(l->hdrs, (l->nhdrs + 1) * sizeof(*nh))) == NULL)
		goto nomem;
	l->hdrs = nh;
	nh[l->nhdrs++] = (hdr) {n, c};
	return true;
nomem:
	free(n);
	free(c);
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

static int
setting_by_name(const char *name, size_t len)
{
	for (int i = 0; i < S_COUNT; i++)
		if (strlen(settings[i].name) == len && strncmp(settings[i].name, name, len) == 0)
			return i;
	return -1;
}

/*
 * A per-table setting "SCHEMA.TABLE.SETTING" with its value (the file's
 * table.<spec> = value), or (value == NULL) "SCHEMA.TABLE.SETTING=VALUE" as
 * --table-option takes it.  SCHEMA and TABLE are identifiers as in `table`
 * (quoted ones may hold dots and "="); SETTING is a per-table setting or
 * header.NAME.  Errors name the key as written, or the whole option.
 */
static bool
layer_add_override(layer *l, const char *spec, const char *value, const origin *at,
                   char *errbuf, size_t errlen)
{
	override o = {0};
	const char *p = spec, *name, *end;
	override *no;
	char why[512], list[300], what[600];

	o.idx = -1;
	o.line = at->line;
	if (!outbox_parse_table(&p, true, &o.nsp, &o.rel, why, sizeof(why)))
		goto bad_key;
	if (*p != '.') {
		if (*p == '\0' || *p == '=')
			snprintf(why, sizeof(why), "missing setting after the table name; use %s",
			         value ? "table.SCHEMA.TABLE.SETTING" : "SCHEMA.TABLE.SETTING=VALUE");
		else
			snprintf(why, sizeof(why), "unexpected \"%c\" after the table name; quote a name "
			         "that contains \"%c\"", *p, *p);
		goto bad_key;
	}
	name = p + 1;
	end = value ? name + strlen(name) : strchr(name, '=');
	if (end == NULL) {
		snprintf(why, sizeof(why), "expected SCHEMA.TABLE.SETTING=VALUE");
		goto bad_key;
	}
	if (end == name) {
		snprintf(why, sizeof(why), "missing setting after the table name");
		goto bad_key;
	}
	if (!value)
		value = end + 1;
	if ((size_t) (end - name) >= 7 && strncmp(name, "header.", 7) == 0) {
		if (!header_name_ok(name + 7, (size_t) (end - name - 7), why, sizeof(why)))
			goto bad_key;
		if ((o.header = strndup(name + 7, (size_t) (end - name - 7))) == NULL)
			goto nomem;
	} else {
		o.idx = setting_by_name(name, (size_t) (end - name));
		if (o.idx < 0 || !settings[o.idx].per_table) {
			per_table_list(list, sizeof(list));
			snprintf(why, sizeof(why), o.idx < 0 ? "unknown setting \"%.*s\"; per table: %s" :
			         "\"%.*s\" cannot be set per table; per table: %s",
			         (int) (end - name), name, list);
			goto bad_key;
		}
	}
	if ((o.key = strndup(spec, (size_t) (end - spec))) == NULL)
		goto nomem;
	snprintf(what, sizeof(what), "%s%s", at->path ? "table." : "--table-option ", o.key);
	if (o.idx >= 0 && !check_value(o.idx, value, at, what, errbuf, errlen))
		goto error;
	if ((o.value = strdup(value)) == NULL)
		goto nomem;
	if ((no = realloc(l->ovr, (l->novr + 1) * sizeof(*no))) == NULL)
		goto nomem;
	l->ovr = no;
	no[l->novr++] = o;
	return true;
bad_key:
	if (at->path)
		say(errbuf, errlen, at, "invalid key \"table.%s\": %s", spec, why);
	else
		say(errbuf, errlen, at, "invalid value \"%s\" for --table-option: %s", spec, why);
	goto error;
nomem:
	snprintf(errbuf, errlen, "out of memory");
error:
	free(o.nsp);
	free(o.rel);
	free(o.key);
	free(o.header);
	free(o.value);
	return false;
}

static char *
trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/* The "=" that ends the key of a file line: the first one outside "quoted"
 * identifiers (table."a=b".c.key_column = ...), else the first one. */
static char *
key_end(char *s)
{
	bool quoted = false;

	for (char *p = s; *p; p++) {
		if (*p == '"')
			quoted = !quoted;
		else if (*p == '=' && !quoted)
			return p;
	}
	return strchr(s, '=');
}

/* Whether a line's first word looks like a key (then a message may echo it). */
static bool
known_key(const char *s, size_t len)
{
	return setting_by_name(s, len) >= 0 ||
	       (len > 6 && strncmp(s, "kafka.", 6) == 0) ||
	       (len > 7 && strncmp(s, "header.", 7) == 0) ||
	       (len > 6 && strncmp(s, "table.", 6) == 0);
}

/* The layers of one [source NAME] section / --source NAME.* options. */
typedef struct src_layers {
	char  *name;
	layer  file, cli;
	int    line;          /* line of its section header (0: named on the command line only) */
} src_layers;

typedef struct src_list {
	src_layers *v;
	size_t      n;
} src_list;

static void
src_list_free(src_list *sl)
{
	for (size_t i = 0; i < sl->n; i++) {
		free(sl->v[i].name);
		layer_free(&sl->v[i].file);
		layer_free(&sl->v[i].cli);
	}
	free(sl->v);
	memset(sl, 0, sizeof(*sl));
}

#define SOURCE_NAME_MAX 63

/* Whether name (len bytes) may name a source: it labels metrics and log lines. */
static bool
source_name_ok(const char *name, size_t len, char *why, size_t whylen)
{
	if (len == 0) {
		snprintf(why, whylen, "the source name is empty");
		return false;
	}
	if (len > SOURCE_NAME_MAX) {
		snprintf(why, whylen, "the source name is longer than %d characters", SOURCE_NAME_MAX);
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-')) {
			snprintf(why, whylen, "'%c' is not allowed in a source name; use letters, digits, "
			         "'_' and '-'", c >= ' ' && c < 127 ? c : '?');
			return false;
		}
	}
	return true;
}

/* The source called name (len bytes), added when new; NULL when out of memory. */
static src_layers *
src_find(src_list *sl, const char *name, size_t len, bool add)
{
	src_layers *nv;

	for (size_t i = 0; i < sl->n; i++)
		if (strlen(sl->v[i].name) == len && strncmp(sl->v[i].name, name, len) == 0)
			return &sl->v[i];
	if (!add || (nv = realloc(sl->v, (sl->n + 1) * sizeof(*nv))) == NULL)
		return NULL;
	sl->v = nv;
	memset(&nv[sl->n], 0, sizeof(nv[sl->n]));
	if ((nv[sl->n].name = strndup(name, len)) == NULL)
		return NULL;
	return &nv[sl->n++];
}

/*
 * Apply one key = val (val may be modified) to l: a setting, header.NAME,
 * table.SCHEMA.TABLE.SETTING, or, outside a source (in_source NULL),
 * kafka.PROPERTY.  Errors are [FILE:LINE: ]...; they never echo a value of
 * conninfo or of kafka.*.
 */
static bool
apply_key(layer *l, const char *in_source, const char *key, char *val, const origin *at,
          char *errbuf, size_t errlen)
{
	int idx;

	if (strncmp(key, "kafka.", 6) == 0) {
		if (in_source != NULL) {
			say(errbuf, errlen, at, "kafka.* cannot be set per source (source %s): all sources "
			    "share one producer", in_source);
			return false;
		}
		if (key[6] == '\0') {
			say(errbuf, errlen, at, "invalid key \"kafka.\": missing property name after "
			    "\"kafka.\"");
			return false;
		}
		if (!layer_add_kafka(l, key + 6, strlen(key + 6), val))
			goto nomem;
		return true;
	}
	if (strncmp(key, "header.", 7) == 0)
		return layer_add_header(l, key + 7, strlen(key + 7), val, at, NULL, errbuf, errlen);
	if (strncmp(key, "table.", 6) == 0) {
		if (key[6] == '\0') {
			say(errbuf, errlen, at, "invalid key \"table.\": missing SCHEMA.TABLE.SETTING "
			    "after \"table.\"");
			return false;
		}
		return layer_add_override(l, key + 6, val, at, errbuf, errlen);
	}
	idx = setting_by_name(key, strlen(key));
	if (idx < 0) {
		say(errbuf, errlen, at, "unknown setting \"%s\"", key);
		return false;
	}
	if (in_source != NULL && !per_source(idx)) {
		say(errbuf, errlen, at, "setting \"%s\" cannot be set per source (source %s): it belongs "
		    "to the process; set it outside any [source] section", key, in_source);
		return false;
	}
	if (!check_value(idx, val, at, settings[idx].name, errbuf, errlen))
		return false;
	if (!layer_set(l, idx, val))
		goto nomem;
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

/*
 * A section header line "[source NAME]": switch *cur to that source's file
 * layer.  false with errbuf filled when the line is not one.
 */
static bool
section(char *line, src_list *sl, src_layers **cur, const origin *at, char *errbuf, size_t errlen)
{
	char *body = line + 1, *end = line + strlen(line) - 1, why[200];
	src_layers *src;
	size_t len;

	if (*end != ']') {
		say(errbuf, errlen, at, "invalid section header: a line that starts with \"[\" must "
		    "end with \"]\"; use [source NAME]");
		return false;
	}
	*end = '\0';
	body = trim(body);
	if (strncmp(body, "source", 6) != 0 || (body[6] != ' ' && body[6] != '\t')) {
		say(errbuf, errlen, at, "unknown section \"[%s]\": the only section is [source NAME]", body);
		return false;
	}
	body = trim(body + 6);
	len = strlen(body);
	if (!source_name_ok(body, len, why, sizeof(why))) {
		say(errbuf, errlen, at, "invalid section \"[source %s]\": %s", body, why);
		return false;
	}
	if ((src = src_find(sl, body, len, false)) != NULL) {
		say(errbuf, errlen, at, "source %s is defined twice (first at line %d)", body, src->line);
		return false;
	}
	if ((src = src_find(sl, body, len, true)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	src->line = at->line;
	src->file.path = at->path;
	*cur = src;
	return true;
}

/*
 * Read a key = value file into l, and its [source NAME] sections into sl.
 * A value wrapped in single or double quotes loses them (nothing inside is
 * unescaped); a quote that starts a value and is never closed is an error.
 * Errors are "FILE:LINE: ..." and never echo a value of conninfo or of
 * kafka.*.
 */
static bool
load_file(layer *l, src_list *sl, const char *path, char *errbuf, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char line[8192];
	origin at = {path, 0};
	src_layers *cur = NULL;

	l->path = path;
	if (f == NULL) {
		snprintf(errbuf, errlen, "could not open configuration file \"%s\": %s", path, strerror(errno));
		return false;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char *key, *val, *eq;
		size_t vlen;

		at.line++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			say(errbuf, errlen, &at, "line too long (at most %zu bytes)", sizeof(line) - 2);
			goto error;
		}
		key = trim(line);
		if (*key == '\0' || *key == '#')
			continue;
		if (*key == '[') {
			if (!section(key, sl, &cur, &at, errbuf, errlen))
				goto error;
			continue;
		}
		eq = key_end(key);
		if (eq == NULL) {
			size_t w = strcspn(key, " \t");

			if (known_key(key, w))
				say(errbuf, errlen, &at, "missing \"=\" after \"%.*s\"; use key = value", (int) w, key);
			else
				say(errbuf, errlen, &at, "expected key = value, found no \"=\"");
			goto error;
		}
		*eq = '\0';
		key = trim(key);
		val = trim(eq + 1);
		if (*key == '\0') {
			say(errbuf, errlen, &at, "missing key before \"=\"");
			goto error;
		}
		/* 'x' or "x" is x; "a"."b" (quoted identifiers) stays as it is. */
		vlen = strlen(val);
		if (vlen > 0 && (val[0] == '\'' || val[0] == '"')) {
			char *close = strchr(val + 1, val[0]);

			if (close == NULL) {
				say(errbuf, errlen, &at, "invalid value for %s: the %c that starts it is not "
				    "closed", key, val[0]);
				goto error;
			}
			if (close == val + vlen - 1) {
				*close = '\0';
				val++;
			}
		}
		if (!apply_key(cur ? &cur->file : l, cur ? cur->name : NULL, key, val, &at, errbuf, errlen))
			goto error;
	}
	if (ferror(f)) {
		snprintf(errbuf, errlen, "could not read configuration file \"%s\": %s", path, strerror(errno));
		goto error;
	}
	fclose(f);
	return true;
error:
	fclose(f);
	return false;
}

/* --source NAME.KEY=VALUE: KEY as in a [source NAME] section. */
static bool
cli_source(src_list *sl, const char *spec, char *errbuf, size_t errlen)
{
	const char *dot = strchr(spec, '.');
	char why[200], *key = NULL;
	const char *eq;
	src_layers *src;
	bool ok;

	if (dot == NULL || dot == spec) {
		snprintf(errbuf, errlen, "invalid value for --source: expected NAME.SETTING=VALUE");
		return false;
	}
	if (!source_name_ok(spec, (size_t) (dot - spec), why, sizeof(why))) {
		snprintf(errbuf, errlen, "invalid value for --source: %s", why);
		return false;
	}
	eq = dot[1] == 't' && strncmp(dot + 1, "table.", 6) == 0 ? NULL : strchr(dot + 1, '=');
	if (eq == NULL) {
		/* table."a=b".c.key_column=v: the "=" outside quotes */
		bool quoted = false;
		for (const char *p = dot + 1; *p && eq == NULL; p++) {
			if (*p == '"')
				quoted = !quoted;
			else if (*p == '=' && !quoted)
				eq = p;
		}
	}
	if (eq == NULL || eq == dot + 1) {
		snprintf(errbuf, errlen, "invalid value for --source %.*s: expected %.*s.SETTING=VALUE",
		         (int) (dot - spec), spec, (int) (dot - spec), spec);
		return false;
	}
	if ((src = src_find(sl, spec, (size_t) (dot - spec), true)) == NULL ||
	    (key = strndup(dot + 1, (size_t) (eq - dot - 1))) == NULL) {
		free(key);
		snprintf(errbuf, errlen, "out of memory");
		return false;
	}
	{
		char *val = strdup(eq + 1);
		char msg[1024];

		if (val == NULL) {
			free(key);
			snprintf(errbuf, errlen, "out of memory");
			return false;
		}
		ok = apply_key(&src->cli, src->name, key, val, &on_cli, msg, sizeof(msg));
		if (!ok)
			snprintf(errbuf, errlen, "--source %s.%s: %s", src->name, key, msg);
		free(val);
	}
	free(key);
	return ok;
}

/* Keep p (malloc'ed, may be NULL) until config_free; NULL when p is NULL or out of memory. */
static void *
own(config *cfg, void *p)
{
	void **n;

	if (p == NULL)
		return NULL;
	if ((n = realloc(cfg->owned, (cfg->nowned + 1) * sizeof(*n))) == NULL) {
		free(p);
		return NULL;
	}
	cfg->owned = n;
	n[cfg->nowned++] = p;
	return p;
}

/* "nsp"."rel" with quotes doubled: what outbox_parse_table() reads back as is. */
static char *
quote_table(const char *nsp, const char *rel)
{
	char *out = malloc(2 * (strlen(nsp) + strlen(rel)) + 6), *o = out;
	const char *parts[2] = {nsp, rel};

	if (out == NULL)
		return NULL;
	for (int i = 0; i < 2; i++) {
		if (i)
			*o++ = '.';
		*o++ = '"';
		for (const char *s = parts[i]; *s; s++) {
			if (*s == '"')
				*o++ = '"';
			*o++ = *s;
		}
		*o++ = '"';
	}
	*o = '\0';
	return out;
}

/*
 * One mapping: vals with the headers and the overrides for (nsp, rel) of
 * layers[0..n) applied in order, later layers winning (nsp == NULL: the
 * global mapping only, for logical messages, which take their headers from
 * the message).  Every value was checked when read.
 */
static bool
build_mapping(config *cfg, outbox_mapping *m, const char *const *vals, const layer *const *layers,
              int nlayers, const char *nsp, const char *rel, char *errbuf, size_t errlen)
{
	const char *v[S_COUNT];
	outbox_header_map *h;
	size_t nh = 0, room = 1;
	char shown[300];

	memcpy(v, vals, sizeof(v));
	/* At most every header plus every override header. */
	for (int li = 0; li < nlayers; li++)
		room += layers[li]->nhdrs + layers[li]->novr;
	if ((h = own(cfg, calloc(room, sizeof(*h)))) == NULL)
		goto nomem;
	for (int li = 0; li < nlayers; li++)
		for (size_t i = 0; i < layers[li]->nhdrs; i++) {
			const hdr *g = &layers[li]->hdrs[i];
			size_t j;
			for (j = 0; j < nh && strcmp(h[j].name, g->name) != 0; j++)
				;
			h[j] = (outbox_header_map) {g->name, g->column};
			if (j == nh)
				nh++;
		}
	for (int li = 0; nsp != NULL && li < nlayers; li++)
		for (size_t i = 0; i < layers[li]->novr; i++) {
			const override *o = &layers[li]->ovr[i];
			size_t j;

			if (strcmp(o->nsp, nsp) != 0 || strcmp(o->rel, rel) != 0)
				continue;
			if (o->idx >= 0) {
				v[o->idx] = o->value;
				continue;
			}
			for (j = 0; j < nh && strcmp(h[j].name, o->header) != 0; j++)
				;
			if (*o->value == '\0') {            /* drop a global header here */
				if (j < nh)
					memmove(&h[j], &h[j + 1], (nh - j - 1) * sizeof(*h));
				nh -= j < nh;
				continue;
			}
			h[j] = (outbox_header_map) {o->header, o->value};
			if (j == nh)
				nh++;
		}
	if (nsp != NULL && nh > OUTBOX_MAX_EXTRA_HEADERS) {
		table_show(nsp, rel, shown, sizeof(shown));
		snprintf(errbuf, errlen, "too many headers for table %s: %zu mapped, at most %d", shown, nh, OUTBOX_MAX_EXTRA_HEADERS);
		return false;
	}
	if (nsp == NULL)
		nh = 0;
	/* Strings of the layers die with them: copy what the mapping keeps. */
	for (size_t i = 0; i < nh; i++)
		if (!(h[i].name = own(cfg, strdup(h[i].name))) ||
		    !(h[i].column = own(cfg, strdup(h[i].column))))
			goto nomem;
	m->headers = nh ? h : NULL;
	m->nheaders = nh;
	m->format = (outbox_format) enum_parse(S_VALUE_FORMAT, v[S_VALUE_FORMAT]);
	m->key_json = enum_parse(S_KEY_FORMAT, v[S_KEY_FORMAT]) == 1;
#define COPY(field, idx) \
	if (!(m->field = v[idx] ? own(cfg, strdup(v[idx])) : NULL) && v[idx]) goto nomem
	COPY(topic_template, S_TOPIC_TEMPLATE);
	COPY(topic_prefix, S_TOPIC_PREFIX);
	COPY(col_id, S_ID_COLUMN);
	COPY(col_key, S_KEY_COLUMN);
	COPY(col_type, S_TYPE_COLUMN);
	COPY(col_payload, S_PAYLOAD_COLUMN);
	COPY(col_aggregatetype, S_AGGTYPE_COLUMN);
	COPY(ce_source, S_CE_SOURCE);
#undef COPY
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

/*
 * The `table` list of a source and every table's mapping.  Overrides of
 * layers[check_from..n) must name a listed table; those of the layers below
 * (the global ones, with several sources) need only name a table of some
 * source: matched[] (one flag per override of those layers, in order) is
 * set for each that names one of these tables.
 */
static bool
build_tables(config *cfg, config_source *cs, const char *const *vals, const layer *const *layers,
             int nlayers, int check_from, bool *matched, char *errbuf, size_t errlen)
{
	char *nsp[OUTBOX_MAX_TABLES], *rel[OUTBOX_MAX_TABLES];
	size_t n = 0, k = 0;
	char why[512], shown[300];
	bool ok = false;

	if (!table_list_parse(vals[S_TABLE], nsp, rel, &n, why, sizeof(why))) {
		snprintf(errbuf, errlen, "invalid value \"%s\" for table%s%s: %s", vals[S_TABLE],
		         cs->name[0] ? " of source " : "", cs->name, why);
		goto out;
	}
	for (int li = 0; li < nlayers; li++)
		for (size_t i = 0; i < layers[li]->novr; i++, k += li < check_from) {
			const override *o = &layers[li]->ovr[i];
			origin at = {layers[li]->path, o->line};
			size_t j;

			for (j = 0; j < n && !(strcmp(o->nsp, nsp[j]) == 0 && strcmp(o->rel, rel[j]) == 0); j++)
				;
			if (li < check_from) {
				if (j < n)
					matched[k] = true;
				continue;
			}
			if (j == n) {
				table_show(o->nsp, o->rel, shown, sizeof(shown));
				say(errbuf, errlen, &at, "%s%s names table %s, which is not one of the outbox "
				    "tables (table = %s%s%s)", at.path ? "table." : "--table-option ", o->key,
				    shown, vals[S_TABLE], cs->name[0] ? " in source " : "", cs->name);
				goto out;
			}
		}
	if ((cs->tables = own(cfg, calloc(n, sizeof(*cs->tables)))) == NULL)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		if ((cs->tables[i].table = own(cfg, quote_table(nsp[i], rel[i]))) == NULL)
			goto nomem;
		cs->ntables++;
		if (!build_mapping(cfg, &cs->tables[i].map, vals, layers, nlayers, nsp[i], rel[i],
		                   errbuf, errlen))
			goto out;
	}
	ok = true;
	goto out;
nomem:
	snprintf(errbuf, errlen, "out of memory");
out:
	free_names(nsp, n);
	free_names(rel, n);
	return ok;
}

/*
 * Build source cs from vals (its effective settings) and its layers
 * (global file, global command line[, source file, source command line]).
 */
static bool
build_source(config *cfg, config_source *cs, const char *name, const char *const *vals,
             const layer *const *layers, int nlayers, int check_from, bool *matched,
             char *errbuf, size_t errlen)
{
	outbox_config oc;
	outbox *ob;

	cs->name = own(cfg, strdup(name));
	if (cs->name == NULL)
		goto nomem;
	if (vals[S_CONNINFO] == NULL) {
		if (name[0])
			snprintf(errbuf, errlen, "source %s has no PostgreSQL connection: set conninfo in "
			         "its [source %s] section (or --source %s.conninfo=...)", name, name, name);
		else
			snprintf(errbuf, errlen, "no PostgreSQL connection given: use -d CONNINFO (or conninfo in the -c file)");
		return false;
	}
	if (!(cs->values = own(cfg, calloc(S_COUNT, sizeof(*cs->values)))))
		goto nomem;
	for (int i = 0; i < S_COUNT; i++)
		if (vals[i] != NULL && !(cs->values[i] = own(cfg, strdup(vals[i]))))
			goto nomem;
	cs->conninfo = cs->values[S_CONNINFO];
	cs->slot = cs->values[S_SLOT];
	cs->publication = cs->values[S_PUBLICATION];
	cs->table = cs->values[S_TABLE];
	cs->messages_prefix = cs->values[S_MESSAGES_PREFIX];
	cs->dlq_topic = cs->values[S_DLQ_TOPIC];
	cs->on_error_dlq = enum_parse(S_ON_ERROR, vals[S_ON_ERROR]) == 1;
	cs->status_interval_ms = (int) strtol(vals[S_STATUS_INTERVAL], NULL, 10);
	cs->replication_timeout_s = (int) strtol(vals[S_REPLICATION_TIMEOUT], NULL, 10);
	if (vals[S_ENDPOS] != NULL)
		parse_lsn(vals[S_ENDPOS], &cs->endpos);
	if (!build_tables(cfg, cs, vals, layers, nlayers, check_from, matched, errbuf, errlen) ||
	    !build_mapping(cfg, &cs->messages, vals, layers, nlayers, NULL, NULL, errbuf, errlen))
		return false;
	/* The same check the daemon makes when it starts, so that a mapping error
	 * is a configuration error, also for a reload. */
	oc = (outbox_config) {.tables = cs->tables, .ntables = cs->ntables,
	                      .messages_prefix = cs->messages_prefix, .messages = cs->messages};
	if ((ob = outbox_new(&oc, errbuf, errlen)) == NULL) {
		if (name[0]) {
			char msg[1024];
			snprintf(msg, sizeof(msg), "source %s: %s", name, errbuf);
			snprintf(errbuf, errlen, "%s", msg);
		}
		return false;
	}
	outbox_free(ob);
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

/*
 * The sources: one made of the global settings when there are no [source]
 * sections or --source options, else one per name.  A source's setting is
 * the most specific one given: its own command line, its own section, the
 * global command line, the global file, the default.
 */
static bool
build_sources(config *cfg, const char *const *vals, const layer *file, const layer *cli,
              const src_list *sl, char *errbuf, size_t errlen)
{
	const layer *layers[4] = {file, cli, NULL, NULL};
	size_t novr = file->novr + cli->novr, k = 0;
	bool *matched = NULL, ok = false;

	if (sl->n == 0) {
		if ((cfg->sources = calloc(1, sizeof(*cfg->sources))) == NULL)
			goto nomem;
		cfg->nsources = 1;
		return build_source(cfg, &cfg->sources[0], "", vals, layers, 2, 0, NULL, errbuf, errlen);
	}
	if ((cfg->sources = calloc(sl->n, sizeof(*cfg->sources))) == NULL ||
	    (novr > 0 && (matched = calloc(novr, sizeof(*matched))) == NULL))
		goto nomem;
	for (size_t i = 0; i < sl->n; i++) {
		const src_layers *src = &sl->v[i];
		const char *sv[S_COUNT];

		for (int j = 0; j < S_COUNT; j++)
			sv[j] = !per_source(j) ? vals[j] : src->cli.vals[j] ? src->cli.vals[j] :
			        src->file.vals[j] ? src->file.vals[j] : vals[j];
		layers[2] = &src->file;
		layers[3] = &src->cli;
		cfg->nsources++;
		if (!build_source(cfg, &cfg->sources[i], src->name, sv, layers, 4, 2, matched,
		                  errbuf, errlen))
			goto out;
		for (size_t j = 0; j < i; j++)
			if (strcmp(cfg->sources[j].conninfo, cfg->sources[i].conninfo) == 0 &&
			    strcmp(cfg->sources[j].slot, cfg->sources[i].slot) == 0) {
				snprintf(errbuf, errlen, "sources %s and %s use the same connection and slot "
				         "\"%s\": give each source its own slot", cfg->sources[j].name,
				         cfg->sources[i].name, cfg->sources[i].slot);
				goto out;
			}
	}
	/* A global per-table setting must name a table of some source. */
	for (int li = 0; li < 2; li++)
		for (size_t i = 0; i < layers[li]->novr; i++, k++)
			if (!matched[k]) {
				const override *o = &layers[li]->ovr[i];
				origin at = {layers[li]->path, o->line};
				char shown[300];

				table_show(o->nsp, o->rel, shown, sizeof(shown));
				say(errbuf, errlen, &at, "%s%s names table %s, which is not an outbox table of "
				    "any source", at.path ? "table." : "--table-option ", o->key, shown);
				goto out;
			}
	ok = true;
	goto out;
nomem:
	snprintf(errbuf, errlen, "out of memory");
out:
	free(matched);
	return ok;
}

/* The option getopt knows by val, as --help spells it (is_long) or as -X. */
static void
option_name(const struct option *longopts, int val, bool is_long, char *out, size_t outlen)
{
	if (!is_long && val > 0 && val < 256) {
		snprintf(out, outlen, "-%c", val);
		return;
	}
	for (const struct option *o = longopts; o->name != NULL; o++)
		if (o->val == val) {
			snprintf(out, outlen, "--%s", o->name);
			return;
		}
	snprintf(out, outlen, "?");
}

/* arg ("--NAME[=VALUE]") matched no long option, or more than one: say which. */
static void
bad_long_option(const struct option *longopts, const char *arg, char *errbuf, size_t errlen)
{
	size_t len = strcspn(arg + 2, "="), used = 0;
	char list[600] = "";
	int matches = 0;

	for (const struct option *o = longopts; len > 0 && o->name != NULL; o++)
		if (strncmp(o->name, arg + 2, len) == 0) {
			matches++;
			if (o->val != 'L' && used < sizeof(list))   /* --list-settings stays hidden */
				used += (size_t) snprintf(list + used, sizeof(list) - used, "%s--%s",
				                          used ? ", " : "", o->name);
		}
	if (matches > 1)
		snprintf(errbuf, errlen, "option \"--%.*s\" is ambiguous: it may be %s", (int) len,
		         arg + 2, list);
	else
		snprintf(errbuf, errlen, "unknown option \"--%.*s\"", (int) len, arg + 2);
}

config_rc
config_load(config *cfg, int argc, char **argv, char *errbuf, size_t errlen)
{
	enum { OPT_BASE = 256 };
	struct option longopts[S_COUNT + 14];
	/* "+": stop at the first non-option; ":": report a missing argument as ':'. */
	char shortopts[64] = "+:c:X:vVh";
	layer cli = {0}, file = {0};
	src_list sl = {0};
	const char *config_path = NULL;
	const char *vals[S_COUNT];
	char name[64];
	int n = 0, c, last = 0;
	config_rc rc = CONFIG_ERROR;

	memset(cfg, 0, sizeof(*cfg));
	for (int i = 0; i < S_COUNT; i++) {
		longopts[n++] = (struct option) {settings[i].longopt, required_argument, NULL, OPT_BASE + i};
		if (settings[i].shortopt) {
			size_t k = strlen(shortopts);
			shortopts[k] = (char) settings[i].shortopt;
			shortopts[k + 1] = ':';
			shortopts[k + 2] = '\0';
		}
	}
	longopts[n++] = (struct option) {"config", required_argument, NULL, 'c'};
	longopts[n++] = (struct option) {"kafka", required_argument, NULL, 'X'};
	longopts[n++] = (struct option) {"header", required_argument, NULL, 'H'};
	longopts[n++] = (struct option) {"table-option", required_argument, NULL, 'T'};
	longopts[n++] = (struct option) {"source", required_argument, NULL, 'S'};
	longopts[n++] = (struct option) {"verbose", no_argument, NULL, 'v'};
	longopts[n++] = (struct option) {"version", no_argument, NULL, 'V'};
	longopts[n++] = (struct option) {"help", no_argument, NULL, 'h'};
	longopts[n++] = (struct option) {"check", no_argument, NULL, 'k'};
	longopts[n++] = (struct option) {"backfill", no_argument, NULL, 'B'};
	longopts[n++] = (struct option) {"replay", no_argument, NULL, 'R'};
	/* Hidden: the table as text, so tests can hold the docs to it. */
	longopts[n++] = (struct option) {"list-settings", no_argument, NULL, 'L'};
	longopts[n] = (struct option) {NULL, 0, NULL, 0};

	opterr = 0;
#ifdef __GLIBC__
	optind = 0;     /* glibc: a full restart, as SIGHUP parses the command line again */
#else
	optind = 1;
#endif
	while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		int idx = -1;

		if (c >= OPT_BASE && c < OPT_BASE + S_COUNT)
			idx = c - OPT_BASE;
		for (int i = 0; idx < 0 && i < S_COUNT; i++)
			if (settings[i].shortopt && c == settings[i].shortopt)
				idx = i;
		last = idx >= 0 ? OPT_BASE + idx : c;
		if (idx >= 0) {
			if (!check_value(idx, optarg, &on_cli, settings[idx].name, errbuf, errlen))
				goto out;
			if (!layer_set(&cli, idx, optarg))
				goto nomem;
			continue;
		}
		switch (c) {
		case 'c':
			config_path = optarg;
			break;
		case 'X': {
			const char *eq = strchr(optarg, '=');
			if (eq == NULL) {
				/* The value may have been meant for it: not echoed if it could be a secret. */
				if (may_hold_secret(optarg))
					snprintf(errbuf, errlen, "invalid value for -X: expected PROPERTY=VALUE");
				else
					snprintf(errbuf, errlen, "invalid value \"%s\" for -X: expected PROPERTY=VALUE",
					         optarg);
				goto out;
			}
			if (eq == optarg) {
				snprintf(errbuf, errlen, "invalid value for -X: missing property name before "
				         "\"=\"; use PROPERTY=VALUE");
				goto out;
			}
			if (!layer_add_kafka(&cli, optarg, (size_t) (eq - optarg), eq + 1))
				goto nomem;
			break;
		}
		case 'H': {
			const char *eq = strchr(optarg, '=');
			if (eq == NULL) {
				snprintf(errbuf, errlen, "invalid value \"%s\" for --header: expected NAME=COLUMN",
				         optarg);
				goto out;
			}
			if (!layer_add_header(&cli, optarg, (size_t) (eq - optarg), eq + 1, &on_cli, optarg,
			                      errbuf, errlen))
				goto out;
			break;
		}
		case 'T':
			if (!layer_add_override(&cli, optarg, NULL, &on_cli, errbuf, errlen))
				goto out;
			break;
		case 'S':
			if (!cli_source(&sl, optarg, errbuf, errlen))
				goto out;
			break;
		case 'v':
			if (!layer_set(&cli, S_LOG_LEVEL, "debug"))
				goto nomem;
			break;
		case 'V':
			cfg->show_version = true;
			break;
		case 'h':
			cfg->show_help = true;
			break;
		case 'k':
			cfg->check = true;
			break;
		case 'B':
			cfg->backfill = true;
			break;
		case 'R':
			cfg->replay = true;
			break;
		case 'L':
			cfg->list_settings = true;
			break;
		case ':':
			option_name(longopts, optopt, strncmp(argv[optind - 1], "--", 2) == 0, name, sizeof(name));
			snprintf(errbuf, errlen, "option \"%s\" requires an argument", name);
			goto out;
		default:
			/* glibc: optopt is the option's val for "--help=x", 0 for an unknown or
			 * ambiguous long option, the character for an unknown short one. */
			if (strncmp(argv[optind - 1], "--", 2) != 0) {
				if (optopt > ' ' && optopt < 127)
					snprintf(errbuf, errlen, "unknown option \"-%c\"", optopt);
				else
					snprintf(errbuf, errlen, "unknown option in \"%s\"", argv[optind - 1]);
			} else if (optopt != 0) {
				option_name(longopts, optopt, true, name, sizeof(name));
				snprintf(errbuf, errlen, "option \"%s\" takes no argument", name);
			} else {
				bad_long_option(longopts, argv[optind - 1], errbuf, errlen);
			}
			goto out;
		}
	}
	if (optind < argc) {
		const char *arg = argv[optind];
		size_t len = strcspn(arg, "=");

		/* Most often the rest of an unquoted value: never echo what may be a password. */
		if (last == OPT_BASE + S_CONNINFO)
			snprintf(errbuf, errlen, "unexpected argument after the value of -d: quote a "
			         "connection string that contains spaces (-d \"host=... dbname=...\")");
		else if (last == 'X')
			snprintf(errbuf, errlen, "unexpected argument after the value of -X: quote a "
			         "value that contains spaces");
		else
			snprintf(errbuf, errlen, "unexpected argument \"%.*s%s\": pgoutbox takes options "
			         "only; quote a value that contains spaces", (int) len, arg,
			         arg[len] ? "=..." : "");
		goto out;
	}
	if (cfg->show_help || cfg->show_version || cfg->list_settings) {
		rc = CONFIG_EXIT;
		goto out;
	}
	if (config_path != NULL && !load_file(&file, &sl, config_path, errbuf, errlen))
		goto out;

	for (int i = 0; i < S_COUNT; i++)
		vals[i] = cli.vals[i] ? cli.vals[i] : file.vals[i] ? file.vals[i] : settings[i].def;
	if (vals[S_BROKERS] == NULL) {
		snprintf(errbuf, errlen, "no Kafka brokers given: use -b BROKERS (or brokers in the -c file)");
		goto out;
	}
	/* Every value was checked where it was written: these conversions hold. */
	cfg->log_level = enum_parse(S_LOG_LEVEL, vals[S_LOG_LEVEL]);
	cfg->log_format = enum_parse(S_LOG_FORMAT, vals[S_LOG_FORMAT]);
	cfg->exactly_once = enum_parse(S_DELIVERY, vals[S_DELIVERY]) == 1;
	cfg->txn_max_ms = (int) strtol(vals[S_TXN_MAX_MS], NULL, 10);
	cfg->txn_max_events = (int) strtol(vals[S_TXN_MAX_EVENTS], NULL, 10);
	cfg->stats_interval_s = (int) strtol(vals[S_STATS_INTERVAL], NULL, 10);
	cfg->shutdown_timeout_s = (int) strtol(vals[S_SHUTDOWN_TIMEOUT], NULL, 10);
	cfg->kafka_stall_timeout_s = (int) strtol(vals[S_KAFKA_STALL_TIMEOUT], NULL, 10);
	cfg->on_source_failure_stop_all = enum_parse(S_ON_SOURCE_FAILURE, vals[S_ON_SOURCE_FAILURE]) == 1;
	if (!build_sources(cfg, vals, &file, &cli, &sl, errbuf, errlen))
		goto out;
	/* The effective text of every setting, to tell what a reload changes
	 * (per-source settings: those of the sources). */
	if (vals[S_ENDPOS] != NULL)
		parse_lsn(vals[S_ENDPOS], &cfg->endpos);
	cfg->backfill_batch = (int) strtol(vals[S_BACKFILL_BATCH], NULL, 10);
	cfg->cleanup_delete = enum_parse(S_CLEANUP, vals[S_CLEANUP]) == 1;
	cfg->cleanup_batch = (int) strtol(vals[S_CLEANUP_BATCH], NULL, 10);
	cfg->cleanup_interval_ms = (int) strtol(vals[S_CLEANUP_INTERVAL], NULL, 10);
	if (cfg->backfill && cfg->replay) {
		snprintf(errbuf, errlen, "--backfill and --replay cannot be combined: --backfill creates the "
		         "slot and streams on, --replay re-publishes rows without a slot");
		goto out;
	}
	if (vals[S_BACKFILL_RESUME][0] != '\0' && !cfg->backfill && !cfg->replay) {
		snprintf(errbuf, errlen, "backfill_resume goes with --backfill or --replay");
		goto out;
	}
	/* The effective text of every setting, to tell what a reload changes. */
	if (!(cfg->values = calloc(S_COUNT, sizeof(*cfg->values))))
		goto nomem;
	for (int i = 0; i < S_COUNT; i++)
		if (vals[i] != NULL && !(cfg->values[i] = strdup(vals[i])))
			goto nomem;
	{
		/* The first source's, for --check and what reads one source. */
		const config_source *s0 = &cfg->sources[0];

		if (!(cfg->conninfo = strdup(s0->conninfo)) ||
		    !(cfg->brokers = strdup(vals[S_BROKERS])) ||
		    !(cfg->slot = strdup(s0->slot)) ||
		    !(cfg->publication = strdup(s0->publication)) ||
		    !(cfg->table = strdup(s0->table)) ||
		    !(cfg->topic_template = strdup(s0->values[S_TOPIC_TEMPLATE])))
			goto nomem;
		cfg->tables = s0->tables;
		cfg->ntables = s0->ntables;
		cfg->messages = s0->messages;
		cfg->messages_prefix = s0->messages_prefix;
		cfg->on_error_dlq = s0->on_error_dlq;
		cfg->dlq_topic = s0->dlq_topic;
		cfg->status_interval_ms = s0->status_interval_ms;
		cfg->replication_timeout_s = s0->replication_timeout_s;
		cfg->endpos = s0->endpos;
	}
	if (!(cfg->backfill_since = own(cfg, strdup(vals[S_BACKFILL_SINCE]))) ||
	    !(cfg->backfill_since_column = own(cfg, strdup(vals[S_BACKFILL_SINCE_COLUMN]))) ||
	    !(cfg->backfill_order_column = own(cfg, strdup(vals[S_BACKFILL_ORDER_COLUMN]))) ||
	    !(cfg->backfill_timestamp_column = own(cfg, strdup(vals[S_BACKFILL_TIMESTAMP_COLUMN]))) ||
	    !(cfg->backfill_resume = own(cfg, strdup(vals[S_BACKFILL_RESUME]))) ||
	    !(cfg->state_topic = own(cfg, strdup(vals[S_STATE_TOPIC]))) ||
	    (vals[S_TRANSACTIONAL_ID] != NULL &&
	     !(cfg->transactional_id = own(cfg, strdup(vals[S_TRANSACTIONAL_ID])))))
		goto nomem;
	/* One producer's transactions record one position: one source, streamed. */
	if (cfg->exactly_once && cfg->nsources > 1) {
		snprintf(errbuf, errlen, "delivery = exactly-once takes one source: its Kafka transactions "
		         "record one slot's position; run a pgoutbox per source");
		goto out;
	}
	if (cfg->exactly_once && (cfg->backfill || cfg->replay)) {
		snprintf(errbuf, errlen, "--backfill and --replay publish at least once: run them with "
		         "delivery = at-least-once, then stream with exactly-once");
		goto out;
	}
	if ((cfg->backfill || cfg->replay) && cfg->nsources > 1) {
		snprintf(errbuf, errlen, "--backfill and --replay work on one source: run them with a "
		         "configuration without [source NAME] sections, for the source to backfill");
		goto out;
	}
	if (cfg->backfill_resume[0] != '\0') {
		char *end;
		unsigned long t = strtoul(cfg->backfill_resume, &end, 10);

		if (cfg->backfill_resume[0] < '1' || cfg->backfill_resume[0] > '9' || *end != ':' ||
		    t == 0 || t > cfg->ntables) {
			snprintf(errbuf, errlen, "invalid value \"%.200s\" for backfill_resume: use N:KEY as the "
			         "interrupted run printed it, N a table number from 1 to %zu", cfg->backfill_resume,
			         cfg->ntables);
			goto out;
		}
	}
	if (vals[S_METRICS] != NULL && vals[S_METRICS][0] != '\0' &&
	    !(cfg->metrics = strdup(vals[S_METRICS])))
		goto nomem;
	/* Kafka properties: file first, then command line, so the latter wins. */
	cfg->nkafka = file.nkafka + cli.nkafka;
	if (cfg->nkafka > 0) {
		cfg->kafka = calloc(cfg->nkafka, sizeof(*cfg->kafka));
		if (cfg->kafka == NULL) {
			cfg->nkafka = 0;
			goto nomem;
		}
		if (file.nkafka > 0)
			memcpy(cfg->kafka, file.kafka, file.nkafka * sizeof(*cfg->kafka));
		if (cli.nkafka > 0)
			memcpy(cfg->kafka + file.nkafka, cli.kafka, cli.nkafka * sizeof(*cfg->kafka));
		file.nkafka = cli.nkafka = 0;   /* strings moved to cfg */
	}
	/* Transactions are pgoutbox's to run: a transactional.id alone would
	 * make every produce outside a transaction fail. */
	for (size_t i = 0; i < cfg->nkafka; i++)
		if (strcmp(cfg->kafka[i].name, "transactional.id") == 0) {
			snprintf(errbuf, errlen, "Kafka property transactional.id is pgoutbox's: set "
			         "delivery = exactly-once, and transactional_id to choose the id");
			goto out;
		}
	rc = CONFIG_OK;
	goto out;

nomem:
	snprintf(errbuf, errlen, "out of memory");
out:
	layer_free(&cli);
	layer_free(&file);
	src_list_free(&sl);
	if (rc == CONFIG_ERROR)
		config_free(cfg);
	return rc;
}

void
config_free(config *cfg)
{
	if (cfg->conninfo)
		memset(cfg->conninfo, 0, strlen(cfg->conninfo));
	free(cfg->conninfo);
	free(cfg->brokers);
	free(cfg->slot);
	free(cfg->publication);
	free(cfg->table);
	free(cfg->topic_template);
	free(cfg->metrics);
	cfg->metrics = NULL;
	for (size_t i = 0; i < cfg->nkafka; i++) {
		free((char *) cfg->kafka[i].name);
		free((char *) cfg->kafka[i].value);
	}
	free(cfg->kafka);
	for (size_t i = 0; i < cfg->nsources; i++)
		if (cfg->sources[i].values != NULL && cfg->sources[i].values[S_CONNINFO] != NULL)
			memset(cfg->sources[i].values[S_CONNINFO], 0, strlen(cfg->sources[i].values[S_CONNINFO]));
	free(cfg->sources);
	cfg->sources = NULL;
	cfg->nsources = 0;
	for (size_t i = 0; i < cfg->nowned; i++)
		free(cfg->owned[i]);
	free(cfg->owned);
	if (cfg->values != NULL) {
		for (int i = 0; i < S_COUNT; i++) {
			if (i == S_CONNINFO && cfg->values[i] != NULL)
				memset(cfg->values[i], 0, strlen(cfg->values[i]));
			free(cfg->values[i]);
		}
		free(cfg->values);
	}
	cfg->values = NULL;
	cfg->conninfo = cfg->brokers = cfg->slot = cfg->publication = NULL;
	cfg->table = cfg->topic_template = NULL;
	cfg->kafka = NULL;
	cfg->nkafka = 0;
	cfg->tables = NULL;
	cfg->ntables = 0;
	cfg->owned = NULL;
	cfg->nowned = 0;
}

void
config_list_settings(FILE *out)
{
	for (int i = 0; i < S_COUNT; i++)
		fprintf(out, "%s\t%s\t%s\t%s\n", settings[i].name,
		        settings[i].def ? settings[i].def : "",
		        reloadable[i] ? "reload" : "restart", settings[i].doc);
}

static bool
same_text(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool
same_kafka(const config *a, const config *b)
{
	if (a->nkafka != b->nkafka)
		return false;
	for (size_t i = 0; i < a->nkafka; i++)
		if (strcmp(a->kafka[i].name, b->kafka[i].name) != 0 ||
		    strcmp(a->kafka[i].value, b->kafka[i].value) != 0)
			return false;
	return true;
}

/* Move the typed value of reloadable setting idx from next to cur. */
static void
take_value(config *cur, config *next, int idx)
{
	char *tmp;

	switch (idx) {
	case S_LOG_LEVEL:
		cur->log_level = next->log_level;
		break;
	case S_LOG_FORMAT:
		cur->log_format = next->log_format;
		break;
	case S_STATS_INTERVAL:
		cur->stats_interval_s = next->stats_interval_s;
		break;
	case S_METRICS:
		tmp = cur->metrics;
		cur->metrics = next->metrics;
		next->metrics = tmp;
		break;
	default:
		break;
	}
}

/* The source of cfg called name, or NULL. */
const config_source *
config_find_source(const config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nsources; i++)
		if (strcmp(cfg->sources[i].name, name) == 0)
			return &cfg->sources[i];
	return NULL;
}

int
config_reload(config *cur, config *next)
{
	int changed = 0;

	for (int i = 0; i < S_COUNT; i++) {
		char *tmp;

		if (per_source(i) || same_text(cur->values[i], next->values[i]))
			continue;
		if (!reloadable[i]) {
			/* Never the value: conninfo may hold a password. */
			log_msg(LOG_WARNING, "setting \"%s\" cannot be changed without restarting; "
			        "keeping the running value", settings[i].name);
			continue;
		}
		log_msg(LOG_INFO, "setting \"%s\" changed to \"%s\"", settings[i].name,
		        next->values[i] ? next->values[i] : "");
		take_value(cur, next, i);
		tmp = cur->values[i];
		cur->values[i] = next->values[i];
		next->values[i] = tmp;
		changed++;
	}
	/* A source in both keeps running as it is; new and removed sources are
	 * the caller's (config_find_source). */
	for (size_t k = 0; k < cur->nsources; k++) {
		const config_source *a = &cur->sources[k];
		const config_source *b = config_find_source(next, a->name);

		if (b == NULL)
			continue;
		for (int i = 0; i < S_COUNT; i++)
			if (per_source(i) && !same_text(a->values[i], b->values[i]))
				log_msg(LOG_WARNING, "%s%s%ssetting \"%s\" cannot be changed without restarting; "
				        "keeping the running value", a->name[0] ? "source " : "", a->name,
				        a->name[0] ? ": " : "", settings[i].name);
	}
	if (!same_kafka(cur, next))
		log_msg(LOG_WARNING, "Kafka properties cannot be changed without restarting; "
		        "keeping the running ones");
	return changed;
}
