/*
 * config.c — the settings table, the -c file parser and the command line.
 * See config.h.
 */
#include "config.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
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
	S_VALUE_FORMAT, S_CE_SOURCE, S_MESSAGES_PREFIX, S_ON_ERROR, S_DLQ_TOPIC,
	S_LOG_LEVEL, S_SHUTDOWN_TIMEOUT, S_STATUS_INTERVAL, S_REPLICATION_TIMEOUT, S_KAFKA_STALL_TIMEOUT,
	S_ENDPOS,
	S_METRICS, S_LOG_FORMAT, S_STATS_INTERVAL,
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
};

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
	              "cloudevents_source, messages_prefix, on_error, dlq_topic, log_level, "
	              "shutdown_timeout, status_interval, replication_timeout, kafka_stall_timeout, endpos, "
	              "metrics, log_format, "
	              "stats_interval), header.<name> for extra headers, "
	              "table.<schema>.<table>.<setting> for per-table settings and kafka.<property> "
	              "for librdkafka.", 0, 0);
	fputc('\n', out);
	print_wrapped(out,
	              "Exit status: 0 clean stop, 1 bad configuration or usage, 2 unrecoverable "
	              "runtime failure (slot or publication missing, Kafka refused an event or an "
	              "event cannot be mapped and on_error = stop).", 0, 0);
}

bool
parse_lsn(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long hi, lo;

	errno = 0;
	hi = strtoull(s, &end, 16);
	if (end == s || *end != '/' || errno || hi > UINT32_MAX)
		return false;
	s = end + 1;
	lo = strtoull(s, &end, 16);
	if (end == s || *end != '\0' || errno || lo > UINT32_MAX)
		return false;
	*out = ((uint64_t) hi << 32) | (uint64_t) lo;
	return true;
}


static bool
parse_int(const char *s, int min, int max, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (end == s || *end != '\0' || errno || v < min || v > max)
		return false;
	*out = (int) v;
	return true;
}

/* A per-table setting: table.<schema>.<table>.<setting> = value. */
typedef struct override {
	char *nsp, *rel;
	char *key;           /* as written, for errors */
	int   idx;           /* setting; -1: a header */
	char *header;        /* idx == -1: header name */
	char *value;         /* idx == -1: column ("" drops the header for this table) */
} override;

/* A header mapping: header.<name> = <column>. */
typedef struct hdr {
	char *name;
	char *column;
} hdr;

