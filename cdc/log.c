/*
 * log.c — PostgreSQL-style log lines on stderr.  See log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static log_level min_level = LOG_INFO;

void
log_set_level(log_level min)
{
	min_level = min;
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
