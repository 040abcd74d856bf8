/*
 * log.c — PostgreSQL-style log lines on stderr.  See log.h.
 */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static log_level min_level = LOG_INFO;
static log_format format = LOG_FORMAT_TEXT;

void
log_set_level(log_level min)
{
	min_level = min;
}

void
log_set_format(log_format fmt)
{
	format = fmt;
}

int
log_format_parse(const char *s)
{
	if (strcasecmp(s, "text") == 0)
		return LOG_FORMAT_TEXT;
	if (strcasecmp(s, "json") == 0)
		return LOG_FORMAT_JSON;
	return -1;
}

/* A JSON string of text; bytes that are not UTF-8 become '?'. */
static json_t *
json_text(const char *text)
{
	json_t *j = json_string(text);
	char *copy;

	if (j != NULL || text == NULL)
		return j;
	if ((copy = strdup(text)) == NULL)
		return NULL;
	for (char *p = copy; *p; p++)
		if ((unsigned char) *p >= 0x80)
			*p = '?';
	j = json_string(copy);
	free(copy);
	return j;
}

/*
 * One JSON object per line.  When jansson cannot allocate, the line is
 * written as text rather than lost.
 */
static bool
write_json(const struct timespec *now, const struct tm *tm, const char *level,
           const char *msg, const char *detail)
{
	char ts[64], full[80];
	json_t *o = json_object();
	char *line;
	bool ok;

	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", tm);
	snprintf(full, sizeof(full), "%s.%03ldZ", ts, now->tv_nsec / 1000000L);
	ok = o != NULL &&
	     json_object_set_new(o, "ts", json_string(full)) == 0 &&
	     json_object_set_new(o, "level", json_string(level)) == 0 &&
	     json_object_set_new(o, "pid", json_integer((json_int_t) getpid())) == 0 &&
	     json_object_set_new(o, "msg", json_text(msg)) == 0 &&
	     (detail == NULL || detail[0] == '\0' ||
	      json_object_set_new(o, "detail", json_text(detail)) == 0);
	line = ok ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(o);
	if (line == NULL)
		return false;
	fprintf(stderr, "%s\n", line);
	fflush(stderr);
	free(line);
	return true;
}

int
log_level_parse(const char *s)
{
	if (strcasecmp(s, "debug") == 0)
		return LOG_DEBUG;
	if (strcasecmp(s, "log") == 0 || strcasecmp(s, "info") == 0)
		return LOG_INFO;
	if (strcasecmp(s, "warning") == 0)
		return LOG_WARNING;
	if (strcasecmp(s, "error") == 0)
		return LOG_ERROR;
	return -1;
}

static const char *
level_name(log_level lvl)
{
	switch (lvl) {
	case LOG_DEBUG: return "DEBUG";
	case LOG_INFO: return "LOG";
	case LOG_WARNING: return "WARNING";
	case LOG_ERROR: return "ERROR";
	case LOG_FATAL: return "FATAL";
	}
	return "LOG";
}

static void
vlog(log_level lvl, const char *detail, const char *fmt, va_list ap)
{
	char line[4096];
	char ts[64];
	struct timespec now;
	struct tm tm;
	size_t n;
	int r;

	if (lvl < min_level)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	if (format == LOG_FORMAT_JSON) {
		va_list aq;

		va_copy(aq, ap);
		r = vsnprintf(line, sizeof(line), fmt, aq);
		va_end(aq);
		if (r >= 0 && write_json(&now, &tm, level_name(lvl), line, detail))
			return;
		/* out of memory: fall through to a text line */
	}
	strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
	r = snprintf(line, sizeof(line), "%s.%03ld UTC [%ld] %s:  ", ts,
	             now.tv_nsec / 1000000L, (long) getpid(), level_name(lvl));
	n = r < 0 ? 0 : (size_t) r;
	if (n < sizeof(line)) {
		r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		if (r > 0)
			n += (size_t) r;
	}
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	line[n] = '\0';
	/* One write per line so concurrent writers do not interleave mid-line. */
	fputs(line, stderr);
	if (detail != NULL && detail[0] != '\0')
		fprintf(stderr, "DETAIL:  %s\n", detail);
	fflush(stderr);
}

void
log_msg(log_level lvl, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(lvl, NULL, fmt, ap);
	va_end(ap);
}

void
log_detail(log_level lvl, const char *detail, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(lvl, detail, fmt, ap);
	va_end(ap);
}

void
redact_secret(char *msg, size_t cap, const char *secret)
{
	static const char mask[] = "********";
	size_t slen;
	char *p;

	if (msg == NULL || cap == 0)
		return;
	if (secret != NULL && (slen = strlen(secret)) > 0) {
		p = msg;
		while ((p = strstr(p, secret)) != NULL) {
			size_t tail = strlen(p + slen);
			size_t mlen = sizeof(mask) - 1;
			size_t off = (size_t) (p - msg);

			if (off + mlen + 1 > cap) {
				*p = '\0'; /* no room even for the mask: cut here */
				break;
			}
			if (off + mlen + tail + 1 > cap)
				tail = cap - off - mlen - 1; /* truncate rather than overflow */
			memmove(p + mlen, p + slen, tail);
			memcpy(p, mask, mlen);
			p[mlen + tail] = '\0';
			p += mlen;
		}
	}
	/* libpq messages end with a newline; log lines add their own. */
	for (size_t n = strlen(msg); n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '); n--)
		msg[n - 1] = '\0';
}