/* Sources of values while loading; vals[i] owned strings or NULL. */
typedef struct layer {
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

/* header.<name> = <column>; a later one for the same name replaces it. */
static bool
layer_add_header(layer *l, const char *name, size_t nlen, const char *column)
{
	hdr *nh;
	char *n = strndup(name, nlen), *c = strdup(column);

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
 * A per-table setting "SCHEMA.TABLE.SETTING" with its value, or (value ==
 * NULL) "SCHEMA.TABLE.SETTING=VALUE" as --table-option takes it.  SCHEMA and
 * TABLE are identifiers as in `table` (quoted ones may hold dots); SETTING is
 * a per-table setting or header.NAME.
 */
static bool
layer_add_override(layer *l, const char *spec, const char *value, char *errbuf, size_t errlen)
{
	override o = {0};
	const char *p = spec, *name, *end;
	override *no;
	char err[256];

	o.idx = -1;
	if (!outbox_parse_table(&p, true, &o.nsp, &o.rel, err, sizeof(err))) {
		snprintf(errbuf, errlen, "invalid per-table setting \"table.%s\": %s", spec, err);
		return false;
	}
	if (*p != '.') {
		snprintf(errbuf, errlen, "invalid per-table setting \"table.%s\": expected "
		         "table.SCHEMA.TABLE.SETTING", spec);
		goto error;
	}
	name = p + 1;
	end = value ? name + strlen(name) : strchr(name, '=');
	if (end == NULL) {
		snprintf(errbuf, errlen, "--table-option expects SCHEMA.TABLE.SETTING=VALUE, got \"%s\"", spec);
		goto error;
	}
	if (!value)
		value = end + 1;
	if ((size_t) (end - name) > 7 && strncmp(name, "header.", 7) == 0) {
		o.header = strndup(name + 7, (size_t) (end - name - 7));
		if (o.header == NULL)
			goto nomem;
	} else {
		o.idx = setting_by_name(name, (size_t) (end - name));
		if (o.idx < 0 || !settings[o.idx].per_table) {
			snprintf(errbuf, errlen, "\"%.*s\" cannot be set per table (in \"table.%s\"): use "
			         "topic_template, topic_prefix, id_column, key_column, type_column, "
			         "payload_column, aggregatetype_column, value_format, cloudevents_source "
			         "or header.NAME", (int) (end - name), name, spec);
			goto error;
		}
	}
	o.key = strndup(spec, (size_t) (end - spec));
	o.value = strdup(value);
	if (o.key == NULL || o.value == NULL)
		goto nomem;
	if ((no = realloc(l->ovr, (l->novr + 1) * sizeof(*no))) == NULL)
		goto nomem;
	l->ovr = no;
	no[l->novr++] = o;
	return true;
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

/* Read a key = value file into l.  Values may be wrapped in single or double quotes. */
static bool
load_file(layer *l, const char *path, char *errbuf, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char line[8192];
	char err[512];
	int lineno = 0;

	if (f == NULL) {
		snprintf(errbuf, errlen, "could not open configuration file \"%s\": %s", path, strerror(errno));
		return false;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char *key, *val, *eq;
		size_t vlen;
		int idx;

		lineno++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			snprintf(errbuf, errlen, "%s:%d: line too long", path, lineno);
			goto error;
		}
		key = trim(line);
		if (*key == '\0' || *key == '#')
			continue;
		eq = strchr(key, '=');
		if (eq == NULL) {
			snprintf(errbuf, errlen, "%s:%d: expected key = value", path, lineno);
			goto error;
		}
		*eq = '\0';
		key = trim(key);
		val = trim(eq + 1);
		vlen = strlen(val);
		if (vlen >= 2 && (val[0] == '\'' || val[0] == '"') && val[vlen - 1] == val[0]) {
			val[vlen - 1] = '\0';
			val++;
		}
		if (strncmp(key, "kafka.", 6) == 0 && key[6] != '\0') {
			if (!layer_add_kafka(l, key + 6, strlen(key + 6), val))
				goto nomem;
			continue;
		}
		if (strncmp(key, "header.", 7) == 0 && key[7] != '\0') {
			if (!layer_add_header(l, key + 7, strlen(key + 7), val))
				goto nomem;
			continue;
		}
		if (strncmp(key, "table.", 6) == 0 && key[6] != '\0') {
			if (!layer_add_override(l, key + 6, val, err, sizeof(err))) {
				snprintf(errbuf, errlen, "%s:%d: %s", path, lineno, err);
				goto error;
			}
			continue;
		}
		idx = setting_by_name(key, strlen(key));
		if (idx < 0) {
			snprintf(errbuf, errlen, "%s:%d: unknown setting \"%s\"", path, lineno, key);
			goto error;
		}
		if (!layer_set(l, idx, val))
			goto nomem;
	}
	if (ferror(f)) {
		snprintf(errbuf, errlen, "could not read \"%s\": %s", path, strerror(errno));
		goto error;
	}
	fclose(f);
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
error:
	fclose(f);
	return false;
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

/* One mapping: the global values with the overrides for (nsp, rel) applied
 * (nsp == NULL: the global mapping only, for logical messages). */
static bool
build_mapping(config *cfg, outbox_mapping *m, const char *const *vals, const layer *file,
              const layer *cli, const char *nsp, const char *rel, char *errbuf, size_t errlen)
{
	const char *v[S_COUNT];
	outbox_header_map *h;
	size_t nh = 0;
	const layer *layers[2] = {file, cli};
	char what[300] = "";

	memcpy(v, vals, sizeof(v));
	/* At most every global header plus every override header. */
	if ((h = own(cfg, calloc(file->nhdrs + cli->nhdrs + file->novr + cli->novr + 1, sizeof(*h)))) == NULL)
		goto nomem;
	for (int li = 0; li < 2; li++)
		for (size_t i = 0; i < layers[li]->nhdrs; i++) {
			const hdr *g = &layers[li]->hdrs[i];
			size_t j;
			for (j = 0; j < nh && strcmp(h[j].name, g->name) != 0; j++)
				;
			h[j] = (outbox_header_map) {g->name, g->column};
			if (j == nh)
				nh++;
		}
	for (int li = 0; nsp != NULL && li < 2; li++)
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
	/* Strings of the layers die with them: copy what the mapping keeps. */
	for (size_t i = 0; i < nh; i++)
		if (!(h[i].name = own(cfg, strdup(h[i].name))) ||
		    !(h[i].column = own(cfg, strdup(h[i].column))))
			goto nomem;
	m->headers = h;
	m->nheaders = nh;
	if (nsp != NULL)
		snprintf(what, sizeof(what), " for table %s.%s", nsp, rel);
	if (!outbox_format_parse(v[S_VALUE_FORMAT], &m->format)) {
		snprintf(errbuf, errlen, "invalid value_format \"%s\"%s: use raw, envelope or cloudevents",
		         v[S_VALUE_FORMAT], what);
		return false;
	}
	if (nh > OUTBOX_MAX_EXTRA_HEADERS) {
		snprintf(errbuf, errlen, "%zu headers mapped%s: at most %d", nh, what,
		         OUTBOX_MAX_EXTRA_HEADERS);
		return false;
	}
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

/* The `table` list and every table's mapping; overrides must name a listed table. */
static bool
build_tables(config *cfg, const char *const *vals, const layer *file, const layer *cli,
             char *errbuf, size_t errlen)
{
	const char *p = vals[S_TABLE];
	const layer *layers[2] = {file, cli};
	char *nsp[OUTBOX_MAX_TABLES], *rel[OUTBOX_MAX_TABLES];
	size_t n = 0;
	char err[256];
	bool ok = false;

	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (n == OUTBOX_MAX_TABLES) {
			snprintf(errbuf, errlen, "more than %d outbox tables", OUTBOX_MAX_TABLES);
			goto out;
		}
		if (!outbox_parse_table(&p, false, &nsp[n], &rel[n], err, sizeof(err))) {
			snprintf(errbuf, errlen, "invalid table \"%s\": %s", vals[S_TABLE], err);
			goto out;
		}
		n++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		if (*p != ',') {
			snprintf(errbuf, errlen, "invalid table \"%s\": expected [schema.]table[, ...]", vals[S_TABLE]);
			goto out;
		}
		p++;
	}
	for (int li = 0; li < 2; li++)
		for (size_t i = 0; i < layers[li]->novr; i++) {
			const override *o = &layers[li]->ovr[i];
			size_t j;
			for (j = 0; j < n && !(strcmp(o->nsp, nsp[j]) == 0 && strcmp(o->rel, rel[j]) == 0); j++)
				;
			if (j == n) {
				snprintf(errbuf, errlen, "per-table setting \"table.%s\" names %s.%s, which is not "
				         "one of the outbox tables (table = %s)", o->key, o->nsp, o->rel,
				         vals[S_TABLE]);
				goto out;
			}
		}
	if ((cfg->tables = calloc(n, sizeof(*cfg->tables))) == NULL)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		if ((cfg->tables[i].table = own(cfg, quote_table(nsp[i], rel[i]))) == NULL)
			goto nomem;
		cfg->ntables++;
		if (!build_mapping(cfg, &cfg->tables[i].map, vals, file, cli, nsp[i], rel[i], errbuf, errlen))
			goto out;
	}
	ok = true;
	goto out;
nomem:
	snprintf(errbuf, errlen, "out of memory");
out:
	for (size_t i = 0; i < n; i++) {
		free(nsp[i]);
		free(rel[i]);
	}
	return ok;
}

config_rc
config_load(config *cfg, int argc, char **argv, char *errbuf, size_t errlen)
{
	enum { OPT_BASE = 256 };
	struct option longopts[S_COUNT + 12];
	char shortopts[64] = "+c:X:vVh";
	layer cli = {0}, file = {0};
	const char *config_path = NULL;
	const char *vals[S_COUNT];
	int n = 0, c;
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
	longopts[n++] = (struct option) {"verbose", no_argument, NULL, 'v'};
	longopts[n++] = (struct option) {"version", no_argument, NULL, 'V'};
	longopts[n++] = (struct option) {"help", no_argument, NULL, 'h'};
	longopts[n++] = (struct option) {"check", no_argument, NULL, 'k'};
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
		if (idx >= 0) {
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
			if (eq == NULL || eq == optarg) {
				snprintf(errbuf, errlen, "-X expects PROPERTY=VALUE, got \"%s\"", optarg);
				goto out;
			}
			if (!layer_add_kafka(&cli, optarg, (size_t) (eq - optarg), eq + 1))
				goto nomem;
			break;
		}
		case 'H': {
			const char *eq = strchr(optarg, '=');
			if (eq == NULL || eq == optarg) {
				snprintf(errbuf, errlen, "--header expects NAME=COLUMN, got \"%s\"", optarg);
				goto out;
			}
			if (!layer_add_header(&cli, optarg, (size_t) (eq - optarg), eq + 1))
				goto nomem;
			break;
		}
		case 'T':
			if (!layer_add_override(&cli, optarg, NULL, errbuf, errlen))
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
		case 'L':
			cfg->list_settings = true;
			break;
		case ':':
			snprintf(errbuf, errlen, "option \"%s\" requires an argument", argv[optind - 1]);
			goto out;
		default:
			snprintf(errbuf, errlen, "unknown option \"%s\"", argv[optind - 1]);
			goto out;
		}
	}
	if (optind < argc) {
		snprintf(errbuf, errlen, "unexpected argument \"%s\"", argv[optind]);
		goto out;
	}
	if (cfg->show_help || cfg->show_version || cfg->list_settings) {
		rc = CONFIG_EXIT;
		goto out;
	}
	if (config_path != NULL && !load_file(&file, config_path, errbuf, errlen))
		goto out;

	for (int i = 0; i < S_COUNT; i++)
		vals[i] = cli.vals[i] ? cli.vals[i] : file.vals[i] ? file.vals[i] : settings[i].def;
	if (vals[S_CONNINFO] == NULL) {
		snprintf(errbuf, errlen, "no PostgreSQL connection given: use -d CONNINFO (or conninfo in the -c file)");
		goto out;
	}
	if (vals[S_BROKERS] == NULL) {
		snprintf(errbuf, errlen, "no Kafka brokers given: use -b BROKERS (or brokers in the -c file)");
		goto out;
	}
	if ((c = log_level_parse(vals[S_LOG_LEVEL])) < 0) {
		snprintf(errbuf, errlen, "invalid log_level \"%s\": use debug, log, warning or error", vals[S_LOG_LEVEL]);
		goto out;
	}
	cfg->log_level = c;
	if ((c = log_format_parse(vals[S_LOG_FORMAT])) < 0) {
		snprintf(errbuf, errlen, "invalid log_format \"%s\": use text or json", vals[S_LOG_FORMAT]);
		goto out;
	}
	cfg->log_format = c;
	if (!parse_int(vals[S_STATS_INTERVAL], 0, 86400, &cfg->stats_interval_s)) {
		snprintf(errbuf, errlen, "invalid stats_interval \"%s\": seconds from 0 to 86400", vals[S_STATS_INTERVAL]);
		goto out;
	}
	if (!parse_int(vals[S_SHUTDOWN_TIMEOUT], 0, 86400, &cfg->shutdown_timeout_s)) {
		snprintf(errbuf, errlen, "invalid shutdown_timeout \"%s\": seconds from 0 to 86400", vals[S_SHUTDOWN_TIMEOUT]);
		goto out;
	}
	if (!parse_int(vals[S_STATUS_INTERVAL], 100, 3600000, &cfg->status_interval_ms)) {
		snprintf(errbuf, errlen, "invalid status_interval \"%s\": milliseconds from 100 to 3600000", vals[S_STATUS_INTERVAL]);
		goto out;
	}
	if (!parse_int(vals[S_REPLICATION_TIMEOUT], 0, 86400, &cfg->replication_timeout_s) ||
	    (cfg->replication_timeout_s > 0 && cfg->replication_timeout_s < 2)) {
		snprintf(errbuf, errlen, "invalid replication_timeout \"%s\": 0 or seconds from 2 to 86400",
		         vals[S_REPLICATION_TIMEOUT]);
		goto out;
	}
	if (!parse_int(vals[S_KAFKA_STALL_TIMEOUT], 0, 86400, &cfg->kafka_stall_timeout_s)) {
		snprintf(errbuf, errlen, "invalid kafka_stall_timeout \"%s\": 0 or seconds up to 86400",
		         vals[S_KAFKA_STALL_TIMEOUT]);
		goto out;
	}
	if (vals[S_ENDPOS] != NULL && !parse_lsn(vals[S_ENDPOS], &cfg->endpos)) {
		snprintf(errbuf, errlen, "invalid endpos \"%s\": expected an LSN such as 0/16B3748", vals[S_ENDPOS]);
		goto out;
	}
	if (strcmp(vals[S_ON_ERROR], "stop") == 0) {
		cfg->on_error_dlq = false;
	} else if (strcmp(vals[S_ON_ERROR], "dlq") == 0) {
		cfg->on_error_dlq = true;
	} else {
		snprintf(errbuf, errlen, "invalid on_error \"%s\": use stop or dlq", vals[S_ON_ERROR]);
		goto out;
	}
	if (!outbox_topic_valid(vals[S_DLQ_TOPIC], strlen(vals[S_DLQ_TOPIC]))) {
		snprintf(errbuf, errlen, "invalid dlq_topic \"%s\": not a valid Kafka topic name", vals[S_DLQ_TOPIC]);
		goto out;
	}
	if (vals[S_METRICS] != NULL && vals[S_METRICS][0] != '\0' &&
	    !metrics_addr_valid(vals[S_METRICS], errbuf, errlen))
		goto out;
	/* The effective text of every setting, to tell what a reload changes. */
	if (!(cfg->values = calloc(S_COUNT, sizeof(*cfg->values))))
		goto nomem;
	for (int i = 0; i < S_COUNT; i++)
		if (vals[i] != NULL && !(cfg->values[i] = strdup(vals[i])))
			goto nomem;
	if (!(cfg->conninfo = strdup(vals[S_CONNINFO])) ||
	    !(cfg->brokers = strdup(vals[S_BROKERS])) ||
	    !(cfg->slot = strdup(vals[S_SLOT])) ||
	    !(cfg->publication = strdup(vals[S_PUBLICATION])) ||
	    !(cfg->table = strdup(vals[S_TABLE])) ||
	    !(cfg->topic_template = strdup(vals[S_TOPIC_TEMPLATE])) ||
	    !(cfg->messages_prefix = own(cfg, strdup(vals[S_MESSAGES_PREFIX]))) ||
	    !(cfg->dlq_topic = own(cfg, strdup(vals[S_DLQ_TOPIC]))))
		goto nomem;
	if (!build_tables(cfg, vals, &file, &cli, errbuf, errlen) ||
	    !build_mapping(cfg, &cfg->messages, vals, &file, &cli, NULL, NULL, errbuf, errlen))
		goto out;
	/* A message carries its own headers, not columns. */
	cfg->messages.headers = NULL;
	cfg->messages.nheaders = 0;
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
	rc = CONFIG_OK;
	goto out;

nomem:
	snprintf(errbuf, errlen, "out of memory");
out:
	layer_free(&cli);
	layer_free(&file);
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
	free(cfg->tables);
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

int
config_reload(config *cur, config *next)
{
	int changed = 0;

	for (int i = 0; i < S_COUNT; i++) {
		char *tmp;

		if (same_text(cur->values[i], next->values[i]))
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
	if (!same_kafka(cur, next))
		log_msg(LOG_WARNING, "Kafka properties cannot be changed without restarting; "
		        "keeping the running ones");
	return changed;
}
