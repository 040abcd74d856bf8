/*
 * config.h — pgoutbox's settings: one table, three sources.
 *
 * Every setting is described once in config.c's table (name, command-line
 * spelling, default, documentation).  Values come from the defaults, then
 * the -c file (`key = value`, `#` comments), then the command line; later
 * sources win.  Kafka properties (`kafka.<property>` in the file, -X on the
 * command line) are passed to librdkafka untouched, file first.
 */
#ifndef PGOUTBOX_CONFIG_H
#define PGOUTBOX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "outbox.h"
#include "kafka.h"

/*
 * One source: a database's slot and its outbox tables.  A configuration
 * without [source NAME] sections has one, named "" (metrics call it
 * "default"), made of the global settings.  Strings are owned by the config.
 */
typedef struct config_source {
	const char   *name;
	const char   *conninfo;
	const char   *slot;
	const char   *publication;
	const char   *table;             /* as given */
	outbox_table *tables;
	size_t        ntables;
	outbox_mapping messages;
	const char   *messages_prefix;   /* "" when off */
	bool          on_error_dlq;
	const char   *dlq_topic;
	int           status_interval_ms;
	int           replication_timeout_s;
	uint64_t      endpos;            /* 0: none */
	char        **values;            /* effective text of each setting (table order), for reloads */
} config_source;

typedef struct config {
	/* The sources; the fields from conninfo to endpos below are those of
	 * sources[0] (the only one without sections), kept for --check and tests. */
	config_source *sources;
	size_t      nsources;
	bool        on_source_failure_stop_all;
	char       *conninfo;
	char       *brokers;
	char       *slot;
	char       *publication;
	char       *table;              /* as given: one or more comma-separated tables */
	char       *topic_template;     /* global value (tables may override it) */
	/* The outbox mapping: one entry per table, global settings with the
	 * table.<schema>.<table>.<setting> overrides applied; the messages
	 * mapping from the global settings.  Strings and arrays are owned by
	 * the config (see owned). */
	outbox_table *tables;
	size_t      ntables;
	outbox_mapping messages;
	const char *messages_prefix;    /* "" when off */
	bool        on_error_dlq;       /* on_error = dlq (else stop) */
	const char *dlq_topic;
	bool        exactly_once;       /* delivery = exactly-once */
	const char *transactional_id;   /* NULL: derived from the system identifier and the slot */
	const char *state_topic;
	int         txn_max_ms;
	int         txn_max_events;
	void      **owned;              /* everything the pointers above point into */
	size_t      nowned;
	int         log_level;          /* log_level enum */
	int         log_format;         /* log_format enum */
	int         stats_interval_s;   /* 0: no stats lines */
	int         shutdown_timeout_s;
	int         status_interval_ms;
	int         replication_timeout_s;  /* 0: off */
	int         kafka_stall_timeout_s;  /* 0: off */
	uint64_t    endpos;             /* 0: none */
	char       *metrics;            /* listen address, or NULL: off */
	kafka_property *kafka;           /* owned name/value strings */
	size_t      nkafka;
	bool        show_help;
	bool        show_version;
	bool        list_settings;      /* hidden --list-settings */
	bool        check;              /* --check: verify, report, exit */
	bool        backfill;           /* --backfill: create the slot, publish the rows, stream */
	bool        replay;             /* --replay: publish the rows, exit */
	const char *backfill_since;     /* "" when unset (owned, like the ones below) */
	const char *backfill_since_column;
	const char *backfill_order_column;
	const char *backfill_timestamp_column;
	const char *backfill_resume;    /* "N:KEY" or "" */
	int         backfill_batch;
	bool        cleanup_delete;     /* cleanup = delete */
	int         cleanup_batch;
	int         cleanup_interval_ms;
	char      **values;             /* effective text of each setting (table order), owned */
} config;

typedef enum config_rc {
	CONFIG_OK = 0,
	CONFIG_EXIT,                    /* --help, --version or --list-settings: print, exit 0 */
	CONFIG_ERROR,                   /* errbuf says what is wrong: exit 1 */
} config_rc;

config_rc config_load(config *cfg, int argc, char **argv, char *errbuf, size_t errlen);
void      config_free(config *cfg);
void      config_usage(FILE *out);
/* One line per setting: name, default, "reload" or "restart", doc (tab-separated). */
void      config_list_settings(FILE *out);

/*
 * SIGHUP: next is a freshly loaded config.  Apply its reloadable settings to
 * cur (log what changed; warn, naming only the key, about restart-only
 * settings that differ).  Returns how many settings changed; next keeps
 * whatever was not moved and is freed by the caller.
 */
int       config_reload(config *cur, config *next);

/* The source of cfg called name, or NULL (reload: sources added or removed). */
const config_source *config_find_source(const config *cfg, const char *name);

/* Parse "X/Y" (hex) as PostgreSQL prints LSNs. */
bool      parse_lsn(const char *s, uint64_t *out);

#endif /* PGOUTBOX_CONFIG_H */
