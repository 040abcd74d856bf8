/*
 * log.h — PostgreSQL-style log lines on stderr.
 *
 *   2026-11-25 06:44:39.123 UTC [4242] LOG:  streaming from slot "pgoutbox"
 *
 * Messages are lower case without a trailing period; an optional detail goes
 * on a second line ("DETAIL:  ...").  With log_format = json each message is
 * instead one JSON object per line, for log pipelines:
 *
 *   {"ts":"2026-11-25T06:44:39.123Z","level":"LOG","pid":4242,"msg":"...","detail":"..."}
 *  Nothing here ever prints a password:
 * callers pass connection errors through redact_secret() first.
 */
#ifndef PGOUTBOX_LOG_H
#define PGOUTBOX_LOG_H

#include <stddef.h>

typedef enum log_level {
	LOG_DEBUG = 0,
	LOG_INFO,      /* printed as LOG, as PostgreSQL does */
	LOG_WARNING,
	LOG_ERROR,
	LOG_FATAL,
} log_level;

typedef enum log_format {
	LOG_FORMAT_TEXT = 0,
	LOG_FORMAT_JSON,
} log_format;

void log_set_level(log_level min);
void log_set_format(log_format fmt);
/* Parse "text" or "json"; returns -1 when unknown. */
int  log_format_parse(const char *s);
/* Parse "debug", "log"/"info", "warning", "error"; returns -1 when unknown. */
int  log_level_parse(const char *s);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void log_msg(log_level lvl, const char *fmt, ...);

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void log_detail(log_level lvl, const char *detail, const char *fmt, ...);

/*
 * Replace every occurrence of secret (when non-empty) in msg by "********",
 * in place; msg has room for cap bytes.  Also strips a trailing newline, as
 * libpq's messages end with one.
 */
void redact_secret(char *msg, size_t cap, const char *secret);

#endif /* PGOUTBOX_LOG_H */
