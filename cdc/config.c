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
} setting;

enum {
	S_CONNINFO, S_BROKERS, S_SLOT, S_PUBLICATION, S_TABLE, S_TOPIC_TEMPLATE,
	S_LOG_LEVEL, S_SHUTDOWN_TIMEOUT, S_STATUS_INTERVAL, S_ENDPOS,
	S_METRICS, S_LOG_FORMAT, S_STATS_INTERVAL,
	S_COUNT
};

static const setting settings[S_COUNT] = {
	[S_CONNINFO] = {"conninfo", "dbname", 'd', "CONNINFO", NULL,
		"PostgreSQL connection string or URI (required; replication=database is added)"},
	[S_BROKERS] = {"brokers", "brokers", 'b', "BROKERS", NULL,
		"Kafka bootstrap servers, host:port[,host:port...] (required)"},
	[S_SLOT] = {"slot", "slot", 0, "NAME", "pgoutbox",
		"logical replication slot (plugin pgoutput)"},
	[S_PUBLICATION] = {"publication", "publication", 0, "NAME", "pgoutbox",
		"publication that contains the outbox table"},
	[S_TABLE] = {"table", "table", 0, "SCHEMA.TABLE", "public.outbox",
		"the outbox table"},
	[S_TOPIC_TEMPLATE] = {"topic_template", "topic-template", 0, "TEMPLATE",
		"outbox.event.${aggregatetype}", "Kafka topic; ${column} is replaced by the row's value"},
	[S_LOG_LEVEL] = {"log_level", "log-level", 0, "LEVEL", "log",
		"debug, log, warning or error (-v is debug)"},
	[S_SHUTDOWN_TIMEOUT] = {"shutdown_timeout", "shutdown-timeout", 0, "SECONDS", "30",
		"on SIGTERM, how long to wait for Kafka to acknowledge what is in flight"},
	[S_STATUS_INTERVAL] = {"status_interval", "status-interval", 0, "MS", "10000",
		"longest time between two status updates to PostgreSQL"},
	[S_ENDPOS] = {"endpos", "endpos", 0, "LSN", NULL,
		"exit 0 once everything up to this LSN is confirmed (like pg_recvlogical --endpos)"},
	[S_METRICS] = {"metrics", "metrics", 0, "[HOST:]PORT", NULL,
		"serve Prometheus /metrics and /healthz over HTTP (a bare port binds 127.0.0.1; default off)"},
	[S_LOG_FORMAT] = {"log_format", "log-format", 0, "FORMAT", "text",
		"text (PostgreSQL style) or json (one object per line: ts, level, pid, msg, detail)"},
	[S_STATS_INTERVAL] = {"stats_interval", "stats-interval", 0, "SECONDS", "60",
		"seconds between one-line stats summaries in the log (0: none)"},
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

void
config_usage(FILE *out)
{
	fprintf(out,
	        "pgoutbox delivers transactional-outbox events from a PostgreSQL logical\n"
	        "replication slot to Kafka, confirming the slot only after Kafka acknowledged.\n\n"
	        "Usage:\n"
	        "  pgoutbox -d CONNINFO -b BROKERS [OPTION]...\n\nOptions:\n");
	for (int i = 0; i < S_COUNT; i++) {
		char opt[64];
		const setting *s = &settings[i];

		if (s->shortopt)
			snprintf(opt, sizeof(opt), "-%c, --%s=%s", s->shortopt, s->longopt, s->meta);
		else
			snprintf(opt, sizeof(opt), "    --%s=%s", s->longopt, s->meta);
		fprintf(out, "  %-34s %s", opt, s->doc);
		if (s->def)
			fprintf(out, " (default: %s)", s->def);
		fputc('\n', out);
	}
	fprintf(out,
	        "  %-34s %s\n  %-34s %s\n  %-34s %s\n  %-34s %s\n  %-34s %s\n\n",
	        "-c, --config=FILE", "read settings from a key = value file (command line wins)",
	        "-X, --kafka=PROPERTY=VALUE", "set a librdkafka property (repeatable)",
	        "-v, --verbose", "log debug messages",
	        "-V, --version", "print the version and exit",
	        "-h, --help", "print this help and exit");
	fprintf(out,
	        "  %-34s %s\n\n", "--check",
	        "verify PostgreSQL and Kafka, print each result, exit (0: all passed)");
	fprintf(out,
	        "SIGHUP re-reads the -c file and applies the settings marked reloadable in\n"
	        "the documentation (log_level, log_format, stats_interval, metrics); a file with errors is logged and ignored.\n\n");
	fprintf(out,
	        "In the -c file the keys are the setting names (conninfo, brokers, slot,\n"
	        "publication, table, topic_template, log_level, shutdown_timeout,\n"
	        "status_interval, endpos, metrics, log_format,\n"
	        "stats_interval) and kafka.<property> for librdkafka.\n\n"
	        "Exit status: 0 clean stop, 1 bad configuration or usage, 2 unrecoverable\n"
	        "runtime failure (slot or publication missing, Kafka refused an event).\n");
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

/* Sources of values while loading; vals[i] owned strings or NULL. */
typedef struct layer {
	char          *vals[S_COUNT];
	sink_property *kafka;
	size_t         nkafka;
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
	sink_property *np = realloc(l->kafka, (l->nkafka + 1) * sizeof(*np));

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

static int
setting_by_name(const char *name)
{
	for (int i = 0; i < S_COUNT; i++)
		if (strcmp(settings[i].name, name) == 0)
			return i;
	return -1;
}

/* Read a key = value file into l.  Values may be wrapped in single or double quotes. */
static bool
load_file(layer *l, const char *path, char *errbuf, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char line[8192];
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
		idx = setting_by_name(key);
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

config_rc
config_load(config *cfg, int argc, char **argv, char *errbuf, size_t errlen)
{
	enum { OPT_BASE = 256 };
	struct option longopts[S_COUNT + 9];
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
	if (vals[S_ENDPOS] != NULL && !parse_lsn(vals[S_ENDPOS], &cfg->endpos)) {
		snprintf(errbuf, errlen, "invalid endpos \"%s\": expected an LSN such as 0/16B3748", vals[S_ENDPOS]);
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
	    !(cfg->topic_template = strdup(vals[S_TOPIC_TEMPLATE])))
		goto nomem;
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
